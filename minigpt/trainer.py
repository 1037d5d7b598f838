"""The training loop behind `python train.py` / `minigpt train`.

A recipe in order: set up the runtime -> prepare/open the data -> build or resume the
model -> AdamW with warmup + cosine decay -> for each step: accumulate gradients over
micro-batches, clip, step -> every `eval_interval` steps: evaluate, write metrics,
checkpoint atomically -> at the end: a final evaluation, a checkpoint and a sample.

Exactness: the data windows of step s depend only on (seed, s), the learning rate only
on s, and the optimizer moments and RNG states are saved with every checkpoint. So a run
of N steps and a run of N/2 steps resumed for N/2 more produce the same losses (set
--lr-decay-steps so that both runs share one schedule; by default the schedule ends at
--max-steps, which the two runs set differently).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import RunDirectory, load_checkpoint, load_trainer_state, unwrap
from .config import GPTConfig, ModelArgs, TrainConfig
from .data import RECIPE_FILE, Dataset, WindowSampler, eval_offsets, prepare_from_recipe, windows
from .errors import ConfigError, DataError, MiniGPTError
from .evaluate import loss_sums, metrics_from_sums
from .runtime import Runtime, configure_threads, enable_tf32, init_runtime

METRICS = "metrics.jsonl"
RUN_CONFIG = "train_config.json"  # the resolved settings (each checkpoint also has them in run.json)
# Peak dense bf16 tensor-core FLOP/s by GPU name, for MFU (datasheet numbers).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


class NonFiniteLoss(MiniGPTError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


# ---- the pieces ----------------------------------------------------------------------


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at
    `decay_steps` (and `min_lr` after). Step 0 starts at lr / warmup, not at 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (embeddings, linear weights) only: decaying biases
    and LayerNorm gains toward zero only hurts (GPT-2/nanoGPT practice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), **extra)


def build_model(margs: ModelArgs, vocab_size: int) -> nn.Module:
    if margs.model == "gpt":
        from .model import GPT

        return GPT(
            GPTConfig(
                vocab_size=vocab_size, block_size=margs.block_size, n_layer=margs.n_layer, n_head=margs.n_head,
                n_embd=margs.n_embd, dropout=margs.dropout, bias=margs.bias, pos_encoding=margs.pos_encoding,
                tie_weights=margs.tie_weights,
            )
        )
    from . import baselines

    return baselines.from_args(margs, vocab_size)


@torch.no_grad()
def evaluate(
    model: nn.Module, tokens: np.ndarray, byte_lengths: np.ndarray, *, block_size: int, batch_size: int, steps: int,
    rt: Runtime, seed: int = 1234,
) -> dict[str, float]:
    """Mean loss over `steps` global batches (steps x batch_size x world_size windows, the
    same fixed windows every time), and bits per byte.

    Bits per byte = total nats over target tokens / ln 2 / total bytes those targets
    stand for (`evaluate.bits_per_byte`). Unlike loss per token it does not depend on the
    tokenizer: a model that uses longer tokens is not credited for predicting fewer of
    them. Targets that stand for no bytes (<|endoftext|>) are left out of bits per byte.
    Under torchrun every rank takes a share of the batches and the sums are all-reduced,
    so 2 processes x batch 4 evaluate exactly the windows 1 process x batch 8 does.
    """
    was_training = model.training
    model.eval()
    n_batches = steps * rt.world_size
    offs = eval_offsets(len(tokens), block_size, n_batches * batch_size, seed)
    blen = torch.from_numpy(byte_lengths).to(rt.device)
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # see evaluate.loss_sums
    for i in range(rt.rank, n_batches, rt.world_size):
        x, y = windows(tokens, offs[i * batch_size : (i + 1) * batch_size], block_size, rt.device)
        with rt.autocast():
            logits = model(x).logits
        sums += loss_sums(logits, y, blen)
    if rt.distributed:
        s = sums if rt.device.type == "cuda" else sums.cpu()
        rt.all_reduce_sum(s)
        sums = s
    model.train(was_training)
    m = metrics_from_sums(sums)
    return {"loss": m["loss"], "bpb": m["bpb"]}


def padded_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """Bytes per token id, padded with zeros to the model's vocabulary (a model may have
    more embedding rows than the tokenizer has tokens)."""
    b = tokenizer.byte_lengths
    return np.pad(b, (0, vocab_size - len(b))) if len(b) < vocab_size else b


def eval_splits(model, train_tokens, val_tokens, byte_lengths, cfg: TrainConfig, rt: Runtime, step: int) -> dict[str, Any]:
    """One evaluation line: train and val loss on the fixed windows, and val bits per byte."""
    kw = dict(block_size=cfg.model.block_size, batch_size=cfg.optim.batch_size, steps=cfg.run.eval_steps, rt=rt)
    tr = evaluate(model, train_tokens, byte_lengths, **kw)
    va = evaluate(model, val_tokens, byte_lengths, **kw)
    return {"step": step, "train_loss": tr["loss"], "val_loss": va["loss"], "val_bpb": va["bpb"]}


def write_eval_line(metrics_path: Path, ev: dict, *, time_s: float, tokens: int, tb=None) -> None:
    """Append an evaluation line to metrics.jsonl and print it above the progress bar."""
    _append_jsonl(metrics_path, {**ev, "time_s": round(time_s, 3), "tokens": tokens})
    if tb:
        for k in ("train_loss", "val_loss", "val_bpb"):
            tb.add_scalar(f"eval/{k}", ev[k], ev["step"])
    tqdm.write(
        f"step {ev['step']:>6}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}, "
        f"val {ev['val_bpb']:.4f} bits/byte",
        file=sys.stderr,
    )


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and
    exits. A second Ctrl-C aborts at once (the last checkpoint is still intact)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Stopwatch:
    """Training time: wall-clock time minus the pauses for evaluation and checkpoints."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed = elapsed
        self._since = time.perf_counter()

    def read(self) -> float:
        now = time.perf_counter()
        self.elapsed += now - self._since
        self._since = now
        return self.elapsed

    @contextmanager
    def paused(self):
        self.read()
        try:
            yield
        finally:
            self._since = time.perf_counter()


def _append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we resume from (they
    belong to steps that will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
    os.replace(tmp, path)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise MiniGPTError(f"cannot write to the output directory {out}: {e.strerror or e}") from None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _open_data(cfg: TrainConfig, rt: Runtime, progress: bool = True) -> Dataset:
    data_dir = Path(cfg.data.data)
    if not (data_dir / "meta.json").exists() and (data_dir / RECIPE_FILE).exists():
        if rt.is_main:
            rt.print(f"preparing {data_dir} (first use; see {data_dir / RECIPE_FILE})", file=sys.stderr)
            prepare_from_recipe(data_dir, progress=progress)
        rt.barrier()
    return Dataset(data_dir)


def _resume_config(cfg: TrainConfig, explicit: dict[str, Any], out: Path) -> tuple[TrainConfig, Path]:
    """The saved run's config, with the flags given now applied on top. Changing the
    model's shape (or kind) is refused: the weights would not fit."""
    run_dir = RunDirectory(out)
    last = run_dir.last()
    if last is None:
        raise MiniGPTError(f"--resume: no checkpoint to resume in {out} (expected {out}/last/); train without --resume first")
    try:
        saved = TrainConfig.from_dict(json.loads((last / "run.json").read_text(encoding="utf-8"))["config"])
    except (OSError, KeyError, ValueError) as e:
        raise MiniGPTError(f"--resume: {last / 'run.json'} is missing or unreadable ({e})") from None
    model_fields = set(saved.model.__dataclass_fields__)
    for k, v in explicit.items():
        if k in model_fields and getattr(saved.model, k) != v:
            raise MiniGPTError(
                f"--resume: the checkpoint in {last} has {k}={getattr(saved.model, k)!r}, not {v!r}; "
                f"a different model needs a new --out"
            )
        if k not in ("resume",):
            saved.set(k, v)
    saved.run.resume = True
    saved.validate()
    return saved, last


# ---- the loop --------------------------------------------------------------------------


def train(cfg: TrainConfig, *, explicit: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run training as configured; returns a summary (final step, losses, paths).

    `explicit` lists the settings the user typed (used on --resume to apply only those
    on top of the saved config).
    """
    explicit = explicit or {}
    out = Path(cfg.run.out)
    if cfg.run.resume:
        cfg, resume_from = _resume_config(cfg, explicit, out)
    else:
        resume_from = None
        if RunDirectory(out).last() is not None:
            raise MiniGPTError(
                f"{out} already holds a training run; pass --resume to continue it, or choose another --out "
                f"(or delete {out}) to start afresh"
            )
    configure_threads(cfg.run.threads)
    rt = init_runtime(cfg.run.device, cfg.run.dtype)
    created = not out.exists()
    try:
        return _train(cfg, rt, out, resume_from, progress)
    except BaseException:
        if created and rt.is_main:  # a run that failed before writing anything leaves no empty --out behind
            try:
                out.rmdir()
            except OSError:
                pass  # not empty (or already gone): keep what is there
        raise
    finally:
        rt.shutdown()


def _train(cfg: TrainConfig, rt: Runtime, out: Path, resume_from: Path | None, progress: bool) -> dict[str, Any]:
    m, o, r = cfg.model, cfg.optim, cfg.run
    if rt.is_main:
        _check_writable(out)
    enable_tf32()
    data = _open_data(cfg, rt, progress)
    tokenizer = data.tokenizer
    train_tokens, val_tokens = data.tokens("train"), data.tokens("val")
    for split, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < m.block_size + 1:
            raise DataError(
                f"the {split} split of {data.path} holds {len(toks)} tokens, fewer than one window of "
                f"block_size {m.block_size} needs ({m.block_size + 1}); lower --block-size or prepare more text"
            )
    global_batch = o.batch_size * o.grad_accum * rt.world_size
    if global_batch > len(train_tokens) - m.block_size:
        raise DataError(
            f"the train split has only {len(train_tokens) - m.block_size} distinct windows of block_size {m.block_size}, "
            f"fewer than a global batch of {global_batch}; lower --batch-size/--grad-accum"
        )

    torch.manual_seed(r.seed)
    model = build_model(m, data.vocab_size)
    if data.meta.get("vocab_size", 0) > model.config.vocab_size:
        raise DataError("the model's vocabulary is smaller than the dataset's")
    start_step, best_val, tokens_seen, train_time = 0, float("inf"), 0, 0.0
    trainer_state = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, need_tokenizer=False)
        if ckpt.tokenizer is not None and ckpt.tokenizer.to_str() != tokenizer.to_str():
            raise MiniGPTError(f"--resume: the checkpoint's tokenizer differs from {data.path}'s; resume with the data it was trained on")
        model.load_state_dict(ckpt.model.state_dict())
        trainer_state = load_trainer_state(resume_from)
        start_step = int(trainer_state["step"])
        best_val = float(trainer_state.get("best_val_loss", float("inf")))
        tokens_seen = int(trainer_state.get("tokens_seen", 0))
        train_time = float(trainer_state.get("train_time_s", 0.0))
        if start_step >= o.max_steps:
            rt.print(f"{out}: already trained for {start_step} steps (>= --max-steps {o.max_steps}); nothing to do")
            return {"step": start_step, "out": str(out), "resumed": True}
    if hasattr(model, "check_inputs"):
        model.check_inputs = False  # the data were checked once below; skip the per-step sync
    if int(max(train_tokens.max(initial=0), val_tokens.max(initial=0))) >= model.config.vocab_size:
        raise DataError(f"{data.path}: token ids exceed the vocabulary size {model.config.vocab_size}")
    model.to(rt.device)
    metrics_path = out / METRICS
    if rt.is_main:  # shared by every model kind
        if resume_from is not None:
            _truncate_metrics(metrics_path, start_step)
        else:  # a new run: lines left by one that saved no checkpoint (e.g. stopped by a NaN) go
            metrics_path.unlink(missing_ok=True)
        (out / RUN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")

    if m.model == "ngram":
        from .baselines import train_ngram

        return train_ngram(model, cfg, rt, data, out, tokenizer, progress=progress)

    optimizer = make_optimizer(model, cfg, rt.device)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
    if trainer_state is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
        if "scaler" in trainer_state and scaler.is_enabled():
            scaler.load_state_dict(trainer_state["scaler"])
        _set_rng_state(trainer_state["rng"])

    use_compile = r.compile if r.compile is not None else rt.device.type == "cuda"
    fwd_model = torch.compile(model) if use_compile else model
    if rt.distributed:
        fwd_model = nn.parallel.DistributedDataParallel(
            fwd_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    sampler = WindowSampler(
        train_tokens, m.block_size, o.batch_size, grad_accum=o.grad_accum, rank=rt.rank,
        world_size=rt.world_size, seed=r.seed, device=rt.device,
    )
    decay_steps = o.lr_decay_steps or o.max_steps
    byte_lengths = padded_byte_lengths(tokenizer, model.config.vocab_size)
    run_dir = RunDirectory(out)
    tb = _tensorboard(out, r.tensorboard) if rt.is_main else None
    n_params = unwrap(model).num_params()
    flops_tok = unwrap(model).flops_per_token(m.block_size) if hasattr(unwrap(model), "flops_per_token") else None
    peak = _peak_flops(rt.device)
    rt.print(
        f"{m.model}: {n_params / 1e6:.2f}M parameters | data {data.path} ({len(train_tokens):,} train / "
        f"{len(val_tokens):,} val tokens, vocab {data.vocab_size}) | device {rt.device} {str(rt.dtype).removeprefix('torch.')}"
        f"{' compiled' if use_compile else ''}{f' x{rt.world_size} processes' if rt.distributed else ''}",
        file=sys.stderr,
    )

    def do_eval(step: int) -> dict[str, Any]:
        return eval_splits(model, train_tokens, val_tokens, byte_lengths, cfg, rt, step)

    def run_info(step: int, ev: dict | None) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(), "model_type": m.model, "step": step, "tokens_seen": tokens_seen,
            "train_time_s": round(clock.elapsed, 3), "num_params": n_params, "best_val_loss": best_val,
            **({k: ev[k] for k in ("val_loss", "val_bpb", "train_loss")} if ev else {}), "minigpt_version": __version__,
        }

    def save(step: int, ev: dict | None, is_best: bool) -> None:
        if not rt.is_main:
            return
        state = {
            "optimizer": optimizer.state_dict(), "step": step, "rng": _rng_state(), "best_val_loss": best_val,
            "tokens_seen": tokens_seen, "train_time_s": clock.elapsed,
            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
        }
        run_dir.save(step, model, tokenizer, run=run_info(step, ev), trainer_state=state, is_best=is_best)

    def log_eval(ev: dict) -> None:
        if rt.is_main:
            write_eval_line(metrics_path, ev, time_s=clock.elapsed, tokens=tokens_seen, tb=tb)

    clock = _Stopwatch(train_time)
    last_eval = None
    if start_step == 0:
        last_eval = do_eval(0)
        log_eval(last_eval)
    model.train()
    tokens_per_step = global_batch * m.block_size
    step = start_step
    loss_acc = torch.zeros((), device=rt.device)  # summed over steps since the last log
    bad = torch.zeros((), dtype=torch.bool, device=rt.device)
    steps_since_log, t_log = 0, clock.read()
    interrupted = None
    bar = tqdm(total=o.max_steps, initial=start_step, desc="train", unit="step", disable=not (progress and rt.is_main), dynamic_ncols=True)
    with _Signals() as signals:
        while step < o.max_steps:
            lr = lr_at(step, o.lr, o.min_lr, o.warmup_steps, decay_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss = torch.zeros((), device=rt.device)
            for micro in range(o.grad_accum):
                x, y = sampler.get(step, micro)
                # DDP: all-reduce gradients only on the last micro-step (no_sync before it).
                sync = (not rt.distributed) or micro == o.grad_accum - 1
                ctx = fwd_model.no_sync() if not sync else nullcontext()
                with ctx:
                    with rt.autocast():
                        loss = fwd_model(x, y).loss / o.grad_accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            if o.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            bad |= ~torch.isfinite(step_loss)
            loss_acc += step_loss
            steps_since_log += 1

            is_last = step == o.max_steps
            stop_now = rt.any(signals.received is not None) if rt.distributed else signals.received is not None
            will_save = step % r.eval_interval == 0 or is_last or stop_now
            if step % r.log_interval == 0 or is_last or will_save:
                # One host sync per log interval (and before every save): the loss must be
                # finite, or the run stops before a bad checkpoint can replace a good one.
                bad_any = rt.any(bool(bad.item())) if rt.distributed else bool(bad.item())
                if bad_any:
                    bar.close()
                    raise NonFiniteLoss(
                        f"the loss became {(loss_acc / max(1, steps_since_log)).item()} by step {step} "
                        f"(learning rate {lr:.3g}); stopped without saving. "
                        f"The last good checkpoint in {out} is intact: lower --lr, or check the data"
                    )
            if step % r.log_interval == 0 or is_last:
                if rt.distributed:
                    rt.all_reduce_sum(loss_acc)
                    loss_acc /= rt.world_size
                mean_loss = (loss_acc / steps_since_log).item()
                now = clock.read()
                tok_s = steps_since_log * tokens_per_step / max(1e-9, now - t_log)
                if rt.is_main:
                    line = {"step": step, "loss": mean_loss, "lr": lr, "tokens_per_s": round(tok_s, 1)}
                    if flops_tok and peak:
                        line["mfu"] = round(flops_tok * tok_s / peak, 4)
                    _append_jsonl(metrics_path, line)
                    if tb:
                        tb.add_scalar("train/loss", mean_loss, step)
                        tb.add_scalar("train/lr", lr, step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
                loss_acc.zero_()
                steps_since_log, t_log = 0, now
            bar.update(1)

            if step % r.eval_interval == 0 or is_last:
                with clock.paused():  # evaluation and saving are not training time
                    last_eval = do_eval(step)
                    log_eval(last_eval)
                    improved = last_eval["val_loss"] < best_val
                    best_val = min(best_val, last_eval["val_loss"])
                    save(step, last_eval, improved)
            elif stop_now:
                with clock.paused():
                    save(step, None, False)
            if stop_now:
                interrupted = signals.received
                break
    bar.close()
    if tb:
        tb.close()
    summary = {"step": step, "out": str(out), "best_val_loss": best_val, **(last_eval or {}), "train_time_s": clock.elapsed}
    if interrupted is not None:
        name = signal.Signals(interrupted).name if interrupted else "signal"
        rt.print(f"{name}: saved {out}/last at step {step}; continue with --resume", file=sys.stderr)
        summary["interrupted"] = interrupted
        return summary
    if rt.is_main and r.sample_tokens > 0:
        _print_sample(unwrap(model), tokenizer, r.sample_tokens, r.seed)
    return summary


def _print_sample(model: nn.Module, tokenizer, n_tokens: int, seed: int) -> None:
    from .completion import complete

    model.eval()
    text = complete(model, tokenizer, "", max_new_tokens=n_tokens, seed=seed)[0].text
    print(f"--- sample ({n_tokens} tokens) ---\n{text}\n---", flush=True)


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter(str(out / "tensorboard"))
