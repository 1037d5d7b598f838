"""`minigpt export-gguf`, read back with gguf's own `GGUFReader` (the ggml project's reader).

Oracles: the metadata llama.cpp's loader reads for its gpt2 and qwen3 architectures equals
the model's config; the tokenizer fields give back the tokenizer's pieces and merges; and
the tensors, mapped back by llama.cpp's names (written out here independently of the
exporter), rebuild a GPT whose logits equal the original's (f32 exactly, q8_0 within the
quantization step). And, where llama-cpp-python is installed (it builds llama.cpp from
source: `CMAKE_BUILD_PARALLEL_LEVEL=1 pip install llama-cpp-python`), llama.cpp itself loads
each architecture's file, tokenizes like minigpt and gives its logits (the last test).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.gguf_export import ggml_cpu_gelu
from minigpt.model import GPT, GPTConfig

from .conftest import tiny_gpt

gguf = pytest.importorskip("gguf")

QWEN3 = {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False}
VARIANTS = {"gpt2": {}, "qwen3": QWEN3, "qwen3-untied": {**QWEN3, "tie_weights": False}}


def randomised(**kw) -> GPT:
    m = tiny_gpt(vocab_size=300, n_embd=64, n_head=4, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            gain = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if gain else 0.1) + (1.0 if gain else 0.0))
    return m.eval()


def read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))  # ggml's [in, out] -> numpy's [out, in]
        data = (
            t.data
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            else gguf.quants.dequantize(t.data, t.tensor_type)
        )
        tensors[t.name] = (torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape)), t.tensor_type.name)
    return fields, tensors


def rebuild(cfg: GPTConfig, t: dict) -> GPT:
    """A GPT from llama.cpp's tensor names (gpt2: fused qkv; qwen3: separate q, k, v)."""
    w = {n: v for n, (v, _) in t.items()}
    sd = {
        "transformer.wte.weight": w["token_embd.weight"],
        "transformer.ln_f.weight": w["output_norm.weight"],
        "lm_head.weight": w["output.weight"],
    }
    if "position_embd.weight" in w:
        sd["transformer.wpe.weight"] = w["position_embd.weight"]
        sd["transformer.ln_f.bias"] = w["output_norm.bias"]
    for i in range(cfg.n_layer):
        o, b = f"transformer.h.{i}.", f"blk.{i}."
        if cfg.pos_encoding == "learned":
            pairs = {
                "ln_1": "attn_norm",
                "attn.c_attn": "attn_qkv",
                "attn.c_proj": "attn_output",
                "ln_2": "ffn_norm",
                "mlp.c_fc": "ffn_up",
                "mlp.c_proj": "ffn_down",
            }
            for ours, theirs in pairs.items():
                sd[o + ours + ".weight"] = w[b + theirs + ".weight"]
                if cfg.bias:
                    sd[o + ours + ".bias"] = w[b + theirs + ".bias"]
        else:
            sd[o + "attn.c_attn.weight"] = torch.cat([w[b + f"attn_{x}.weight"] for x in "qkv"])
            pairs = {
                "ln_1": "attn_norm",
                "attn.q_norm": "attn_q_norm",
                "attn.k_norm": "attn_k_norm",
                "attn.c_proj": "attn_output",
                "ln_2": "ffn_norm",
                "mlp.c_gate": "ffn_gate",
                "mlp.c_fc": "ffn_up",
                "mlp.c_proj": "ffn_down",
            }
            for ours, theirs in pairs.items():
                sd[o + ours + ".weight"] = w[b + theirs + ".weight"]
    m = GPT(GPTConfig(**{**cfg.to_dict(), "tie_weights": False}))
    m.load_state_dict(sd)
    return m.eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("out_type", ["f32", "f16", "q8_0"])
def test_gguf_metadata_tokenizer_and_weights(tmp_path, capsys, tokenizer, variant, out_type):
    model = randomised(**VARIANTS[variant])
    cfg = model.config
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf"), "--type", out_type]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'm.gguf'}"
    f, t = read(tmp_path / "m.gguf")

    arch = "gpt2" if variant == "gpt2" else "qwen3"
    assert f["general.architecture"] == arch
    assert f["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[out_type]  # llama.cpp's LLAMA_FTYPE_*
    for key, want in [
        ("context_length", cfg.block_size),
        ("embedding_length", cfg.n_embd),
        ("block_count", cfg.n_layer),
        ("feed_forward_length", cfg.hidden_dim),
        ("attention.head_count", cfg.n_head),
        ("attention.head_count_kv", cfg.n_head),
    ]:
        assert f[f"{arch}.{key}"] == want, key
    if arch == "gpt2":
        assert f["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg.layer_norm_eps)
    else:
        assert f["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.layer_norm_eps)
        assert f["qwen3.rope.freq_base"] == pytest.approx(cfg.rope_base)
        assert f["qwen3.attention.key_length"] == f["qwen3.attention.value_length"] == cfg.head_dim

    # The tokenizer as llama.cpp's gpt2 BPE reads it.
    spec = json.loads(tokenizer.to_str())
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.vocab_size
    assert all(tokens[i] == p for p, i in spec["model"]["vocab"].items())
    assert [m.replace(" ", "") for m in f["tokenizer.ggml.merges"]] == [
        (m if isinstance(m, str) else " ".join(m)).replace(" ", "") for m in spec["model"]["merges"]
    ]
    assert f["tokenizer.ggml.eos_token_id"] == f["tokenizer.ggml.bos_token_id"] == tokenizer.eot_id
    assert f["tokenizer.ggml.token_type"][tokenizer.eot_id] == 3 and f["tokenizer.ggml.token_type"][1] == 1
    assert f["tokenizer.ggml.add_bos_token"] is False
    # Text, encoded by the pieces: every piece is a byte-level string (decodes like ours).
    assert "".join(tokens[i] for i in tokenizer.encode(" the")) == "Ġthe"

    # Norms stay f32; matrices take the requested type (q8_0 where rows hold whole blocks of 32).
    assert t["output_norm.weight"][1] == "F32" and t["blk.0.attn_norm.weight"][1] == "F32"
    assert t["blk.0.ffn_up.weight"][1] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[out_type]
    rebuilt = rebuild(cfg, t)
    idx = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(idx).logits, rebuilt(idx).logits
    if out_type == "f32":
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    elif out_type == "f16":  # f16 rounds at 2^-11 relative
        assert (a - b).abs().max() < 0.01 * a.std()
    else:
        # q8_0: each weight within half a step of its block of 32 (step = the block's largest |w| / 127;
        # the f16 scale adds ~2^-11 relative), the f32 export (checked above) as the reference.
        from minigpt.gguf_export import gguf_tensors

        exact = gguf_tensors(model, arch)
        for name, (w, kind) in t.items():
            if kind == "Q8_0":
                blocks = exact[name].reshape(-1, 32)
                step = blocks.abs().amax(1, keepdim=True) / 127
                err = (w.reshape(-1, 32) - blocks).abs()
                assert bool((err <= step * 0.5 + blocks.abs() * 2e-3 + 1e-7).all()), name
        assert (a - b).abs().max() < 0.25 * a.std()


@pytest.mark.parametrize(
    "kw,needles",
    [
        ({"mlp": "gelu_exact"}, ["gelu_exact", "tanh GELU"]),
        ({"mlp": "relu2"}, ["cannot export"]),
        ({"pos_encoding": "sinusoidal"}, ["sinusoidal"]),
    ],
)
def test_export_gguf_refuses_what_llama_cpp_cannot_compute(tmp_path, capsys, tokenizer, kw, needles):
    save_checkpoint(tmp_path / "ckpt", tiny_gpt(vocab_size=300, **kw), tokenizer)
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "m.gguf").exists()


def test_export_gguf_refuses_an_existing_file_unless_forced(tmp_path, capsys, tokenizer):
    save_checkpoint(tmp_path / "ckpt", tiny_gpt(vocab_size=300), tokenizer)
    (tmp_path / "m.gguf").write_bytes(b"old")
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "m.gguf").read_bytes() == b"old"
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf"), "--force"]) == 0
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


# ---- llama.cpp itself (llama-cpp-python, when installed: it builds llama.cpp from source) ----------------------


@pytest.mark.slow  # loads llama.cpp
@pytest.mark.parametrize("variant", ["gpt2", "qwen3"])
def test_llama_cpp_loads_the_file_and_matches_minigpt(tmp_path, tokenizer, variant, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = randomised(**VARIANTS[variant])
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["export-gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf"), "--type", "f32"]) == 0
    # f32 KV cache (llama.cpp defaults to f16, which alone moves logits by ~1e-3)
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "m.gguf"), n_ctx=32, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0
    )
    for text in ["ROMEO: thou art", "  héllo\n\n\tworld 123", "x_1 = 'é'"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text), text
    ids = tokenizer.encode("ROMEO: But soft, what light")[:32]
    llm.reset()
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    # Qwen3 matches to 1e-3. GPT-2 to 3e-3: ggml's CPU GELU reads an f16 lookup table
    # (GGML_GELU_FP16), ~1e-3 off per activation, which a few logits of this random model amplify.
    tol = 3e-3 if variant == "gpt2" else 1e-3
    torch.testing.assert_close(theirs, ours, atol=tol, rtol=1e-3)
    if variant == "gpt2":
        # ... and that table is the whole difference: with ggml's GELU, minigpt matches to 3e-4.
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "gelu", lambda h, approximate="none": ggml_cpu_gelu(h))
            with torch.no_grad():
                emulated = model(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(theirs, emulated, atol=3e-4, rtol=1e-3)
