"""Fine-tuning throughput and memory: minigpt beside a plain transformers training loop.

    python benchmarks/finetune_throughput.py                        # GPT-2 124M shape, batch 4 x 256, CPU fp32
    python benchmarks/finetune_throughput.py --model-vocab 50257    # exactly GPT-2 small's 124M parameters
    python benchmarks/finetune_throughput.py --dtype bfloat16 --rounds 4 --steps 12
    python benchmarks/finetune_throughput.py --tiny --rounds 1 --steps 2 --warmup 1   # smoke test (seconds)

What is compared: fine-tuning the same GPT-2 on the same tokens with the same batch,
dtype and optimizer, on the CPU.

- The model: a GPT-2 of GPT-2 small's shape (12 layers x 12 heads x 768 wide, 1024
  positions) with random weights, built and saved by transformers (`GPT2LMHeadModel(
  GPT2Config(...)).save_pretrained`): no pretrained weights can be downloaded here.
  A real GPT-2 needs a tokenizer of 50257 ids, and a byte-level BPE of that size cannot
  be learned from tinyshakespeare (1 MB runs out of merges long before), so the
  tokenizer is trained on tinyshakespeare with --vocab-size (8192) and the config's
  vocab_size is the tokenizer's: the embedding and output head are smaller than GPT-2
  small's (~92M parameters instead of 124M), everything else is the same shape.
  `--model-vocab 50257` pads the model's vocabulary to GPT-2's instead (rows past the
  tokenizer's are never targets), which gives exactly the 124M model, at the cost of a
  head that is mostly unused.
- The data: ../shared/data/tinyshakespeare.txt (read from there, never copied into the
  repository), tokenized with that tokenizer by `minigpt prepare --tokenizer`.
- minigpt: `minigpt train --init-from HF_DIR --data DATA --block-size B --batch-size N
  --dtype D` (the fine-tune path itself: it loads the transformers-saved directory);
  tokens/s from its per-step log (which excludes evaluation and checkpoints).
- transformers: `GPT2LMHeadModel.from_pretrained(HF_DIR)` (its default attention, SDPA),
  `torch.optim.AdamW` with minigpt's finetune settings (lr 3e-5, betas (0.9, 0.99),
  weight decay 0.1), gradient clipping at 1.0, the loss from `labels=`, the same random
  windows (numpy's generator seeded with [seed, step], as minigpt's sampler); bf16 via
  `torch.autocast` when asked. Tokens/s from the wall time of each whole step.

Each measurement is its own process (so peak RSS, `ru_maxrss`, is each one's own) and
runs --warmup steps that are not counted, then --steps counted ones; rounds alternate
which goes first, so a slow minute on a noisy machine hits both. Reported per round:
median tokens/s of each, their ratio, peak RSS of each; then the median ratio over
rounds and the largest RSS of each. The goal this is meant to show: minigpt at >= 1.3x
transformers' tokens/s with no more peak memory.

Never compare with a figure recorded on another day or machine: run both here, now.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
TINY = dict(n_layer=2, n_head=2, n_embd=64, n_positions=256)  # --tiny: a smoke test of the script itself
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP, SEED = 3e-5, (0.9, 0.99), 0.1, 1.0, 1337


def peak_rss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


# ---- setup: tokenizer, model, data ------------------------------------------------------------


def setup(work: Path, args) -> tuple[Path, Path]:
    """A transformers-saved GPT-2 (+ tokenizer.json) and the corpus prepared with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt.data import prepare
    from minigpt.tokenizer import Tokenizer

    if not TINYSHAKESPEARE.is_file():
        raise SystemExit(f"{TINYSHAKESPEARE}: not found (the shared benchmark corpus)")
    hf_dir, data = work / "gpt2-shaped", work / "data"
    t0 = time.perf_counter()
    tok = Tokenizer.train_files([TINYSHAKESPEARE], args.vocab_size)
    shape = TINY if args.tiny else GPT2_SMALL
    vocab = max(tok.vocab_size, args.model_vocab)
    cfg = GPT2Config(
        vocab_size=vocab,
        **shape,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eot_id,
        eos_token_id=tok.eot_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(hf_dir)
    tok.save(hf_dir / "tokenizer.json")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    prepare([TINYSHAKESPEARE], data, tokenizer=hf_dir / "tokenizer.json", progress=False)
    print(
        f"setup: tokenizer {tok.vocab_size} tokens, model vocab {vocab}, {n_params / 1e6:.1f}M parameters "
        f"({'x'.join(str(shape[k]) for k in ('n_layer', 'n_head', 'n_embd'))}, {shape['n_positions']} positions), "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return hf_dir, data


# ---- the two children ---------------------------------------------------------------------------


def child_minigpt(args) -> dict:
    from minigpt.cli import main

    out = Path(args.out)
    total = args.warmup + args.steps
    code = main(
        [
            "train",
            "--init-from",
            args.hf,
            "--data",
            args.data,
            "--out",
            str(out),
            "--block-size",
            str(args.block_size),
            "--batch-size",
            str(args.batch_size),
            "--max-steps",
            str(total),
            "--eval-interval",
            str(10**9),
            "--eval-steps",
            "1",
            "--log-interval",
            "1",
            "--sample-tokens",
            "0",
            "--device",
            "cpu",
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
            "--no-compile",
            "--seed",
            str(SEED),
            "--quiet",
        ]
    )
    if code != 0:
        raise SystemExit(f"minigpt train exited {code}")
    import torch

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    tps = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l and l["step"] > args.warmup]
    return {"tokens_per_s": statistics.median(tps), "peak_rss": peak_rss(), "threads": torch.get_num_threads()}


def child_transformers(args) -> dict:
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    if args.threads:
        torch.set_num_threads(args.threads)
    model = GPT2LMHeadModel.from_pretrained(args.hf, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    tokens = np.memmap(Path(args.data) / "train.bin", dtype=meta["dtype"], mode="r")
    B, T = args.batch_size, args.block_size
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        # The windows minigpt's sampler draws for this step: start offsets from [seed, step].
        offsets = np.random.default_rng([SEED, step]).integers(0, len(tokens) - T, size=B)
        x = torch.from_numpy(tokens[offsets[:, None] + np.arange(T)].astype(np.int64))
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise SystemExit(f"transformers: loss {loss.item()} at step {step}")
    tps = [B * T / t for t in times[args.warmup :]]
    return {"tokens_per_s": statistics.median(tps), "peak_rss": peak_rss(), "threads": torch.get_num_threads()}


def run_child(which: str, hf: Path, data: Path, work: Path, args) -> dict:
    """One measurement in its own process: (tokens/s, peak RSS, threads, wall seconds)."""
    result = work / f"{which}.json"
    out = work / f"run-{which}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        which,
        "--hf",
        str(hf),
        "--data",
        str(data),
        "--out",
        str(out),
        "--result",
        str(result),
        "--block-size",
        str(args.block_size),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="counted steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="steps not counted (allocator and kernel warm-up)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=8192, help="byte-level BPE trained on tinyshakespeare")
    ap.add_argument("--model-vocab", type=int, default=0, help="pad the model's vocabulary to this (50257: GPT-2's)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the script, measures nothing")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    # (internal) one measurement, in a child process
    ap.add_argument("--child", choices=("minigpt", "transformers"), help=argparse.SUPPRESS)
    ap.add_argument("--hf", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        r = child_minigpt(args) if args.child == "minigpt" else child_transformers(args)
        Path(args.result).write_text(json.dumps(r))
        return

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        hf, data = setup(work, args)
        print(
            f"batch {args.batch_size} x {args.block_size}, {args.dtype}, {args.warmup} warm-up + {args.steps} steps, "
            f"{args.rounds} rounds",
            flush=True,
        )
        rows = []
        for r in range(args.rounds):
            order = ("minigpt", "transformers") if r % 2 == 0 else ("transformers", "minigpt")
            got = {w: run_child(w, hf, data, work, args) for w in order}
            ratio = got["minigpt"]["tokens_per_s"] / got["transformers"]["tokens_per_s"]
            rows.append({"round": r + 1, **{f"{w}_{k}": v for w in got for k, v in got[w].items()}, "ratio": ratio})
            m, t = got["minigpt"], got["transformers"]
            print(
                f"round {r + 1}: minigpt {m['tokens_per_s']:,.0f} tok/s, {m['peak_rss'] / 2**30:.2f} GiB peak | "
                f"transformers {t['tokens_per_s']:,.0f} tok/s, {t['peak_rss'] / 2**30:.2f} GiB peak | "
                f"ratio {ratio:.2f}x (threads {m['threads']}/{t['threads']})",
                flush=True,
            )
        ratio = statistics.median(r["ratio"] for r in rows)
        rss_m = max(r["minigpt_peak_rss"] for r in rows)
        rss_t = max(r["transformers_peak_rss"] for r in rows)
        met = ratio >= 1.3 and rss_m <= rss_t
        print(
            f"median ratio {ratio:.2f}x; peak RSS minigpt {rss_m / 2**30:.2f} GiB vs transformers "
            f"{rss_t / 2**30:.2f} GiB; goal (>= 1.3x at <= its memory): {'met' if met else 'not met'}"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "args": {k: v for k, v in vars(args).items() if v is not None},
                        "rounds": rows,
                        "median_ratio": ratio,
                        "goal_met": met,
                    },
                    indent=2,
                )
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
