"""llama.cpp running minigpt's GGUF files: bits per byte and tokenization beside minigpt's own.

    python benchmarks/gguf_parity.py --checkpoint out/shakespeare/best            # its run's validation split
    python benchmarks/gguf_parity.py --checkpoint RUN --data DIR --tokens 32768

Needs llama-cpp-python (it builds llama.cpp from source; see BENCHMARKS.md for the flags
used on a VM whose CPU reports AMX that the kernel does not grant). For each GGUF type
(f32, f16, q8_0) the checkpoint is exported with `minigpt export-gguf`, loaded by
llama.cpp, and scored on the first --tokens validation tokens in non-overlapping windows
of the model's context (`minigpt eval`'s windows), beside minigpt's fp32 model on the same
windows: bits per byte of each, their difference, and the largest logit difference. Then
the tokenizer: llama.cpp's ids against minigpt's for every line of the scored text and a
set of hand-made strings (whitespace runs, digits, Unicode, the end token's text).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRINGS = ["ROMEO: thou art", "  héllo\n\n\tworld 123", "x_1 = 'é'", "Привет, мир!", "a  b   c\n\n\n", "1234567890"]


def bits_per_byte(logits_of, windows: list[np.ndarray], byte_lengths: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Bits per byte of next-token predictions over `windows` (each scores its own tokens
    1..T-1 from the ones before), and every window's logits (for the comparison)."""
    nll, nbytes, all_logits = 0.0, 0, []
    for w in windows:
        logits = logits_of(w)  # [T, V] float32
        all_logits.append(logits)
        logp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), -1)
        targets = torch.from_numpy(w[1:].astype(np.int64))
        nll -= float(logp.gather(1, targets[:, None]).sum())
        nbytes += int(byte_lengths[w[1:]].sum())
    return nll / math.log(2) / nbytes, all_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, metavar="DIR", help="a run or checkpoint directory (a GPT)")
    ap.add_argument("--data", metavar="DIR", help="prepared dataset (default: the one its run.json names)")
    ap.add_argument("--tokens", type=int, default=16384, help="validation tokens to score")
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    args = ap.parse_args()

    import llama_cpp

    from minigpt.checkpoint import load_checkpoint, resolve_checkpoint
    from minigpt.data import Dataset
    from minigpt.gguf_export import export_gguf, ggml_cpu_gelu

    path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, "cpu")
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    data = Dataset(args.data or ckpt.run["config"]["data"]["data"])
    T = model.config.block_size
    val = np.asarray(data.tokens("val")[: args.tokens], dtype=np.int64)
    windows = [val[i : i + T] for i in range(0, len(val) - T + 1, T)]
    blen = np.asarray(data.tokenizer.byte_lengths, dtype=np.int64)

    def ours(w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(w)[None]).logits[0].float().numpy()

    ref_bpb, ref_logits = bits_per_byte(ours, windows, blen)
    emulated = None
    if getattr(model.config, "mlp", None) == "gelu":  # GPT-2's block: also with llama.cpp's table GELU
        real_gelu = torch.nn.functional.gelu
        torch.nn.functional.gelu = lambda h, approximate="none": ggml_cpu_gelu(h)
        try:
            _, emulated = bits_per_byte(ours, windows, blen)
        finally:
            torch.nn.functional.gelu = real_gelu
    text = tok.decode(val.tolist())
    lines = [line for line in text.splitlines() if line.strip()]
    print(
        f"{path}: {len(windows)} windows of {T} tokens ({len(windows) * (T - 1)} scored), llama-cpp-python "
        f"{llama_cpp.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"minigpt fp32: {ref_bpb:.4f} bits/byte")
    print(
        "| GGUF | file MB | llama.cpp bits/byte | minus minigpt fp32 | max abs logit diff | worst diff / (1e-3 + "
        "1e-3 abs logit) | same, minigpt with ggml's GELU | tokenizer agrees |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types:
            f = Path(tmp) / f"m-{kind}.gguf"
            export_gguf(path, f, kind)
            # f32 KV cache: llama.cpp's f16 default alone moves logits by ~1e-3.
            llm = llama_cpp.Llama(
                model_path=str(f), n_ctx=T, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0
            )

            def theirs(w: np.ndarray, llm=llm) -> np.ndarray:
                llm.reset()
                llm.eval(w.tolist())
                return np.array(llm.scores[: len(w)], dtype=np.float32)

            bpb, logits = bits_per_byte(theirs, windows, blen)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(logits, ref_logits))
            # torch.testing.assert_close's sense of "to 1e-3": |a - b| <= 1e-3 + 1e-3 |b| (<= 1 passes)
            worst = max(float((np.abs(a - b) / (1e-3 + 1e-3 * np.abs(b))).max()) for a, b in zip(logits, ref_logits))
            emu = "-"
            if emulated is not None:
                emu = f"{max(float(np.abs(a - b).max()) for a, b in zip(logits, emulated)):.2e}"
            probes = lines + STRINGS
            agree = sum(llm.tokenize(s.encode(), add_bos=False, special=False) == tok.encode(s) for s in probes)
            mb = f.stat().st_size / 1e6
            cells = [kind, f"{mb:.2f}", f"{bpb:.4f}", f"{bpb - ref_bpb:+.4f}", f"{diff:.2e}", f"{worst:.2f}", emu]
            print("| " + " | ".join([*cells, f"{agree}/{len(probes)}"]) + " |")
            del llm


if __name__ == "__main__":
    main()
