"""Which learning rate a fine-tune of a minigpt-sized source wants (issue 27: the GPT-2 recipe,
a constant 3e-5, barely moves a 2M-parameter model).

    python benchmarks/finetune_lr_sweep.py --text ../shared/data/tinyshakespeare.txt

A small source is trained on one part of the text, then fine-tuned on another part with
each learning rate (constant, the finetune preset's other defaults); the table gives the
best validation bits per byte each reaches (the trainer's evaluation windows) and the
bare `--init-from` run (the default the source's size picks, plan.finetune_lr). Tiny
settings by default (about a minute of CPU in all on a quiet machine).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from minigpt.cli import main


def _train(*args: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", *args, "--quiet", "--sample-tokens", "0", "--device", "cpu"])
    if rc != 0:
        raise SystemExit(err.getvalue())


def _best_bpb(out: Path) -> tuple[float, float]:
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_bpb" in line]
    return evals[0]["val_bpb"], min(e["val_bpb"] for e in evals)


def run(text: Path, source_bytes: int, tune_bytes: int, source_steps: int, tune_steps: int, lrs: list[float]) -> None:
    raw = text.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "a.txt").write_bytes(raw[:source_bytes])
        (tmp / "b.txt").write_bytes(raw[len(raw) // 2 : len(raw) // 2 + tune_bytes])
        _train(
            "--data",
            str(tmp / "a.txt"),
            "--out",
            str(tmp / "src"),
            "--max-steps",
            str(source_steps),
            "--n-layer",
            "2",
            "--n-head",
            "2",
            "--n-embd",
            "64",
            "--batch-size",
            "16",
            "--eval-interval",
            str(source_steps),
            "--eval-steps",
            "4",
        )
        rows = []
        for lr in [None, *lrs]:
            out = tmp / f"ft-{lr}"
            flags = [] if lr is None else ["--lr", str(lr)]
            _train(
                "--init-from",
                str(tmp / "src"),
                "--data",
                str(tmp / "b.txt"),
                "--out",
                str(out),
                "--max-steps",
                str(tune_steps),
                "--eval-interval",
                str(max(1, tune_steps // 4)),
                "--eval-steps",
                "8",
                *flags,
            )
            before, best = _best_bpb(out)
            used = json.loads((out / "train_config.json").read_text())["optim"]["lr"]
            rows.append((("bare --init-from" if lr is None else f"--lr {lr:g}"), used, before, best))
        print("| run | lr | val bits/byte before | best val bits/byte |\n|---|---:|---:|---:|")
        for name, used, before, best in rows:
            print(f"| {name} | {used:g} | {before:.4f} | {best:.4f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--text", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"
    )
    ap.add_argument("--source-bytes", type=int, default=150_000)
    ap.add_argument("--tune-bytes", type=int, default=100_000)
    ap.add_argument("--source-steps", type=int, default=120)
    ap.add_argument("--tune-steps", type=int, default=40)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 3e-4, 1e-3, 3e-3])
    a = ap.parse_args()
    run(a.text, a.source_bytes, a.tune_bytes, a.source_steps, a.tune_steps, a.lrs)
