"""Decode throughput of minigpt's sampler beside transformers' `GPT2LMHeadModel.generate`.

    python benchmarks/decode_throughput.py                       # CPU, fp32, GPT-2 124M shape
    python benchmarks/decode_throughput.py --device cuda --dtype bfloat16
    python benchmarks/decode_throughput.py --batches 1 --new-tokens 64   # a quick look

Both models carry the *same* random GPT-2 124M weights (12 x 768, block 1024, vocab
50257): transformers builds them, `minigpt import-hf` converts them. Both sample
(temperature 1, top-k 50: transformers' default) `--new-tokens` tokens after an 8-token
prompt, after one warm-up generation each (so compilation and CUDA-graph capture are not
timed). tokens/s counts generated tokens of all rows: batch x new tokens / seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_hf(model, prompt, batch, new_tokens, device):
    ids = torch.tensor([prompt], device=device)
    kw = dict(
        do_sample=True,
        temperature=1.0,
        top_k=50,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_return_sequences=batch,
        pad_token_id=50256,
    )
    model.generate(ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(ids, **kw)
    sync(device)
    dt = time.perf_counter() - t0
    assert out.shape == (batch, len(prompt) + new_tokens), out.shape
    return batch * new_tokens / dt


def time_minigpt(model, prompt, batch, new_tokens, device, compile_):
    from minigpt.sampling import SamplingParams, generate

    params = SamplingParams(temperature=1.0, top_k=50)
    for _ in generate(model, [prompt] * batch, 8, params, seed=0, compile=compile_):  # warm-up (capture, compile)
        pass
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for step in generate(model, [prompt] * batch, new_tokens, params, seed=1, compile=compile_):
        n += sum(step.new)
    sync(device)
    dt = time.perf_counter() - t0
    assert n == batch * new_tokens, n
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile minigpt's decode step (default: on for CUDA)",
    )
    ap.add_argument("--skip-hf", action="store_true", help="time minigpt only")
    args = ap.parse_args()

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt.hf import import_hf
    from minigpt.inference import load_for_inference

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(Path(tmp) / "hf")
        import_hf(Path(tmp) / "hf", Path(tmp) / "ours")
        # exactly what `minigpt sample` does: cast, and prepack on the CPU
        ours = load_for_inference(Path(tmp) / "ours", args.device, args.dtype, need_tokenizer=False)[0].model
    hf.to(device=device, dtype=dtype)
    prompt = torch.randint(0, 50257, (8,), generator=torch.Generator().manual_seed(0)).tolist()

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device {device} ({device_name}), "
        f"{args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.new_tokens} new tokens"
        f"{', minigpt decode compiled' if compile_ else ''}"
    )
    print(f"{'batch':>5}  {'transformers':>14}  {'minigpt':>14}  {'ratio':>6}")
    with torch.inference_mode():
        for b in args.batches:
            theirs = float("nan") if args.skip_hf else time_hf(hf, prompt, b, args.new_tokens, device)
            mine = time_minigpt(ours, prompt, b, args.new_tokens, device, compile_)
            print(f"{b:>5}  {theirs:>10.1f} t/s  {mine:>10.1f} t/s  {mine / theirs:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
