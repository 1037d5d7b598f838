"""Time to quality: a recipe on tinyshakespeare, wall clock to val bits per byte, beside nanoGPT.

    python benchmarks/time_to_quality.py                  # the `cpu` preset, as `python train.py` runs it
    python benchmarks/time_to_quality.py --preset nanogpt-cpu --vocab-size 257   # nanoGPT's shape, bytes
    python benchmarks/time_to_quality.py --device cuda --preset shakespeare-char --extra --max-steps 2000

It prepares ../shared/data/tinyshakespeare.txt (the tokenizer size of the preset's
bundled corpus recipe unless --vocab-size), then times the whole `python train.py`
process (start-up, evaluations and checkpoints included) and scores the final
checkpoint on the *whole* validation split (the last 10% of the file, as nanoGPT's
prepare.py splits it): every token once, in windows of block_size, each position
counted, which is what nanoGPT's random-window estimate estimates. It also counts a
trigram (interpolated Kneser-Ney) on the same data for scale.

nanoGPT on these machines (../shared/ANCHORS.md): its CPU recipe reaches val 1.8857
nats/char = 2.72 bits per byte in 2 min 48 s (goal: below that in at most 3 minutes; aim
2.5); its shakespeare-char recipe on one H100 reaches 1.4691 nats/char = 2.12 bits per
byte in ~80 s including compilation (goal: <= 2.12 in <= 30 s, start-up and compile
included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT = {"cpu": ("nanoGPT CPU recipe (ANCHORS.md)", 2.72, 168), "cuda": ("nanoGPT shakespeare-char, H100", 2.12, 80)}


def exact_bpb(run: Path, data: Path) -> dict:
    from minigpt.checkpoint import load_for_inference
    from minigpt.data import Dataset
    from minigpt.evaluate import evaluate_tokens

    ckpt, _ = load_for_inference(run / "last", "cpu", "float32")
    ds = Dataset(data)
    window, stride = ckpt.model.score_window()
    return evaluate_tokens(ckpt.model, ds.tokens("val"), ds.tokenizer.byte_lengths, window=window, stride=stride, batch_size=32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--vocab-size", type=int, default=None, help="tokenizer size (default: data/shakespeare/dataset.toml's)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags")
    args = ap.parse_args()

    from minigpt.data import prepare

    if args.vocab_size is None:
        import tomllib

        args.vocab_size = tomllib.loads((REPO / "data/shakespeare/dataset.toml").read_text())["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "ts"
        t0 = time.perf_counter()
        prepare([TINYSHAKESPEARE], data, vocab_size=args.vocab_size, progress=False)
        t_prep = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(REPO / "train.py"), "--preset", args.preset, "--data", str(data),
                            "--out", str(tmp / "gpt"), "--device", args.device, "--sample-tokens", "0", "--quiet", *args.extra],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(r.stderr)
        print(r.stderr.strip().splitlines()[0])
        gpt = exact_bpb(tmp / "gpt", data)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(REPO / "train.py"), "--model", "ngram", "--ngram-order", "3", "--data", str(data),
                            "--out", str(tmp / "ngram"), "--sample-tokens", "0", "--quiet"], capture_output=True, text=True)
        wall_ngram = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(r.stderr)
        ngram = exact_bpb(tmp / "ngram", data)

    print(f"\ntinyshakespeare, vocab {args.vocab_size} (prepared in {t_prep:.1f} s), whole validation split")
    print(f"{'run':<34} {'wall':>8} {'val bits/byte':>14}")
    name, ref_bpb, ref_s = NANOGPT[args.device]
    print(f"{name:<34} {ref_s:>7.0f}s {ref_bpb:>14.3f}")
    print(f"{'minigpt train.py --preset ' + args.preset:<34} {wall:>7.0f}s {gpt['bpb']:>14.3f}")
    print(f"{'minigpt trigram (Kneser-Ney)':<34} {wall_ngram:>7.0f}s {ngram['bpb']:>14.3f}")
    print(f"\nminigpt / nanoGPT: {gpt['bpb'] / ref_bpb:.3f}x the bits per byte in {wall / ref_s:.2f}x the time "
          f"(val loss {gpt['loss']:.4f} nats/token over {gpt['tokens']:,} tokens, {gpt['bytes']:,} bytes)")


if __name__ == "__main__":
    main()
