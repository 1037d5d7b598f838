"""Running a trained model: loading it for inference (device, dtype) and the speed-ups
that apply then (not to training), kept out of model.py and checkpoint.py.

On the CPU, a GPT's Linear layers are swapped for oneDNN-prepacked ones
(`onednn.prepack_for_cpu`: the same fp32 or bf16 products, ~1.6x faster decoding).
"""

from __future__ import annotations

import os

import torch

from .checkpoint import load_checkpoint
from .onednn import prepack_for_cpu
from .runtime import pick_device, pick_dtype


def load_for_inference(path: str | os.PathLike, device: str = "auto", dtype: str = "auto", *, need_tokenizer: bool = True):
    """Load a checkpoint for sampling/evaluation/inspection: onto `device` (auto: cuda >
    mps > cpu), a GPT's weights cast to `dtype` (auto: bf16 on CUDA, fp32 elsewhere) and,
    on the CPU, prepacked for oneDNN (`onednn.prepack_for_cpu`: same numbers, faster).
    The model is for inference only. Returns (Checkpoint, torch.device)."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    ckpt = load_checkpoint(path, dev, need_tokenizer=need_tokenizer)
    # A counting model keeps its float64 statistics: a cast would only lose precision, and
    # it has no matrix products to speed up. Models trained by gradient descent are cast
    # and (on the CPU) prepacked.
    if ckpt.model.learns_by == "gradient":
        if dt != torch.float32:
            ckpt.model.to(dt)
        if dev.type == "cpu":
            prepack_for_cpu(ckpt.model)
    return ckpt, dev
