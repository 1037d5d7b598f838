"""Running a trained model: loading it for inference (device, dtype) and the speed-ups
that apply then (not to training), kept out of model.py and checkpoint.py.

On the CPU, a GPT's Linear layers are swapped for oneDNN-prepacked ones
(`onednn.prepack_for_cpu`: the same fp32 or bf16 products, ~1.6x faster decoding), or,
with quantize="int8" or a checkpoint saved quantized, for int8 ones (`quantize.py`).
"""

from __future__ import annotations

import os

import torch

from . import quantize as quant
from .checkpoint import load_checkpoint, resolve_checkpoint
from .onednn import prepack_for_cpu
from .runtime import pick_device, pick_dtype


def load_for_inference(
    path: str | os.PathLike,
    device: str = "auto",
    dtype: str = "auto",
    *,
    need_tokenizer: bool = True,
    quantize: str | None = None,
):
    """Load a checkpoint for sampling/evaluation/inspection: onto `device` (auto: cuda >
    mps > cpu), a GPT's weights cast to `dtype` (auto: bf16 on CUDA, fp32 elsewhere) and,
    on the CPU, prepacked for oneDNN (`onednn.prepack_for_cpu`: same numbers, faster).
    `quantize="int8"` turns a GPT's Linear weights into int8 instead (`quantize.py`); a
    checkpoint saved quantized is loaded as such whatever `quantize` says.
    The model is for inference only. Returns (Checkpoint, torch.device)."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    path = resolve_checkpoint(path)
    if quant.saved_quantization(path) is not None:
        ckpt = quant.load_quantized(path, dev, need_tokenizer=need_tokenizer)
    else:
        ckpt = load_checkpoint(path, dev, need_tokenizer=need_tokenizer)
        if quantize is not None:
            quant.quantize_model(ckpt.model, quantize)
    # A counting model keeps its float64 statistics: a cast would only lose precision, and
    # it has no matrix products to speed up. Models trained by gradient descent are cast
    # and (on the CPU) prepacked, unless quantized (int8 layers are not nn.Linear: left as they are).
    if ckpt.model.learns_by == "gradient":
        if dt != torch.float32:
            ckpt.model.to(dt)
        if dev.type == "cpu":
            prepack_for_cpu(ckpt.model)
    return ckpt, dev
