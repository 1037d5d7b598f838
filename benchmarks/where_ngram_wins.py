"""Where a Kneser-Ney n-gram beats the GPT on a corpus of the suite, token by token: the
validation text split into what repeats the training text verbatim (inside a span of
`--min-repeat` tokens that occurs in the training text: `evaluate.copied_positions`, the
spans `minigpt eval`'s memorisation counts) and the rest, each scored by
the GPT (non-overlapping windows, and a stride of half the context) and by the n-gram.

    python benchmarks/time_to_quality.py --suite fortunes-ru man     # makes out/bare/NAME
    python benchmarks/where_ngram_wins.py fortunes-ru man fortunes-en
    python benchmarks/where_ngram_wins.py --shares out/bare/perl/data out/bare/man/data  # repeats

It reads the runs `time_to_quality.py --suite` leaves in out/bare/NAME: the GPT's `best`
checkpoint and the n-grams it counted (`ngramN`; the best order it found unless --order), or
those under --runs.
Text an n-gram has seen is text it can copy: a 6-gram that has counted a sentence predicts
its continuation almost surely, while a small GPT trained a few passes has to have stored
it in its weights. On text that does not repeat, both have to generalise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_token_nats(run: Path, link: str, val: np.ndarray, lengths: np.ndarray, half: bool) -> np.ndarray:
    from minigpt.evaluate import evaluate_tokens
    from minigpt.inference import load_for_inference

    ckpt, _ = load_for_inference(run / link, "cpu", "float32")
    window, stride = ckpt.model.score_window()
    if half:
        stride = window // 2
    nats = np.full(len(val), np.nan)
    evaluate_tokens(ckpt.model, val, lengths, window=window, stride=stride, batch_size=32, nats_out=nats)
    return nats


def analyse(runs: Path, name: str, order: int | None, span: int) -> dict:
    from minigpt.dataset import Dataset
    from minigpt.evaluate import copied_positions

    run = runs / name
    if not (run / "best").exists():
        raise SystemExit(f"{run}/best not found: run `benchmarks/time_to_quality.py --suite {name}` first")
    if order is None:
        orders = sorted(int(p.name[5:]) for p in run.glob("ngram*") if p.name[5:].isdigit())
        if not orders:
            raise SystemExit(f"no n-gram in {run}: time_to_quality.py counts them")
        results = runs.parent / "suite" / "results.jsonl"
        best = [json.loads(line) for line in results.read_text().splitlines() if f'"corpus": "{name}"' in line]
        order = best[-1]["ngram_order"] if best and best[-1]["ngram_order"] in orders else orders[-1]
    ds = Dataset(run / "data")
    lengths = np.asarray(ds.tokenizer.byte_lengths, dtype=np.int64)
    train, val = np.asarray(ds.tokens("train")), np.asarray(ds.tokens("val"))
    repeat = copied_positions(val, train, n=span, vocab_size=len(lengths))
    scored = np.arange(len(val)) >= 1
    nbytes = lengths[val].astype(np.float64)
    models = {
        "GPT": per_token_nats(run, "best", val, lengths, half=False),
        "GPT, stride half": per_token_nats(run, "best", val, lengths, half=True),
        f"{order}-gram": per_token_nats(run, f"ngram{order}", val, lengths, half=False),
    }
    row = {"corpus": name, "span": span, "order": order}
    for part, sel in (("all", scored), ("repeats", scored & repeat), ("the rest", scored & ~repeat)):
        sel = sel & (nbytes > 0)
        row[part] = {"bytes": float(nbytes[sel].sum() / nbytes[scored & (nbytes > 0)].sum())}
        for m, nats in models.items():
            row[part][m] = float(nats[sel].sum() / math.log(2) / nbytes[sel].sum()) if sel.any() else float("nan")
    return row


def shares(data_dirs: list[Path], spans: list[int]) -> None:
    """How much each prepared text repeats itself, at each span length: the share of the
    validation split's tokens inside a span the training split holds verbatim, and the same
    for the training split's last tenth against the rest of it (what a plan could measure
    without reading the validation text). BENCHMARKS.md, thirteenth pass."""
    from minigpt.dataset import Dataset
    from minigpt.evaluate import copied_positions

    print("| data | train tokens | " + " | ".join(f"{n}: val / train's tail" for n in spans) + " |")
    print("|---|---:|" + "---:|" * len(spans))
    for d in data_dirs:
        ds = Dataset(d)
        train, val = np.asarray(ds.tokens("train")), np.asarray(ds.tokens("val"))
        cut = len(train) - len(train) // 10
        cells = []
        for n in spans:
            v = copied_positions(val, train, n=n, vocab_size=ds.vocab_size).mean()
            t = copied_positions(train[cut:], train[:cut], n=n, vocab_size=ds.vocab_size).mean()
            cells.append(f"{v:.3f} / {t:.3f}")
        print(f"| {d} | {len(train) / 1e6:.2f}M | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="corpora of the suite, each with a run in out/bare/NAME")
    ap.add_argument(
        "--shares",
        type=Path,
        nargs="+",
        metavar="DATA",
        help="instead: how much these prepared texts repeat themselves",
    )
    ap.add_argument("--spans", type=int, nargs="+", default=[8, 16, 32], help="span lengths for --shares")
    ap.add_argument("--order", type=int, default=None, help="the n-gram's order (default: the best one counted)")
    ap.add_argument("--runs", type=Path, default=REPO / "out" / "bare", help="where the suite's runs are")
    ap.add_argument("--min-repeat", type=int, default=8, help="tokens a verbatim repeat of the training text spans")
    args = ap.parse_args()
    if args.shares:
        shares(args.shares, args.spans)
        return
    if not args.names:
        ap.error("name a corpus of the suite (or --shares DATA)")
    print(
        f"| corpus | part of the val text ({args.min_repeat}-token repeats of train) | share of bytes | GPT | "
        "GPT, stride half | n-gram | GPT's lead (stride half) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.names:
        row = analyse(args.runs, name, args.order, args.min_repeat)
        gram = f"{row['order']}-gram"
        for part in ("all", "repeats", "the rest"):
            r = row[part]
            print(
                f"| {name} | {part} | {r['bytes']:.1%} | {r['GPT']:.3f} | {r['GPT, stride half']:.3f} | "
                f"{r[gram]:.3f} ({gram}) | {r[gram] - r['GPT, stride half']:+.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
