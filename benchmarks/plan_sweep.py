"""Sweeps behind the training plan's rules: train on each corpus of the suite with each
setting at the same step count, score the whole validation split exactly, and count the
Kneser-Ney n-grams beside them.

    python benchmarks/corpus_suite.py                                   # out/suite/*.txt first
    python benchmarks/plan_sweep.py --corpora fortunes-en python --grid "--dropout 0" "--dropout 0.1"
    python benchmarks/plan_sweep.py --corpora man --vocab 1024 2048 4096 --grid ""
    python benchmarks/plan_sweep.py --table                             # the results so far, one row a run

Results append to out/sweep/results.jsonl (one JSON object a run), so a sweep can be
stopped and resumed and its rows read by the plan's fit. Runs at equal *steps* compare
settings at equal tokens seen; settings that change the step's cost (dropout, the model's
size) are put on equal wall time with the tokens/s measured on a quiet machine
(`benchmarks/train_step_speed.py`) — this script's losses do not depend on the machine's load,
so it can run beside other work; its wall times can't be used for anything.
`--repo DIR` trains with another checkout's code (a git worktree of an older commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out" / "sweep"


def sh(cmd: list[str], repo: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(repo))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    if r.returncode:
        raise SystemExit(f"{shlex.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


def dataset(corpus: str, vocab: int, repo: Path) -> Path:
    data = OUT / "data" / f"{corpus}-v{vocab}"
    if not (data / "meta.json").exists():
        text = REPO / "out" / "suite" / f"{corpus}.txt"
        if not text.exists():
            raise SystemExit(f"{text} not found: run benchmarks/corpus_suite.py first")
        sh(
            [
                sys.executable,
                "-m",
                "minigpt.cli",
                "prepare",
                str(text),
                "--out",
                str(data),
                "--vocab-size",
                str(vocab),
                "--force",
            ],
            repo,
        )
    return data


def exact(run: Path, data: Path, repo: Path) -> dict:
    code = (
        "import json,sys\n"
        "from minigpt.data import Dataset\n"
        "from minigpt.evaluate import evaluate_tokens\n"
        "from minigpt.inference import load_for_inference\n"
        f"ckpt,_ = load_for_inference({str(run / 'last')!r}, 'cpu', 'float32')\n"
        f"ds = Dataset({str(data)!r})\n"
        "w, s = ckpt.model.score_window()\n"
        "out = {}\n"
        "r = evaluate_tokens(ckpt.model, ds.tokens('val'), ds.tokenizer.byte_lengths, "
        "window=w, stride=s, batch_size=32)\n"
        "out['bpb'] = r['bpb']\n"
        "if s == w:\n"
        "    r2 = evaluate_tokens(ckpt.model, ds.tokens('val'), ds.tokenizer.byte_lengths, window=w, stride=w // 2,"
        " batch_size=32)\n"
        "    out['bpb_stride_half'] = r2['bpb']\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(sh([sys.executable, "-c", code], repo).strip().splitlines()[-1])


def done(rows: list[dict], key: dict) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in rows)


def read_rows() -> list[dict]:
    path = OUT / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def record(row: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def table() -> None:
    rows = read_rows()
    print(f"{'corpus':16} {'vocab':>5} {'steps':>5} {'passes':>6} {'flags':32} {'bpb':>7} {'bpb/2':>7}")
    for r in sorted(rows, key=lambda r: (r["corpus"], r["vocab"], r["flags"])):
        half = r.get("bpb_stride_half")
        print(
            f"{r['corpus']:16} {r['vocab']:>5} {r['steps']:>5} {r.get('passes', 0):>6.2f} {r['flags'][:32]:32} "
            f"{r['bpb']:>7.4f} {half if half is not None else float('nan'):>7.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="*", default=[])
    ap.add_argument("--vocab", type=int, nargs="*", default=[2048])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--grid", nargs="*", default=["--dropout 0", "--dropout 0.1"], help="flag sets, one string each")
    ap.add_argument("--ngrams", type=int, nargs="*", default=[2, 3, 4, 5, 6], help="n-gram orders to count beside")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose code trains")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        table()
        return
    rows = read_rows()
    for corpus in args.corpora:
        for vocab in args.vocab:
            data = dataset(corpus, vocab, args.repo)
            meta = json.loads((data / "meta.json").read_text())
            train_tokens = meta["splits"]["train"]["tokens"]
            for n in args.ngrams:
                key = {"corpus": corpus, "vocab": vocab, "flags": f"ngram {n}"}
                if done(rows, key):
                    continue
                run = OUT / "runs" / f"{corpus}-v{vocab}-ngram{n}"
                sh(
                    [
                        sys.executable,
                        "train.py",
                        "--data",
                        str(data),
                        "--out",
                        str(run),
                        "--quiet",
                        "--model",
                        "ngram",
                        "--ngram-order",
                        str(n),
                        "--sample-tokens",
                        "0",
                    ],
                    args.repo,
                )
                row = {**key, "steps": 0, "train_tokens": train_tokens, **exact(run, data, args.repo)}
                record(row)
                rows.append(row)
                print(json.dumps(row), flush=True)
            for flags in args.grid:
                key = {"corpus": corpus, "vocab": vocab, "flags": flags, "steps": args.steps}
                if done(rows, key):
                    continue
                tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in flags) or "defaults"
                run = OUT / "runs" / f"{corpus}-v{vocab}-s{args.steps}-{tag}"
                t0 = time.perf_counter()
                sh(
                    [
                        sys.executable,
                        "train.py",
                        "--data",
                        str(data),
                        "--out",
                        str(run),
                        "--quiet",
                        "--max-steps",
                        str(args.steps),
                        "--sample-tokens",
                        "0",
                        *shlex.split(flags),
                    ],
                    args.repo,
                )
                cfg = json.loads((run / "train_config.json").read_text())
                seen = (
                    args.steps
                    * cfg["optim"]["batch_size"]
                    * cfg["optim"].get("grad_accum", 1)
                    * cfg["model"]["block_size"]
                )
                row = {
                    **key,
                    "train_tokens": train_tokens,
                    "passes": seen / train_tokens,
                    "wall_s_unquiet": time.perf_counter() - t0,
                    **exact(run, data, args.repo),
                }
                record(row)
                rows.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
