"""The logit lens and direct logit attribution (minigpt/lens.py), and the `lens` command.

The oracles: transformers' own `output_hidden_states` of the exported model (GPT-2 and
Qwen3), put through that model's own final norm and head; the attribution summing to the
logit the model computes; each head's term recomputed in float64 from the parameters;
and a baseline saying plainly that it has none of this.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.errors import MiniGPTError
from minigpt.lens import direct_logit_attribution, lens_json, lens_logits, logit_lens

from .conftest import tiny_gpt

TEXT = "ROMEO:\nLove night day sweet, thou art my heart.\n    JULIET: fair"
SHORT = "ROMEO:\nLove night day sweet, thou"  # fits block_size 32

GPT2_BLOCK = dict()
MODERN_BLOCK = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False)
VARIANTS = [
    GPT2_BLOCK,
    MODERN_BLOCK,
    dict(mlp="gelu_exact", bias=False),
    dict(pos_encoding="sinusoidal", mlp="relu2"),
    dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, logit_softcap=5.0),
]
IDS = lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "gpt2"  # noqa: E731


def randomised(seed=0, **kw):
    """A tiny GPT with every parameter moved off its init (gains off 1, biases off 0, the
    zero-initialised projections non-zero), so no part can be dropped unnoticed."""
    m = tiny_gpt(vocab_size=300, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            is_gain = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if is_gain else 0.15) + (1.0 if is_gain else 0.0))
    return m.eval()


# ---- the lens against transformers ------------------------------------------------------------

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.mark.parametrize(
    "kw, arch", [(GPT2_BLOCK, "GPT2LMHeadModel"), (MODERN_BLOCK, "Qwen3ForCausalLM")], ids=["gpt2", "qwen3"]
)
def test_lens_equals_transformers_hidden_states_through_the_exports_norm_and_head(tmp_path, tokenizer, kw, arch):
    from minigpt.hf import export_hf

    model = randomised(seed=3, **kw)
    save_checkpoint(tmp_path / "c", model, tokenizer)
    export_hf(tmp_path / "c", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == arch
    norm = hf.transformer.ln_f if arch == "GPT2LMHeadModel" else hf.model.norm
    ids = tokenizer.encode(TEXT)[:32]
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == model.config.n_layer + 1
        # The embeddings and every block's output but the last through the final norm and
        # the head; transformers hands the last one over already normed, so its row is
        # the model's logits themselves.
        oracle = torch.stack([hf.lm_head(norm(h))[0] for h in hs[:-1]] + [out.logits[0]])
    ours = lens_logits(model, ids)
    assert ours.shape == oracle.shape == (model.config.n_layer + 1, len(ids), 300)
    assert oracle.std() > 0.5, "logits too small for the tolerance to mean anything"
    torch.testing.assert_close(ours, oracle, atol=1e-4, rtol=1e-4)

    # The summary the lens keeps (top-k, rank and probability of the real next token)
    # read from the same oracle.
    lens = logit_lens(model, tokenizer, ids, top_k=4)
    probs = oracle.double().softmax(-1)
    np.testing.assert_allclose(lens.top_probs, probs.topk(4, dim=-1).values.numpy(), atol=1e-5)
    nxt = torch.tensor(ids[1:])
    p_next = probs[:, :-1].gather(-1, nxt[None, :, None].expand(len(hs), -1, 1))[..., 0]
    np.testing.assert_allclose(lens.next_prob[:, :-1], p_next.numpy(), atol=1e-5)
    own = oracle[:, :-1].gather(-1, nxt[None, :, None].expand(len(hs), -1, 1))  # [L+1, T-1, 1]
    rank = (oracle[:, :-1] > own).sum(-1) + 1
    near = ((oracle[:, :-1] - own).abs() < 1e-4).sum(-1) > 1  # another token within the tolerance: rank unclear
    assert near.float().mean() < 0.1
    assert bool(((torch.from_numpy(lens.next_rank[:, :-1]) == rank) | near).all())
    assert np.all(lens.next_rank[:, -1] == 0) and np.all(np.isnan(lens.next_prob[:, -1]))


# ---- the attribution -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_attribution_sums_to_the_models_logit(tokenizer, kw):
    model = randomised(seed=1, **kw)
    ids = tokenizer.encode(TEXT)[:32]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    cap = model.config.logit_softcap
    checked = 0
    for t in (0, 5, len(ids) - 1):
        for v in (ids[min(t + 1, len(ids) - 1)], 7, int(logits[t].argmax())):
            a = direct_logit_attribution(model, tokenizer, ids, position=t, token=v)
            assert a.values.dtype == np.float64 and len(a.values) == len(a.names)
            assert abs(a.total - a.logit) < 1e-5
            # The logit split is the model's own (before the soft cap, which is not linear).
            expected = float(logits[t, v]) if cap == 0 else cap * math.atanh(float(logits[t, v]) / cap)
            assert abs(a.logit - expected) < 1e-4
            checked += 1
    assert checked == 9
    names = a.names
    c = model.config
    assert names[0] == "embed" and ("pos" in names) == (c.pos_encoding != "rope")
    assert sum(n.startswith("L0H") for n in names) == c.n_head and names.count("L1 MLP") == 1
    assert ("final norm bias" in names) == (c.norm == "layernorm" and c.bias)


@pytest.mark.parametrize("kw", [GPT2_BLOCK, MODERN_BLOCK], ids=["gpt2", "modern"])
def test_each_heads_term_equals_a_float64_recomputation(tokenizer, kw):
    """Layer 0's heads written out from the parameters: head h's output through its slice
    of c_proj, read along the final norm's direction for the token (scale held fixed).
    A permutation of heads or a wrong slice would still sum right; this would not."""
    model = randomised(seed=2, n_layer=1, **kw)
    ids = tokenizer.encode(TEXT)[:20]
    T, C, H = len(ids), model.config.n_embd, model.config.n_head
    D = C // H
    sd = {k: v.double() for k, v in model.state_dict().items()}
    eps = model.config.layer_norm_eps
    modern = kw is MODERN_BLOCK

    def norm(x, prefix):
        if modern:
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * sd[prefix + ".weight"]
        return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps=eps)

    idx = torch.tensor(ids)
    x = sd["transformer.wte.weight"][idx]
    if not modern:
        x = x + sd["transformer.wpe.weight"][:T]
    h = norm(x, "transformer.h.0.ln_1")
    qkv = h @ sd["transformer.h.0.attn.c_attn.weight"].T
    if not modern:
        qkv = qkv + sd["transformer.h.0.attn.c_attn.bias"]
    q, k, v = (t.view(T, H, D).transpose(0, 1) for t in qkv.split(C, -1))
    if modern:

        def rms(t, w):
            return t / torch.sqrt((t * t).mean(-1, keepdim=True) + eps) * w

        q, k = rms(q, sd["transformer.h.0.attn.q_norm.weight"]), rms(k, sd["transformer.h.0.attn.k_norm.weight"])
        inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv  # [T, D/2]
        cos, sin = ang.cos(), ang.sin()

        def rope(t):
            a, b = t[..., : D // 2], t[..., D // 2 :]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

        q, k = rope(q), rope(k)
    att = ((q @ k.transpose(-1, -2)) / math.sqrt(D)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    z = att.softmax(-1) @ v  # [H, T, D]
    W_O = sd["transformer.h.0.attn.c_proj.weight"]  # [C, C]
    t, tok = T - 3, 11
    with torch.no_grad():  # the final norm's scale at t, from the model's own stream
        from minigpt.lens import run_stream

        s, _ = run_stream(model, ids)
    xf = s.resid[-1][t].double()
    if modern:
        sigma = torch.sqrt((xf * xf).mean() + eps)
    else:
        sigma = torch.sqrt(xf.var(unbiased=False) + eps)
    d = sd["lm_head.weight"][tok] * sd["transformer.ln_f.weight"] / sigma
    if not modern:
        d = d - d.mean()
    expected = [float(d @ (W_O[:, hh * D : (hh + 1) * D] @ z[hh, t])) for hh in range(H)]
    a = direct_logit_attribution(model, tokenizer, ids, position=t, token=tok)
    got = [float(a.values[a.names.index(f"L0H{hh}")]) for hh in range(H)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert max(abs(e) for e in expected) > 0.01  # the terms are not all ~0


def test_lens_page_attributions_match_the_direct_call(tokenizer):
    model = randomised(seed=4, **MODERN_BLOCK)
    lens = logit_lens(model, tokenizer, TEXT)
    ids = lens.ids
    for t in (0, 7, len(ids) - 1):
        stored = lens.attribution(t)
        assert stored.token_id == (ids[t + 1] if t + 1 < len(ids) else int(lens.top_ids[-1, t, 0]))
        direct = direct_logit_attribution(model, tokenizer, ids, position=t, token=stored.token_id)
        np.testing.assert_allclose(stored.values, direct.values, atol=1e-9)
        # The candidates are the real next token and the output row's top-k, once each.
        cands = lens.attributions[t]["tokens"]
        assert len(cands) == len(set(cands)) and set(lens.top_ids[-1, t].tolist()) <= set(cands)


def test_lens_json_for_a_server_route_matches_the_lens(tokenizer):
    model = randomised(seed=5)
    ids = tokenizer.encode(TEXT)[:30]
    lens = logit_lens(model, tokenizer, ids)
    j = lens_json(model, tokenizer, ids[:13], position=11)  # the die that drew token 12
    json.dumps(j, allow_nan=False)  # JSON-ready as it is
    assert j["position"] == 11 and j["next"] == {"id": ids[12], "token": tokenizer.token_str(ids[12])}
    assert [row["layer"] for row in j["layers"]] == lens.layers
    for l, row in enumerate(j["layers"]):
        assert [f["id"] for f in row["top"]] == lens.top_ids[l, 11].tolist()
        np.testing.assert_allclose([f["prob"] for f in row["top"]], lens.top_probs[l, 11], atol=1e-6)
        assert row["next_rank"] == lens.next_rank[l, 11]
    assert abs(j["attribution"]["sum"] - j["attribution"]["logit"]) < 1e-5
    last = lens_json(model, tokenizer, ids[:13])  # the last position: no next token yet
    assert last["next"] is None and last["layers"][0]["next_rank"] is None


def test_model_is_left_untouched_and_bad_input_is_refused(tokenizer):
    model = randomised(seed=6)
    model.train()
    logit_lens(model, tokenizer, TEXT)
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(MiniGPTError, match="position 99 is out of range"):
        direct_logit_attribution(model, tokenizer, "to be", position=99)
    with pytest.raises(MiniGPTError, match="exactly one token"):
        direct_logit_attribution(model, tokenizer, "to be", token="thou art")
    with pytest.raises(MiniGPTError, match="empty"):
        logit_lens(model, tokenizer, "")
    long = tokenizer.encode(TEXT * 4)
    assert logit_lens(model, tokenizer, long).dropped == len(long) - 32


def test_a_baseline_says_plainly_it_has_none_of_this(tokenizer):
    from minigpt.baselines import RNNLM, RNNConfig

    rnn = RNNLM(RNNConfig(vocab_size=300, block_size=16, n_layer=1, n_embd=16, cell="lstm"))
    for call in (lambda: logit_lens(rnn, tokenizer, "hi"), lambda: direct_logit_attribution(rnn, tokenizer, "hi")):
        with pytest.raises(MiniGPTError, match="an LSTM has no attention heads or layers of a residual stream"):
            call()


# ---- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    return str(save_checkpoint(tmp_path_factory.mktemp("lens") / "c", randomised(seed=7, **MODERN_BLOCK), tokenizer))


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_lens_command_tables_json_and_page(capsys, ckpt, tokenizer, tmp_path):
    from minigpt.checkpoint import load_checkpoint
    from minigpt.viewer import visible_token

    model = load_checkpoint(ckpt).model
    lens = logit_lens(model, tokenizer, SHORT)
    rc, out, err = run(
        capsys,
        "lens",
        "--checkpoint",
        ckpt,
        "--prompt",
        SHORT,
        "--device",
        "cpu",
        "--parts",
        "0",
        "--html",
        str(tmp_path / "l.html"),
    )
    assert rc == 0 and err == ""
    lines = out.splitlines()
    T = len(lens)
    rows = lines[2 : 2 + T]  # the first table: one row per position
    for t, row in enumerate(rows):
        cells = row.split("|", 1)[1][1:]  # each cell: mark, token (7 columns), probability; a space between
        for l in range(len(lens.layers)):
            cell = cells[l * 13 : (l + 1) * 13]
            assert cell[1:8] == visible_token(lens.strings[int(lens.top_ids[l, t, 0])], 7)
            assert float(cell[8:12]) == pytest.approx(lens.top_probs[l, t, 0], abs=0.006)
    total = [l for l in lines if l.startswith("direct logit attribution of")]
    assert len(total) == 1 and f"at position {T - 1}" in total[0]
    parts = lines[lines.index(total[0]) + 1 : -1]  # then the "wrote" line
    assert len(parts) == len(lens.components)  # --parts 0: every part
    assert sum(float(p.split()[-2]) for p in parts) == pytest.approx(lens.attribution(T - 1).logit, abs=1e-3)
    assert lines[-1] == f"wrote {tmp_path / 'l.html'}"
    page = (tmp_path / "l.html").read_text(encoding="utf-8")
    assert '"open":"lens"' in page

    word = next(tokenizer.token_str(i) for i in lens.ids if tokenizer.encode(tokenizer.token_str(i)) == [i])
    rc, out, err = run(
        capsys,
        "lens",
        "--checkpoint",
        ckpt,
        "--prompt",
        SHORT,
        "--device",
        "cpu",
        "--json",
        "--position",
        "3",
        "--token",
        word,
    )
    assert rc == 0, err
    data = json.loads(out)
    assert rc == 0 and data["layers"] == lens.layers and data["ids"] == lens.ids
    np.testing.assert_allclose(np.array(data["top"])[..., 1], lens.top_probs, atol=1e-6)
    a = data["attribution"]
    assert a["position"] == 3 and a["token"] == word and abs(a["sum"] - a["logit"]) < 1e-5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "to be", "--position", "9"], "--position 9 is out of range"),
        (["--prompt", "to be", "--position", "-1"], "--position -1 is out of range"),
        (["--prompt", "to be", "--token", "thou art"], "exactly one token"),
        (["--prompt", "to be", "--top", "0"], "--top"),
    ],
)
def test_lens_bad_input_is_one_line_and_exit_2(capsys, ckpt, argv, message):
    rc, out, err = run(capsys, "lens", "--checkpoint", ckpt, "--device", "cpu", *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_lens_on_a_baseline_checkpoint_says_so(capsys, tmp_path, tokenizer):
    from minigpt.baselines import RNNLM, RNNConfig

    path = save_checkpoint(
        tmp_path / "gru", RNNLM(RNNConfig(vocab_size=300, block_size=16, n_layer=1, n_embd=16, cell="gru")), tokenizer
    )
    rc, _, err = run(capsys, "lens", "--checkpoint", str(path), "--prompt", "hi", "--device", "cpu")
    assert rc == 2 and err.strip().endswith(
        "a GRU has no attention heads or layers of a residual stream: the logit lens needs a GPT checkpoint"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_lens_attribution_and_ablation_equal_cpu(tokenizer):
    import numpy as np_

    from minigpt.ablation import head_ablation

    model = randomised(seed=8, **MODERN_BLOCK)
    ids = tokenizer.encode(TEXT)[:32]
    cpu = logit_lens(model, tokenizer, ids)
    val = np_.array(tokenizer.encode(TEXT * 6), dtype=np_.int64)
    cpu_abl = head_ablation(model, val, tokenizer.byte_lengths, max_tokens=200, methods=("zero",))
    model.to("cuda")
    gpu = logit_lens(model, tokenizer, ids)
    np.testing.assert_allclose(gpu.top_probs, cpu.top_probs, atol=1e-4)
    np.testing.assert_allclose(gpu.attribution(5).values, cpu.attribution(5).values, atol=1e-4)
    gpu_abl = head_ablation(model, val, tokenizer.byte_lengths, max_tokens=200, methods=("zero",))
    np.testing.assert_allclose(gpu_abl.bpb["zero"], cpu_abl.bpb["zero"], atol=1e-4)
