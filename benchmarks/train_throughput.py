"""Training throughput of minigpt beside nanoGPT, measured in the same run, interleaved.

    python benchmarks/train_throughput.py                      # nanoGPT's CPU recipe shape, 3 rounds
    python benchmarks/train_throughput.py --rounds 4 --steps 600 --variants eager bf16
    python benchmarks/train_throughput.py --variants compile-bf16 --base ../base   # + a worktree's code, "before"
    python benchmarks/train_throughput.py --device cuda --preset gpt2 --grad-accum 1 --batch-size 16 \
        --synthetic-vocab 50304 --variants compile --no-nanogpt --steps 100 --warmup 30   # GPU: MFU

The shape is nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12,
README "I only have a macbook") on tinyshakespeare from ../shared/data. nanoGPT trains on
characters (65 ids); minigpt on the same text as plain bytes (a 257-token tokenizer: one
token per character on this ASCII text), so both process the same tokens per step.

Each round runs nanoGPT (an unmodified copy of ../shared/peers/nanoGPT, in a temporary
directory) and every minigpt variant, one after another, each as its own process for
`--steps` steps; rounds repeat, so a slow minute on a noisy VM hits both. Reported per
run: the median tokens/s over steps after `--warmup` (nanoGPT: batch x block / its
per-iteration time; minigpt: its trainer's logged tokens/s, which excludes evaluation and
checkpoints, as nanoGPT's per-iteration time excludes them except on the rare eval
iteration, which the median ignores) and the whole process's wall time. The ratio is
minigpt's median over nanoGPT's, per round, then the median over rounds.

Variants: `eager` is fp32 (on the CPU its matrix products by oneDNN, as the trainer does);
`bf16` is bf16 autocast, what `--dtype auto` picks on a CPU with native bf16 (attention,
norms and the loss stay fp32); `compile*` add `torch.compile`. The `nanogpt-cpu` preset is
nanoGPT's model as well as its shape (no biases, exact GELU), so both train the same net.

Never divide by a figure recorded on another day: these machines drift by 2x.
`--synthetic-vocab N` trains minigpt on random tokens of an N-token vocabulary instead
(as nanoGPT's bench.py does), for the GPT-2 shape on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
NANOGPT = SHARED / "peers" / "nanoGPT"

VARIANTS = {
    "eager": ["--no-compile", "--dtype", "float32"],
    "bf16": ["--no-compile", "--dtype", "bfloat16"],
    "compile": ["--compile", "--dtype", "float32"],
    "compile-bf16": ["--compile", "--dtype", "bfloat16"],
}
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)  # nanoGPT's CPU recipe


def synthetic_dataset(path: Path, vocab: int, n_tokens: int = 20_000_000) -> Path:
    """A prepared-dataset directory of uniformly random tokens (throughput only: the
    losses mean nothing). Its tokenizer is plain bytes; meta.json declares `vocab`."""
    import hashlib

    import numpy as np

    from minigpt.data import token_dtype
    from minigpt.tokenizer import Tokenizer

    path.mkdir(parents=True)
    tok = Tokenizer.train(["synthetic"], vocab_size=257)
    tok.save(path / "tokenizer.json")
    dtype = token_dtype(vocab)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_tokens), ("val", n_tokens // 20)):
        rng.integers(0, vocab, n, dtype=np.int64).astype(dtype).tofile(path / f"{split}.bin")
        splits[split] = {"file": f"{split}.bin", "tokens": n, "bytes": n, "chars": n, "documents": 1}
    meta = {
        "format": "minigpt-dataset",
        "version": 1,
        "vocab_size": vocab,
        "dtype": dtype.name,
        "eot_id": 0,
        "val_fraction": 0.05,
        "splits": splits,
        "sources": [],
        "tokenizer": {"file": "tokenizer.json", "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest()},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def setup_nanogpt(tmp: Path) -> Path:
    """An unmodified copy of nanoGPT with tinyshakespeare prepared its own way. Its
    prepare.py imports `requests` only to download input.txt, which is already there: a
    stub module stands in for it, so nothing is installed or fetched."""
    root = tmp / "nanoGPT"
    shutil.copytree(NANOGPT, root)
    shutil.copy(TINYSHAKESPEARE, root / "data" / "shakespeare_char" / "input.txt")
    stub = tmp / "stub"
    stub.mkdir()
    (stub / "requests.py").write_text("# stub: nanoGPT's prepare.py only downloads when input.txt is missing\n")
    env = dict(os.environ, PYTHONPATH=str(stub))
    subprocess.run(
        [sys.executable, "data/shakespeare_char/prepare.py"], cwd=root, env=env, check=True, capture_output=True
    )
    return root


def run_nanogpt(root: Path, steps: int, warmup: int) -> tuple[float, float]:
    """(median tokens/s after warmup, wall seconds) of nanoGPT's CPU recipe."""
    cmd = [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        f"--block_size={SHAPE['block_size']}",
        f"--batch_size={SHAPE['batch_size']}",
        f"--n_layer={SHAPE['n_layer']}",
        f"--n_head={SHAPE['n_head']}",
        f"--n_embd={SHAPE['n_embd']}",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        "--dropout=0.0",
        "--always_save_checkpoint=False",
        f"--eval_interval={steps}",
        "--out_dir=out-bench",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    times = [(int(i), float(ms)) for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", proc.stdout)]
    tokens = SHAPE["batch_size"] * SHAPE["block_size"]
    tps = [tokens / (ms / 1000) for i, ms in times if i > warmup]
    return statistics.median(tps), wall


def run_minigpt(data: Path, out: Path, variant: str, args, repo: Path = REPO) -> tuple[float, float]:
    """(median tokens/s after warmup, wall seconds) of `minigpt train` in its own process,
    with `repo`'s code (this checkout's, or --base's)."""
    flags = [
        "--preset",
        args.preset,
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(args.steps),
        "--eval-interval",
        str(10**9),
        "--eval-steps",
        "1",
        "--log-interval",
        "10",
        "--sample-tokens",
        "0",
        "--device",
        args.device,
        "--quiet",
        *VARIANTS[variant],
    ]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    if args.grad_accum:
        flags += ["--grad-accum", str(args.grad_accum)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt.cli", "train", *flags], cwd=repo, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"minigpt {variant} failed:\n{proc.stderr[-2000:]}")
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    tps = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l and l["step"] > args.warmup]
    shutil.rmtree(out)
    return statistics.median(tps), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nanogpt-cpu")
    ap.add_argument("--variants", nargs="+", default=["eager", "bf16"], choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=50, help="steps not counted (allocator warm-up, compilation)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--synthetic-vocab", type=int, default=0, help="train minigpt on random tokens of this vocabulary")
    ap.add_argument("--no-nanogpt", action="store_true", help="minigpt only (e.g. the GPT-2 shape on a GPU)")
    ap.add_argument(
        "--base", type=Path, default=None, help="also run each variant with this checkout's code (today's main, say)"
    )
    args = ap.parse_args()

    from minigpt.data import prepare

    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.synthetic_vocab:
            data = synthetic_dataset(tmp / "data", args.synthetic_vocab)
        else:
            data = tmp / "data"
            prepare([TINYSHAKESPEARE], data, vocab_size=257, progress=False)  # plain bytes
        nano = None if args.no_nanogpt else setup_nanogpt(tmp)
        for r in range(args.rounds):
            if nano is not None:
                results.setdefault("nanoGPT", []).append(run_nanogpt(nano, args.steps, args.warmup))
                print(
                    f"round {r + 1}: nanoGPT {results['nanoGPT'][-1][0]:>9,.0f} tokens/s, "
                    f"{results['nanoGPT'][-1][1]:.1f} s",
                    flush=True,
                )
            for v in args.variants:
                for name, repo in ((f"base {v}", args.base), (v, REPO)) if args.base else ((v, REPO),):
                    results.setdefault(name, []).append(run_minigpt(data, tmp / "run", v, args, repo.resolve()))
                    print(
                        f"round {r + 1}: minigpt {name:<17} {results[name][-1][0]:>9,.0f} tokens/s, "
                        f"{results[name][-1][1]:.1f} s",
                        flush=True,
                    )

    print(
        f"\n{args.steps} steps x {args.rounds} rounds, median tokens/s after step {args.warmup}; "
        f"ratio = per-round minigpt / nanoGPT, median over rounds"
    )
    print(f"{'run':<27} {'tokens/s':>10} {'wall s':>8} {'vs nanoGPT':>11} {'wall ratio':>11}")
    for name, rows in results.items():
        tps, wall = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        ratio = wall_ratio = ""
        if "nanoGPT" in results and name != "nanoGPT":
            nano_rows = results["nanoGPT"]
            ratio = f"{statistics.median(a[0] / b[0] for a, b in zip(rows, nano_rows)):.2f}x"
            wall_ratio = f"{statistics.median(b[1] / a[1] for a, b in zip(rows, nano_rows)):.2f}x"
        label = name if name == "nanoGPT" else f"minigpt {name}"
        print(f"{label:<27} {tps:>10,.0f} {wall:>8.1f} {ratio:>11} {wall_ratio:>11}")


if __name__ == "__main__":
    main()
