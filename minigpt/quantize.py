"""Weight-only int8: a GPT's matrices stored as 8-bit integers, for faster decoding on the CPU.

Why: decoding one token multiplies one activation row by every weight matrix, so on a
CPU it is bound by how fast the weights stream from memory (GPT-2 small: ~500 MB of fp32
per token). Stored as int8 they are a quarter of that.

How (per-channel symmetric, as gpt-fast's `quantize.py` and torchao's int8 weight-only):
each output row i of a weight W [N, K] gets its own scale, s_i = max_k |W_ik| / 127, and
is stored as q_ik = round(W_ik / s_i) in [-127, 127]. The product is then

    y = x W^T + b  ~=  (x q^T) * s + b        (x [M, K] in fp32 or bf16, q int8 [N, K], s [N])

which PyTorch computes in one CPU kernel, `torch.ops.aten._weight_int8pack_mm`, reading
the int8 weights and converting them on the fly. Activations, embeddings, norms and the
KV cache stay in floating point; only nn.Linear layers change (the attention and MLP
projections and the output head: a tied head gets its own int8 copy, the embedding table
stays float for the lookup). Per-row rounding error is at most s_i / 2 per weight, so a
trained model's bits per byte move by well under 0.01 (tested in tests/test_quantize.py).

A quantized model is for inference only. `save_quantized` writes it as a checkpoint
directory whose config.json says so ("quantization"), read back by `load_quantized`
(safetensors: int8 weights and float scales, no pickle); `inference.load_for_inference`
takes either a float checkpoint plus `quantize="int8"` or such a directory.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import files, models
from .checkpoint import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    RUN,
    TOKENIZER,
    WEIGHTS,
    Checkpoint,
    json_dumps,
    load_checkpoint,
    read_model_config,
    read_run,
    resolve_checkpoint,
    save_tensors,
)
from .errors import CheckpointError, MiniGPTError
from .model import GPT
from .tokenizer import Tokenizer

__all__ = [
    "METHODS",
    "DynamicInt8Linear",
    "Int8Linear",
    "Method",
    "load_quantized",
    "quantize_checkpoint",
    "quantize_int8",
    "quantize_model",
    "quantize_weight",
    "save_quantized",
    "saved_quantization",
]

QMAX = 127  # symmetric: -127..127 (-128 unused, so that q and -q are both representable)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scales float32 [N]) with w ~= q * scales[:, None], one scale per
    output row. A row of zeros gets scale 1 (any scale would do: its q is all zero).

    >>> q, s = quantize_weight(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    >>> q.tolist(), [round(x, 6) for x in s.tolist()]
    ([[64, -127, 32], [0, 0, 0]], [0.007874, 1.0])
    """
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w / scales[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scales.contiguous()


def _compute_dtype(x: torch.Tensor, k: int) -> torch.dtype:
    """The dtype weight-only int8 multiplies `x` [M, K] in.

    Subtle, both measured in torch 2.13 on this project's x86 CPUs: (1) the CPU kernel's
    fp32 path is 8-15x slower than its bf16 path (BENCHMARKS.md), so on the CPU fp32
    activations are rounded to bf16 for the product (8 bits of mantissa; the weights have
    fewer) and the result widened back; (2) its bf16 path reads out of bounds (a segfault,
    not an exception) when K is not a multiple of 16 (found on K = 8, 24, 33, 40, 100), so
    such shapes stay in fp32."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and k % 16 == 0:
        return torch.bfloat16
    return x.dtype


PACK_ROWS = 16  # below this many rows `_weight_int8pack_mm` is fastest; from it, a bf16 GEMM (BENCHMARKS.md)


class Int8Linear(nn.Module):
    """nn.Linear's function with an int8 weight q [N, K] and a scale per output row s [N]:
    y = (x q^T) * s + b, the product in `_compute_dtype`.

    Two paths, tested against each other and against float64: for a few rows (decoding),
    PyTorch's CPU kernel `_weight_int8pack_mm`, reading the int8 weights; for many (a
    prompt's prefill, eval's windows, other devices), the same product as a float GEMM on q
    converted to the compute dtype (exact: |q| <= 127 fits bf16), which there is 5x faster
    than the kernel (its cost grows with the rows; a GEMM's barely).

    State: `weight` (int8), `scales` (the compute dtype: `model.to(torch.bfloat16)` casts
    them, never the int8 weight) and `bias` (or None): buffers, as nothing here trains."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device)
        q, s = quantize_weight(w)
        m.weight.copy_(q)
        m.scales = s.to(w.dtype)
        if linear.bias is not None:
            m.bias = linear.bias.detach().clone()
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)  # [M, K], M = all leading dims
        y = self._product(x2, k) if x2.numel() else x2.new_zeros(x2.shape[0], self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def _product(self, x2: torch.Tensor, k: int) -> torch.Tensor:
        """x2 [M, K] -> (x2 q^T) * s [M, N] in x2's dtype."""
        dt = _compute_dtype(x2, k)
        kernel_takes = dt == torch.float32 or (dt == torch.bfloat16 and k % 16 == 0)  # see _compute_dtype
        if x2.device.type == "cpu" and x2.shape[0] < PACK_ROWS and kernel_takes:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(dt).contiguous(), self.weight, self.scales.to(dt))
        else:
            y = F.linear(x2.to(dt), self.weight.to(dt)) * self.scales.to(dt)
        return y.to(x2.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class DynamicInt8Linear(Int8Linear):
    """Int8Linear whose activations are quantized too, on the fly, one scale per row:
    PyTorch's dynamic quantization, about 1.8x faster than weight-only at one row and 2x
    at eight (BENCHMARKS.md). Same state, so the same checkpoint.

    Each row x gets fbgemm's asymmetric 7-bit parameters (`_row_quantization`): scale
    a = (max(x, 0) - min(x, 0)) / 127 and a zero point z, x ~= a (u - z) with u in [0, 127];
    then y = a s (sum_k (u_k - z) q_k) + b, the sum exact in int32. Two paths compute it,
    tested against each other: one row (decoding one stream) goes to fbgemm's
    `quantized::linear_dynamic` (its packed weight built on first use); several rows to
    the same arithmetic written out here on `torch._int_mm`, whose int8 GEMM is fast from a
    few rows up. So a row gives the same numbers alone or in a batch (to float rounding)."""

    _packed = None  # fbgemm's packed weight: built lazily, dropped when the state changes

    def _pack(self):
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.13 deprecates creating quantized tensors; fbgemm's packing still takes one.
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(self.weight.cpu(), self.scales.double().cpu(), zero, 0)
        return torch.ops.quantized.linear_prepack(qw, None)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def _product(self, x2: torch.Tensor, k: int) -> torch.Tensor:
        if x2.device.type != "cpu":
            return super()._product(x2, k)  # the int8 kernels are the CPU's: elsewhere, weight-only
        xf = x2.float()
        # fbgemm's kernel on x86; elsewhere (qnnpack chooses its own parameters) the written-out path.
        if x2.shape[0] == 1 and torch.backends.quantized.engine in ("x86", "fbgemm"):
            if self._packed is None:
                self._packed = self._pack()
            # reduce_range (7-bit activations), as torch.ao's dynamic Linear passes it: without
            # VNNI, fbgemm's uint8 x int8 pairs would overflow int16 on full-range inputs.
            y = torch.ops.quantized.linear_dynamic(xf.contiguous(), self._packed, True)
        else:
            a, u = _row_quantization(xf)
            y = torch._int_mm(u, self.weight.t()).float() * (a * self.scales.float())
        return y.to(x2.dtype)


def _row_quantization(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fbgemm's dynamic quantization of each row of x [M, K] (float32), as PyTorch's
    `ChooseQuantizationParams` with reduce_range and fbgemm's `Quantize` compute it: scale
    a [M, 1] and (u - z) [M, K] as int8, so that x ~= a (u - z)."""
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    a = ((hi.double() - lo.double()) / 127).float()
    a = torch.where((a == 0) | torch.isinf(1 / a), torch.full_like(a, 0.1), a)
    a64 = a.double()
    # The zero point from whichever end loses less to rounding, nudged into [0, 127].
    from_min, from_max = -lo.double() / a64, 127 - hi.double() / a64
    z = torch.where(lo.double().abs() / a64 < 127 + hi.double().abs() / a64, from_min, from_max)
    z = torch.round(z).clamp(0, 127).float()  # round half to even, as nearbyint
    u = torch.round(z + x * (1 / a)).clamp(0, 255)
    return a, (u - z).clamp(-128, 127).to(torch.int8)


@dataclass(frozen=True)
class Method:
    """One `--quantize` method: the layer that replaces nn.Linear, and what it computes."""

    layer: type[Int8Linear]
    scheme: str  # recorded in a saved checkpoint's config.json


METHODS: dict[str, Method] = {  # what --quantize takes; the first is the default of `minigpt quantize`
    "int8": Method(Int8Linear, "weight-only, per output channel, symmetric"),
    "int8-dynamic": Method(
        DynamicInt8Linear, "weights per output channel, symmetric; activations per row, asymmetric 7-bit, dynamic"
    ),
}


def _swap_linears(model: nn.Module, make) -> int:
    """Replace every nn.Linear (and subclass, e.g. onednn's) below `model` by make(linear)."""
    n = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))
                n += 1
    return n


def _check_quantizable(model: nn.Module, method: str) -> None:
    if method not in METHODS:
        raise MiniGPTError(f"--quantize {method!r}: supported: {', '.join(METHODS)}")
    if not isinstance(model, GPT):
        raise MiniGPTError(
            f"--quantize {method}: only GPT checkpoints are quantized (this is a {model.model_type}: "
            f"its weights are not the matrices that bound decoding)"
        )
    if getattr(model, "prepacked", False):
        raise MiniGPTError("quantize before prepacking for oneDNN (the prepacked layers hold no plain weight)")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize every Linear of a float GPT in place (weights per output row to int8) and
    return it; the model is then for inference only. MiniGPTError for another kind."""
    return quantize_model(model, "int8")


def quantize_model(model: nn.Module, method: str) -> nn.Module:
    """`quantize_int8` by name (`--quantize METHOD`); MiniGPTError for an unknown method."""
    _check_quantizable(model, method)
    with torch.no_grad():
        _swap_linears(model, METHODS[method].layer.from_linear)
    model.quantization = method
    return model


# ---- quantized checkpoints -----------------------------------------------------------------------


def saved_quantization(path: Path) -> str | None:
    """The "quantization" a checkpoint directory's config.json records (None: float)."""
    meta = files.read_json_object(path / CONFIG, "the model's config", CheckpointError)
    q = meta.get("quantization")
    if q is None:
        return None
    method = q.get("method") if isinstance(q, dict) else None
    if method not in METHODS:
        raise CheckpointError(
            f"{path / CONFIG}: quantization {q!r} is not one this minigpt reads ({', '.join(METHODS)})"
        )
    return method


def save_quantized(
    path: str | os.PathLike, model: nn.Module, tokenizer: Tokenizer | None, run: dict[str, Any] | None = None
) -> Path:
    """Write a quantized model as a checkpoint directory, atomically: model.safetensors
    holds each Linear's int8 `weight`, its `scales` and bias, and the float rest;
    config.json is a checkpoint config plus {"quantization": {"method": "int8", ...}}."""
    if getattr(model, "quantization", None) not in METHODS:
        raise MiniGPTError("save_quantized: the model is not quantized (call quantize_int8 first)")
    tensors = {n: t.detach().contiguous().cpu() for n, t in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_type": model.model_type,
        "model": model.config.to_dict(),
        "quantization": {
            "method": model.quantization,
            "scheme": METHODS[model.quantization].scheme,
            "layers": sorted(n.removesuffix(".scales") for n in tensors if n.endswith(".scales")),
        },
    }
    with files.atomic_directory(path) as tmp:
        save_tensors(tensors, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json_dumps(meta, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            (tmp / TOKENIZER).write_text(tokenizer.to_str(), encoding="utf-8")
        if run is not None:
            (tmp / RUN).write_text(json_dumps(run, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def load_quantized(path: Path, device: torch.device, *, need_tokenizer: bool = True) -> Checkpoint:
    """A checkpoint written by `save_quantized`, onto `device`: the GPT of its config.json
    with Int8Linear layers, its tensors checked for names, shapes and dtypes (one line
    naming the file when they do not fit), its tokenizer and run.json."""
    kind, settings = read_model_config(path)
    method = saved_quantization(path)
    try:
        model = models.build(kind, settings)
        _check_quantizable(model, method)
    except MiniGPTError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None
    layer = METHODS[method].layer
    _swap_linears(model, lambda lin: layer(lin.in_features, lin.out_features, lin.bias is not None))
    model.quantization = method
    weights = path / WEIGHTS
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot read safetensors file (truncated or corrupt?): {e}") from None
    expected = model.state_dict()
    if set(tensors) != set(expected):
        odd = min(set(tensors) ^ set(expected))
        raise CheckpointError(
            f"{weights}: does not match {CONFIG} ({'missing' if odd in expected else 'unexpected'} tensor {odd})"
        )
    for name, t in tensors.items():
        want = expected[name]
        if t.shape != want.shape or (t.dtype == torch.int8) != (want.dtype == torch.int8):
            raise CheckpointError(
                f"{weights}: tensor {name} is {t.dtype} {tuple(t.shape)}, {CONFIG} implies "
                f"{want.dtype} {tuple(want.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{weights}: tensor {name} holds NaN or infinite values")
    model.load_state_dict(tensors)
    model.to(device).eval()

    tokenizer = None
    if (path / TOKENIZER).is_file():
        try:
            tokenizer = Tokenizer.load(path / TOKENIZER)
        except MiniGPTError as e:
            raise CheckpointError(f"{path / TOKENIZER}: {e}") from None
    elif need_tokenizer:
        raise CheckpointError(
            f"{path / TOKENIZER}: missing (this checkpoint has no tokenizer, so text cannot be encoded)"
        )
    run = read_run(path) if (path / RUN).is_file() else None
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, model_type=kind, run=run)


def quantize_checkpoint(
    src: str | os.PathLike, out: str | os.PathLike, method: str = "int8", force: bool = False
) -> Path:
    """`minigpt quantize`: a float checkpoint (or a run's best/last) -> a quantized checkpoint
    directory at `out`, with the same tokenizer and run.json (so `eval` finds its data)."""
    if method not in METHODS:
        raise MiniGPTError(f"--method {method!r}: supported: {', '.join(METHODS)}")
    path, out = resolve_checkpoint(src), Path(out)
    if saved_quantization(path) is not None:
        raise CheckpointError(f"{path}: is already quantized ({saved_quantization(path)})")
    o, p = out.resolve(), path.resolve()
    if o == p or o in p.parents:
        raise CheckpointError(f"{out}: holds the input {path}; choose another output directory")
    if (out.exists() or out.is_symlink()) and not force:
        raise CheckpointError(f"{out}: already exists (pass --force to replace it)")
    ckpt = load_checkpoint(path, "cpu", need_tokenizer=False)
    quantize_model(ckpt.model, method)
    return save_quantized(out, ckpt.model, ckpt.tokenizer, ckpt.run)  # atomic: replaces `out` once complete
