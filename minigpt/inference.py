"""Running a trained model: loading it for inference (device, dtype) and the speed-ups
that apply then (not to training), kept out of model.py and checkpoint.py.

On the CPU, one token of decoding multiplies a single activation row by every weight
matrix: the time goes into streaming the weights from memory. PyTorch's default kernel
for that matrix-vector product (`F.linear` with a [out, in] weight) runs at about half
the machine's memory bandwidth here, while oneDNN with the weight reordered once into its
own blocked layout ("prepacked") runs close to it: ~1.6x faster decoding of GPT-2 small
on a 2-core EPYC (see BENCHMARKS.md). The numbers are the same fp32 (or bf16) products.

`prepack_for_cpu(model)` swaps every nn.Linear for `torch.utils.mkldnn.MkldnnLinear`,
in place. The model is then for inference only: no gradients through those layers, and
its state_dict holds oneDNN tensors, so save checkpoints from an unpacked model.
"""

from __future__ import annotations

import warnings

import os

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint
from .runtime import pick_device, pick_dtype


def can_prepack(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return (
        p is not None
        and p.device.type == "cpu"
        and p.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
    )


def prepack_for_cpu(model: nn.Module) -> nn.Module:
    """Replace nn.Linear layers by oneDNN-prepacked ones (same results, faster on the CPU).
    A no-op where oneDNN is missing or the model is not on the CPU."""
    if not can_prepack(model):
        return model
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates the TorchScript decorator MkldnnLinear is written with;
            # the kernel it calls is what inductor's CPU "freezing" uses too.
            warnings.simplefilter("ignore", DeprecationWarning)
            # imported lazily, inside the filter: importing it is what warns
            from torch.utils.mkldnn import MkldnnLinear
    except (ImportError, AttributeError):  # a torch without it: keep the plain layers
        return model

    dtype = next(model.parameters()).dtype

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, MkldnnLinear(child, dtype))
            else:
                swap(child)

    swap(model)
    model.prepacked = True
    return model


def load_for_inference(path: str | os.PathLike, device: str = "auto", dtype: str = "auto", *, need_tokenizer: bool = True):
    """Load a checkpoint for sampling/evaluation/inspection: onto `device` (auto: cuda >
    mps > cpu), a GPT's weights cast to `dtype` (auto: bf16 on CUDA, fp32 elsewhere) and,
    on the CPU, prepacked for oneDNN (`inference.prepack_for_cpu`: same numbers, faster).
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
