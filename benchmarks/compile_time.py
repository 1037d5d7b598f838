"""What the trainer's compile costs: the first time on a machine (the compiler's cache empty) and
once cached, for this checkout and, with `--base DIR`, another one, interleaved.

    python benchmarks/compile_time.py                           # the plan's 5 x 192 model, 3 rounds
    python benchmarks/compile_time.py --base ../base --rounds 3 # + a worktree's code, "before"
    python benchmarks/compile_time.py --data FILE --extra --n-layer 3

Each run is the whole `python train.py --data FILE --max-steps 30 --compile --n-layer 5` process
in the checkout's directory (so that checkout's `minigpt` is imported), with inductor's cache in a
fresh temporary directory (`TORCHINDUCTOR_CACHE_DIR`): "cold" is its first run there, "cached"
a second run with the cache the first one left. The figure is the trainer's own `compiled in
X s` line (the first forward and backward, which is when torch.compile compiles; the trainer
keeps it out of its measured pace) and the process's wall time. Every round runs each checkout
once, alternating which goes first, so a slow minute hits both; the median over rounds is
reported with the range. The text defaults to tinyshakespeare (../shared/data).

Run it alone: a compile is one core's work for most of its time, and a second job on a 2-core
machine stretches it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
COMPILED = re.compile(r"compiled in ([0-9.]+) s")


def run_once(code: Path, data: Path, cache: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """One trainer process with `code`'s minigpt and inductor's cache in `cache`: (compile s, wall s)."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "train.py", "--data", str(data), "--max-steps", "30", "--compile", "--n-layer", "5"]
    cmd += ["--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = COMPILED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"compile_time: {code}: the trainer did not report a compile (rc {done.returncode}):\n{tail}")
    return float(found.group(1)), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, help="another checkout (a git worktree) to run beside this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=TINYSHAKESPEARE)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags (last)")
    a = ap.parse_args()
    if not a.data.is_file():
        sys.exit(f"compile_time: --data {a.data}: no such file")
    a.data = a.data.resolve()
    codes = {"new": REPO} | ({"base": a.base.resolve()} if a.base else {})
    got: dict[str, dict[str, list[tuple[float, float]]]] = {n: {"cold": [], "cached": []} for n in codes}
    with tempfile.TemporaryDirectory(prefix="compile-time-") as tmp:
        for r in range(a.rounds):
            order = list(codes) if r % 2 == 0 else list(reversed(codes))
            for name in order:
                cache = Path(tmp) / f"cache-{name}-{r}"  # empty: the first compile on a machine
                for state in ("cold", "cached"):
                    out = Path(tmp) / f"run-{name}-{r}-{state}"
                    got[name][state].append(run_once(codes[name], a.data, cache, out, a.extra))
                c, k = got[name]["cold"][-1], got[name]["cached"][-1]
                print(f"round {r + 1}/{a.rounds} {name}: cold {c[0]:.1f} s (wall {c[1]:.1f}), cached {k[0]:.1f} s "
                      f"(wall {k[1]:.1f})", flush=True)  # fmt: skip
    print(
        f"\n{a.rounds} rounds, `train.py --data {a.data.name} --max-steps 30 --compile --n-layer 5 {' '.join(a.extra)}`"
    )
    print(f"{'code':6} {'state':7} {'compile s (median)':>19} {'range':>13} {'process s (median)':>19}")
    for name in codes:
        for state in ("cold", "cached"):
            comp = [c for c, _ in got[name][state]]
            wall = [w for _, w in got[name][state]]
            span = f"{min(comp):.1f}-{max(comp):.1f}"
            print(f"{name:6} {state:7} {statistics.median(comp):19.1f} {span:>13} {statistics.median(wall):19.1f}")


if __name__ == "__main__":
    main()
