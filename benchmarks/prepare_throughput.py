"""Throughput and peak memory of `minigpt prepare`, beside raw HF `encode_batch`.

    python benchmarks/prepare_throughput.py                    # 10 MB and 200 MB
    python benchmarks/prepare_throughput.py --sizes 10 50      # other sizes (MB)

Corpora are tinyshakespeare (../shared/data) repeated to each size. One tokenizer
(vocab 4096, trained once on tinyshakespeare) serves every measurement. Each measurement
runs in a fresh child process, so its peak RSS is its own:

- hf encode_batch:      read the file, cut it into chunks of 200 lines, `Tokenizer.encode_batch`
                        over batches of 256 chunks, count the ids (the reference pipeline)
- hf encode_batch_fast: the same with `encode_batch_fast` (no offsets; what minigpt uses)
- minigpt prepare:      `prepare(file, out, tokenizer=...)`: validate (pass 1), encode and write
                        train.bin/val.bin (pass 3), atomic rename (no tokenizer training)
- minigpt prepare+train: the same, also training the tokenizer on the train split (pass 2)

Prints MB/s (decimal megabytes of text per second of the measured call, interpreter
start-up excluded; the best of --repeats runs, since these machines are noisy) and peak
RSS (VmHWM of the child process), and the ratios the foundation issue sets: prepare's
throughput against HF encode_batch (goal: at most 10% slower), and peak RSS at the
largest size against the smallest (goal: within 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

CHILD = textwrap.dedent(
    """
    import json, sys, time
    mode, path, tok_path, out = sys.argv[1:5]
    if mode.startswith("hf"):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_path)
        encode = tok.encode_batch_fast if mode == "hf_fast" else tok.encode_batch
        t0 = time.perf_counter()
        n_tokens = 0
        n_bytes = 0
        with open(path, encoding="utf-8") as f:
            lines, chunks = [], []
            for line in f:
                lines.append(line)
                if len(lines) == 200:
                    chunks.append("".join(lines)); lines = []
                    if len(chunks) == 256:
                        n_tokens += sum(len(e.ids) for e in encode(chunks, add_special_tokens=False)); chunks = []
            if lines:
                chunks.append("".join(lines))
            if chunks:
                n_tokens += sum(len(e.ids) for e in encode(chunks, add_special_tokens=False))
        dt = time.perf_counter() - t0
    else:
        from minigpt.data import prepare
        t0 = time.perf_counter()
        meta = prepare([path], out, tokenizer=None if mode == "prepare_train" else tok_path, vocab_size=4096,
                       progress=False, force=True)
        dt = time.perf_counter() - t0
        n_tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    import os
    # Peak RSS of this process: VmHWM (ru_maxrss would include the parent's peak, since
    # Linux carries it across fork + exec).
    rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": dt, "tokens": n_tokens, "bytes": os.path.getsize(path), "rss": rss}))
    """
)


MODES = ("hf", "hf_fast", "prepare", "prepare_train")


def run_child(mode: str, path: Path, tok: Path, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), str(tok), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 200], help="corpus sizes in MB (default: 10 200)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="text to repeat (default: tinyshakespeare)")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="what to measure (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each mode's fastest run is reported (default: 3)")
    args = ap.parse_args()
    if not args.corpus.exists():
        raise SystemExit(f"corpus not found: {args.corpus}")
    sys.path.insert(0, str(REPO))
    from minigpt.tokenizer import Tokenizer

    base = args.corpus.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        tok_path = tmp / "tokenizer.json"
        Tokenizer.train([base], vocab_size=4096).save(tok_path)
        results = {}
        for mb in args.sizes:
            path = tmp / f"corpus_{mb}mb.txt"
            target = mb * 1_000_000
            with open(path, "w", encoding="utf-8") as f:
                written = 0
                while written < target:
                    f.write(base)
                    written += len(base)
            # Rounds that interleave the modes, so a slow spell of this shared machine
            # hits them all alike; each mode keeps its fastest run (and its highest RSS).
            runs = {m: [] for m in args.modes}
            for _ in range(args.repeats):
                for mode in args.modes:
                    runs[mode].append(run_child(mode, path, tok_path, tmp / f"out_{mb}_{mode}"))
            for mode in args.modes:
                r = min(runs[mode], key=lambda x: x["seconds"])
                r["rss"] = max(x["rss"] for x in runs[mode])
                results[(mb, mode)] = r
                print(
                    f"{mb:>5} MB  {mode:<14} {r['bytes'] / r['seconds'] / 1e6:7.2f} MB/s   "
                    f"peak RSS {r['rss'] / 2**20:7.1f} MiB"
                    f"   {r['tokens']:,} tokens",
                    flush=True,
                )
            path.unlink()

    if set(args.modes) != set(MODES):
        return
    print("\nsize   HF encode_batch   minigpt prepare   prepare / HF   (+ tokenizer training)")
    for mb in args.sizes:
        hf, pr, pt = results[(mb, "hf")], results[(mb, "prepare")], results[(mb, "prepare_train")]
        hf_s, pr_s, pt_s = (r["bytes"] / r["seconds"] / 1e6 for r in (hf, pr, pt))
        print(f"{mb:>4} MB  {hf_s:9.2f} MB/s    {pr_s:9.2f} MB/s      {pr_s / hf_s:6.2f}x        {pt_s:6.2f} MB/s")
    lo, hi = min(args.sizes), max(args.sizes)
    if lo != hi:
        ratio = results[(hi, "prepare")]["rss"] / results[(lo, "prepare")]["rss"]
        print(
            f"\npeak RSS of minigpt prepare: {results[(hi, 'prepare')]['rss'] / 2**20:.0f} MiB at {hi} MB vs "
            f"{results[(lo, 'prepare')]['rss'] / 2**20:.0f} MiB at {lo} MB = {ratio:.2f}x (goal <= 1.5x)"
        )
        ratio = results[(hi, "prepare_train")]["rss"] / results[(lo, "prepare_train")]["rss"]
        print(
            f"with tokenizer training: {results[(hi, 'prepare_train')]['rss'] / 2**20:.0f} MiB vs "
            f"{results[(lo, 'prepare_train')]['rss'] / 2**20:.0f} MiB = {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
