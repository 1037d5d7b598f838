"""The GPT: config, encodings, both attention paths, causality, KV cache, training signal."""

import json
import math

import pytest
import torch

from minigpt.config import GPTConfig
from minigpt.errors import ConfigError
from minigpt.model import GPT, apply_rope, rope_tables, sinusoidal_table

from .conftest import tiny_gpt

ENCODINGS = ["learned", "sinusoidal", "rope"]


# ---- config ----------------------------------------------------------------------------


def test_config_json_roundtrip():
    cfg = GPTConfig(
        vocab_size=100,
        block_size=16,
        n_layer=3,
        n_head=2,
        n_embd=8,
        dropout=0.1,
        bias=False,
        pos_encoding="rope",
        tie_weights=False,
    )
    assert GPTConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["pos_encoding"] == "rope"


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(n_embd=30, n_head=4), "n_embd"),
        (dict(n_layer=0), "n_layer"),
        (dict(block_size=-1), "block_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(pos_encoding="alibi"), "pos_encoding"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_head=2, n_embd=6, pos_encoding="rope"), "n_embd"),  # odd head size
    ],
)
def test_invalid_config_names_the_field(kw, field):
    base = dict(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)
    base.update(kw)
    with pytest.raises(ValueError, match=f"^{field}:"):
        GPTConfig(**base)
    with pytest.raises(ConfigError):
        GPTConfig(**base)


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError, match="n_embed"):
        GPTConfig.from_dict({"vocab_size": 10, "n_embed": 8})


# ---- positional encodings ------------------------------------------------------------------


def test_sinusoidal_matches_closed_form():
    table = sinusoidal_table(50, 16).double()
    for p in (0, 1, 7, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_preserves_norms_and_is_relative():
    torch.manual_seed(0)
    D = 16
    cos, sin = rope_tables(64, D)
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)

    def rot(x, p):
        return apply_rope(
            x.view(1, 1, 1, D), cos[p].double().view(1, 1, 1, -1), sin[p].double().view(1, 1, 1, -1)
        ).view(D)

    for p in (0, 3, 40):
        assert torch.linalg.norm(rot(q, p)).item() == pytest.approx(torch.linalg.norm(q).item(), rel=1e-6)
    # q.k depends only on the offset m - n
    dots = [torch.dot(rot(q, m), rot(k, m - 5)).item() for m in (5, 9, 30, 63)]
    assert max(dots) - min(dots) < 1e-5
    assert abs(torch.dot(rot(q, 10), rot(k, 5)).item() - torch.dot(rot(q, 10), rot(k, 7)).item()) > 1e-3


# ---- attention paths, causality ----------------------------------------------------------------


@pytest.mark.parametrize("pe", ENCODINGS)
def test_explicit_attention_equals_sdpa(pe):
    m = tiny_gpt(pos_encoding=pe, bias=pe != "rope")
    idx = torch.randint(0, 300, (3, 20))
    fast = m(idx)
    slow = m(idx, return_attention=True)
    assert fast.attentions is None
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    assert len(slow.attentions) == 2
    for att in slow.attentions:
        assert att.shape == (3, 2, 20, 20)
        torch.testing.assert_close(att.sum(-1), torch.ones(3, 2, 20))
        assert (att.triu(diagonal=1) == 0).all()  # nothing attends to the future


def test_explicit_attention_against_float64_recomputation():
    """The weights equal softmax(QK^T / sqrt(D) + mask) recomputed by hand in float64."""
    m = tiny_gpt(n_layer=1, bias=True)
    idx = torch.randint(0, 300, (1, 12))
    att = m(idx, return_attention=True).attentions[0][0].double()  # [H, T, T]
    with torch.no_grad():
        x = (m.transformer.wte(idx) + m.transformer.wpe(torch.arange(12))).double()
        ln = torch.nn.functional.layer_norm(
            x, (32,), m.transformer.h[0].ln_1.weight.double(), m.transformer.h[0].ln_1.bias.double()
        )
        qkv = ln @ m.transformer.h[0].attn.c_attn.weight.double().T + m.transformer.h[0].attn.c_attn.bias.double()
        q, k, _ = qkv.split(32, dim=-1)
        q = q.view(12, 2, 16).transpose(0, 1)
        k = k.view(12, 2, 16).transpose(0, 1)
        scores = q @ k.transpose(-1, -2) / 4.0
        scores = scores.masked_fill(torch.ones(12, 12).triu(1).bool(), float("-inf"))
        ref = torch.softmax(scores, -1)
    torch.testing.assert_close(att, ref, atol=1e-6, rtol=1e-5)


def test_attention_weight_dropout_against_float64_recomputation():
    """In training, the explicit path drops attention weights with the model's Dropout: under
    one seed, its output is (softmax(QK^T / sqrt(D) + mask) * the mask kernels.dropout draws) V,
    recomputed in float64; the weights it returns are those before dropout."""
    from minigpt.kernels import dropout
    from minigpt.model import Dropout, explicit_attention

    q, k, v = (torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    torch.manual_seed(7)
    y, att = explicit_attention(q32, k32, v32, drop=Dropout(0.25).train())
    y.backward(g.float())
    torch.manual_seed(7)
    scaled_mask = dropout(torch.ones(2, 3, 10, 10, dtype=torch.float64), 0.25)  # 0 or 1 / keep
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
    ref_att = torch.softmax(scores, -1)
    ref = (ref_att * scaled_mask) @ v
    ref.backward(g)
    torch.testing.assert_close(att.double(), ref_att.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y.double(), ref.detach(), atol=1e-6, rtol=1e-5)
    for fast, exact in ((q32, q), (k32, k), (v32, v)):  # the backward too, through the same mask
        torch.testing.assert_close(fast.grad.double(), exact.grad, atol=1e-5, rtol=1e-4)
    assert 0.6 < (scaled_mask[ref_att > 0] > 0).double().mean() < 0.9  # some weights were dropped


def test_bf16_explicit_attention_against_float64_recomputation():
    """The written-out product in bf16 (a compiled CPU step's attention): output and gradients
    within bf16's rounding of softmax(QK^T / sqrt(D) + mask) V recomputed in float64."""
    from minigpt.model import explicit_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 24, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, 24, 16, dtype=torch.float64)
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    y, _ = explicit_attention(q16, k16, v16)
    assert y.dtype == torch.bfloat16
    y.backward(g.bfloat16())
    scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(torch.ones(24, 24).triu(1).bool(), float("-inf"))
    ref = torch.softmax(scores, -1) @ v
    ref.backward(g)
    # bf16 keeps 8 bits: each input and the scores round by <= 2^-9 relatively
    torch.testing.assert_close(y.double(), ref.detach(), atol=0.03, rtol=0.03)
    for fast, exact in ((q16, q), (k16, k), (v16, v)):
        torch.testing.assert_close(fast.grad.double(), exact.grad, atol=0.06, rtol=0.05)


def _graph_calls_sdpa(m, idx, autocast: bool) -> bool:
    """Whether TorchDynamo's graph of m(idx) calls SDPA (traced only, not compiled)."""
    calls = []

    def record(gm, example_inputs):
        calls.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.compile(m, backend=record)(idx)
    torch._dynamo.reset()
    assert calls  # something was traced
    return any("scaled_dot_product_attention" in c for c in calls)


def test_a_compiled_cpu_bf16_model_writes_a_short_contexts_attention_out(monkeypatch):
    """Traced for torch.compile under bf16 autocast on the CPU, attention over a context of at
    most COMPILED_EXPLICIT_MAX_T tokens is the written-out product (no SDPA call in the
    graph); a longer context, or fp32, keeps the flash kernel, as the eager model does."""
    from minigpt import model as model_module

    m = tiny_gpt(pos_encoding="rope", qk_norm=True)
    idx = torch.randint(0, 300, (2, 16))
    assert not _graph_calls_sdpa(m, idx, autocast=True)
    assert _graph_calls_sdpa(m, idx, autocast=False)
    monkeypatch.setattr(model_module, "COMPILED_EXPLICIT_MAX_T", 8)
    assert _graph_calls_sdpa(m, idx, autocast=True)


@pytest.mark.slow
@pytest.mark.parametrize("n_head,T", [(4, 32), (1, 256)])  # (1, 256): a head of 64 at the plan's longest context
def test_the_compiled_bf16_step_is_as_close_to_float64_as_the_eager_one(n_head, T):
    """A compiled CPU training forward and backward under bf16 autocast (the trainer's compile
    options; attention written out in bf16 up to COMPILED_EXPLICIT_MAX_T tokens) lands as close
    to the float64 model's loss and gradients as the eager bf16 step (fp32 flash attention)
    does: within twice its error."""
    import copy

    from minigpt import loop
    from minigpt import model as model_module

    assert T <= model_module.COMPILED_EXPLICIT_MAX_T  # the written-out path is what is compared
    m = tiny_gpt(
        pos_encoding="rope", qk_norm=True, n_embd=64, n_head=n_head, mlp="swiglu", norm="rmsnorm", block_size=T
    ).train()
    idx, y = torch.randint(0, 300, (4, T)), torch.randint(0, 300, (4, T))
    m64 = copy.deepcopy(m).double()
    loss64 = m64(idx, y).loss
    loss64.backward()

    def step(loss_of):  # the trainer's step: (x, y) -> loss, as loop.wrap_for_device wraps it
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(idx, y)
        loss.backward()
        return loss.detach().double(), [p.grad.double() for p in m.parameters()]

    compiled = torch.compile(loop.TrainingLoss(m), options=loop.compile_options(torch.device("cpu")))
    loss_c, grads_c = step(compiled)
    loss_e, grads_e = step(loop.TrainingLoss(m))
    torch._dynamo.reset()
    assert abs(loss_c - loss64) <= 2 * abs(loss_e - loss64) + 2e-3
    for gc, ge, p in zip(grads_c, grads_e, m64.parameters()):
        err_c, err_e = (gc - p.grad).norm(), (ge - p.grad).norm()
        assert err_c <= 2 * err_e + 1e-3 * p.grad.norm(), (err_c, err_e)


def test_attention_weight_dropout_equals_sdpas_in_distribution(monkeypatch):
    """The CPU's attention-weight dropout (the explicit product, kernels.dropout's masks) and
    SDPA's own (its math path, a Bernoulli draw a weight): over 300 seeds, each one's mean
    output is the output without dropout (inverted dropout is unbiased), and both spread alike."""
    from minigpt import model as model_mod

    m = tiny_gpt(n_layer=1, dropout=0.3, pos_encoding="rope")
    for mod in m.modules():  # dropout on the attention weights only
        if isinstance(mod, torch.nn.Dropout) and mod is not m.transformer.h[0].attn.weight_drop:
            mod.p = 0.0
    attn = m.transformer.h[0].attn
    seen = []
    attn.register_forward_hook(lambda mod, args, out: seen.append(out[0].detach()))
    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        m(idx)  # eval mode: no dropout
        ref = seen.pop()
        m.train()
        samples = {}
        for fast in (True, False):
            monkeypatch.setattr(model_mod.Dropout, "fast", fast)  # False: SDPA's dropout
            for seed in range(300):
                torch.manual_seed(seed)
                m(idx)
            samples[fast] = torch.stack(seen)
            seen.clear()
    for fast, ys in samples.items():
        se = ys.std(0) / math.sqrt(len(ys))
        z2 = ((ys.mean(0) - ref) / se).pow(2).mean().item()  # ~1 if unbiased
        assert 0.7 < z2 < 1.4, (fast, z2)
    ratio = (samples[True].var(0) / samples[False].var(0)).mean().item()
    assert 0.85 < ratio < 1.15, ratio


@pytest.mark.parametrize("pe", ENCODINGS)
def test_causality(pe):
    m = tiny_gpt(pos_encoding=pe)
    idx = torch.randint(0, 300, (2, 24))
    base = m(idx).logits
    for t in (0, 5, 23):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 300
        out = m(changed).logits
        assert torch.equal(out[:, :t], base[:, :t])  # the past never sees the future
        assert not torch.allclose(out[:, t], base[:, t])


def test_one_result_type():
    m = tiny_gpt()
    idx = torch.randint(0, 300, (2, 5))
    o = m(idx, idx)
    assert o.logits.shape == (2, 5, 300) and o.loss.ndim == 0 and o.attentions is None
    assert m(idx).loss is None
    # at init the loss is about ln(V): GPT-2's small init gives near-uniform predictions
    assert abs(o.loss.item() - math.log(300)) < 0.5


# ---- KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", ENCODINGS)
def test_kv_cache_decode_equals_full_recompute(pe):
    m = tiny_gpt(pos_encoding=pe)
    idx = torch.randint(0, 300, (3, 30))
    full = m(idx).logits
    cache = m.make_cache(batch_size=3)
    pieces = [m(idx[:, :10], kv_cache=cache).logits]  # prefill
    for t in range(10, 30):  # one-token decode steps
        pieces.append(m(idx[:, t : t + 1], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert int(cache.pos) == 30


@pytest.mark.parametrize("pe", ENCODINGS)
def test_kv_cache_with_left_padding(pe):
    """Rows of different lengths in one batch: padded slots are invisible."""
    m = tiny_gpt(pos_encoding=pe)
    a, b = torch.randint(0, 300, (1, 12)), torch.randint(0, 300, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    cache = m.make_cache(2)
    cache.reset(torch.tensor([0, 5]))
    out = m(batch, kv_cache=cache).logits
    torch.testing.assert_close(out[0], m(a).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 5:], m(b).logits[0], atol=1e-5, rtol=1e-5)
    nxt = torch.randint(0, 300, (2, 1))
    step = m(nxt, kv_cache=cache).logits
    torch.testing.assert_close(step[1], m(torch.cat([b, nxt[1:]], 1)).logits[0, -1:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


# ---- learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", ENCODINGS)
def test_tiny_model_overfits_repeated_text(pe):
    torch.manual_seed(0)
    m = tiny_gpt(vocab_size=20, pos_encoding=pe).train()
    seq = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3] * 2])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = m(seq[:, :-1], seq[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


# ---- init, size, helpers ------------------------------------------------------------------------------


def test_gpt2_small_parameter_count_and_init():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    with torch.device("meta"):
        m = GPT(cfg)
    assert m.num_params() == 124_439_808  # transformers' GPT2LMHeadModel("gpt2").num_parameters()
    assert m.num_params(exclude_positional=True) == 124_439_808 - 1024 * 768
    # PaLM-style estimate: 6N + 12 L C T
    assert m.flops_per_token(1024) == 6 * (124_439_808 - 786_432) + 12 * 12 * 768 * 1024
    assert m.lm_head.weight is m.transformer.wte.weight


def test_init_scales():
    m = tiny_gpt(n_layer=8, n_embd=128, n_head=4)
    assert m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert (m.transformer.h[0].attn.c_attn.bias == 0).all()


def test_untied_head_is_separate():
    m = tiny_gpt(tie_weights=False)
    assert m.lm_head.weight is not m.transformer.wte.weight


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="token id 300 is out of range for vocab_size 300"):
        m(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="token id -1"):
        m(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="longer than block_size 32"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shape \[batch, time\]"):
        m(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        m(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    cache = m.make_cache(1, max_len=4)
    m(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 4 slots"):
        m(torch.zeros(1, 2, dtype=torch.long), kv_cache=cache)


# ---- inference speed-ups ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_cpu_model_gives_the_same_logits(dtype, tmp_path, tokenizer):
    """oneDNN-prepacked Linear layers compute the same products: full passes, cached
    decoding and the explicit attention path all match the plain model."""
    import copy

    from minigpt.checkpoint import save_checkpoint
    from minigpt.inference import load_for_inference
    from minigpt.onednn import prepack_for_cpu

    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build")
    plain = tiny_gpt(pos_encoding="rope").to(dtype)
    packed = prepack_for_cpu(copy.deepcopy(plain))
    assert getattr(packed, "prepacked", False)
    idx = torch.randint(0, 300, (3, 17))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    with torch.no_grad():
        torch.testing.assert_close(packed(idx).logits, plain(idx).logits, **tol)
        c1, c2 = plain.make_cache(3), packed.make_cache(3)
        torch.testing.assert_close(packed(idx, kv_cache=c2).logits, plain(idx, kv_cache=c1).logits, **tol)
        nxt = torch.randint(0, 300, (3, 1))
        torch.testing.assert_close(packed(nxt, kv_cache=c2).logits, plain(nxt, kv_cache=c1).logits, **tol)
        for a, b in zip(packed(idx, return_attention=True).attentions, plain(idx, return_attention=True).attentions):
            torch.testing.assert_close(a, b, **tol)
    # what `minigpt sample` loads on the CPU is the packed model
    save_checkpoint(tmp_path / "c", tiny_gpt(), tokenizer)
    ckpt, dev = load_for_inference(tmp_path / "c", "cpu")
    assert dev.type == "cpu" and ckpt.model.prepacked
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(idx).logits, tiny_gpt()(idx).logits, atol=1e-5, rtol=1e-5)
