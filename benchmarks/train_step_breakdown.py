"""Where a CPU training step's time goes: one step at nanoGPT's CPU recipe shape, minigpt's
model with each speed-up turned on in turn, beside nanoGPT's own model.py, in one process,
interleaved step by step.

    python benchmarks/train_step_breakdown.py              # 60 interleaved steps each
    python benchmarks/train_step_breakdown.py --steps 200

A step is forward, backward, gradient clipping and the AdamW update on a batch of 12 x 64
random character ids (65 of them, as nanoGPT's shakespeare_char). The rows:

- nanoGPT: its model.py (an unmodified copy from ../shared/peers) and its
  configure_optimizers (foreach AdamW on the CPU), as its train.py runs them;
- minigpt, nanoGPT's model (the nanogpt-cpu preset: no biases, exact GELU), plain fp32:
  nn.Linear's products by MKL, fused AdamW;
- + oneDNN linears (`onednn.use_onednn_linears`, what the trainer does on a CPU not Intel's:
  `onednn.faster_than_mkl`; measured here on any CPU, as a lever);
- + bf16 autocast (what `--dtype auto` picks on a CPU with native bf16), attention in fp32;
- + the chunked cross-entropy (`kernels.cross_entropy`, the model's default; the rows above
  use F.cross_entropy on fp32 logits, as before it).

Both share the process, so glibc's malloc setting (`runtime.keep_freed_memory`, applied
here before anything is built) helps both alike; `train_throughput.py` measures each as
its own process, where only minigpt has it. Medians over interleaved steps; the ratio is
nanoGPT's median step time over the row's.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# ../shared beside the clone (or beside a folder of worktrees, as /work/wt/NAME has /work/shared)
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared" / "peers").is_dir()), REPO.parent / "shared")
NANOGPT = SHARED / "peers" / "nanoGPT" / "model.py"
B, T, V = 12, 64, 65


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="interleaved steps timed per row")
    ap.add_argument("--warmup", type=int, default=15)
    args = ap.parse_args()

    from minigpt.runtime import keep_freed_memory

    keep_freed_memory()
    import torch

    from minigpt import onednn
    from minigpt.config import GPTConfig, TrainConfig, apply_preset
    from minigpt.model import GPT
    from minigpt.trainer import make_optimizer

    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT)
    nano = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
        spec.loader.exec_module(nano)
    cfg = TrainConfig()
    apply_preset(cfg, "nanogpt-cpu")
    m = cfg.model
    shape = dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size, dropout=0.0)

    def adamw(model):  # the trainer's own: fused, decay on matrices only, the preset's lr and betas
        return make_optimizer(model, cfg, torch.device("cpu"))

    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        theirs = nano.GPT(nano.GPTConfig(vocab_size=V, bias=m.bias, **shape))
        their_opt = theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    plain = GPT(GPTConfig(vocab_size=V, bias=m.bias, mlp=m.mlp, pos_encoding=m.pos_encoding, **shape))
    plain.check_inputs = False  # the trainer checks its data once, not every step
    plain.fused_loss = False  # F.cross_entropy, until the last row
    dnnl = copy.deepcopy(plain)
    onednn.use_onednn_linears(dnnl)
    bf16 = copy.deepcopy(dnnl)
    fused = copy.deepcopy(bf16)
    fused.fused_loss = True

    def step_fn(model, opt, autocast=False):
        def step(x, y):
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                out = model(x, y)
            loss = out[1] if isinstance(out, tuple) else out.loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    rows = {
        "nanoGPT (its model.py, fp32)": step_fn(theirs, their_opt),
        "minigpt fp32, MKL products": step_fn(plain, adamw(plain)),
        "+ oneDNN linears (fp32)": step_fn(dnnl, adamw(dnnl)),
        "+ bf16 autocast, fp32 attention": step_fn(bf16, adamw(bf16), autocast=True),
        "+ chunked cross-entropy": step_fn(fused, adamw(fused), autocast=True),
    }
    data = torch.randint(0, V, (200_000,))

    def batch():
        ix = torch.randint(len(data) - T - 1, (B,))
        return torch.stack([data[i : i + T] for i in ix]), torch.stack([data[i + 1 : i + 1 + T] for i in ix])

    for f in rows.values():
        for _ in range(args.warmup):
            f(*batch())
    times = {k: [] for k in rows}
    for _ in range(args.steps):
        for k, f in rows.items():
            x, y = batch()
            t0 = time.perf_counter()
            f(x, y)
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["nanoGPT (its model.py, fp32)"])
    print(
        f"one training step, batch {B} x {T}, {args.steps} interleaved steps each "
        f"(torch threads: {torch.get_num_threads()})"
    )
    print(f"{'row':<34} {'ms/step':>8} {'tokens/s':>9} {'vs nanoGPT':>11}")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<34} {med * 1e3:>8.2f} {B * T / med:>9,.0f} {base / med:>10.2f}x")


if __name__ == "__main__":
    main()
