"""`minigpt export-gguf`: a GPT checkpoint as one GGUF file for llama.cpp, Ollama and LM Studio.

GGUF is the ggml project's single-file format: key-value metadata (architecture, sizes,
tokenizer) followed by tensors, written here with `gguf` (the ggml project's own Python
writer, the one llama.cpp's convert_hf_to_gguf.py uses). minigpt's two block variants map
onto two of llama.cpp's architectures, the same ones export-hf uses (`hf.export_architecture`):

    GPT-2's block  -> "gpt2"   token_embd, position_embd, blk.N.attn_norm (+bias), blk.N.attn_qkv,
                               blk.N.attn_output, blk.N.ffn_norm, blk.N.ffn_up, blk.N.ffn_down, output_norm, output
    modern block   -> "qwen3"  token_embd, blk.N.attn_norm, blk.N.attn_q/k/v, blk.N.attn_q_norm/k_norm,
                               blk.N.attn_output, blk.N.ffn_norm, blk.N.ffn_gate/up/down, output_norm, output

Matrices are stored as nn.Linear holds them ([out, in] in numpy order: ggml's [in, out]);
Qwen3's rotary pairs (rotate-half, "NEOX" in llama.cpp) need no permutation. The output
head is always written (a tied head as a copy of the embedding). The tokenizer goes in as
llama.cpp's "gpt2" BPE: tokens in id order, merges, GPT-2's pre-tokenizer ("gpt-2"),
<|endoftext|> as beginning, end and padding token, nothing added before the text.

Types: f32; f16; q8_0 (blocks of 32 weights sharing one f16 scale; matrices whose rows
are not a multiple of 32 stay f16, and 1-D tensors, the norms and biases, stay f32, as
llama.cpp's converter does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import DIST_NAME
from .checkpoint import load_checkpoint, read_model_config, resolve_checkpoint
from .config import GPTConfig
from .errors import CheckpointError, MiniGPTError
from .files import atomic_output
from .hf import export_architecture, hf_state_from_gpt, qwen3_state_from_gpt
from .model import GPT
from .quantize import saved_quantization
from .tokenizer import Tokenizer

__all__ = ["GGUF_TYPES", "export_gguf", "ggml_cpu_gelu", "gguf_tensors"]

GGUF_TYPES = ("f32", "f16", "q8_0")
_GELU = torch.nn.functional.gelu  # held here: a comparison may swap the module's for ggml_cpu_gelu
Q8_BLOCK = 32  # weights per q8_0 block


def ggml_cpu_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as llama.cpp's CPU backend computes it (ggml-cpu/vec.h, GGML_GELU_FP16, always
    defined): the input rounded to fp16 and looked up in a table of fp16 tanh-GELU values,
    0 below -10 and the input itself above 10. Each activation is ~1e-3 off the float one,
    which a GPT-2 block's logits carry at ~3e-3; a model run with this GELU instead matches
    llama.cpp to float rounding (tests/test_gguf.py, benchmarks/gguf_parity.py), which
    shows the export itself exact."""
    table = _GELU(x.half().float(), approximate="tanh").half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table)).to(x.dtype)


def _refuse_for_llama_cpp(cfg: GPTConfig, arch: str) -> None:
    """What export-hf accepts but llama.cpp's gpt2/qwen3 graphs do not compute."""
    if arch == "gpt2" and cfg.mlp == "gelu_exact":
        raise CheckpointError(
            "cannot export mlp 'gelu_exact' to GGUF: llama.cpp's gpt2 uses the tanh GELU (train "
            "with --mlp gelu, or use export-hf, whose GPT-2 config can say 'gelu')"
        )


def gguf_tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor names -> fp32 tensors for a GPT exported as `arch`, by way of the
    Hugging Face state dicts export-hf writes (one mapping of our names, kept in hf.py)."""
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        sd = hf_state_from_gpt(model)  # Conv1D weights there are [in, out]: back to [out, in] here
        conv = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        out["token_embd.weight"] = sd["transformer.wte.weight"]
        out["position_embd.weight"] = sd["transformer.wpe.weight"]
        out["output_norm.weight"], out["output_norm.bias"] = sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]
        names = {
            "ln_1": "attn_norm",
            "attn.c_attn": "attn_qkv",
            "attn.c_proj": "attn_output",
            "ln_2": "ffn_norm",
            "mlp.c_fc": "ffn_up",
            "mlp.c_proj": "ffn_down",
        }
        for i in range(cfg.n_layer):
            for ours, theirs in names.items():
                for kind in ("weight", "bias"):
                    t = sd[f"transformer.h.{i}.{ours}.{kind}"]
                    out[f"blk.{i}.{theirs}.{kind}"] = t.t() if f"{ours}.{kind}".endswith(conv) else t
        out["output.weight"] = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    else:
        sd = qwen3_state_from_gpt(model)
        out["token_embd.weight"] = sd["model.embed_tokens.weight"]
        out["output_norm.weight"] = sd["model.norm.weight"]
        names = {
            "input_layernorm": "attn_norm",
            "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v",
            "self_attn.q_norm": "attn_q_norm",
            "self_attn.k_norm": "attn_k_norm",
            "self_attn.o_proj": "attn_output",
            "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down",
        }
        for i in range(cfg.n_layer):
            for ours, theirs in names.items():
                out[f"blk.{i}.{theirs}.weight"] = sd[f"model.layers.{i}.{ours}.weight"]
        out["output.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return {n: t.detach().float().contiguous() for n, t in out.items()}


def _add_tokenizer(w, tokenizer: Tokenizer) -> None:
    import gguf  # lazily: the optional gguf package, only for this command

    # From tokenizer.json itself: the pieces in GPT-2's byte alphabet ("Ġthe"), as llama.cpp's
    # gpt2 BPE reads them, and the merges in the order they were learned.
    spec = json.loads(tokenizer.to_str())
    pieces = {**spec["model"]["vocab"], **{a["content"]: a["id"] for a in spec.get("added_tokens", [])}}
    tokens = [""] * tokenizer.vocab_size
    for piece, i in pieces.items():
        tokens[i] = piece
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizer regex, which minigpt trains and encodes with
    w.add_token_list(tokens)
    w.add_token_types(
        [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    )
    w.add_token_merges(merges)
    if tokenizer.eot_id is not None:
        w.add_bos_token_id(tokenizer.eot_id)
        w.add_eos_token_id(tokenizer.eot_id)
        w.add_pad_token_id(tokenizer.eot_id)
    w.add_add_bos_token(False)  # minigpt adds nothing before a prompt


def export_gguf(
    checkpoint: str | os.PathLike, out_file: str | os.PathLike, out_type: str = "f16", force: bool = False
) -> Path:
    """Write a GPT checkpoint (or a run's best/last) as one GGUF file of `out_type`
    (f32, f16 or q8_0), atomically. Refuses, naming the setting, what llama.cpp's gpt2 and
    qwen3 architectures cannot compute. Returns the path written."""
    try:
        import gguf  # lazily: the optional gguf package (pip install gguf), only for this command
    except ImportError:
        raise MiniGPTError(f"export-gguf needs the gguf package: pip install '{DIST_NAME}[gguf]' (or gguf)") from None
    if out_type not in GGUF_TYPES:
        raise MiniGPTError(f"--type {out_type!r}: supported: {', '.join(GGUF_TYPES)}")
    path, out = resolve_checkpoint(checkpoint), Path(out_file)
    kind, settings = read_model_config(path)
    if (method := saved_quantization(path)) is not None:
        raise CheckpointError(
            f"{path}: is quantized ({method}); export the float checkpoint it was made from "
            f"(--type q8_0 quantizes for llama.cpp)"
        )
    try:
        cfg = GPTConfig.from_dict(settings)
        arch = export_architecture(cfg)
    except MiniGPTError as e:
        raise CheckpointError(f"{path}: {e} (model_type {kind})") from None
    _refuse_for_llama_cpp(cfg, arch)
    if out.resolve() == path.resolve() or path.resolve() in out.resolve().parents:
        raise CheckpointError(f"{out}: is inside the checkpoint {path}; choose another output file")
    if (out.exists() or out.is_symlink()) and not force:
        raise CheckpointError(f"{out}: already exists (pass --force to replace it)")
    ckpt = load_checkpoint(path, "cpu")  # the tokenizer is required: llama.cpp reads text
    model: GPT = ckpt.model
    tensors = gguf_tensors(model, arch)

    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[out_type]
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(path.parent.name if path.name in ("best", "last") else path.name)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_head)
        if arch == "gpt2":
            w.add_layer_norm_eps(cfg.layer_norm_eps)
        else:
            w.add_layer_norm_rms_eps(cfg.layer_norm_eps)
            w.add_rope_freq_base(cfg.rope_base)
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)
        _add_tokenizer(w, ckpt.tokenizer)
        for name, t in tensors.items():
            a = t.numpy()
            if a.ndim == 1 or out_type == "f32":
                w.add_tensor(name, a.astype(np.float32))
            elif out_type == "q8_0" and a.shape[-1] % Q8_BLOCK == 0:
                q = gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, a.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
