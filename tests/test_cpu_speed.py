"""The CPU training speed-ups, each checked against the plain computation it replaces:
oneDNN Linear products (onednn.py) against a float64 recomputation and against
nn.Linear; fp32 attention under bf16 autocast against the fp32 model; the dtype policy;
the malloc setting; and the nanogpt-cpu preset against nanoGPT's own model.py."""

from __future__ import annotations

import copy
import importlib.util
import os
import platform
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from minigpt import onednn, runtime
from minigpt.config import GPTConfig, TrainConfig, apply_preset
from minigpt.model import GPT

from .conftest import tiny_gpt

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN")
NANOGPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "nanoGPT" / "model.py"


def _grads(model, idx, targets):
    model.zero_grad(set_to_none=True)
    out = model(idx, targets)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- oneDNN Linear ---------------------------------------------------------------------------


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_products_equal_a_float64_recomputation(bias):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 40, requires_grad=True)  # leading dims flattened inside
    lin = nn.Linear(40, 24, bias=bias)
    assert onednn.use_onednn_linears(lin) == 1 and type(lin) is onednn.OneDNNLinear
    dy = torch.randn(3, 17, 24)
    y = lin(x)
    y.backward(dy)
    x64, w64 = x.detach().double().requires_grad_(), lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_() if bias else None
    y64 = x64 @ w64.T + (b64 if bias else 0)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin.weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(lin.bias.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(mlp="gelu_exact", bias=False),
        dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, tie_weights=False),
    ],
    ids=["gpt2", "nanogpt", "qwen3"],
)
def test_a_gpt_with_onednn_linears_computes_what_the_plain_one_does(kw):
    plain = tiny_gpt(**kw).train()
    fast = copy.deepcopy(plain)
    n = onednn.use_onednn_linears(fast)
    assert n == sum(type(m) is nn.Linear for m in plain.modules()) > 0
    # Same parameters under the same names: checkpoints and optimizers do not notice.
    assert list(fast.state_dict()) == list(plain.state_dict())
    idx, tgt = torch.randint(0, 300, (4, 20)), torch.randint(0, 300, (4, 20))
    a, ga = _grads(plain, idx, tgt)
    b, gb = _grads(fast, idx, tgt)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)


@needs_onednn
def test_onednn_linear_skips_frozen_weights_and_defers_to_autocast():
    lin = nn.Linear(8, 4)
    onednn.use_onednn_linears(lin)
    lin.weight.requires_grad_(False)  # a frozen layer (fine-tuning)
    x = torch.randn(5, 8, requires_grad=True)
    lin(x).sum().backward()
    assert lin.weight.grad is None and x.grad is not None and lin.bias.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # nn.Linear's own (autocast) product


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\nprocessor\t: 1\n")
    assert onednn.cpu_vendor(str(info)) == "AuthenticAMD"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    assert onednn.cpu_vendor(str(info)) == "GenuineIntel"


@needs_onednn
@pytest.mark.parametrize("vendor, onednn_linears", [("GenuineIntel", False), ("AuthenticAMD", True), ("", True)])
def test_an_eager_cpu_run_multiplies_by_onednn_only_where_mkl_takes_its_avx2_path(monkeypatch, vendor, onednn_linears):
    from minigpt import loop

    monkeypatch.setattr(onednn, "cpu_vendor", lambda cpuinfo="": vendor)
    assert onednn.faster_than_mkl() is onednn_linears
    model = tiny_gpt()
    n = sum(type(m) is nn.Linear for m in model.modules())
    wrapped = loop.wrap_for_device(model, runtime.Runtime(torch.device("cpu"), torch.float32), False)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Linear)}
    assert kinds == ({onednn.OneDNNLinear} if onednn_linears else {nn.Linear}) and n > 0
    assert not wrapped.compiled


# ---- bf16 autocast on the CPU: attention in fp32 ----------------------------------------------

VARIANTS = [dict(), dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False)]


@pytest.mark.parametrize("kw", VARIANTS, ids=["gpt2", "qwen3"])
def test_bf16_autocast_training_step_is_close_to_fp32(kw):
    """Under CPU bf16 autocast only the matrix products round to bf16: the loss and every
    gradient stay close to the fp32 model's (a bf16 attention, or a QK-norm fed bf16 into
    an fp32 gain, would be both slower and further off; the latter also warns)."""
    model = tiny_gpt(**kw).train()
    idx, tgt = torch.randint(0, 300, (4, 24)), torch.randint(0, 300, (4, 24))
    ref, gref = _grads(model, idx, tgt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Mismatch dtype between input and weight"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, ggot = _grads(model, idx, tgt)
    assert abs(got.loss.item() - ref.loss.item()) < 2e-2
    for name in gref:
        err = (ggot[name] - gref[name]).norm() / gref[name].norm().clamp_min(1e-12)
        assert err < 5e-2, (name, float(err))


def test_attention_runs_in_fp32_under_cpu_autocast(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_gpt(pos_encoding="rope", qk_norm=True, norm="rmsnorm")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 300, (2, 8)))
        cache = model.make_cache(2)
        model(torch.randint(0, 300, (2, 4)), kv_cache=cache)  # decoding keeps the cache's dtype
    n = model.config.n_layer
    assert seen[:n] == [(torch.float32,) * 3] * n
    assert len(seen) == 2 * n


# ---- the dtype policy and the allocator --------------------------------------------------------


def test_auto_dtype_is_bf16_for_cpu_training_only_where_the_cpu_has_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.pick_dtype("auto", cpu, training=True) == torch.bfloat16
    assert runtime.pick_dtype("auto", cpu) == torch.float32  # inference and evaluation: exact
    assert runtime.pick_dtype("float32", cpu, training=True) == torch.float32  # asked for: kept
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.pick_dtype("auto", cpu, training=True) == torch.float32  # emulated bf16 would be slower
    assert runtime.Runtime(cpu, torch.bfloat16).eval_autocast().__class__.__name__ == "nullcontext"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc_unless_the_user_tuned_malloc(monkeypatch):
    for k in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert runtime.keep_freed_memory() is False


# ---- the nanogpt-cpu preset is nanoGPT's model -------------------------------------------------


@pytest.mark.skipif(not NANOGPT.is_file(), reason="../shared/peers/nanoGPT is not beside this clone")
def test_nanogpt_cpu_preset_computes_what_nanogpts_model_py_does():
    """nanoGPT's own model.py (an unmodified copy in ../shared/peers), given our weights,
    gives our logits and loss: the preset is its model (no biases, exact GELU), not only
    its shape."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    cfg = TrainConfig()
    apply_preset(cfg, "nanogpt-cpu")
    m = cfg.model
    shape = dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size)
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=65, bias=m.bias, mlp=m.mlp, pos_encoding=m.pos_encoding, dropout=0.0, **shape))
    theirs = nano.GPT(nano.GPTConfig(vocab_size=65, bias=m.bias, dropout=0.0, **shape))
    with torch.no_grad():  # random gains too, so a missing or swapped one shows
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ours.eval(), theirs.eval()
    idx, tgt = torch.randint(0, 65, (3, 64)), torch.randint(0, 65, (3, 64))
    logits, loss = theirs(idx, tgt)
    out = ours(idx, tgt)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, loss, rtol=1e-6, atol=1e-6)
