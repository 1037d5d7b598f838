"""CPU decode throughput of minigpt's int8 weights beside its fp32 and transformers' fp32.

    python benchmarks/quantized_decode.py                           # GPT-2 124M shape, batch 1 and 8
    python benchmarks/quantized_decode.py --batches 1 --new-tokens 32   # a quick look
    python benchmarks/quantized_decode.py --checkpoint out/mine      # a trained run: + bits per byte, greedy text

All three carry the *same* weights: by default a random GPT-2 124M (12 x 768, block 1024,
vocab 50257) that transformers builds and `minigpt import-hf` converts; with --checkpoint,
that run exported with `minigpt export-hf`. Each samples (temperature 1, top-k 50)
`--new-tokens` tokens after an 8-token prompt, after one warm-up generation. tokens/s
counts generated tokens of all rows. The int8 models are what `--quantize METHOD` loads,
one column per method (`minigpt/quantize.py`): `int8` (weight-only, per-channel symmetric
weights, `aten._weight_int8pack_mm` with bf16 activations) and `int8-dynamic` (activations
quantized per call too, fbgemm's `quantized::linear_dynamic`). Rounds interleave the
columns (--rounds); each cell prints every round's figure, the median first.

With --checkpoint and --data (a prepared dataset in the checkpoint's tokenizer), it also
prints validation bits per byte of fp32 and int8 (`minigpt eval`'s number; the issue's
bar is a difference under 0.01) and each model's greedy continuation of --prompt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tokens_per_s(fn, batch: int, new_tokens: int) -> float:
    fn(batch, 8)  # warm-up
    t0 = time.perf_counter()
    fn(batch, new_tokens)
    return batch * new_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--checkpoint", metavar="DIR", help="a trained run or checkpoint (default: random GPT-2 124M)")
    ap.add_argument("--data", metavar="DIR", help="with --checkpoint: a prepared dataset to score bits per byte on")
    ap.add_argument("--prompt", default="ROMEO:", help="with --checkpoint: prompt of the greedy texts")
    ap.add_argument("--skip-hf", action="store_true", help="time minigpt only")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch size")
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from minigpt.completion import complete
    from minigpt.hf import export_hf, import_hf
    from minigpt.inference import load_for_inference
    from minigpt.quantize import METHODS
    from minigpt.sampling import SamplingParams, generate

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            src = Path(args.checkpoint)
            export_hf(src, tmp / "hf")
        else:
            GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp / "hf")
            import_hf(tmp / "hf", tmp / "ours")
            src = tmp / "ours"
        hf = AutoModelForCausalLM.from_pretrained(tmp / "hf").eval()
        fp32, _ = load_for_inference(src, "cpu", "float32", need_tokenizer=False)
        quantized = {m: load_for_inference(src, "cpu", "float32", need_tokenizer=False, quantize=m)[0] for m in METHODS}
    vocab = fp32.model.config.vocab_size
    prompt = torch.randint(0, vocab, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=1.0, top_k=50)

    def ours(model):
        def run(batch, n):
            for _ in generate(model, [prompt] * batch, n, params, seed=0):
                pass

        return run

    def theirs(batch, n):
        ids = torch.tensor([prompt])
        hf.generate(
            ids,
            do_sample=True,
            temperature=1.0,
            top_k=50,
            max_new_tokens=n,
            min_new_tokens=n,
            num_return_sequences=batch,
            pad_token_id=0,
        )

    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, "
        f"{args.new_tokens} new tokens, {args.checkpoint or 'random GPT-2 124M'}"
    )
    columns = {"transformers fp32": theirs, "minigpt fp32": ours(fp32.model)}
    columns.update({f"minigpt {m}": ours(ck.model) for m, ck in quantized.items()})
    if args.skip_hf:
        del columns["transformers fp32"]
    print("batch | " + " | ".join(columns) + " | " + " | ".join(f"{m} / hf | {m} / fp32" for m in quantized))
    with torch.inference_mode():
        for b in args.batches:
            runs = {name: [] for name in columns}
            for _ in range(args.rounds):
                for name, fn in columns.items():
                    runs[name].append(tokens_per_s(fn, b, args.new_tokens))
            med = {name: statistics.median(v) for name, v in runs.items()}
            cells = [f"{med[n]:.1f} ({', '.join(f'{x:.1f}' for x in runs[n])})" for n in columns]
            for m in quantized:
                # Ratios of medians; each round's own ratio spread is what the figures in brackets show.
                q = med[f"minigpt {m}"]
                cells += [f"{q / med.get('transformers fp32', float('nan')):.2f}x", f"{q / med['minigpt fp32']:.2f}x"]
            print(f"{b} | " + " | ".join(cells), flush=True)

        if args.checkpoint and args.data:
            from minigpt.data import Dataset
            from minigpt.evaluate import evaluate_tokens

            data = Dataset(args.data)
            for name, ck in (("fp32", fp32), *quantized.items()):
                window, stride = ck.model.score_window()
                ev = evaluate_tokens(
                    ck.model, data.tokens("val"), data.tokenizer.byte_lengths, window=window, stride=stride
                )
                print(f"{name}: validation bits per byte {ev['bpb']:.4f}")
        if args.checkpoint and fp32.tokenizer is not None:
            greedy = SamplingParams(temperature=0)
            for name, ck in (("fp32", fp32), *quantized.items()):
                text = complete(ck.model, ck.tokenizer, args.prompt, max_new_tokens=60, params=greedy)[0].text
                print(f"{name} greedy: {args.prompt + text!r}")


if __name__ == "__main__":
    main()
