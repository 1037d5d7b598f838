"""BatchedMuon (optim.py) against torch.optim.Muon: the same update per matrix to bf16
rounding, for wide, tall and square matrices sharing a stack; interchangeable state_dicts
(exact resume, either way); and the optimizers make_optimizers builds for the trainer."""

from __future__ import annotations

import copy

import pytest
import torch

from minigpt.config import TrainConfig
from minigpt.optim import BatchedMuon, make_optimizers, newton_schulz

from .conftest import tiny_gpt

SHAPES = [(24, 40), (24, 40), (40, 24), (16, 16), (16, 16), (40, 24), (7, 3)]


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]


def _params(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s) * 0.1).to(device)) for s in SHAPES]


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [dict(), dict(nesterov=False, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")])
def test_batched_muon_updates_as_torch_muon(kw, device):
    ours, theirs = _params(device=device), _params(device=device)
    a = BatchedMuon(ours, lr=0.02, momentum=0.95, **kw)
    b = torch.optim.Muon(theirs, lr=0.02, momentum=0.95, **kw)
    for step in range(4):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        before = [p.detach().clone() for p in theirs]
        a.step()
        b.step()
        for p, q, p0 in zip(ours, theirs, before):
            # the step taken (~lr per entry) agrees to bf16 rounding of the orthogonalised update
            torch.testing.assert_close(p - p0, q - p0, rtol=2e-2, atol=0.02 * 2e-2)
        for p, q in zip(ours, theirs):  # the momentum is fp32 arithmetic on equal gradients
            torch.testing.assert_close(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
        with torch.no_grad():  # keep the two on the same parameters, so only one step's rounding is compared
            for p, q in zip(ours, theirs):
                p.copy_(q)


@pytest.mark.parametrize("shape", [(3, 16, 48), (3, 48, 16)], ids=["wide", "tall"])
def test_newton_schulz_of_a_stack_is_each_matrix_orthogonalised(shape):
    """Against an oracle: after 5 iterations the singular values of each matrix lie in
    roughly (0.5, 1.5) (the quintic's design), and the singular vectors are those of the
    input -- for a wide stack and for a tall one (iterated with its Gram matrix on the right)."""
    torch.manual_seed(0)
    g = torch.randn(*shape, dtype=torch.float64)
    x = newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).double()
    for gi, xi in zip(g, x):
        s = torch.linalg.svdvals(xi)
        assert s.min() > 0.5 and s.max() < 1.3
        u, _, vh = torch.linalg.svd(gi, full_matrices=False)
        # x ~ U S' V^T with S' near the identity: its projection onto U V^T dominates
        assert torch.trace(u.T @ xi @ vh.T) / 16 > 0.65


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (16, 16), (7, 3)], ids=["wide", "tall", "square", "thin"])
def test_newton_schulz_rounds_no_more_than_torchs_iteration(shape):
    """Against the same iteration in float64: the batched bf16 one (a tall stack iterated
    as it lies, its Gram matrix on the right) strays no further than torch.optim.Muon's own
    bf16 iteration on each matrix, over 20 matrices. (Folding a X into the product as
    (a I + B) X, which saves a copy, doubled this error: it fails here.)"""
    from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

    abc, worst_ours, worst_torch = (3.4445, -4.7750, 2.0315), 0.0, 0.0
    torch.manual_seed(0)
    g = torch.randn(20, *shape, dtype=torch.float64)
    ours = newton_schulz(g.float(), abc, 5, 1e-7).double()
    for gi, oi in zip(g, ours):
        x = gi.mT if shape[0] > shape[1] else gi  # the float64 iteration, written out
        x = x / x.norm()
        for _ in range(5):
            gram = x @ x.mT
            x = abc[0] * x + (abc[1] * gram + abc[2] * gram @ gram) @ x
        exact = x.mT if shape[0] > shape[1] else x
        scale = exact.abs().max()
        theirs = torch_ns(gi.float(), abc, 5, 1e-7).double()
        worst_ours = max(worst_ours, ((oi - exact).abs().max() / scale).item())
        worst_torch = max(worst_torch, ((theirs - exact).abs().max() / scale).item())
    assert worst_ours <= 1.1 * worst_torch, (worst_ours, worst_torch)
    assert worst_torch < 0.1  # bf16's rounding, not a different iteration


def test_state_dicts_are_interchangeable_so_a_run_resumes_exactly():
    ours, theirs = _params(), _params()
    a = BatchedMuon(ours, lr=0.02)
    _set_grads(ours, 0)
    a.step()
    saved = copy.deepcopy(a.state_dict())
    b = torch.optim.Muon(theirs, lr=0.02)
    b.load_state_dict(saved)  # a checkpoint of BatchedMuon loads into torch's Muon ...
    assert b.state_dict()["param_groups"] == saved["param_groups"]
    c = BatchedMuon(_params(), lr=0.02)
    c.load_state_dict(b.state_dict())  # ... and back
    # resumed: one more step from the restored state equals the uninterrupted run's, bit for bit
    resumed = c.param_groups[0]["params"]
    with torch.no_grad():
        for p, q in zip(resumed, ours):
            p.copy_(q)
    _set_grads(ours, 1)
    _set_grads(resumed, 1)
    a.step()
    c.step()
    for p, q in zip(ours, resumed):
        assert torch.equal(p, q)


def test_make_optimizers_gives_batched_muon_for_block_matrices_and_adamw_for_the_rest():
    model = tiny_gpt(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    cfg = TrainConfig()
    cfg.optim.optimizer = "muon"
    cfg.optim.muon_weight_decay, cfg.optim.weight_decay = 0.05, 0.3
    muon, adamw = make_optimizers(model, cfg, torch.device("cpu"))
    assert type(muon) is BatchedMuon and isinstance(adamw, torch.optim.AdamW)
    # each optimizer decays at its own flag's rate; AdamW's gains and biases not at all
    assert [g["weight_decay"] for g in muon.param_groups] == [0.05]
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.3, 0.0]
    plain, _ = make_optimizers(model, cfg, torch.device("cpu"), batched_muon=False)
    assert type(plain) is torch.optim.Muon
    held = {id(p) for o in (muon, adamw) for g in o.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}  # every parameter, once
    assert all("lr_scale" in g for o in (muon, adamw) for g in o.param_groups)
