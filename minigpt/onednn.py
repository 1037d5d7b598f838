"""oneDNN for the matrix products of nn.Linear on the CPU: the one home of the speed-ups
that swap a model's Linear layers, for training and for inference. model.py stays plain
PyTorch; these transform a built model in place and keep its parameters and state_dict.

Why: PyTorch's CPU wheels multiply fp32 matrices with MKL, which on an AMD CPU takes its
AVX2 code path; oneDNN, which PyTorch also ships, uses AVX-512 there. On the 2-core EPYC
(Zen 5) these benchmarks run on, a [1024, 768] x [768, 3072] fp32 product ran at 153
GFLOP/s through `F.linear` and at 382 GFLOP/s through oneDNN, the same IEEE fp32
arithmetic (different blocking, so last-bit differences: ~1e-6 relative to a float64
recomputation, as MKL's ~4e-7). Under bf16 autocast PyTorch already calls oneDNN. On an
Intel CPU MKL takes its AVX-512 path itself and is the faster of the two
(`faster_than_mkl`), so training keeps nn.Linear there.

- Training (`use_onednn_linears`, where `faster_than_mkl`): each nn.Linear becomes a
  `OneDNNLinear`, the same module with a forward whose three products (y = x W^T + b;
  dx = dy W; dW = dy^T x) all go through oneDNN: ~1.9x a GPT-2-sized layer's forward +
  backward, ~1.4x at nanoGPT's CPU shape (BENCHMARKS.md; the AMD CPU). Under autocast, or
  for a dtype oneDNN is not used for, it is nn.Linear's own forward.
- Inference (`prepack_for_cpu`): one decode token multiplies one activation row by every
  weight matrix, bound by memory bandwidth; oneDNN with each weight reordered once into
  its blocked layout ("prepacked") streams it close to the machine's bandwidth, ~1.6x
  faster decoding of GPT-2 small than `F.linear` here. The model is then for inference
  only (its state_dict holds oneDNN tensors: save checkpoints from an unpacked model).
"""

from __future__ import annotations

import platform
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "available",
    "cpu_vendor",
    "faster_than_mkl",
    "OneDNNLinear",
    "use_onednn_linears",
    "can_prepack",
    "prepack_for_cpu",
]


def available() -> bool:
    """oneDNN is built into this torch and exposes the linear kernel inductor uses too."""
    return torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, "_linear_pointwise", None) is not None


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's maker as the CPU names itself (cpuid's vendor string: GenuineIntel,
    AuthenticAMD, ...), from Linux's `cpuinfo`, else the platform's processor string; ''
    where neither says."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = platform.processor()
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in info), "")


def faster_than_mkl() -> bool:
    """Whether oneDNN multiplies a training step's fp32 matrices faster than MKL (F.linear)
    on this CPU. MKL picks its code path by the CPU's maker: AVX2 on any but Intel's, where
    oneDNN's AVX-512 path ran a [1024, 768] x [768, 3072] product 2.5x as fast (the 2-core
    EPYC, Zen 5); on Intel's, AVX-512 itself, and a layer's forward + backward ran at
    0.52-0.85x of MKL's speed through oneDNN at every shape the plan trains (2-core Xeon,
    Ice Lake; BENCHMARKS.md, twenty-third pass). Where the maker is unknown: oneDNN, as
    before this was measured."""
    return available() and cpu_vendor() != "GenuineIntel"


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N], by oneDNN. Strided views (the
    transposes of the backward pass) are taken as they are."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b with every product by oneDNN, forward and backward:

    dx = dy W       (the weight's transpose, as a [K, N] "weight")
    dW = dy^T x     ([N, M] times the transpose of x, as a [K, M] "weight")
    db = sum of dy over rows
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _linear(x.reshape(-1, x.shape[-1]), weight, bias)  # [M, N], M = all leading dims
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # [M, N]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _linear(dy2, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:  # a frozen layer (fine-tuning) skips this product
            dw = _linear(dy2.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


class OneDNNLinear(nn.Linear):
    """nn.Linear whose products run on oneDNN (see the module docstring). Made by changing
    a built nn.Linear's class (`use_onednn_linears`), so parameters, their names and any
    optimizer holding them are untouched."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # Autocast picks the product's dtype itself (bf16: already oneDNN); other dtypes
        # and devices are nn.Linear's business.
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or w.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
            or x.numel() == 0
        ):
            return F.linear(x, w, self.bias)
        return _LinearFunction.apply(x, w, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every plain nn.Linear of `model` into a OneDNNLinear, in place; returns how
    many. A no-op (0) where oneDNN is missing."""
    if not available():
        return 0
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n


# ---- inference: prepacked weights ---------------------------------------------------------


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
            if type(child) in (nn.Linear, OneDNNLinear):
                setattr(module, name, MkldnnLinear(child, dtype))
            else:
                swap(child)

    swap(model)
    model.prepacked = True
    return model
