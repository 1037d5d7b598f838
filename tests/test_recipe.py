"""The training recipe's parts: block variants (RMSNorm, ReLU^2/SwiGLU MLPs, QK-norm, logit
soft-capping, zero-initialised projections), their Qwen3 export/import checked against
transformers, Muon, the warmup-stable-decay schedule and --max-time."""

from __future__ import annotations

import json

import pytest
import torch

from minigpt.config import GPTConfig, parse_duration
from minigpt.errors import MiniGPTError
from minigpt.model import GPT
from minigpt.trainer import lr_at, make_optimizers, train

from .conftest import tiny_gpt
from .test_trainer import make_cfg, metrics

VARIANTS = [
    dict(),
    dict(norm="rmsnorm"),
    dict(mlp="relu2"),
    dict(mlp="gelu_exact", bias=False),
    dict(mlp="swiglu"),
    dict(qk_norm=True),
    dict(logit_softcap=15.0),
    dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False),
    dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, logit_softcap=15.0),
]


def _randomised(**kw) -> GPT:
    """A tiny GPT whose gains are not all 1, so norms are really exercised."""
    m = tiny_gpt(**kw)
    with torch.no_grad():
        for _n, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "gpt2")
def test_every_block_variant_fast_path_equals_explicit_path_and_cache(kw):
    m = _randomised(**kw)
    idx = torch.randint(0, 300, (2, 24))
    fast, slow = m(idx), m(idx, return_attention=True)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    for att in slow.attentions:
        torch.testing.assert_close(att.sum(-1), torch.ones_like(att.sum(-1)))
    cache = m.make_cache(2)
    pieces = [m(idx[:, :10], kv_cache=cache).logits] + [
        m(idx[:, t : t + 1], kv_cache=cache).logits for t in range(10, 24)
    ]
    torch.testing.assert_close(torch.cat(pieces, 1), fast.logits, atol=1e-5, rtol=1e-5)


def test_variants_against_a_float64_recomputation():
    """RMSNorm, QK-norm, SwiGLU and the soft cap, written out by hand in float64."""
    m = _randomised(
        n_layer=1, norm="rmsnorm", qk_norm=True, mlp="swiglu", logit_softcap=5.0, bias=False, pos_encoding="learned"
    )
    idx = torch.randint(0, 300, (1, 9))
    got = m(idx).logits.double()
    sd = {n: t.double() for n, t in m.state_dict().items()}
    eps = m.config.layer_norm_eps

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    x = sd["transformer.wte.weight"][idx[0]] + sd["transformer.wpe.weight"][:9]
    h = rms(x, sd["transformer.h.0.ln_1.weight"])
    q, k, v = (h @ sd["transformer.h.0.attn.c_attn.weight"].T).split(32, -1)
    q, k, v = (t.view(9, 2, 16).transpose(0, 1) for t in (q, k, v))
    q, k = rms(q, sd["transformer.h.0.attn.q_norm.weight"]), rms(k, sd["transformer.h.0.attn.k_norm.weight"])
    s = (q @ k.transpose(-1, -2) / 4.0).masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf"))
    y = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(9, 32) @ sd["transformer.h.0.attn.c_proj.weight"].T
    x = x + y
    h = rms(x, sd["transformer.h.0.ln_2.weight"])
    g = h @ sd["transformer.h.0.mlp.c_gate.weight"].T
    u = h @ sd["transformer.h.0.mlp.c_fc.weight"].T
    x = x + (g * torch.sigmoid(g) * u) @ sd["transformer.h.0.mlp.c_proj.weight"].T
    logits = rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T
    ref = 5.0 * torch.tanh(logits / 5.0)
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)


def test_swiglu_hidden_width_follows_llama_and_zero_init_starts_as_identity():
    assert GPTConfig(vocab_size=10, n_embd=192, n_head=6, mlp="swiglu").hidden_dim == 512  # 8 * 192 / 3 = 512
    assert GPTConfig(vocab_size=10, n_embd=128, n_head=4, mlp="swiglu").hidden_dim == 384  # 341.3 -> 384
    m = tiny_gpt(zero_init_proj=True)
    assert all(float(p.detach().abs().max()) == 0 for n, p in m.named_parameters() if n.endswith("c_proj.weight"))
    with pytest.raises(MiniGPTError, match="mlp"):
        GPTConfig(vocab_size=10, mlp="geglu")


# ---- Qwen3 export / import, against transformers ------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [True, False])
def test_modern_block_exports_to_qwen3_and_back_with_equal_logits(tmp_path, tokenizer, tie):
    from minigpt.checkpoint import load_checkpoint, save_checkpoint
    from minigpt.hf import export_hf, import_hf

    m = _randomised(
        vocab_size=tokenizer.vocab_size,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qk_norm=True,
        bias=False,
        tie_weights=tie,
        n_head=4,
    )
    save_checkpoint(tmp_path / "c", m, tokenizer)
    export_hf(tmp_path / "c", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    idx = torch.randint(0, tokenizer.vocab_size, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, m(idx).logits, atol=1e-4, rtol=1e-4)
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_checkpoint(tmp_path / "back").model
    torch.testing.assert_close(back(idx).logits, m(idx).logits, atol=1e-4, rtol=1e-4)


def test_a_qwen3_made_by_transformers_imports_with_equal_logits(tmp_path):
    from minigpt.checkpoint import load_checkpoint
    from minigpt.hf import import_hf

    cfg = transformers.Qwen3Config(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "c")
    ours = load_checkpoint(tmp_path / "c", need_tokenizer=False).model
    idx = torch.randint(0, 120, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf(idx).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(mlp="relu2", pos_encoding="rope", norm="rmsnorm", qk_norm=True, bias=False), "cannot export this block"),
        (dict(logit_softcap=15.0), "logit_softcap"),
        (dict(pos_encoding="rope"), "rope"),
    ],
)
def test_blocks_no_architecture_expresses_are_refused_with_the_reason(tmp_path, tokenizer, kw, needle):
    from minigpt.checkpoint import save_checkpoint
    from minigpt.hf import export_hf

    save_checkpoint(tmp_path / "c", tiny_gpt(vocab_size=tokenizer.vocab_size, **kw), tokenizer)
    with pytest.raises(MiniGPTError, match=needle):
        export_hf(tmp_path / "c", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---- schedule, optimizer, time budget ----------------------------------------------------------


def test_wsd_schedule_known_values():
    kw = dict(lr=1.0, min_lr=0.1, warmup=10, decay_steps=100, schedule="wsd", cooldown=0.4)
    assert lr_at(0, **kw) == pytest.approx(0.1)  # warmup as before
    assert lr_at(30, **kw) == 1.0 and lr_at(59, **kw) == 1.0  # stable until the last 40%
    assert lr_at(60, **kw) == pytest.approx(1.0)  # the cooldown starts at the peak...
    assert lr_at(80, **kw) == pytest.approx(0.55)  # ...falls linearly...
    assert lr_at(100, **kw) == pytest.approx(0.1) and lr_at(150, **kw) == pytest.approx(0.1)  # ...to min_lr


def test_muon_takes_the_block_matrices_and_adamw_the_rest(tmp_path):
    m = tiny_gpt()
    cfg = make_cfg(tmp_path, tmp_path, optimizer="muon", muon_lr=0.05, lr=1e-3)
    muon, adamw = make_optimizers(m, cfg, torch.device("cpu"))
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert in_muon == {id(p) for n, p in named.items() if n.startswith("transformer.h.") and p.dim() == 2}
    assert in_muon.isdisjoint(in_adamw) and len(in_muon | in_adamw) == len(list(m.parameters()))
    assert id(named["transformer.wte.weight"]) in in_adamw  # embedding (and the tied head) stay with AdamW
    assert muon.param_groups[0]["lr_scale"] == pytest.approx(50.0)


def test_muon_wsd_run_learns_and_resumes_exactly(tmp_path, dataset_dir):
    kw = dict(
        max_steps=16,
        lr_decay_steps=16,
        eval_interval=4,
        optimizer="muon",
        schedule="wsd",
        cooldown=0.5,
        lr=3e-3,
        muon_lr=0.02,
        n_layer=2,
    )
    train(make_cfg(tmp_path / "a", dataset_dir, **kw), progress=False)
    train(make_cfg(tmp_path / "b", dataset_dir, **{**kw, "max_steps": 8}), progress=False)
    train(
        make_cfg(tmp_path / "b", dataset_dir, **kw, resume=True),
        explicit={"max_steps": 16, "resume": True},
        progress=False,
    )
    a, ev = metrics(tmp_path / "a")
    b, _ = metrics(tmp_path / "b")
    assert ev[16]["val_loss"] < ev[0]["val_loss"] - 0.5
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


def test_max_time_fixes_the_step_count_from_the_first_steps_and_records_it(tmp_path, dataset_dir, monkeypatch):
    """With a fake clock (every call advances 10 ms, so each step costs the same), the
    budget's arithmetic is checked exactly; the run stops at the planned step, records
    the plan (max_steps, max_time 0) and resumes exactly from it."""
    from minigpt import trainer as trainer_mod

    clock = {"t": 0.0}

    def fake():
        clock["t"] += 0.01
        return clock["t"]

    monkeypatch.setattr(trainer_mod.time, "perf_counter", fake)
    out = tmp_path / "r"
    summary = train(
        make_cfg(out, dataset_dir, max_steps=10**6, max_time=30.0, eval_interval=50, schedule="wsd"), progress=False
    )
    saved = json.loads((out / "train_config.json").read_text())
    planned = saved["optim"]["max_steps"]
    assert 21 < planned < 10**6 and saved["run"]["max_time"] == 0.0
    assert summary["step"] == planned
    assert json.loads((out / "last" / "run.json").read_text())["config"]["optim"]["max_steps"] == planned


def test_durations():
    assert (parse_duration("3m"), parse_duration("175"), parse_duration("175s"), parse_duration("1.5h")) == (
        180,
        175,
        175,
        5400,
    )
    for bad in ("soon", "-3m", "nanm"):
        with pytest.raises(MiniGPTError, match="max_time"):
            parse_duration(bad)
