"""The training run behind `python train.py` / `minigpt train`.

A recipe in order: set up the runtime -> prepare/open the data -> plan what the user left
unset (plan.py: the budget, vocabulary, dropout, ...; one line before training) -> build or
resume the model -> the optimizers and the model wrapped for the device -> `train_step`
after `train_step` (loop.py: forward and backward over the micro-batches, clip, step) ->
every `eval_interval` steps: evaluate, write metrics, checkpoint atomically -> at the end: a
final evaluation, a checkpoint, a sample and the verdict (which step `best` holds, against
an n-gram counted on the same data).

Exactness: the data windows of step s depend only on (seed, s), the learning rate only
on s, and the optimizer moments and RNG states are saved with every checkpoint. So a run
of N steps and a run of N/2 steps resumed for N/2 more produce the same losses (set
--lr-decay-steps so that both runs share one schedule; by default the schedule ends at
--max-steps, which the two runs set differently).

Fine-tuning (`--init-from SOURCE`, see pretrained.py) is the same run with another
starting point: SOURCE's weights instead of random ones (its kind and shape, its context
cropped to --block-size, --dropout applied, parts frozen on request), data that speaks
SOURCE's tokenizer (text given as --data is prepared with it first), and the finetune
preset's defaults. The step-0 evaluation every run makes is then SOURCE's loss on the new
data, and run.json records where the run started (`init_from`, with the weights' SHA-256).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import __version__, bundled, files, models, pretrained, startup
from . import plan as plan_mod
from .baselines import NGramConfig, NGramLM
from .checkpoint import RunDirectory, load_checkpoint, load_trainer_state
from .completion import complete
from .config import TrainConfig
from .data import (
    Dataset,
    WindowSampler,
    eval_offsets,
    resolve_inputs,
    text_size,
    windows,
)
from .errors import ConfigError, DataError, MiniGPTError
from .evaluate import loss_sums, metrics_from_sums
from .loop import Signals, Stopwatch, Wrapped, compile_first, lr_at, set_lr, train_step, wrap_for_device
from .optim import make_optimizer, make_optimizers, muon_params  # noqa: F401 (trainer.make_optimizer: tests, benchmarks)
from .plan import Budget
from .runtime import Runtime, ThreadGovernor, configure_threads, init_runtime, keep_freed_memory

# Peak dense bf16 tensor-core FLOP/s by GPU name, for MFU (datasheet numbers).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


# Validation loss rising at this many evaluations in a row is reported while it happens.
RISES = 2
# The yardstick the run ends with: a Kneser-Ney n-gram of this order, counted on at most this
# many train tokens (~1 s per million here) and scored on the run's own validation windows.
YARDSTICK_ORDER = 5
YARDSTICK_TOKENS = 1_000_000


class NonFiniteLoss(MiniGPTError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


# ---- the pieces ----------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    *,
    block_size: int,
    batch_size: int,
    steps: int,
    rt: Runtime,
    seed: int = 1234,
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
        with rt.eval_autocast():
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


def eval_splits(
    model,
    train_tokens,
    val_tokens,
    byte_lengths,
    cfg: TrainConfig,
    rt: Runtime,
    step: int,
) -> dict[str, Any]:
    """One evaluation line: train and val loss on the fixed windows, and val bits per byte."""
    kw = dict(block_size=cfg.model.block_size, batch_size=cfg.optim.batch_size, steps=cfg.run.eval_steps, rt=rt)
    tr = evaluate(model, train_tokens, byte_lengths, **kw)
    va = evaluate(model, val_tokens, byte_lengths, **kw)
    return {"step": step, "train_loss": tr["loss"], "val_loss": va["loss"], "val_bpb": va["bpb"]}


def write_eval_line(run_dir: RunDirectory, ev: dict, *, time_s: float, tokens: int, tb=None, note: str = "") -> None:
    """Append an evaluation line to metrics.jsonl and print it above the progress bar
    (`note`, e.g. "gpt2 before fine-tuning", is printed after it, not logged)."""
    run_dir.append_metrics({**ev, "time_s": round(time_s, 3), "tokens": tokens})
    if tb:
        for k in ("train_loss", "val_loss", "val_bpb"):
            tb.add_scalar(f"eval/{k}", ev[k], ev["step"])
    tqdm.write(
        f"step {ev['step']:>6}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}, "
        f"val {ev['val_bpb']:.4f} bits/byte{f' ({note})' if note else ''}",
        file=sys.stderr,
    )


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (None where the OS does not say)."""
    try:
        import resource  # not POSIX (Windows): no resource module, and no figure
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# ---- the run --------------------------------------------------------------------------


def train(cfg: TrainConfig, *, explicit: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run training as configured; returns a summary (final step, losses, paths).

    `explicit` lists the settings the user typed (used on --resume to apply only those
    on top of the saved config, and with --init-from to refuse those that would change
    SOURCE's shape). Every model kind goes through here: kinds that learn by gradient
    descent run the step loop, kinds that learn by counting one `fit` pass; both get the
    same run directory, metrics, checkpoints and final sample.

    Bad input (a missing or foreign SOURCE, data in another tokenizer, a shape flag with
    --init-from, ...) is refused before anything is written to --out; text given as
    --data is prepared once --out exists, and a run that fails before its first
    checkpoint removes what it created.
    """
    started = time.perf_counter() - plan_mod.process_age()  # --max-time is a promise for the whole process
    explicit = explicit or {}
    models.kind(cfg.model.model)  # an unknown kind is refused before anything is written
    if cfg.run.resume and cfg.model.init_from is not None:
        raise ConfigError(
            f"--init-from and --resume: --resume continues the run in {cfg.run.out} from its last checkpoint (a "
            f"fine-tuned run remembers its source); --init-from starts a new fine-tune from {cfg.model.init_from} "
            f"(into a new --out); pass one of them"
        )
    if cfg.run.tensorboard:
        _tensorboard_writer()  # a missing package is reported before anything is written
    out = Path(cfg.run.out)
    threads = torch.get_num_threads()  # as this process had them (a ThreadGovernor may move them)
    configure_threads(cfg.run.threads)
    keep_freed_memory()
    rt = init_runtime(cfg.run.device, cfg.run.dtype)
    created = data_created = None
    run_dir = RunDirectory(out)
    try:
        resume_from, source = None, None
        if cfg.run.resume:  # the saved run's settings (its data directory among them), flags on top
            cfg, resume_from = startup.resume_config(cfg, explicit, run_dir)
        elif cfg.model.init_from is not None:  # SOURCE's kind and shape, weights and tokenizer
            cfg, source = startup.finetune_config(cfg, explicit)
        cfg.data.data = bundled.data_dir(cfg.data.data)  # the default corpus, outside a clone: the bundled one
        plan = startup.data_plan(cfg, source, resuming=resume_from is not None)
        text_bytes = None
        if plan.inputs is not None and cfg.planned:
            text_bytes = _text_bytes(plan)
            if "vocab_size" in cfg.planned:  # the vocabulary from the text's size (plan.py)
                plan.vocab_size = plan_mod.vocab_for(text_bytes)
                cfg.data.vocab_size = plan.vocab_size  # (recorded, as the rest of --data's preparation)
            budget = _budget_s(cfg)
            if budget > 0 and text_bytes > plan_mod.SAMPLE_FLOOR and plan.tokenizer is None:
                # a text larger than the budget can read: prepare the part of it the run can use
                tokens = budget * _probe_before_preparing(cfg, plan, text_bytes, rt)
                plan.sample_bytes = plan_mod.sample_bytes(text_bytes, tokens, plan.val_fraction)
        data = None
        if plan.inputs is None:  # a prepared dataset: opened (and checked) before creating --out
            data = startup.open_data(cfg, rt, progress)
            startup.check_tokenizer(data, source)
        if rt.is_main:
            created = startup.make_out(out)
        # From here on the directory is this process's: a second trainer is refused by the lock.
        with run_dir.lock() if rt.is_main else nullcontext():
            if resume_from is None and run_dir.last() is not None:
                raise MiniGPTError(
                    f"{out} already holds a training run; pass --resume to continue it, or choose another --out "
                    f"(or delete {out}) to start afresh"
                )
            if data is None:  # text: prepared with SOURCE's tokenizer (or a new one) into --data-out
                data_created = files.topmost_missing(plan.out)
                data = startup.prepare_text(plan, rt, progress)
                cfg.data.data = str(plan.out)  # what --resume, eval and compare read from run.json
                startup.check_tokenizer(data, source)
            the_plan = None
            if cfg.planned:
                cfg, the_plan = _make_plan(cfg, data, rt, started, text_bytes)
            return _Run(cfg, rt, data, run_dir, resume_from, progress, started, source, the_plan).run()
    except BaseException as e:
        # A run that failed before saving a checkpoint leaves no directory behind that it
        # created (its metrics and config describe nothing that can be loaded). A run refused
        # by another trainer's lock removes nothing: the directory is that trainer's.
        if rt.is_main and run_dir.last() is None and getattr(e, "kind", None) != "locked":
            for d in (data_created, created):
                if d is not None:
                    shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        rt.shutdown()
        if cfg.run.threads == 0:
            torch.set_num_threads(threads)


# ---- the plan: settings chosen from the data, the budget and this machine's speed ------------------


def _text_bytes(plan: startup.DataPlan) -> int:
    """The size of the text to prepare: the bytes of text its files hold (a .gz file's as its
    trailer records them, as the preparation's sample reads them: inputs.text_size)."""
    return sum(text_size(p) for p in resolve_inputs(plan.inputs, exclude=plan.out))


def _budget_s(cfg: TrainConfig) -> float:
    """A planned run's wall-clock budget (0: none, an exact --max-steps)."""
    return plan_mod.DEFAULT_BUDGET_S if "max_time" in cfg.planned else cfg.run.max_time


def _probe_before_preparing(cfg: TrainConfig, plan: startup.DataPlan, text_bytes: int, rt: Runtime) -> float:
    """The tokens/s a run on a large text can reach (the probe's eager speed x its compile_gain,
    at the width the text's size gets), measured before the text is prepared: on random
    token ids, since a step's speed does not depend on the text. It sizes the sample."""
    probe = TrainConfig.from_dict({**cfg.to_dict(), "planned": []})
    guess = int(text_bytes * (1 - plan.val_fraction) / plan_mod.BYTES_PER_TOKEN)
    for k, v in plan_mod.shape_for(guess, cfg.planned).items():
        probe.set(k, v)
    probe.validate()
    ids = np.random.default_rng(0).integers(0, plan.vocab_size, size=1 << 16).astype(np.int32)
    gain = plan_mod.compile_gain(probe.model.n_embd, rt.dtype == torch.bfloat16) if rt.device.type == "cpu" else 1.0
    return _measure_speed(probe, plan.vocab_size, ids, rt) * gain


def _measure_speed(cfg: TrainConfig, vocab_size: int, train: np.ndarray, rt: Runtime, steps: int = 4) -> float:
    """This machine's training speed (tokens/s) for `cfg`'s model without dropout: a few
    steps of a throwaway copy on windows of `train`, after one that pays the one-off costs.
    It leaves the RNG as it found it, so the run itself is what it would be without the
    probe. Under torchrun, the mean over the ranks (every rank must make the same plan)."""
    rng = _rng_state()
    probe = TrainConfig.from_dict(cfg.to_dict())
    probe.model.dropout = 0.0
    model = models.from_args(probe.model, vocab_size).to(rt.device)
    model.check_inputs = False
    _set_rng_state(rng)
    optimizers = make_optimizers(model, probe, rt.device)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
    wrapped = wrap_for_device(model, rt, False)  # (compiling would cost more than the probe)
    o = probe.optim
    sampler = WindowSampler(
        train,
        probe.model.block_size,
        o.batch_size,
        grad_accum=o.grad_accum,
        rank=rt.rank,
        world_size=rt.world_size,
        seed=probe.run.seed,
        device=rt.device,
    )
    set_lr(optimizers, o.lr)
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        batches = (sampler.get(step, micro) for micro in range(o.grad_accum))
        train_step(
            wrapped, model, optimizers, scaler, batches, grad_accum=o.grad_accum, grad_clip=o.grad_clip, rt=rt
        ).item()
    per_step = (time.perf_counter() - t0) / steps
    tok_s = o.batch_size * o.grad_accum * rt.world_size * probe.model.block_size / max(per_step, 1e-9)
    if rt.distributed:
        t = torch.tensor([tok_s], dtype=torch.float64, device=rt.device if rt.device.type == "cuda" else "cpu")
        tok_s = float(rt.all_reduce_sum(t).item()) / rt.world_size
    return tok_s


def _make_plan(
    cfg: TrainConfig, data: Dataset, rt: Runtime, started: float, text_bytes: int | None
) -> tuple[TrainConfig, plan_mod.Plan]:
    """The plan for the settings in cfg.planned (plan.py), and the config it makes: a copy
    of `cfg` with the chosen settings, the budget as max_time, the first step estimate as
    max_steps, and nothing left to plan (so it is what run.json records, and a --resume or
    a rerun of it trains exactly this)."""
    planned, m, o, r = set(cfg.planned), cfg.model, cfg.optim, cfg.run
    n_train, n_val = len(data.tokens("train")), len(data.tokens("val"))
    new = TrainConfig.from_dict({**cfg.to_dict(), "planned": []})
    if n_train == 0:
        raise DataError(f"--data {data.path}: the train split holds no tokens; give more text")
    text_reach = None
    if {"block_size", "batch_size"} <= planned:  # the window is the plan's: how far back the text repeats
        text_reach = plan_mod.reach(data.tokens("train"))
    block, batch = plan_mod.window_for(n_train, n_val, planned, m.block_size, o.batch_size, text_reach or 0.0)
    # the shape before the probe, so the speed it measures is the planned model's
    for k, v in {**plan_mod.shape_for(n_train, planned), "block_size": block, "batch_size": batch}.items():
        if k in planned:
            new.set(k, v)
    new.validate()
    startup.check_windows(new, data, rt.world_size)  # before the probe trains on them
    budget = _budget_s(cfg)
    tok_s = _measure_speed(new, data.vocab_size, data.tokens("train"), rt) if budget > 0 else 0.0
    tokens_per_step = new.optim.batch_size * new.optim.grad_accum * rt.world_size * new.model.block_size
    seconds_left = 0.0
    if budget > 0:
        # The reserves before the first measurement: each evaluation ~ forward passes over
        # 2 x eval_steps batches (a forward is ~1/3 of a training step) plus a checkpoint;
        # the final sample and the exit. The budget re-plans with measured costs.
        eval_cost = 2 * r.eval_steps * tokens_per_step / max(3 * tok_s, 1e-9) + 0.3
        steps_guess = budget * tok_s / tokens_per_step
        n_evals = 1 + steps_guess / r.eval_interval
        elapsed = time.perf_counter() - started
        seconds_left = budget * (1 - plan_mod.Budget.MARGIN) - elapsed - n_evals * eval_cost - 2.0
        if rt.distributed:  # rank 0's clock for every rank: they must make one plan
            t = torch.tensor(
                [seconds_left if rt.is_main else 0.0],
                dtype=torch.float64,
                device=rt.device if rt.device.type == "cuda" else "cpu",
            )
            seconds_left = float(rt.all_reduce_sum(t).item())
    current = {**new.flat(), "vocab_size": data.vocab_size}
    the_plan = plan_mod.choose(
        train_tokens=n_train,
        tokens_per_s=tok_s,
        tokens_per_step=tokens_per_step,
        seconds_left=max(seconds_left, 0.0),
        budget_s=budget,
        max_steps=o.max_steps,
        current=current,
        planned=sorted(planned),
        text_bytes=text_bytes,
        cpu=rt.device.type == "cpu",
        bf16=rt.dtype == torch.bfloat16,
    )
    the_plan.own_window = (block, batch) != (m.block_size, o.batch_size)
    the_plan.text_reach = text_reach
    if text_bytes is not None and data.meta.get("sample"):
        the_plan.sample = {k: data.meta["sample"][k] for k in ("bytes", "of_bytes")}
    if text_bytes is None:  # a prepared dataset's vocabulary is its own, neither the user's nor the plan's
        the_plan.yours = sorted(set(the_plan.yours) - {"vocab_size"})
    for k in ("dropout", "attn_dropout", "weight_decay", "muon_weight_decay", "eval_interval", "compile", "n_layer"):
        if k in planned and k in the_plan.settings:
            new.set(k, the_plan.settings[k])
    if budget > 0:
        new.run.max_time = budget
        new.optim.max_steps = the_plan.steps
    new.validate()
    return new, the_plan


@dataclass
class _Progress:
    """Where a run stands: what a checkpoint's trainer_state.pt saves and --resume restores."""

    step: int = 0
    best_val: float = float("inf")
    tokens_seen: int = 0
    train_time: float = 0.0
    best_step: int = 0  # the step `best` holds, and its val bits per byte
    best_bpb: float = float("inf")

    def advance(self, tokens: int) -> int:
        """One more optimizer step over `tokens` tokens; returns the new step."""
        self.step += 1
        self.tokens_seen += tokens
        return self.step


class _TrainLog:
    """The training lines: the loss summed on the device between log lines (one host sync
    per line), the NaN/inf check before anything is saved, and tokens/s (and MFU on a GPU)."""

    def __init__(self, run: _Run):
        self.run = run
        dev = run.rt.device
        self.loss = torch.zeros((), device=dev)  # summed over steps since the last line
        self.bad = torch.zeros((), dtype=torch.bool, device=dev)
        self.steps, self.since = 0, run.clock.read()
        self.flops_per_token = run.model.flops_per_token(run.cfg.model.block_size)
        self.peak = _peak_flops(dev)

    def add(self, step_loss: torch.Tensor) -> None:
        self.bad |= ~torch.isfinite(step_loss)
        self.loss += step_loss
        self.steps += 1

    def check_finite(self, step: int, lr: float, bar) -> None:
        """The loss must be finite, or the run stops before a bad checkpoint can replace a good one."""
        rt = self.run.rt
        if not (rt.any(bool(self.bad.item())) if rt.distributed else bool(self.bad.item())):
            return
        bar.close()
        run_dir = self.run.run_dir
        kept = (
            f"the last good checkpoint in {run_dir.path} is intact"
            if run_dir.last() is not None
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLoss(
            f"the loss became {(self.loss / max(1, self.steps)).item()} by step {step} "
            f"(learning rate {lr:.3g}); stopped without saving ({kept}): lower --lr, or check the data"
        )

    def write(self, step: int, lr: float, bar) -> None:
        run, rt = self.run, self.run.rt
        if rt.distributed:
            rt.all_reduce_sum(self.loss)
            self.loss /= rt.world_size
        mean_loss = (self.loss / self.steps).item()
        now = run.clock.read()
        tok_s = self.steps * run.tokens_per_step / max(1e-9, now - self.since)
        if rt.is_main:
            line = {"step": step, "loss": mean_loss, "lr": lr, "tokens_per_s": round(tok_s, 1)}
            if self.flops_per_token and self.peak:
                line["mfu"] = round(self.flops_per_token * tok_s / self.peak, 4)
            run.run_dir.append_metrics(line)
            if run.tb:
                run.tb.add_scalar("train/loss", mean_loss, step)
                run.tb.add_scalar("train/lr", lr, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
        self.loss.zero_()
        self.steps, self.since = 0, now


class _Run:
    """One training run, in the order it happens:

    set-up     the data's shape checks, the model (fresh, or the checkpoint resumed),
               the run's logs (train_config.json, metrics.jsonl)
    descend    for kinds that learn by gradient: optimizer steps over the text's windows,
               pass by pass (dataset.WindowSampler), with evaluation and checkpoints every
               eval_interval steps (`_step`, `_evaluate`, `_save`)
    fit        for kinds that learn by counting: one pass over the train split, then the
               same evaluation and checkpoint as a step run's last step
    finish     a sample printed from the final model
    """

    def __init__(
        self,
        cfg: TrainConfig,
        rt: Runtime,
        data: Dataset,
        run_dir: RunDirectory,
        resume_from: Path | None,
        progress: bool,
        started: float,
        source: pretrained.Source | None = None,
        plan: plan_mod.Plan | None = None,
    ):
        self.cfg, self.rt, self.data, self.run_dir, self.progress = cfg, rt, data, run_dir, progress
        self.started = started
        self.tokenizer = data.tokenizer
        self.train_tokens, self.val_tokens = data.tokens("train"), data.tokens("val")
        startup.check_windows(cfg, data, rt.world_size)
        self.pos = _Progress()
        self.trainer_state: dict[str, Any] | None = None
        # Where a fine-tune started (run.json "init_from"); a resumed run carries it on.
        self.init_from: dict[str, Any] | None = source.record() if source is not None else None
        # What the run planned for itself (run.json "plan"); a resumed run carries it on.
        self.plan: dict[str, Any] | None = plan.to_dict() if plan is not None else None
        if resume_from is not None:
            self.model = self._resume(resume_from)
        elif source is not None:
            self.model = source.model
            torch.manual_seed(cfg.run.seed)  # dropout masks depend only on the seed, as in a fresh run
        else:
            torch.manual_seed(cfg.run.seed)  # the model's initialisation depends only on the seed
            self.model = models.from_args(cfg.model, data.vocab_size)
        # Frozen parts get no gradient, so the optimizer (fresh or resumed) holds only the rest.
        self.frozen = pretrained.freeze(
            self.model, embeddings=cfg.optim.freeze_embeddings, layers=cfg.optim.freeze_layers
        )
        if self.frozen and not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("freeze_layers: with these freezes no weight is left to train")
        for split in ("train", "val"):  # one vectorised pass per split (cached), naming the file at fault
            data.check_token_ids(split, self.model.config.vocab_size)
        self.model.check_inputs = False  # the data were checked once, above; skip the per-step host sync
        self.model.to(rt.device)
        self.byte_lengths = padded_byte_lengths(self.tokenizer, self.model.config.vocab_size)
        self.clock = Stopwatch(self.pos.train_time)
        self.tb = None
        self.val_history: list[float] = []
        self.yardstick: dict[str, Any] | None = None
        o = cfg.optim
        self.tokens_per_step = o.batch_size * o.grad_accum * rt.world_size * cfg.model.block_size
        self.total = o.max_steps  # the run's length: --max-steps, or what the time budget plans
        self.budget: Budget | None = None
        self.planned = False
        if cfg.run.max_time > 0:
            # A planned run stops at MAX_PASSES over the data even if the budget allows more.
            ceiling = (
                int(plan_mod.MAX_PASSES * len(self.train_tokens) / self.tokens_per_step) if plan is not None else None
            )
            self.budget = Budget(
                cfg.run.max_time,
                started,
                eval_interval=cfg.run.eval_interval,
                schedule=o.schedule,
                cooldown=o.cooldown,
                ceiling=ceiling,
            )
        # Fewer threads while a competing program holds a core (runtime.ThreadGovernor says
        # when it may move: the count nobody chose, one CPU process, a time budget).
        self.governor: ThreadGovernor | None = None
        if self.budget is not None and cfg.run.threads == 0 and rt.device.type == "cpu" and not rt.distributed:
            if torch.get_num_threads() > 1:
                self.governor = ThreadGovernor(torch.get_num_threads())

    # ---- set-up ---------------------------------------------------------------------------

    def _resume(self, path: Path) -> nn.Module:
        """The checkpoint's model and the progress saved beside it. Its tokenizer must be
        the data's: the same ids must mean the same text."""
        ckpt = load_checkpoint(path, need_tokenizer=False)
        if ckpt.tokenizer is not None and ckpt.tokenizer.to_str() != self.tokenizer.to_str():
            raise MiniGPTError(
                f"--resume: the checkpoint's tokenizer differs from {self.data.path}'s; resume with "
                f"the data it was trained on"
            )
        state = load_trainer_state(path)
        self.trainer_state = state
        if ckpt.run is not None and isinstance(ckpt.run.get("init_from"), dict):
            self.init_from = ckpt.run["init_from"]
        if ckpt.run is not None and isinstance(ckpt.run.get("plan"), dict):
            self.plan = ckpt.run["plan"]
        self.pos = _Progress(
            state["step"],
            state["best_val_loss"],
            state["tokens_seen"],
            state["train_time_s"],
            state.get("best_step", 0),
            state.get("best_val_bpb", float("inf")),
        )
        return ckpt.model

    def _start_logs(self) -> None:
        """train_config.json, and metrics.jsonl as the run continues it: a resumed run drops
        the lines of steps it will redo; a new run starts an empty log."""
        if not self.rt.is_main:
            return
        if self.trainer_state is not None:
            self.run_dir.truncate_metrics(self.pos.step)
        else:
            self.run_dir.reset_metrics()
        self.run_dir.write_train_config(self.cfg.to_dict())
        if self.cfg.run.tensorboard:
            self.tb = _tensorboard_writer()(str(self.run_dir.path / "tensorboard"))

    def run(self) -> dict[str, Any]:
        o = self.cfg.optim
        if self.trainer_state is not None and (self.model.learns_by == "counting" or self.pos.step >= o.max_steps):
            if self.model.learns_by == "counting":
                self.rt.print(
                    f"{self.run_dir.path}: a model that learns by counting is complete after one pass; "
                    f"nothing to resume",
                    file=sys.stderr,
                )
            else:
                self.rt.print(
                    f"{self.run_dir.path}: already trained for {self.pos.step} steps (>= --max-steps "
                    f"{o.max_steps}); nothing to do"
                )
            return {"step": self.pos.step, "out": str(self.run_dir.path), "resumed": True}
        self._start_logs()
        try:
            with Signals() as signals:
                if self.model.learns_by == "counting":
                    summary = self._fit(signals)
                else:
                    summary = self._descend(signals)
        finally:
            if self.tb:
                self.tb.close()
        if summary.get("interrupted") is None:
            self._finish()
            if self.model.learns_by != "counting":
                self._verdict(summary)
        self.rt.barrier()  # under torchrun: every rank leaves together (rank 0 may still be writing)
        return summary

    # ---- evaluate and save -------------------------------------------------------------------

    def _evaluate(self, step: int) -> dict[str, Any]:
        """One evaluation line (train/val loss on fixed windows, val bits per byte), logged.
        A fine-tune's step 0 is SOURCE's loss on the new data, before any step."""
        ev = eval_splits(self.model, self.train_tokens, self.val_tokens, self.byte_lengths, self.cfg, self.rt, step)
        if self.rt.is_main:
            note = f"{self.init_from['source']} before fine-tuning" if step == 0 and self.init_from else ""
            write_eval_line(
                self.run_dir, ev, time_s=self.clock.elapsed, tokens=self.pos.tokens_seen, tb=self.tb, note=note
            )
        return ev

    def _evaluate_timed(self, step: int) -> dict[str, Any]:
        """The step-0 evaluation; what it cost is the time budget's first estimate of an evaluation's."""
        t = time.perf_counter()
        with self.clock.paused():
            ev = self._evaluate(step)
        if self.budget is not None:
            self.budget.record_eval(1.2 * (time.perf_counter() - t))  # later ones also write a checkpoint
        self._watch_validation(ev)
        return ev

    def _watch_validation(self, ev: dict[str, Any]) -> None:
        """Say so while it happens when val loss has risen at RISES evaluations in a row:
        the model has begun to learn the train split by heart, and `best` keeps the step
        before (sample, eval and serve read it)."""
        self.val_history.append(ev["val_loss"])
        recent = self.val_history[-(RISES + 1) :]
        rising = len(recent) == RISES + 1 and all(b > a for a, b in zip(recent, recent[1:]))
        if rising and self.rt.is_main and self.pos.best_step > 0:
            path = " -> ".join(f"{v:.4f}" for v in recent)
            tqdm.write(
                f"step {ev['step']:>6}: val loss has risen at {RISES} evaluations in a row ({path}): the model is "
                f"overfitting; {self.run_dir.path}/best holds step {self.pos.best_step} "
                f"({self.pos.best_bpb:.4f} bits/byte)",
                file=sys.stderr,
            )

    def _run_info(self, step: int, ev: dict | None) -> dict[str, Any]:
        """run.json: the config and where the run stands (read by --resume, eval, compare)."""
        return {
            "config": self._recorded_config().to_dict(),
            "model_type": self.model.model_type,
            "step": step,
            "tokens_seen": self.pos.tokens_seen,
            "train_time_s": round(self.clock.elapsed, 3),
            "num_params": models.unwrap(self.model).num_params(),
            "best_val_loss": self.pos.best_val,
            **({k: ev[k] for k in ("val_loss", "val_bpb", "train_loss")} if ev else {}),
            "minigpt_version": __version__,
            **({"init_from": self.init_from} if self.init_from else {}),
            **({"plan": self.plan} if self.plan else {}),
        }

    def _save(self, step: int, ev: dict | None, is_best: bool, extra_state: dict[str, Any]) -> None:
        if not self.rt.is_main:
            return
        state = {
            "step": step,
            "rng": _rng_state(),
            "best_val_loss": self.pos.best_val,
            "best_step": self.pos.best_step,
            "best_val_bpb": self.pos.best_bpb,
            "tokens_seen": self.pos.tokens_seen,
            "train_time_s": self.clock.elapsed,
            **extra_state,
        }
        self.run_dir.save(
            step, self.model, self.tokenizer, run=self._run_info(step, ev), trainer_state=state, is_best=is_best
        )

    def _evaluate_and_save(self, step: int, extra_state: dict[str, Any]) -> dict[str, Any]:
        """Evaluate, then checkpoint; the checkpoint is the new `best` if val loss improved.
        Neither counts as training time; the time budget learns what they cost."""
        t = time.perf_counter()
        with self.clock.paused():
            ev = self._evaluate(step)
            improved = ev["val_loss"] < self.pos.best_val
            if improved:
                self.pos.best_val, self.pos.best_step, self.pos.best_bpb = ev["val_loss"], step, ev["val_bpb"]
            self._save(step, ev, improved, extra_state)
            self._watch_validation(ev)
        if self.budget is not None:
            self.budget.record_eval(time.perf_counter() - t)
        return ev

    # ---- fit: kinds that learn by counting ----------------------------------------------------

    def _fit(self, signals: Signals) -> dict[str, Any]:
        """One counting pass over the train split, between an evaluation of the empty model
        (uniform) at step 0 and one of the counted model at step 1. "Step 1" is that pass;
        tokens_seen is the split's length and the training time is the counting time.
        A Ctrl-C during counting lets the pass finish (it is one call), then saves and exits."""
        rt, kind = self.rt, models.kind(self.model.model_type)
        rt.print(
            f"{kind.name} ({kind.describe}) | data {self.data.path} ({len(self.train_tokens):,} train / "
            f"{len(self.val_tokens):,} val tokens, vocab {self.data.vocab_size}) | device {rt.device}",
            file=sys.stderr,
        )
        with self.clock.paused():
            self._evaluate(0)
        self.model.fit(self.train_tokens)
        self.pos.step, self.pos.tokens_seen = 1, len(self.train_tokens)
        fit_time = self.clock.read()
        with self.clock.paused():
            ev = eval_splits(self.model, self.train_tokens, self.val_tokens, self.byte_lengths, self.cfg, rt, 1)
            if rt.is_main:  # the one "training line": the counted model's train loss, and the counting speed
                tok_s = round(self.pos.tokens_seen / max(fit_time, 1e-9), 1)
                self.run_dir.append_metrics({"step": 1, "loss": ev["train_loss"], "lr": 0.0, "tokens_per_s": tok_s})
                write_eval_line(self.run_dir, ev, time_s=fit_time, tokens=self.pos.tokens_seen, tb=self.tb)
            self.pos.best_val = ev["val_loss"]
            self._save(1, ev, True, {})
        sizes = ", ".join(f"{k}-grams {n:,}" for k, n in enumerate(self.model.config.sizes, start=1))
        rt.print(
            f"{kind.name}: counted {self.pos.tokens_seen:,} tokens in {fit_time:.2f} s ({sizes}); "
            f"saved {self.run_dir.path}/last",
            file=sys.stderr,
        )
        summary = {
            "step": 1,
            "out": str(self.run_dir.path),
            "best_val_loss": ev["val_loss"],
            **ev,
            "train_time_s": fit_time,
        }
        if signals.received is not None:
            summary["interrupted"] = signals.received
            rt.print(
                f"{signal.Signals(signals.received).name}: the counting pass had finished; saved "
                f"{self.run_dir.path}/last",
                file=sys.stderr,
            )
        return summary

    # ---- descend: kinds that learn by gradient ----------------------------------------------

    def _descend(self, signals: Signals) -> dict[str, Any]:
        """The recipe: optimizers (restored on --resume), the model wrapped for the device,
        the step-0 evaluation, then `train_step` after `train_step`, with a log line every
        log_interval steps and an evaluation + checkpoint every eval_interval steps."""
        o, r = self.cfg.optim, self.cfg.run
        optimizers, scaler = self._optimizers()
        wrapped = wrap_for_device(self.model, self.rt, r.compile)
        sampler = WindowSampler(
            self.train_tokens,
            self.cfg.model.block_size,
            o.batch_size,
            grad_accum=o.grad_accum,
            rank=self.rt.rank,
            world_size=self.rt.world_size,
            seed=r.seed,
            device=self.rt.device,
        )
        if self.plan is not None and self.trainer_state is None:
            self.rt.print(self.plan["line"], file=sys.stderr)  # after the run's checks: bad input stays one line
        with self.clock.paused():  # compiling is start-up, not the pace the budget measures
            wrapped = compile_first(wrapped, self.model, self.rt, sampler.get(self.pos.step, 0))
        if self.governor is not None and wrapped.compiled:
            self.governor.recompiles = True  # a trial would compile again (20-50 s): only a large slowdown pays that
        self._banner(wrapped)

        def state() -> dict[str, Any]:  # what a checkpoint saves beyond _Progress
            states = [opt.state_dict() for opt in optimizers]
            return {
                "optimizer": states[0] if len(states) == 1 else states,
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            }

        last_eval = self._evaluate_timed(0) if self.pos.step == 0 else None
        with self.clock.paused():  # counted now, so that the time budget has already paid for it
            self.yardstick = self._count_yardstick()
        if self.budget is not None:  # the final sample and the process's exit come after the last step
            # (the exit: 1.1 s from the sample's last line to the shell's prompt in a compiled 3-minute
            # run, BENCHMARKS.md, fifteenth pass; 3 of 12 such runs had ended 0.1-0.8 s past 180 s)
            self.budget.tail = self._sample_cost() + 1.0
        self.model.train()
        log = _TrainLog(self)
        bar = tqdm(
            total=self.total,
            initial=self.pos.step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.rt.is_main),
            dynamic_ncols=True,
        )
        interrupted = None
        while self.pos.step < self.total:
            step = self.pos.step
            lr = self._lr(step)
            set_lr(optimizers, lr)
            batches = (sampler.get(step, micro) for micro in range(o.grad_accum))
            loss = train_step(
                wrapped,
                self.model,
                optimizers,
                scaler,
                batches,
                grad_accum=o.grad_accum,
                grad_clip=o.grad_clip,
                rt=self.rt,
            )
            step = self.pos.advance(self.tokens_per_step)
            log.add(loss)
            if self.governor is not None and self.governor.after_step(t := self.clock.read()) is not None:
                self.budget.rate_changed(step, t)  # the thread count moved: a new pace
            if (self.governor is None or self.governor.settled) and self._replan(step):
                bar.total = self.total

            is_last = step >= self.total
            stop_now = self.rt.any(signals.received is not None)
            if step % r.log_interval == 0 or is_last or step % r.eval_interval == 0 or stop_now:
                log.check_finite(step, lr, bar)  # before anything is saved
            if step % r.log_interval == 0 or is_last:
                log.write(step, lr, bar)
            bar.update(1)
            if step % r.eval_interval == 0 or is_last:
                last_eval = self._evaluate_and_save(step, state())
            elif stop_now:
                with self.clock.paused():
                    self._save(step, None, False, state())
            if stop_now:
                interrupted = signals.received
                break
        bar.close()
        if self.governor is not None and self.governor.changes:
            self.rt.print(f"threads: {'; '.join(self.governor.changes)}", file=sys.stderr)
        if self.budget is not None and self.rt.is_main:
            self.run_dir.write_train_config(self._recorded_config().to_dict())
        step = self.pos.step
        summary = {
            "step": step,
            "out": str(self.run_dir.path),
            "best_val_loss": self.pos.best_val,
            **(last_eval or {}),
            "train_time_s": self.clock.elapsed,
        }
        if self.init_from and last_eval and self.rt.is_main:
            self._report_finetune(step, last_eval)
        if interrupted is not None:
            name = signal.Signals(interrupted).name if interrupted else "signal"
            self.rt.print(
                f"{name}: saved {self.run_dir.path}/last at step {step}; continue with --resume", file=sys.stderr
            )
            summary["interrupted"] = interrupted
        return summary

    def _optimizers(self) -> tuple[list[torch.optim.Optimizer], torch.amp.GradScaler]:
        """The optimizers (and fp16's GradScaler), with their state and the RNG states
        restored from the checkpoint on --resume."""
        optimizers = make_optimizers(self.model, self.cfg, self.rt.device)
        scaler = torch.amp.GradScaler("cuda", enabled=self.rt.dtype == torch.float16)
        if self.trainer_state is not None:
            saved = self.trainer_state["optimizer"]
            saved = saved if isinstance(saved, list) else [saved]  # one AdamW state before Muon existed
            if len(saved) != len(optimizers):
                raise MiniGPTError(
                    f"--resume: the checkpoint holds {len(saved)} optimizer state(s), this run has "
                    f"{len(optimizers)} (--optimizer changed?); resume with the run's own optimizer"
                )
            for opt, st in zip(optimizers, saved):
                opt.load_state_dict(st)
            if "scaler" in self.trainer_state and scaler.is_enabled():
                scaler.load_state_dict(self.trainer_state["scaler"])
            _set_rng_state(self.trainer_state["rng"])
        return optimizers, scaler

    def _banner(self, wrapped: Wrapped) -> None:
        """What trains on what: the model, the data, the device (and for a fine-tune, where
        it starts and what it trains)."""
        m, o, rt, model = self.cfg.model, self.cfg.optim, self.rt, self.model
        n_params = model.num_params()
        rt.print(
            f"{m.model}: {n_params / 1e6:.2f}M parameters | data {self.data.path} ({len(self.train_tokens):,} train / "
            f"{len(self.val_tokens):,} val tokens, vocab {self.data.vocab_size}) | device {rt.device} "
            f"{str(rt.dtype).removeprefix('torch.')}{' compiled' if wrapped.compiled else ''}"
            f"{f' x{rt.world_size} processes' if rt.distributed else ''}",
            file=sys.stderr,
        )
        if self.init_from:
            src = self.init_from
            where = src["source"] if src["path"] == src["source"] else f"{src['source']} ({src['path']})"
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            frozen = f"; frozen: {', '.join(self.frozen)}" if self.frozen else ""
            constant = " constant" if o.min_lr == o.lr and not o.warmup_steps else ""
            rt.print(
                f"fine-tuning {where}, weights sha256 {src['weights_sha256'][:16]}... | training "
                f"{trainable / 1e6:.2f}M of {n_params / 1e6:.2f}M parameters{frozen} | block {m.block_size}, "
                f"lr {o.lr:g}{constant}, {o.max_steps} steps",
                file=sys.stderr,
            )

    def _count_yardstick(self) -> dict[str, Any] | None:
        """A Kneser-Ney n-gram counted on (at most YARDSTICK_TOKENS of) the train split and
        scored on the very validation windows the run's evaluations use, so the verdict can
        say what the GPT's bits per byte are worth against counting. Rank 0 only, on the CPU;
        under torchrun the windows are all ranks' together, as in `evaluate`."""
        if not self.rt.is_main:
            return None
        t = time.perf_counter()
        counted = self.train_tokens[:YARDSTICK_TOKENS]
        ngram = NGramLM(NGramConfig(vocab_size=self.model.config.vocab_size, order=YARDSTICK_ORDER)).fit(counted)
        cpu = Runtime(torch.device("cpu"), torch.float32)
        o, r = self.cfg.optim, self.cfg.run
        # The same windows as the evaluations' (eval_steps x ranks batches of batch_size), in
        # batches of one where a batch's probabilities would be large (GPT-2's vocabulary).
        block, vocab = self.cfg.model.block_size, self.model.config.vocab_size
        batch = o.batch_size if o.batch_size * block * vocab <= 1 << 26 else 1
        ev = evaluate(
            ngram,
            self.val_tokens,
            self.byte_lengths,
            block_size=block,
            batch_size=batch,
            steps=r.eval_steps * self.rt.world_size * (o.batch_size // batch),
            rt=cpu,
        )
        return {
            "order": YARDSTICK_ORDER,
            "tokens": len(counted),
            "all_tokens": len(counted) == len(self.train_tokens),
            "bpb": ev["bpb"],
            "seconds": time.perf_counter() - t,
        }

    def _verdict(self, summary: dict[str, Any]) -> None:
        """The run's last lines: where the model is, which step `best` holds and its bits per
        byte, and how that compares with the n-gram counted on the same data."""
        if not self.rt.is_main or self.pos.best_step == 0:
            return
        out, best = self.run_dir.path, self.pos.best_bpb
        last = summary.get("val_bpb")
        last_part = (
            f"; the last, step {summary['step']}: {last:.4f}"
            if last is not None and summary["step"] != self.pos.best_step
            else ""
        )
        self.rt.print(
            f"model: {out}/best is step {self.pos.best_step}, {best:.4f} bits/byte on the validation "
            f"windows{last_part} (sample, eval and serve read {out}/best)",
            file=sys.stderr,
        )
        y = self.yardstick
        if y is not None:
            gap = y["bpb"] - best
            what = "better" if gap > 0 else "worse"
            counted = "the train split" if y["all_tokens"] else f"the first {_short(y['tokens'])} train tokens"
            self.rt.print(
                f"yardstick: a {y['order']}-gram (Kneser-Ney) counted on {counted} in {y['seconds']:.1f} s "
                f"scores {y['bpb']:.4f} bits/byte on the same windows: the model is {abs(gap):.4f} "
                f"{what}",
                file=sys.stderr,
            )

    def _sample_cost(self) -> float:
        """What the final sample will cost: a few tokens timed now, scaled to --sample-tokens."""
        n = self.cfg.run.sample_tokens
        if not (self.rt.is_main and n > 0):
            return 0.0
        model = models.unwrap(self.model)
        was_training = model.training
        model.eval()
        t = time.perf_counter()
        complete(model, self.tokenizer, "", max_new_tokens=8, seed=self.cfg.run.seed)  # its own generator: no RNG used
        model.train(was_training)
        return (time.perf_counter() - t) * n / 8

    def _lr(self, step: int) -> float:
        """The schedule at `step`: it ends at --lr-decay-steps, else at the run's (planned) length."""
        o = self.cfg.optim
        return lr_at(step, o.lr, o.min_lr, o.warmup_steps, o.lr_decay_steps or self.total, o.schedule, o.cooldown)

    def _replan(self, step: int) -> bool:
        """Ask the time budget (if any) for the run's length after `step` steps; True if it
        changed. Under torchrun rank 0's answer is every rank's, at log_interval steps."""
        if self.budget is None:
            return False
        if self.rt.distributed and step % self.cfg.run.log_interval:
            return False
        new = self.budget.steps(step, self.total, self.clock.read()) if self.rt.is_main else None
        if self.rt.distributed:
            t = torch.tensor(
                [float(new or 0)],
                dtype=torch.float64,
                device=self.rt.device if self.rt.device.type == "cuda" else "cpu",
            )
            new = int(self.rt.all_reduce_sum(t).item()) or None
        if new is None or (new == self.total and self.planned):
            return False
        first = not self.planned
        self.total, self.planned = new, True
        if first:
            if self.rt.is_main:  # the plan is recorded: --resume and a rerun of train_config.json are exact
                self.run_dir.write_train_config(self._recorded_config().to_dict())
            self.rt.print(f"--max-time: {self.total} steps fit the budget", file=sys.stderr)
        return True

    def _recorded_config(self) -> TrainConfig:
        """The config as this run trains it: with a time budget, the planned step count and
        no budget (so --resume, and a rerun of the saved config, train exactly these steps)."""
        if self.budget is None or not self.planned:
            return self.cfg
        cfg = TrainConfig.from_dict(self.cfg.to_dict())
        cfg.optim.max_steps, cfg.run.max_time = self.total, 0.0
        return cfg

    def _report_finetune(self, step: int, last_eval: dict[str, Any]) -> None:
        """One line: what fine-tuning bought (SOURCE's val loss at step 0 -> the best step's,
        the one `best` holds, and the last step's if it differs), and the peak memory it took."""
        start = next((m for m in self.run_dir.read_metrics() if m["step"] == 0 and "val_loss" in m), None)
        now = f"{self.pos.best_val:.4f} at step {self.pos.best_step} (best)"
        if last_eval["step"] != self.pos.best_step:
            now += f", {last_eval['val_loss']:.4f} at step {last_eval['step']} (last)"
        gain = f"val loss {start['val_loss']:.4f} before -> {now}" if start else f"val loss {now}"
        rss = peak_rss_bytes()
        memory = f", peak memory {rss / 2**30:.2f} GiB" if rss else ""
        self.rt.print(
            f"fine-tuned {self.init_from['source']} for {step} steps: {gain} "
            f"({self.clock.elapsed:.1f} s of training{memory})",
            file=sys.stderr,
        )

    # ---- finish --------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Print a sample from the final model, so a run ends with something to read."""
        r = self.cfg.run
        if not (self.rt.is_main and r.sample_tokens > 0):
            return
        model = models.unwrap(self.model)
        model.eval()
        text = complete(model, self.tokenizer, "", max_new_tokens=r.sample_tokens, seed=r.seed)[0].text
        print(f"--- sample ({r.sample_tokens} tokens) ---\n{text}\n---", flush=True)


def _short(n: int) -> str:
    """1.0M, 350k, 900."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _tensorboard_writer():
    """TensorBoard's SummaryWriter class (an optional package, imported only when asked for)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter
