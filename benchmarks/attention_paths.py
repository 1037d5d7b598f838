"""Attention on the CPU, forward and backward of one layer, per context length: the fp32 flash
kernel (what the eager model calls under bf16 autocast) beside the written-out product in bf16
compiled (what a compiled CPU step calls up to model.COMPILED_EXPLICIT_MAX_T tokens).

    python benchmarks/attention_paths.py                     # T = 64, 128, 256 at 2048 tokens x 6 heads x 32
    python benchmarks/attention_paths.py --contexts 64 --tokens 768 --heads 4   # nanoGPT's CPU shape

Each context keeps the tokens a step holds (batch = tokens / T); the two paths alternate over
--rounds rounds of --reps calls, and the median round is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minigpt.model import COMPILED_EXPLICIT_MAX_T, explicit_attention  # noqa: E402


def flash_fp32(q, k, v):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)


def time_path(fn, q, k, v, g, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        y = fn(q, k, v)
        y.backward(g.to(y.dtype))
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--tokens", type=int, default=2048, help="batch x context (the cpu preset's 32 x 64)")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    written_out = torch.compile(lambda q, k, v: explicit_attention(q, k, v)[0])
    paths = {"fp32 flash": flash_fp32, "bf16 written out, compiled": written_out}
    print(f"{torch.get_num_threads()} threads; the model's bound: T <= {COMPILED_EXPLICIT_MAX_T}")
    for T in args.contexts:
        B = max(1, args.tokens // T)
        shape = (B, args.heads, T, args.head_dim)
        q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in "qkv")
        g = torch.randn(shape)
        for fn in paths.values():  # compile and warm up
            time_path(fn, q, k, v, g, 3)
        ms: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, fn in paths.items():
                ms[name].append(time_path(fn, q, k, v, g, args.reps))
        cells = ", ".join(f"{name} {statistics.median(x):.2f} ms ({min(x):.2f}-{max(x):.2f})" for name, x in ms.items())
        print(f"T = {T} (batch {B}): {cells}", flush=True)


if __name__ == "__main__":
    main()
