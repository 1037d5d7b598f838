"""`kernels.dropout` alone, forward and backward, at the `cpu` preset's two dropout shapes --
the residual branch [32, 64, 192] bf16 and the attention weights [32, 6, 64, 64] fp32 -- for
this checkout and, interleaved, another one's (today's main in a git worktree, say).

    python benchmarks/dropout_masks.py --base ../base --rounds 7

Each checkout runs in its own process (its own `minigpt` on the path), alternating by
rounds so that a slow minute on a shared machine hits both; reported: the median over
rounds of each round's median call, and each round's ratio base / this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"residual": ((32, 64, 192), "bfloat16"), "weights": ((32, 6, 64, 64), "float32")}

WORKER = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from minigpt import kernels
torch.set_num_threads(int(sys.argv[2]))
shape, dtype, calls = json.loads(sys.argv[3]), getattr(torch, sys.argv[4]), int(sys.argv[5])
x = torch.randn(shape).to(dtype).requires_grad_()
g = torch.randn(shape).to(dtype)
times = []
for i in range(calls + 3):
    t0 = time.perf_counter()
    kernels.dropout(x, 0.1).backward(g)
    if i >= 3:  # warm-up calls
        times.append(time.perf_counter() - t0)
print(json.dumps(sorted(times)[len(times) // 2]))
"""


def one(repo: Path, shape, dtype: str, args) -> float:
    cmd = [sys.executable, "-c", WORKER, str(repo), str(args.threads), json.dumps(shape), dtype, str(args.calls)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="another checkout of minigpt (before)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100, help="timed calls per process")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.base / "minigpt" / "kernels.py").is_file():
        print(f"error: --base {args.base}: no minigpt/kernels.py there", file=sys.stderr)
        raise SystemExit(2)
    print(f"{'shape':<9} {'base ms':>8} {'this ms':>8} {'base/this per round: median [range]':>36}")
    for name, (shape, dtype) in SHAPES.items():
        base, this = [], []
        for _ in range(args.rounds):
            base.append(one(args.base.resolve(), shape, dtype, args))
            this.append(one(REPO, shape, dtype, args))
        ratios = [b / t for b, t in zip(base, this)]
        print(
            f"{name:<9} {statistics.median(base) * 1e3:>8.3f} {statistics.median(this) * 1e3:>8.3f} "
            f"{statistics.median(ratios):>25.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        )


if __name__ == "__main__":
    main()
