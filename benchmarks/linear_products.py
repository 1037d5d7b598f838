"""fp32 Linear layers on the CPU by MKL (`F.linear`, PyTorch's own) and by oneDNN (minigpt's
`onednn` module), interleaved in one run: which is faster on this machine.

    python benchmarks/linear_products.py            # training: a layer's forward + backward at the plan's shapes
    python benchmarks/linear_products.py --decode   # inference: decoding GPT-2 small's shape, prepacked or not

Training (`onednn.use_onednn_linears`, what an eager CPU run does where `onednn.faster_than_mkl`):
for each [M x K] x [K x N] product (M tokens a step), the GFLOP/s of y = x W^T and both
gradients, `--reps` repetitions per round, `--rounds` rounds alternating the two; the median
round. Decoding (`onednn.prepack_for_cpu`, what `sample`, `eval` and `serve` do on every CPU):
a random GPT-2 small-shaped model samples `--new-tokens` tokens after an 8-token prompt,
prepacked and plain in turn, per round; each round's ratio.

MKL picks its code path by the CPU's maker (AVX2 on any but Intel's), so the answer differs
between an AMD and an Intel CPU: BENCHMARKS.md has both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minigpt import onednn  # noqa: E402

# (M, K, N): nanoGPT's CPU shape (batch 12 x 64, 128 wide), the plan's 192 wide model and a
# tiny text's 96 wide one (2048 tokens a step), GPT-2's MLP
SHAPES = [
    (768, 128, 384),
    (768, 128, 512),
    (768, 512, 128),
    (768, 128, 128),
    (768, 128, 257),
    (2048, 192, 576),
    (2048, 192, 768),
    (2048, 768, 192),
    (2048, 192, 2048),
    (2048, 96, 288),
    (2048, 96, 384),
    (2048, 384, 96),
    (2048, 96, 512),
    (1024, 768, 3072),
]


def layers(rounds: int, reps: int) -> None:
    print(f"cpu vendor {onednn.cpu_vendor() or '?'}; the trainer uses oneDNN here: {onednn.faster_than_mkl()}")
    print(f"{'[M x K] x [K x N]':<28} {'MKL GFLOP/s':>12} {'oneDNN':>8} {'oneDNN / MKL':>13}")
    for m, k, n in SHAPES:
        torch.manual_seed(0)
        mkl = nn.Linear(k, n, bias=False)
        dnnl = copy.deepcopy(mkl)
        onednn.use_onednn_linears(dnnl)
        x = torch.randn(m, k, requires_grad=True)
        seconds: dict[str, list[float]] = {"mkl": [], "onednn": []}
        for _ in range(rounds):
            for name, layer in (("mkl", mkl), ("onednn", dnnl)):
                for _ in range(3):  # warm up (oneDNN's primitive cache, the allocator)
                    layer(x).sum().backward()
                t0 = time.perf_counter()
                for _ in range(reps):
                    y = layer(x)
                    y.backward(torch.ones_like(y))
                seconds[name].append((time.perf_counter() - t0) / reps)
        rate = {name: 6 * m * k * n / statistics.median(t) / 1e9 for name, t in seconds.items()}
        print(f"{f'[{m} x {k}] x [{k} x {n}]':<28} {rate['mkl']:>12.0f} {rate['onednn']:>8.0f} "
              f"{rate['onednn'] / rate['mkl']:>12.2f}x")  # fmt: skip


def decode(rounds: int, new_tokens: int) -> None:
    from minigpt.config import GPTConfig
    from minigpt.model import GPT
    from minigpt.sampling import SamplingParams, generate

    torch.manual_seed(0)
    plain = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)).eval()
    packed = onednn.prepack_for_cpu(copy.deepcopy(plain))
    params, prompt = SamplingParams(temperature=1.0, top_k=50), list(range(8))

    def rate(model, batch: int) -> float:
        for _ in generate(model, [prompt] * batch, 4, params, seed=0):  # warm up
            pass
        t0, n = time.perf_counter(), 0
        for step in generate(model, [prompt] * batch, new_tokens, params, seed=1):
            n += sum(step.new)
        return n / (time.perf_counter() - t0)

    for batch in (1, 8):
        r: dict[str, list[float]] = {"plain": [], "prepacked": []}
        for _ in range(rounds):
            r["plain"].append(rate(plain, batch))
            r["prepacked"].append(rate(packed, batch))
        ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(r["prepacked"], r["plain"]))
        plain_rate, packed_rate = statistics.median(r["plain"]), statistics.median(r["prepacked"])
        print(f"batch {batch}: plain (MKL) {plain_rate:.1f} tokens/s, prepacked (oneDNN) {packed_rate:.1f}; "
              f"each round prepacked / plain: {ratios}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode", action="store_true", help="time decoding (prepacked or not) instead of training layers")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30, help="forward + backward repetitions a round (training layers)")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens sampled a round (--decode)")
    args = ap.parse_args()
    if not onednn.available():
        print("error: this torch has no oneDNN", file=sys.stderr)
        raise SystemExit(2)
    if args.decode:
        decode(args.rounds, args.new_tokens)
    else:
        layers(args.rounds, args.reps)


if __name__ == "__main__":
    main()
