"""Head ablation (minigpt/ablation.py) and `minigpt heads --ablate`.

The oracles: a float64 recomputation of the whole model from its parameters with one
head's output zeroed; a copy of the model whose output projection no longer reads the
ablated heads (zero: those columns zeroed; every head of a layer: the layer's attention
output removed; mean: the mean folded into the bias); `evaluate_tokens` of those copies
for the bits-per-byte numbers; and a head that writes nothing, which must cost exactly 0.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt.ablation import ablated, head_ablation, head_means
from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.data import Dataset
from minigpt.errors import MiniGPTError
from minigpt.evaluate import evaluate_tokens

from .test_lens import GPT2_BLOCK, MODERN_BLOCK, randomised

BLOCKS = [GPT2_BLOCK, MODERN_BLOCK]
BLOCK_IDS = ["gpt2", "modern"]


def reference_logits(model, ids: list[int], zero: tuple[int, int] | None = None) -> torch.Tensor:
    """The model's logits [T, V] written out in float64 from its state_dict, with head
    `zero` = (layer, head)'s output set to 0 before the output projection. Covers GPT-2's
    block (learned positions, LayerNorm, tanh GELU) and the modern one (rotary, RMSNorm,
    QK-norm, SwiGLU)."""
    c = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    T, C, H = len(ids), c.n_embd, c.n_head
    D, eps = C // H, c.layer_norm_eps

    def norm(x, prefix):
        if c.norm == "rmsnorm":
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * sd[prefix + ".weight"]
        return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd.get(prefix + ".bias"), eps=eps)

    def linear(x, prefix):
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if prefix + ".bias" in sd else y

    x = sd["transformer.wte.weight"][torch.tensor(ids)]
    if c.pos_encoding == "learned":
        x = x + sd["transformer.wpe.weight"][:T]
    inv_freq = c.rope_base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # [T, D/2]
    for l in range(c.n_layer):
        p = f"transformer.h.{l}"
        qkv = linear(norm(x, p + ".ln_1"), p + ".attn.c_attn")
        q, k, v = (t.view(T, H, D).transpose(0, 1) for t in qkv.split(C, -1))
        if c.qk_norm:
            q, k = norm(q, p + ".attn.q_norm"), norm(k, p + ".attn.k_norm")
        if c.pos_encoding == "rope":

            def rot(t):
                a, b = t[..., : D // 2], t[..., D // 2 :]
                return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1)

            q, k = rot(q), rot(k)
        s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        z = s.softmax(-1) @ v  # [H, T, D]
        if zero is not None and zero[0] == l:
            z[zero[1]] = 0.0
        x = x + linear(z.transpose(0, 1).reshape(T, C), p + ".attn.c_proj")
        h = norm(x, p + ".ln_2")
        if c.mlp == "swiglu":
            h = F.silu(linear(h, p + ".mlp.c_gate")) * linear(h, p + ".mlp.c_fc")
        else:
            h = F.gelu(linear(h, p + ".mlp.c_fc"), approximate="tanh")
        x = x + linear(h, p + ".mlp.c_proj")
    return norm(x, "transformer.ln_f") @ sd["lm_head.weight"].T


@pytest.fixture(scope="module")
def val(dataset_dir):
    return Dataset(dataset_dir).tokens("val")


@pytest.mark.parametrize("kw", BLOCKS, ids=BLOCK_IDS)
def test_zero_ablation_equals_a_float64_recomputation(tokenizer, kw):
    model = randomised(seed=11, **kw)
    ids = tokenizer.encode("ROMEO:\nLove night day sweet, thou art my heart.")[:32]
    with torch.no_grad():
        intact = model(torch.tensor([ids])).logits[0].double()
    torch.testing.assert_close(intact, reference_logits(model, ids), atol=1e-4, rtol=1e-4)  # the oracle itself
    for head in [(0, 1), (1, 0)]:
        with torch.no_grad(), ablated(model, [head]):
            got = model(torch.tensor([ids])).logits[0].double()
        want = reference_logits(model, ids, zero=head)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert (want - intact).abs().max() > 1e-2, "the ablation should change the logits"
    assert not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("kw", BLOCKS, ids=BLOCK_IDS)
def test_ablating_every_head_of_a_layer_removes_its_attention_output(tokenizer, kw):
    """Oracle: a copy whose output projection reads nothing (its weight zeroed): the layer's
    attention then adds only c_proj's bias, which is no head's (0 for the bias-free block)."""
    from minigpt.lens import run_stream

    model = randomised(seed=12, **kw)
    ids = tokenizer.encode("JULIET:\nO sweet love, thou art the sun.")[:32]
    for layer in range(model.config.n_layer):
        removed = copy.deepcopy(model)
        with torch.no_grad():
            removed.transformer.h[layer].attn.c_proj.weight.zero_()
        with ablated(model, [(layer, h) for h in range(model.config.n_head)]):
            s, got = run_stream(model, ids)
        _, want = run_stream(removed, ids)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        bias = model.transformer.h[layer].attn.c_proj.bias
        expected = torch.zeros_like(s.attn[layer]) if bias is None else bias.detach().expand_as(s.attn[layer])
        torch.testing.assert_close(s.attn[layer], expected, atol=1e-6, rtol=0)


def test_mean_ablation_equals_the_mean_folded_into_the_bias(val):
    model = randomised(seed=13, **GPT2_BLOCK)
    means = head_means(model, val, max_tokens=200)
    # The mean of each head's output over the windows read, recomputed window by window.
    from minigpt.evaluate import window_plan
    from minigpt.lens import run_stream

    starts, _, W, _ = window_plan(200, 32, 32)
    zs = torch.stack([torch.stack(run_stream(model, val[s : s + W].astype(np.int64))[0].z) for s in starts])
    torch.testing.assert_close(means, zs.mean(dim=(0, 2)), atol=1e-5, rtol=1e-5)

    layer, head, D = 1, 1, model.config.head_dim
    folded = copy.deepcopy(model)
    with torch.no_grad():
        proj = folded.transformer.h[layer].attn.c_proj
        cols = slice(head * D, (head + 1) * D)
        proj.bias += proj.weight[:, cols] @ means[layer, cols]
        proj.weight[:, cols] = 0
    idx = torch.from_numpy(val[:32].astype(np.int64))[None]
    with torch.no_grad(), ablated(model, [(layer, head)], means):
        got = model(idx).logits
    torch.testing.assert_close(got, folded(idx).logits, atol=1e-5, rtol=1e-5)


def test_the_report_against_ablated_copies(val, tokenizer):
    model = randomised(seed=14, **MODERN_BLOCK)
    rep = head_ablation(
        model,
        val,
        tokenizer.byte_lengths,
        max_tokens=300,
        tokenizer=tokenizer,
        prompt="ROMEO:\nLove",
        methods=("zero",),
    )
    blen = tokenizer.byte_lengths
    base = evaluate_tokens(model, val, blen, window=32, max_tokens=300)
    assert rep.base_bpb == pytest.approx(base["bpb"], abs=1e-9) and rep.sample_bytes == base["bytes"]
    assert rep.sample_tokens == 300 and rep.split_tokens == len(val)
    idx = torch.tensor([tokenizer.encode("ROMEO:\nLove")])
    with torch.no_grad():
        p = model(idx).logits[0, -1].double().softmax(-1)
    D = model.config.head_dim
    for layer, head in [(0, 0), (1, 1)]:
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            copy_.transformer.h[layer].attn.c_proj.weight[:, head * D : (head + 1) * D] = 0
        want = evaluate_tokens(copy_, val, blen, window=32, max_tokens=300)["bpb"]
        assert rep.bpb["zero"][layer, head] == pytest.approx(want, abs=1e-6)
        assert rep.delta("zero")[layer, head] == pytest.approx(want - base["bpb"], abs=1e-6)
        with torch.no_grad():
            q = copy_(idx).logits[0, -1].double().softmax(-1)
        kl_bits = float((p * (p / q).log()).sum()) / math.log(2)
        assert rep.prompt_kl["zero"][layer, head] == pytest.approx(kl_bits, abs=1e-6)
        top = q.topk(3)
        assert [i for i, _ in rep.prompt_top["zero"][layer][head]] == top.indices.tolist()
    assert np.abs(rep.delta("zero")).max() > 1e-3
    row = rep.head(1, 1)["zero"]
    assert set(row) == {"val_bpb", "delta_bpb", "prompt_kl_bits", "prompt_top"}
    assert row["prompt_top"][0]["token"] == tokenizer.token_str(row["prompt_top"][0]["id"])


def test_a_head_that_writes_nothing_costs_exactly_nothing(val, tokenizer):
    model = randomised(seed=15, **GPT2_BLOCK)
    C, D = model.config.n_embd, model.config.head_dim
    with torch.no_grad():  # layer 1, head 0 reads values that are all zero: its output is 0
        model.transformer.h[1].attn.c_attn.weight[2 * C : 2 * C + D] = 0
        model.transformer.h[1].attn.c_attn.bias[2 * C : 2 * C + D] = 0
    rep = head_ablation(model, val, tokenizer.byte_lengths, max_tokens=200, tokenizer=tokenizer, prompt="ROMEO:")
    for m in ("zero", "mean"):
        assert rep.delta(m)[1, 0] == 0.0 and rep.prompt_kl[m][1, 0] == 0.0
        assert abs(rep.delta(m)[0, 0]) > 1e-4  # an ordinary head does cost something


def test_bad_arguments_and_baselines(val, tokenizer):
    from minigpt.baselines import RNNLM, RNNConfig

    model = randomised(seed=16)
    with pytest.raises(MiniGPTError, match="head L2H0 does not exist"):
        with ablated(model, [(2, 0)]):
            pass
    with pytest.raises(MiniGPTError, match="ablation method 'half'"):
        head_ablation(model, val, tokenizer.byte_lengths, methods=("half",))
    rnn = RNNLM(RNNConfig(vocab_size=300, block_size=16, n_layer=1, n_embd=16, cell="lstm"))
    with pytest.raises(MiniGPTError, match="an LSTM has no attention heads .*: head ablation needs a GPT"):
        head_ablation(rnn, val, tokenizer.byte_lengths)


# ---- the command ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    return str(save_checkpoint(tmp_path_factory.mktemp("abl") / "c", randomised(seed=17, **MODERN_BLOCK), tokenizer))


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_heads_ablate_command(capsys, ckpt, dataset_dir, val, tokenizer, tmp_path):
    from minigpt.checkpoint import load_checkpoint

    rc, out, err = run(
        capsys,
        "heads",
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--ablate",
        "--data",
        str(dataset_dir),
        "--ablate-tokens",
        "200",
        "--json",
        "--html",
        str(tmp_path / "h.html"),
    )
    assert rc == 0, err
    report = json.loads(out)
    sample = report["ablation"]["sample"]
    assert sample == {
        "data": str(dataset_dir),
        "split": "val",
        "tokens": 200,
        "bytes": sample["bytes"],
        "of_tokens": len(val),
        "first": True,
    }
    model = load_checkpoint(ckpt).model
    from minigpt.inspection import DEFAULT_PASSAGE

    api = head_ablation(model, val, tokenizer.byte_lengths, max_tokens=200, tokenizer=tokenizer, prompt=DEFAULT_PASSAGE)
    assert report["ablation"]["base_val_bpb"] == pytest.approx(api.base_bpb, abs=1e-4)
    for row in report["heads"]:
        for m in ("zero", "mean"):
            a = row["ablation"][m]
            assert a["delta_bpb"] == pytest.approx(api.delta(m)[row["layer"], row["head"]], abs=1e-4)
            assert a["prompt_kl_bits"] == pytest.approx(api.prompt_kl[m][row["layer"], row["head"]], abs=1e-4)
    assert {"entropy", "prev_token", "induction"} <= set(report["heads"][0])  # the statistics stay
    assert err.strip().endswith(f"wrote {tmp_path / 'h.html'}")

    rc, out, _ = run(
        capsys,
        "heads",
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--ablate",
        "--data",
        str(dataset_dir),
        "--ablate-tokens",
        "0",
    )
    lines = out.splitlines()
    assert rc == 0 and f"on the whole of {dataset_dir}'s validation split" in lines[1]
    header = lines[2]
    cols = [header.index(c) for c in ("induction", "zero Δbpb", "zero KL", "mean Δbpb", "mean KL")]
    assert cols == sorted(cols)  # the ablation columns after the statistics, in this order
    assert all(len(line) == len(header) for line in lines[3 : 3 + 4])  # one row per head (2 x 2), aligned
    assert any(line.startswith("heads the model needs most (zero-ablation") for line in lines)


def test_heads_ablate_bad_input(capsys, ckpt, tmp_path, corpus_file):
    rc, _, err = run(capsys, "heads", "--checkpoint", ckpt, "--device", "cpu", "--ablate")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "does not record the dataset it was trained on" in err
    from minigpt.data import prepare

    prepare([corpus_file], tmp_path / "other", vocab_size=280, progress=False)
    rc, _, err = run(
        capsys, "heads", "--checkpoint", ckpt, "--device", "cpu", "--ablate", "--data", str(tmp_path / "other")
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "differs from the data's" in err
