"""Training throughput (tokens/s) of minigpt's trainer, beside nanoGPT's figure.

    python benchmarks/train_throughput.py                         # the nanoGPT CPU recipe's shape
    python benchmarks/train_throughput.py --variants eager compile bf16
    python benchmarks/train_throughput.py --device cuda --preset gpt2 --grad-accum 1 --batch-size 16 \
        --synthetic-vocab 50304 --variants compile --steps 100 --warmup 30     # GPU: GPT-2 124M, MFU too

The shape is nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12) on
tinyshakespeare from ../shared/data, tokenized as plain bytes (vocab 257: one token per
character on this ASCII text, like nanoGPT's 65-character vocabulary). Each variant runs
the real trainer (`minigpt.trainer.train`) for `--steps` steps and reports the median of
the logged tokens/s after the first `--warmup` steps (evaluation and checkpointing are
not counted: the trainer's own tokens/s excludes them). nanoGPT's figure on these
machines (../shared/ANCHORS.md): ~10-12k tokens/s (65-78 ms/iter).

`--synthetic-vocab N` trains on random tokens with an N-token vocabulary instead (as
nanoGPT's bench.py does), for the GPT-2 124M shape on a GPU: nanoGPT reaches 415k
tokens/s (~36% MFU) on one H100 here; the goal is 1.3x that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_CPU_TOKENS_S = (10_000, 12_000)  # ANCHORS.md, measured on these 2-core machines

VARIANTS = {
    "eager": dict(compile=False, dtype="float32"),
    "compile": dict(compile=True, dtype="float32"),
    "bf16": dict(compile=False, dtype="bfloat16"),
    "compile-bf16": dict(compile=True, dtype="bfloat16"),
}


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
    meta = {"format": "minigpt-dataset", "version": 1, "vocab_size": vocab, "dtype": dtype.name, "eot_id": 0,
            "val_fraction": 0.05, "splits": splits, "sources": [],
            "tokenizer": {"file": "tokenizer.json", "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest()}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nanogpt-cpu")
    ap.add_argument("--variants", nargs="+", default=["eager", "compile"], choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50, help="steps not counted (compilation, caches)")
    ap.add_argument("--vocab-size", type=int, default=257)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--data", type=Path, default=None, help="a prepared dataset (default: tinyshakespeare, prepared here)")
    ap.add_argument("--synthetic-vocab", type=int, default=0, help="train on random tokens of this vocabulary (e.g. 50304)")
    args = ap.parse_args()

    from minigpt.config import TrainConfig, apply_preset
    from minigpt.data import prepare
    from minigpt.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None and args.synthetic_vocab:
            data = synthetic_dataset(tmp / "data", args.synthetic_vocab)
        elif data is None:
            data = tmp / "data"
            prepare([TINYSHAKESPEARE], data, vocab_size=args.vocab_size, progress=False)
        rows = []
        for name in args.variants:
            cfg = TrainConfig()
            apply_preset(cfg, args.preset)
            settings = dict(
                data=str(data), out=str(tmp / name), max_steps=args.steps, eval_interval=10**9, eval_steps=1,
                log_interval=10, sample_tokens=0, device=args.device, **VARIANTS[name],
            )
            if args.batch_size:
                settings["batch_size"] = args.batch_size
            if args.grad_accum:
                settings["grad_accum"] = args.grad_accum
            for k, v in settings.items():
                cfg.set(k, v)
            train(cfg, progress=False)
            lines = [json.loads(l) for l in (tmp / name / "metrics.jsonl").read_text().splitlines()]
            tps = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l and l["step"] > args.warmup]
            mfu = [l["mfu"] for l in lines if "mfu" in l and l["step"] > args.warmup]
            rows.append((name, statistics.median(tps), statistics.median(mfu) if mfu else None))
            print(f"{name:<13} {rows[-1][1]:>10,.0f} tokens/s" + (f"  MFU {rows[-1][2]:.1%}" if mfu else ""), flush=True)

    lo, hi = NANOGPT_CPU_TOKENS_S
    print(f"\npreset {args.preset}, {args.steps} steps (median after step {args.warmup}), device {args.device}")
    print(f"{'variant':<13} {'tokens/s':>10}   vs nanoGPT CPU recipe ({lo // 1000}-{hi // 1000}k tokens/s here)")
    for name, tps, mfu in rows:
        print(f"{name:<13} {tps:>10,.0f}   {tps / hi:.2f}x - {tps / lo:.2f}x" + (f"   MFU {mfu:.1%}" if mfu else ""))


if __name__ == "__main__":
    main()
