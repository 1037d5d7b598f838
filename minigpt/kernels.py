"""Two training-step kernels the GPT uses in place of PyTorch's general ones on the CPU, each
computing the same function (the tests hold them to a float64 recomputation):

- `cross_entropy`: the mean next-token loss and its gradient, in row chunks, storing only
  one float per row (the log-sum-exp) beside the logits the model keeps anyway.
- `dropout`: inverted dropout whose keep-mask (`keep_mask`) comes from 16 random bits per
  element drawn four to a 64-bit word (numpy's SFC64, seeded from torch's generator), instead
  of one Bernoulli draw (and one float mask) per element. The mask is one custom op, so a
  compiled model draws the eager model's masks, each made once, read by the fused loops.

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

import math

import numpy as np
import torch

__all__ = ["cross_entropy", "dropout", "keep_mask", "keep_probability"]

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


@torch.library.custom_op(
    "minigpt::keep_mask", mutates_args=(), device_types="cpu", tags=torch.Tag.nondeterministic_seeded
)
def _keep_mask_op(seed: torch.Tensor, n: int, threshold: int) -> torch.Tensor:
    """n uint8 flags from numpy's SFC64 on `seed` (an int64 scalar tensor): each 64-bit word
    split into four 16-bit uniforms, an element kept iff its uniform is below `threshold`."""
    words = np.random.SFC64(int(seed.item()) & (2**64 - 1)).random_raw((n + 3) // 4)
    u16 = words.view(np.int16)[:n]  # uniform in [-32768, 32768)
    # u16 + 32768 is uniform on [0, 65536): kept iff it is below threshold
    return torch.from_numpy(np.less(u16, threshold - 32768).view(np.uint8))


@_keep_mask_op.register_fake
def _(seed: torch.Tensor, n: int, threshold: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uint8 keep-mask of `shape` (1 with probability keep_probability(p), elements
    independent), on the CPU.

    One 64-bit seed is drawn from torch's generator (`generator`, else the default one), so
    `torch.manual_seed` and a checkpoint's saved RNG state make the masks repeatable, compiled
    or not; the random words come from numpy's SFC64 on that seed. Why numpy: at the cpu
    preset's [32, 64, 192] a mask took 0.85 ms with torch (its Mersenne-Twister fill, serial,
    and a compare into bool that is not vectorised) and 0.33 ms this way (BENCHMARKS.md, fifth
    pass); a step draws seven to ten of them. Why a custom op: under torch.compile the mask is
    then one buffer the compiler reads in the fused product it masks (forward and backward),
    made once; the compiler's own random numbers, or a hash of the position it fuses, are
    recomputed in every loop that reads them (BENCHMARKS.md, sixth pass)."""
    # subtle: no `generator=None` in the call. With that argument the compiled graph calls
    # randint's generator overload as an eager op, and inductor's C++ wrapper
    # (loop.compile_options) cannot pass that overload its dtype; without it randint is one
    # the compiler calls itself (fallback_random keeps it torch's draw)
    draw = {"generator": generator} if generator is not None else {}
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, **draw)
    return _keep_mask_op(seed, math.prod(shape), round(keep_probability(p) * 65536)).view(shape)


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout: each element kept with probability keep_probability(p) ~ 1 - p and
    scaled by its inverse, else zeroed; elements independent. The mask is drawn on the CPU
    (`keep_mask`); the model uses this for CPU tensors only, compiled or not."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return _Dropout.apply(x, keep_mask(x.shape, p, generator).to(x.device), 1.0 / keep_probability(p))
