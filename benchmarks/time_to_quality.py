"""Time to quality: `python train.py` on a corpus, wall clock to exact val bits per byte,
beside Kneser-Ney n-grams of orders 2-6 counted on the same data.

    python benchmarks/time_to_quality.py                                  # tinyshakespeare, the default recipe
    python benchmarks/time_to_quality.py --text minigpt/texts/shakespeare/shakespeare.txt.gz   # the bundled corpus
    python benchmarks/time_to_quality.py --text /usr/lib/python3.11/email --vocab-size 2048   # source code
    python benchmarks/time_to_quality.py --extra --max-time 170           # a 3-minute budget
    python benchmarks/time_to_quality.py --extra --preset nanogpt-cpu     # any train.py flags after --extra

It prepares the text (`minigpt prepare`, the tokenizer size of the bundled corpus's recipe
unless --vocab-size; preparation is not timed), then times the whole `python train.py`
process (start-up, evaluations, checkpoints and the final sample included) and scores the
final checkpoint on the *whole* validation split (the last 10% of the text, as nanoGPT's
prepare.py splits it): every token once, in windows of block_size. Then it counts
interpolated Kneser-Ney n-grams of each `--ngram-orders` on the same data and scores them
the same way (exactly: an n-gram sees its full context everywhere).

`--suite NAME ...` runs the corpus suite (benchmarks/corpus_suite.py builds out/suite/NAME.txt;
with --held-out, the texts no rule was fitted on) the way a new user does: `python train.py
--data out/suite/NAME.txt` end to end (preparing the text is timed too: the plan's budget
covers the whole process), flags from --extra; scores the
checkpoint `minigpt eval` reads (`best`) on the whole validation split both ways (non-overlapping
windows, as nanoGPT's figures are measured, and a stride of half the context), and counts the
n-grams on the same prepared data. Rows append to out/suite/results.jsonl with the plan line.

    python benchmarks/time_to_quality.py --suite fortunes-en python man
    python benchmarks/time_to_quality.py --suite fortunes-zh --ngram-orders 3 4 5 6   # a held-out text
    python benchmarks/time_to_quality.py --suite tinyshakespeare --extra --max-time 3m

nanoGPT on these machines (../shared/ANCHORS.md), tinyshakespeare: its CPU recipe reaches
2.72 bits per byte in 2 min 48 s; its shakespeare-char model 2.12 bits per byte on an
A100/H100 (1.4697 nats per char, the nanoGPT README).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def exact(run: Path, data: Path, link: str = "last", half_stride: bool = False) -> dict:
    """Loss and bits per byte of a run's checkpoint (`link`) over the whole val split; with
    `half_stride`, also scored with windows overlapping by half the context (`bpb_half`: every
    token after the first window then has at least half a context, as an n-gram always has)."""
    from minigpt.data import Dataset
    from minigpt.evaluate import evaluate_tokens
    from minigpt.inference import load_for_inference

    ckpt, _ = load_for_inference(run / link, "cpu", "float32")
    ds = Dataset(data)
    window, stride = ckpt.model.score_window()
    r = evaluate_tokens(
        ckpt.model, ds.tokens("val"), ds.tokenizer.byte_lengths, window=window, stride=stride, batch_size=32
    )
    if half_stride and stride == window:
        h = evaluate_tokens(
            ckpt.model, ds.tokens("val"), ds.tokenizer.byte_lengths, window=window, stride=window // 2, batch_size=32
        )
        r["bpb_half"] = h["bpb"]
    return r


def suite(names: list[str], extra: list[str], orders: list[int]) -> None:
    """Bare end-to-end runs on the corpus suite, beside the n-grams (see the module's docstring)."""
    out_dir = REPO / "out" / "suite"
    print(f"{'corpus':16} {'wall':>7} {'GPT':>7} {'GPT/2':>7} {'n-gram':>7} {'lead':>7}  plan", flush=True)
    for name in names:
        text = out_dir / f"{name}.txt"
        if not text.exists():
            raise SystemExit(f"{text} not found: run benchmarks/corpus_suite.py first")
        run = REPO / "out" / "bare" / name
        if run.exists():
            import shutil

            shutil.rmtree(run)
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--data", str(text), "--out", str(run), "--quiet", *extra],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if r.returncode:
            print(f"{name}: exit {r.returncode}: {r.stderr.strip()[-500:]}", flush=True)
            continue
        plan = next((line for line in r.stderr.splitlines() if line.startswith("plan:")), "")
        data = run / "data"
        ev = exact(run, data, "best", half_stride=True)
        grams = {}
        for n in orders:
            w, _ = train(data, run / f"ngram{n}", ["--model", "ngram", "--ngram-order", str(n), "--sample-tokens", "0"])
            grams[n] = exact(run / f"ngram{n}", data)["bpb"]
        best_n = min(grams, key=grams.get) if grams else None
        row = {
            "corpus": name,
            "extra": extra,
            "wall_s": wall,
            "bpb": ev["bpb"],
            "bpb_half": ev.get("bpb_half"),
            "ngram_order": best_n,
            "ngram_bpb": grams.get(best_n),
            "ngrams": grams,
            "plan": plan,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        with open(out_dir / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        gram = grams.get(best_n, float("nan"))  # nan: no --ngram-orders
        print(
            f"{name:16} {wall:>6.1f}s {ev['bpb']:>7.4f} {ev.get('bpb_half', float('nan')):>7.4f} "
            f"{gram:>7.4f} {gram - ev['bpb']:>+7.4f}  {plan}",
            flush=True,
        )


def train(data: Path, out: Path, flags: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data", str(data), "--out", str(out), "--quiet", *flags],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return wall, r.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", nargs="+", default=[str(TINYSHAKESPEARE)], help="what `minigpt prepare` takes")
    ap.add_argument(
        "--vocab-size", type=int, default=None, help="tokenizer size (default: the bundled corpus's dataset.toml)"
    )
    ap.add_argument("--ngram-orders", type=int, nargs="*", default=[2, 3, 4, 5, 6])
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--suite", nargs="+", default=None, metavar="NAME", help="bare end-to-end runs on these corpora")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags (after everything else)")
    args = ap.parse_args()
    if args.suite:
        suite(args.suite, args.extra, args.ngram_orders)
        return

    from minigpt.data import prepare

    if args.vocab_size is None:
        args.vocab_size = int(
            re.search(r"vocab_size\s*=\s*(\d+)", (REPO / "minigpt/texts/shakespeare/dataset.toml").read_text()).group(1)
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        t0 = time.perf_counter()
        meta = prepare(args.text, data, vocab_size=args.vocab_size, progress=False)
        t_prep = time.perf_counter() - t0
        wall, log = train(data, tmp / "gpt", args.extra)
        ev = exact(tmp / "gpt", data)
        cfg = json.loads((tmp / "gpt" / "train_config.json").read_text())
        summary = log.strip().splitlines()[0] if log.strip() else ""
        rows.append(
            {
                "run": "GPT: python train.py " + " ".join(args.extra),
                "wall_s": wall,
                "bpb": ev["bpb"],
                "loss": ev["loss"],
                "steps": cfg["optim"]["max_steps"],
            }
        )
        print(
            f"{summary}\nGPT: {wall:.1f} s, {cfg['optim']['max_steps']} steps, val {ev['bpb']:.4f} bits/byte",
            flush=True,
        )
        for n in args.ngram_orders:
            w, _ = train(data, tmp / f"ngram{n}", ["--model", "ngram", "--ngram-order", str(n), "--sample-tokens", "0"])
            e = exact(tmp / f"ngram{n}", data)
            rows.append({"run": f"{n}-gram, Kneser-Ney", "wall_s": w, "bpb": e["bpb"], "loss": e["loss"], "steps": 1})
            print(f"{n}-gram: {w:.1f} s, val {e['bpb']:.4f} bits/byte", flush=True)

    s = meta["splits"]
    print(
        f"\n{', '.join(map(str, args.text))}: vocab {args.vocab_size}, train {s['train']['tokens']:,} tokens "
        f"({s['train']['bytes']:,} bytes), val {s['val']['tokens']:,} tokens ({s['val']['bytes']:,} bytes); "
        f"prepared in {t_prep:.1f} s (not timed below)"
    )
    print(f"{'run':<48} {'wall':>8} {'val bits/byte':>14}")
    for r in rows:
        print(f"{r['run'][:48]:<48} {r['wall_s']:>7.1f}s {r['bpb']:>14.4f}")
    best = min((r for r in rows[1:]), key=lambda r: r["bpb"], default=None)
    if best:
        print(f"\nGPT - best n-gram ({best['run']}): {rows[0]['bpb'] - best['bpb']:+.4f} bits per byte")
    if args.json:
        args.json.write_text(json.dumps({"text": args.text, "vocab_size": args.vocab_size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
