"""The training-step kernels (kernels.py) against their oracles: the chunked cross-entropy
against a float64 recomputation by F.cross_entropy (loss and gradient, ignored targets,
chunk edges, bf16 logits), the GPT's loss through it against F.cross_entropy's for every
block variant, and the cheap dropout by its distribution under a fixed seed (keep rate,
scale, independence of neighbours, of the two halves of a random word and of calls)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from minigpt import kernels
from minigpt.model import Dropout

from .conftest import tiny_gpt

VARIANTS = [
    dict(),
    dict(mlp="gelu_exact", bias=False),
    dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, tie_weights=False),
    dict(pos_encoding="sinusoidal", logit_softcap=15.0),
]
VARIANT_IDS = ["gpt2", "nanogpt", "qwen3", "sinusoidal-softcap"]


def _reference(logits, targets, g=1.0):
    """F.cross_entropy in float64: loss and d(g * loss)/d logits."""
    x = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(x, targets, ignore_index=-1)
    (loss * g).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 1000])
def test_cross_entropy_equals_float64_f_cross_entropy(chunk_rows):
    torch.manual_seed(0)
    N, V = 37, 53  # chunk edges fall mid-way for 7
    logits = (torch.randn(N, V, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, V, (N,))
    targets[::5] = -1  # ignored rows count for nothing, in the loss and in n
    before = logits.detach().clone()
    loss = kernels.cross_entropy(logits, targets, chunk_rows=chunk_rows)
    (loss * 2.5).backward()
    assert torch.equal(logits.detach(), before)  # the backward works on copies, never on the logits
    ref_loss, ref_grad = _reference(logits, targets, g=2.5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits.grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert logits.grad[::5].abs().max() == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-6)])
def test_cross_entropy_of_low_precision_logits_accumulates_in_fp32(dtype, tol):
    """bf16 logits: the loss is the float64 loss of those very bf16 values to fp32 rounding
    (no bf16 accumulation), and the gradient comes back in bf16, rounded once."""
    torch.manual_seed(1)
    logits = (torch.randn(64, 300) * 3).to(dtype).requires_grad_()
    targets = torch.randint(-1, 300, (64,))
    loss = kernels.cross_entropy(logits, targets, chunk_rows=10)
    loss.backward()
    ref_loss, ref_grad = _reference(logits, targets)
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(logits.grad.double(), ref_grad, rtol=eps, atol=1e-7)


def test_cross_entropy_with_every_target_ignored_is_nan_as_f_cross_entropy():
    logits = torch.randn(4, 5)
    targets = torch.full((4,), -1)
    assert math.isnan(kernels.cross_entropy(logits, targets).item())
    assert math.isnan(F.cross_entropy(logits, targets, ignore_index=-1).item())


@pytest.mark.parametrize("kw", VARIANTS, ids=VARIANT_IDS)
def test_gpt_fused_loss_equals_f_cross_entropy(kw):
    fused = tiny_gpt(**kw).train()
    plain = copy.deepcopy(fused)
    plain.fused_loss = False
    idx, tgt = torch.randint(0, 300, (3, 20)), torch.randint(0, 300, (3, 20))
    tgt[0, :5] = -1
    for autocast in (False, True):
        outs = []
        for m in (fused, plain):
            m.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = m(idx, tgt)
            out.loss.backward()
            outs.append((out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
        (la, ga), (lb, gb) = outs
        # fp32: the same sums in another order; bf16: both take the same bf16 logits, and the
        # fused gradient is rounded to bf16 once where F.cross_entropy's path rounds it once too
        tol = dict(rtol=1e-5, atol=1e-6) if not autocast else dict(rtol=2e-2, atol=2e-4)
        torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
        for n in ga:
            torch.testing.assert_close(ga[n], gb[n], **tol, msg=n)


# ---- dropout ---------------------------------------------------------------------------------


def _indicator_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_one_minus_p_independently_scaled_by_its_inverse(p):
    x = torch.full((1000, 1001), 3.0)  # odd width: the halves of one random word straddle rows
    torch.manual_seed(0)
    y = kernels.dropout(x, p)
    torch.manual_seed(0)
    assert torch.equal(kernels.dropout(x, p), y)  # a fixed seed repeats the masks
    kept = y != 0
    keep = kernels.keep_probability(p)
    assert abs(keep - (1 - p)) <= 2**-17
    n = kept.numel()
    sigma = math.sqrt(keep * (1 - keep) / n)
    assert abs(kept.double().mean().item() - keep) < 5 * sigma
    # kept values are x / keep exactly (fp32: the scale is one rounding), so E[y] = x
    assert torch.equal(y[kept], torch.full_like(y[kept], 3.0 / keep))
    flat = kept.flatten()
    bound = 5 / math.sqrt(n)
    # neighbours (16-bit quarters of one random word), rows, and a second call
    assert abs(_indicator_correlation(flat[0::2][: n // 2], flat[1::2][: n // 2])) < bound * 1.5
    assert abs(_indicator_correlation(flat[1:-1:2], flat[2::2])) < bound * 1.5
    assert abs(_indicator_correlation(kept[:-1], kept[1:])) < bound * 1.5
    assert abs(_indicator_correlation(kept, kernels.dropout(x, p) != 0)) < bound
    # runs of drops as long as i.i.d. Bernoulli gives: P(two in a row dropped) = (1 - keep)^2
    both = (~flat[:-1] & ~flat[1:]).double().mean().item()
    assert abs(both - (1 - keep) ** 2) < 5 * math.sqrt((1 - keep) ** 2 / n) * 2


def test_dropout_masks_follow_torchs_generator_state():
    """The mask's bits are numpy's, seeded by one draw from torch's generator: restoring
    torch's RNG state (as a resumed checkpoint does) repeats the mask, a `generator` of its own
    repeats it too and leaves the default generator where it was."""
    x = torch.ones(257, 33)
    state = torch.get_rng_state()
    a = kernels.dropout(x, 0.3)
    b = kernels.dropout(x, 0.3)
    assert not torch.equal(a, b)
    torch.set_rng_state(state)
    assert torch.equal(kernels.dropout(x, 0.3), a)
    after = torch.get_rng_state()
    g = torch.Generator().manual_seed(3)
    c = kernels.dropout(x, 0.3, generator=g)
    assert torch.equal(torch.get_rng_state(), after)
    assert torch.equal(kernels.dropout(x, 0.3, generator=torch.Generator().manual_seed(3)), c)
    assert not torch.equal(c, a)


def test_dropout_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 50, dtype=torch.bfloat16, requires_grad=True)
    y = kernels.dropout(x, 0.2)
    g = torch.randn_like(y)
    y.backward(g)
    keep = kernels.keep_probability(0.2)
    kept = y != 0
    # bf16: x and g each scaled by the exact 1 / keep and rounded once
    torch.testing.assert_close(y, torch.where(kept, (x.detach().float() / keep).bfloat16(), 0), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.where(kept, (g.float() / keep).bfloat16(), 0), rtol=0, atol=0)


def test_dropout_module_is_f_dropout_when_slow_and_off_in_eval():
    x = torch.randn(40, 30)
    d = Dropout(0.3)
    d.fast = False
    torch.manual_seed(5)
    a = d(x)
    torch.manual_seed(5)
    torch.testing.assert_close(a, F.dropout(x, 0.3))
    d.fast = True
    assert torch.equal(d.eval()(x), x)
    # fast and slow draw different masks with the same statistics: compare keep rates
    d.train()
    big = torch.ones(400, 500)
    rates = []
    for fast in (True, False):
        d.fast = fast
        rates.append((d(big) != 0).double().mean().item())
    assert abs(rates[0] - rates[1]) < 5 * math.sqrt(2 * 0.21 / big.numel())


@pytest.mark.parametrize("kw", VARIANTS, ids=VARIANT_IDS)
def test_residual_only_dropout_keeps_fast_attention_equal_to_explicit_in_training(kw):
    """With dropout on the attention weights off (attn_dropout False: the flash kernel's
    path), the SDPA model and the explicit-softmax one draw the same residual masks under one
    seed and compute the same training-mode output."""
    m = tiny_gpt(dropout=0.2, attn_dropout=False, **kw).train()
    idx = torch.randint(0, 300, (3, 20))
    torch.manual_seed(7)
    fast = m(idx).logits
    torch.manual_seed(7)
    slow = m(idx, return_attention=True).logits
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(m(idx).logits, fast)  # dropout is on: another seed, another output
    m.eval()
    torch.testing.assert_close(m(idx).logits, m(idx, return_attention=True).logits, rtol=1e-5, atol=1e-5)


def test_a_gpt_trained_with_fast_dropout_sees_the_keep_rate_of_f_dropout():
    """Across the GPT's dropout sites (embeddings, attention output, MLP output), training
    mode zeroes a share p of the residual-branch activations, as F.dropout does: measured on
    the MLP's output through a forward hook."""
    m = tiny_gpt(dropout=0.25, n_embd=64).train()
    seen = []
    m.transformer.h[0].mlp.dropout.register_forward_hook(lambda mod, inp, out: seen.append((out == 0).double().mean()))
    torch.manual_seed(0)
    m(torch.randint(0, 300, (8, 32)))
    n = 8 * 32 * 64
    assert abs(seen[0].item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


# ---- the compiled model's dropout ------------------------------------------------------------


@pytest.mark.slow
def test_a_compiled_gpt_draws_the_eager_models_dropout_under_one_seed():
    """The compiled model (torch.compile, the trainer's options) draws the very masks the
    eager model draws from the same seed (kernels.keep_mask is one op in both), so it computes
    the same training output and gradients; another seed gives another output. The seed draw
    stays inside the graph: no graph break (a draw the compiler cannot trace split every
    block's forward, ~20% slower a step measured), under the trainer's inductor options
    (C++ wrapper included)."""
    from minigpt import loop

    m = tiny_gpt(dropout=0.25, attn_dropout=False, n_embd=64).train()
    idx, y = torch.randint(0, 300, (4, 32)), torch.randint(0, 300, (4, 32))
    explained = torch._dynamo.explain(m)(idx, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(m, options=loop.compile_options(torch.device("cpu")))
    torch.manual_seed(3)
    out_c = compiled(idx, y)
    out_c.loss.backward()
    grads_c = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    out_e = m(idx, y)
    out_e.loss.backward()
    torch.testing.assert_close(out_c.logits, out_e.logits, rtol=1e-4, atol=1e-4)
    for gc, p in zip(grads_c, m.parameters()):
        torch.testing.assert_close(gc, p.grad, rtol=1e-4, atol=1e-4)
    torch.manual_seed(4)
    assert not torch.allclose(compiled(idx, y).logits, out_c.logits)  # another seed, other masks
