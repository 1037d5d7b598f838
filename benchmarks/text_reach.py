"""How far back a prepared text repeats itself: for each position, the distance to the last
occurrence of the same token trigram, as shares of the positions in distance bands. The
(128, 256] band is what a context of 256 tokens can read that one of 128 cannot; a text whose
trigrams mostly recur within a few dozen tokens, or never, has little to gain from it.

    python benchmarks/text_reach.py out/ab/py-k1/data out/ab/de-k1/data ...

Reads each dataset's train.bin (meta.json's dtype) in four evenly spaced spans of --sample
tokens in all, as the plan does (`minigpt.plan.reach` is the (128, 256] share: from 0.035 a
planned run reads 256 tokens of context). Measured in the seventeenth and eighteenth passes
(BENCHMARKS.md): most prose 0.012-0.029, code and markup 0.048-0.088, the Chinese fortunes 0.041.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minigpt.plan import REACH_SAMPLE, reading_spans, trigram_gaps  # noqa: E402

BANDS = ((0, 64), (64, 128), (128, 256), (256, 512), (512, None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="prepared dataset directories (meta.json, train.bin)")
    ap.add_argument("--sample", type=int, default=REACH_SAMPLE, help="tokens read per text (the plan's)")
    args = ap.parse_args()
    head = " | ".join(f"({a}, {b}]" if b else f"> {a}" for a, b in BANDS)
    print(f"| dataset | train tokens | {head} | never |")
    print("|---|---:|" + "---:|" * (len(BANDS) + 1))
    for d in args.datasets:
        meta = json.loads((d / "meta.json").read_text())
        train = np.memmap(d / meta["splits"]["train"]["file"], dtype=meta["dtype"], mode="r")
        gaps = np.concatenate([trigram_gaps(train[s : s + n]) for s, n in reading_spans(len(train), args.sample)])
        shares = [np.mean((gaps > a) & ((gaps <= b) if b else True)) for a, b in BANDS]
        cells = " | ".join(f"{x:.3f}" for x in shares)
        print(f"| {d} | {len(train):,} | {cells} | {np.mean(gaps < 0):.3f} |")


if __name__ == "__main__":
    main()
