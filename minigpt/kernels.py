"""Two training-step kernels the GPT uses in place of PyTorch's general ones on the CPU, each
computing the same function (the tests hold them to a float64 recomputation):

- `cross_entropy`: the mean next-token loss and its gradient, in row chunks, storing only
  one float per row (the log-sum-exp) beside the logits the model keeps anyway.
- `dropout`: inverted dropout whose keep-mask comes from 16 random bits per element drawn
  four to a 64-bit word (numpy's SFC64, seeded from torch's generator), instead of one
  Bernoulli draw (and one float mask) per element.
- `hashed_keep_mask`: the same keep-mask distribution for a compiled model, as a function
  of (seed, position) that torch.compile fuses into the product it masks.

Why the cross-entropy is slow in PyTorch's form (`F.cross_entropy(logits.float(), ...)`),
at the cpu preset (batch 32 x 64 = 2048 rows, vocabulary 2048): each step makes and walks
five full [2048, 2048] tensors of 8-16 MB -- the fp32 copy of the bf16 logits, the
log-softmax output (kept for the backward), nll_loss's zero-filled gradient with one entry
per row, log-softmax's gradient, and its cast back to bf16 -- ~120 MB of memory traffic for
~8 M exponentials; log-softmax's backward alone reads 32 MB and writes 16. What is known:
denormals were ruled out before; page faults are not it (getrusage counts 0 minor faults a
step in the steady state, with glibc's thresholds raised by `runtime.keep_freed_memory`; a
16 MB buffer does fault in on the warm-up steps, and alone, where the same call repeats
without the model's allocations between, 819 faults a call). The likely rest, not proven
on a shared machine: timed alone, the buffers are reused while hot in the last-level cache;
inside a step the whole model's activations have streamed through it in between, so each
pass comes from DRAM. (On this session's loaded VM the profiler gave 5.4 ms in a step
against 2.35 ms alone: 2.3x, not the 15-20x seen on a quiet one.) Done in chunks of rows,
each chunk's fp32 temporaries stay in a core's L2, nothing [N, V]-sized is made but the
bf16 gradient, written once (softmax - one_hot, scaled, from the bf16 logits and the
saved log-sum-exp), and the forward keeps one float per row instead of a 16 MB log-softmax.

Why dropout is slow: `F.dropout` on the CPU is `bernoulli_(1 - p)` into a tensor of the input's
dtype, a division and a product, and autograd keeps that float mask. The Bernoulli kernel runs
serially, one Mersenne-Twister draw per element through a distribution object. `random_` over
the full int64 range fills 64 bits per element in two draws, also serially: read as four 16-bit
uniforms and compared to a threshold, they make the mask with two draws per four elements in a
plain fill loop. (Alone, single-threaded, on a loaded machine: 0.37 ms for the bits of a [32,
64, 192] mask against 6.6 ms for bernoulli_ -- a ratio, not a timing to quote.) Since 2026-12-06
the words come from numpy's SFC64 generator on one seed drawn from torch's, and numpy compares
them (vectorised; torch's compare into bool is not): 0.33 ms a [32, 64, 192] mask against 0.85
ms with torch's fill and compare. The keep rate is then round((1 - p) * 65536) / 65536 (0.899994
for p = 0.1) and the scale its exact inverse, so E[dropout(x)] = x holds exactly. Dropout on the
attention weights makes SDPA leave its flash kernel on the CPU for a math path that draws one
Bernoulli a weight (11.3 ms a layer forward and backward at the cpu preset, against 3.2 without
dropout); the model takes the explicit product with these masks instead (5.0 ms;
model.CausalSelfAttention.forward).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cross_entropy", "dropout", "hashed_keep_mask", "keep_probability"]

# Rows per chunk: a chunk's fp32 temporaries (rows x vocab x 4 bytes) should fit in a core's
# L2 cache (1-2 MB on the CPUs these run on); 2**18 floats = 1 MB.
_CHUNK_FLOATS = 2**18


def _chunks(n_rows: int, vocab: int, chunk_rows: int | None):
    # at least 8 rows: a 50k vocabulary would otherwise make thousands of tiny chunks, each
    # paying an op's fixed cost several times
    step = chunk_rows or max(8, _CHUNK_FLOATS // vocab)
    for i in range(0, n_rows, step):
        yield slice(i, min(i + step, n_rows))


class _CrossEntropy(torch.autograd.Function):
    """mean over rows with target != ignore_index of  logsumexp(logits[r]) - logits[r, target[r]].

    The gradient with respect to logits[r] is (softmax(logits[r]) - one_hot(target[r])) / n,
    n the number of counted rows, and 0 on ignored rows.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, chunk_rows):
        N, V = logits.shape
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32  # accumulate in >= fp32
        lse = torch.empty(N, dtype=acc, device=logits.device)
        for s in _chunks(N, V, chunk_rows):
            lse[s] = torch.logsumexp(logits[s].to(acc), dim=1)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)  # ignored rows pick column 0, then count 0
        picked = logits.gather(1, safe[:, None]).squeeze(1).to(acc)
        n = valid.sum()
        # 0 / 0 = nan when every target is ignored, as F.cross_entropy gives
        loss = torch.where(valid, lse - picked, 0).sum() / n
        ctx.save_for_backward(logits, lse, safe, valid, n)
        ctx.chunk_rows = chunk_rows
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, lse, safe, valid, n = ctx.saved_tensors
        N, V = logits.shape
        grad = torch.empty_like(logits)
        row_scale = valid.to(lse.dtype) * (g.to(lse.dtype) / n)  # [N]: 1/n per counted row, 0 if ignored
        minus_one = torch.full((N, 1), -1.0, dtype=lse.dtype, device=logits.device)
        for s in _chunks(N, V, ctx.chunk_rows):
            # subtle: every op in one dtype. A mixed one (bf16 - fp32, or an fp32 product
            # written to bf16) takes TensorIterator's casting path, ~10x slower on the CPU
            # than a vectorised cast followed by the op (the profiler showed it).
            p = logits[s].to(lse.dtype, copy=True)  # (a copy even when the dtypes match: edited in place)
            p.sub_(lse[s, None]).exp_()  # softmax of the chunk's rows
            p.scatter_add_(1, safe[s, None], minus_one[s])  # - one_hot(target)
            grad[s] = p.mul_(row_scale[s, None])  # one cast into the logits' dtype
        return grad, None, None, None


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1, chunk_rows: int | None = None
) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)` (mean over the
    counted rows), computed chunk by chunk in fp32 (float64 for float64 logits); the
    gradient comes back in the logits' dtype.

    logits: [N, V] (any float dtype: under bf16 autocast, the bf16 logits); targets: [N]
    integer ids, `ignore_index` where a position counts for nothing.

    >>> logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    >>> round(cross_entropy(logits, torch.tensor([1, -1])).item(), 4)  # log 2: only row 0 counts
    0.6931
    """
    return _CrossEntropy.apply(logits, targets.long(), ignore_index, chunk_rows)


# ---- dropout -------------------------------------------------------------------------------


def keep_probability(p: float) -> float:
    """The keep rate `dropout` realises for drop probability p: 1 - p rounded to 1/65536."""
    return round((1.0 - p) * 65536) / 65536


class _Dropout(torch.autograd.Function):
    """y = x * scale where kept, 0 where dropped; dy/dx the same mask. Keeps a 1-byte mask
    (F.dropout's autograd keeps a float one), and applies the scale as a Python float, so a
    bf16 input is scaled by the exact 1 / keep before its one rounding (F.dropout's bf16
    mask holds 1 / keep rounded to bf16, 1.109 for 1.111).

    The mask is `keep` as uint8 (0 or 1), multiplied in after a cast to x's dtype: on the CPU
    `masked_fill_` with a bool mask, and a bool cast, are not vectorised -- 0.43 / 0.86 ms for
    a [32, 64, 192] bf16 / [32, 6, 64, 64] fp32 tensor against 0.04 / 0.05 ms for the uint8
    cast and 0.10 / 0.22 ms for the product (measured alone)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * scale).mul_(keep.to(x.dtype))

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        return (g * ctx.scale).mul_(keep.to(g.dtype)), None, None


def _keep_mask(n: int, keep: float, generator: torch.Generator | None) -> torch.Tensor:
    """n uint8 flags, 1 with probability `keep` (a multiple of 1/65536), independent.

    One 64-bit seed is drawn from torch's generator (`generator`, else the default one), so
    `torch.manual_seed` and a checkpoint's saved RNG state make the masks repeatable; the
    random words come from numpy's SFC64 on that seed, each split into four 16-bit uniforms.
    Why numpy: at the cpu preset's [32, 64, 192] a mask took 0.85 ms with torch (its
    Mersenne-Twister fill, serial, and a compare into bool that is not vectorised) and 0.33 ms
    this way (BENCHMARKS.md, fifth pass); a step draws seven to ten of them."""
    seed = torch.empty((), dtype=torch.int64).random_(-(2**63), None, generator=generator).item()
    words = np.random.SFC64(seed & (2**64 - 1)).random_raw((n + 3) // 4)
    u16 = words.view(np.int16)[:n]  # uniform in [-32768, 32768)
    # u16 + 32768 is uniform on [0, 65536): kept iff it is below keep * 65536
    return torch.from_numpy(np.less(u16, round(keep * 65536) - 32768).view(np.uint8))


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout: each element kept with probability keep_probability(p) ~ 1 - p and
    scaled by its inverse, else zeroed; elements independent. The mask is drawn on the CPU
    (`_keep_mask`); the model uses this for CPU tensors only."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = keep_probability(p)
    kept = _keep_mask(x.numel(), keep, generator).view(x.shape).to(x.device)
    return _Dropout.apply(x, kept, 1.0 / keep)


# ---- dropout for a compiled model: a counter-based mask ------------------------------------------
#
# Under torch.compile on the CPU, F.dropout becomes the compiler's own random numbers (a
# Philox draw per element, computed in the fused loop) and `dropout` above a serial
# Mersenne-Twister fill the compiler cannot fuse: at the cpu preset (batch 32 x 64 x 192, 7
# dropout sites), +52% and +30% of a compiled step. A mask that is a pure function of a seed
# and each element's position is a few integer operations per element, which the compiler
# fuses into the product it masks (forward) and reads back (backward): +4% on one masked
# product alone, +25% of the compiled step at the cpu preset (the compiler also fuses the
# mask into the RMSNorm reductions after it, where it is evaluated more than once).
# (In eager mode each of those operations is its own pass over the tensor, slower than
# `dropout`'s fill; the model uses this one only when compiling.)
#
# The hash is Chris Wellons' "lowbias32" (xor-shift-multiply, chosen by a search for full
# avalanche), on the position times the golden-ratio constant plus the seed, in int32
# arithmetic that wraps (two's complement) as the vectorised code does; the logical right
# shifts are written as arithmetic shifts with the sign bits masked off. Its low 16 bits are
# the uniform compared with the keep threshold, as in `dropout`. Two calls with seeds s, t
# share hash inputs only at positions offset by (s - t) / 0x9E3779B1 mod 2**32: for masks of
# n elements, masks that overlap at all are a fraction ~2n / 2**32 of seed pairs (2e-4 at
# the cpu preset's 393,216), and then as shifted copies.

_GOLDEN = -1640531535  # 0x9E3779B1 as int32
_M1 = 0x7FEB352D
_M2 = -2073254261  # 0x846CA68B as int32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ ((x >> 16) & 0xFFFF)) * _M1
    x = (x ^ ((x >> 15) & 0x1FFFF)) * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def hashed_keep_mask(shape: torch.Size | tuple[int, ...], p: float, seed: torch.Tensor) -> torch.Tensor:
    """A bool keep-mask of `shape`: True with probability keep_probability(p), elements
    independent (to the hash's quality: tests/test_kernels.py checks the rate and the pairs),
    a pure function of `seed` (an int32 scalar tensor) and the position.

    >>> m = hashed_keep_mask((4, 1000), 0.1, torch.tensor(7, dtype=torch.int32))
    >>> m.shape, 0.85 < m.float().mean().item() < 0.95
    (torch.Size([4, 1000]), True)
    """
    n = 1
    for d in shape:
        n *= d
    pos = torch.arange(n, dtype=torch.int32, device=seed.device).view(shape)
    bits = _lowbias32(pos * _GOLDEN + seed) & 0xFFFF  # uniform on [0, 65536)
    return bits < round(keep_probability(p) * 65536)
