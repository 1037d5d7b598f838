"""Hugging Face GPT-2 interop: `minigpt import-hf` and `minigpt export-hf`.

minigpt's GPT *is* GPT-2 when it uses learned positions: the same pre-LayerNorm blocks,
tanh-approximated GELU ("gelu_new"), 4x MLP, 1/sqrt(head_dim) attention scaling and the
same parameter names (see `model.py`). Converting is therefore a rename plus one twist:

    Conv1D transpose. GPT-2 (and transformers' `GPT2LMHeadModel`) computes its linear
    layers with `Conv1D`, which stores the weight as [in, out] and computes x @ W + b.
    `nn.Linear` stores [out, in] and computes x @ W.T + b. So every c_attn / c_proj /
    c_fc weight is transposed on the way in and again on the way out. Get this wrong and
    square matrices (attn.c_proj, [C, C]) load without complaint and give garbage.

A Hugging Face GPT-2 directory holds:

    config.json          GPT2Config: model_type "gpt2", n_embd, n_layer, n_head, n_positions, ...
    model.safetensors    weights named "transformer.h.0.attn.c_attn.weight" (GPT2LMHeadModel)
                         or "h.0.attn.c_attn.weight" (GPT2Model, the hub's gpt2 repo);
                         or model.safetensors.index.json + shards; or pytorch_model.bin
                         (a pickle: read with torch.load(weights_only=True), which refuses
                         anything but tensors and containers, so no code runs)
    tokenizer.json       optional: a byte-level BPE tokenizer, read by `Tokenizer`; or,
    vocab.json +         as OpenAI released GPT-2 (and older directories hold it), its
    merges.txt           two original files, converted to the same tokenizer

Old pickled GPT-2 files also hold the causal mask as a buffer named like a parameter
(`h.0.attn.bias`, [1, 1, n_positions, n_positions]) and `h.0.attn.masked_bias`; they
are not weights and are skipped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from . import files, models
from .checkpoint import (
    CONFIG,
    TOKENIZER,
    WEIGHTS,
    check_weight,
    load_checkpoint,
    load_safetensors,
    read_model_config,
    resolve_checkpoint,
    safe_torch_load,
    save_checkpoint,
    save_tensors,
)
from .config import GPTConfig, is_real
from .errors import CheckpointError, MiniGPTError
from .model import GPT
from .quantize import saved_quantization
from .tokenizer import EOT, MERGES_FILE, VOCAB_FILE, Tokenizer

__all__ = [
    "import_hf",
    "export_hf",
    "gpt_config_from_hf",
    "hf_config_from_gpt",
    "gpt_state_from_hf",
    "hf_state_from_gpt",
]

HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN, HF_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"

# The layers GPT-2 computes with Conv1D (weights stored [in, out]; see the module docstring).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers found in old GPT-2 pickles: the causal mask and the -1e4 fill value.
BUFFER_RE = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# Activations that compute 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), our mlp "gelu".
# Exact "gelu" (erf) differs by up to ~1e-3 per activation: not the same function, so it
# maps to our mlp "gelu_exact" (nanoGPT's nn.GELU()).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GELU_KINDS = {**{name: "gelu" for name in TANH_GELUS}, "gelu": "gelu_exact"}
# GPT2Config's defaults, which transformers applies to keys a config.json leaves out.
HF_DEFAULTS = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


# ---- config ---------------------------------------------------------------------------
#
# A config.json is someone else's file: every value is checked for its type before it is
# used (a list where a string belongs, a string "inf" where a float belongs), so each
# hostile value is one CheckpointError naming the key, never a TypeError or OverflowError.
# (Numbers out of int64/float range never get here: files.parse_json refuses them.)


def _hf_float(c: dict[str, Any], key: str, default: float, where: str) -> float:
    v = c.get(key, default)
    if not is_real(v):
        raise CheckpointError(f"{where}: {key} must be a finite number, got {_shown(v)}", field=key)
    return float(v)


def _hf_bool(c: dict[str, Any], key: str, default: bool, where: str) -> bool:
    v = c.get(key, default)
    if not isinstance(v, bool):
        raise CheckpointError(f"{where}: {key} must be true or false, got {_shown(v)}", field=key)
    return v


def _hf_str(c: dict[str, Any], key: str, default: str, where: str) -> str:
    v = c.get(key, default)
    if not isinstance(v, str):
        raise CheckpointError(f"{where}: {key} must be a string, got {_shown(v)}", field=key)
    return v


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else f"{r[:30]}... ({type(v).__name__})"


def _architectures(hf: dict[str, Any], where: str) -> list[str]:
    archs = hf.get("architectures") or []
    archs = [archs] if isinstance(archs, str) else archs
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(
            f"{where}: architectures must be a list of names, got {_shown(archs)}", field="architectures"
        )
    return archs


def gpt_config_from_hf(hf: dict[str, Any], where: str = CONFIG) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 config.json (as a dict), or a CheckpointError
    naming the setting minigpt cannot reproduce.

    >>> gpt_config_from_hf({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1,
    ...                     "n_positions": 16, "vocab_size": 50}).block_size
    16
    """
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(
            f'{where}: model_type is {model_type!r}; supported: GPT-2 (model_type "gpt2") and Qwen3 ("qwen3")'
        )
    archs = _architectures(hf, where)
    other = [a for a in archs if a not in ARCHITECTURES]
    if other:
        raise CheckpointError(
            f"{where}: architecture {other[0]!r} is not supported (only {' or '.join(ARCHITECTURES)})"
        )
    c = {**HF_DEFAULTS, **hf}

    # Settings that would make transformers compute a different function from ours.
    activation = _hf_str(c, "activation_function", "gelu_new", where)
    if activation not in GELU_KINDS:
        raise CheckpointError(
            f"{where}: activation_function {c['activation_function']!r} is not supported "
            f"(minigpt's GPT-2 block computes GELU: {', '.join(GELU_KINDS)})"
        )
    if c["n_inner"] is not None and not (isinstance(c["n_inner"], int) and isinstance(c["n_embd"], int)):
        raise CheckpointError(
            f"{where}: n_inner must be null or an integer, got {_shown(c['n_inner'])}", field="n_inner"
        )
    if c["n_inner"] is not None and c["n_inner"] != 4 * c["n_embd"]:
        raise CheckpointError(
            f"{where}: n_inner {c['n_inner']} is not supported (minigpt's MLP is 4 * n_embd = {4 * c['n_embd']})"
        )
    for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention", "tie_word_embeddings"):
        _hf_bool(c, key, HF_DEFAULTS[key], where)
    if not c["scale_attn_weights"]:
        raise CheckpointError(
            f"{where}: scale_attn_weights false is not supported (minigpt always scales attention by 1/sqrt(head_dim))"
        )
    if c["scale_attn_by_inverse_layer_idx"]:
        raise CheckpointError(
            f"{where}: scale_attn_by_inverse_layer_idx true is not supported "
            "(minigpt does not scale attention by 1/(layer+1))"
        )
    if c["add_cross_attention"]:
        raise CheckpointError(
            f"{where}: add_cross_attention true is not supported "
            "(cross-attention is for encoder-decoder use; minigpt is decoder-only)"
        )
    # Not checked on purpose: reorder_and_upcast_attn only changes the order of the
    # scaling and the precision of the softmax under mixed precision; in fp32 it is the
    # same function up to rounding.

    try:
        return GPTConfig(
            vocab_size=c["vocab_size"],
            block_size=c["n_positions"],
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["n_embd"],
            # One dropout rate in minigpt; GPT-2 sets resid/embd/attn_pdrop equal (0.1).
            dropout=_hf_float(c, "resid_pdrop", 0.1, where),
            bias=True,  # GPT-2 always has biases
            pos_encoding="learned",
            tie_weights=c["tie_word_embeddings"],
            layer_norm_eps=_hf_float(c, "layer_norm_epsilon", 1e-5, where),
            mlp=GELU_KINDS[activation],
        )
    except CheckpointError:
        raise
    except (MiniGPTError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}", field=getattr(e, "field", None)) from None


def hf_config_from_gpt(cfg: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """A config.json that `transformers.GPT2Config` reads as the same model.

    `eot_id` (the tokenizer's `<|endoftext|>`) becomes bos/eos_token_id, as in GPT-2;
    None is written explicitly, since GPT2Config's default (50256) may not even exist
    in a small vocabulary.
    """
    if cfg.pos_encoding != "learned":
        raise CheckpointError(
            _POSITION_REFUSAL.get(cfg.pos_encoding, f"pos_encoding {cfg.pos_encoding!r} cannot be exported")
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # = 4 * n_embd, like ours
        "activation_function": "gelu" if cfg.mlp == "gelu_exact" else "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout if cfg.attn_dropout else 0.0,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "use_cache": True,
        "dtype": "float32",
    }


# Why only learned positions export: each message is one line for the CLI.
_POSITION_REFUSAL = {
    "sinusoidal": (
        "cannot export pos_encoding 'sinusoidal': GPT-2 has only a learned absolute position table (wpe); "
        "copying the fixed sines into it would make them trainable, and minigpt also scales token embeddings "
        "by sqrt(n_embd), which GPT-2 does not (so the exported model would compute something else)"
    ),
    "rope": (
        "cannot export pos_encoding 'rope': rotary embeddings rotate q and k inside every attention layer, "
        "and GPT-2's architecture only adds a position vector once, at the input; no GPT-2 weights reproduce it"
    ),
}


# ---- the Qwen3 architecture: minigpt's modern block ------------------------------------
#
# A GPT with rotary positions, RMSNorm, QK-norm and a SwiGLU MLP without biases is exactly
# Hugging Face's Qwen3 (Qwen3ForCausalLM): the same per-head RMSNorm on q and k before the
# rotation, the same "rotate half" pairing and inverse frequencies, the same gated MLP
# (down(silu(gate(x)) * up(x))). Our fused c_attn [3C, C] is q_proj, k_proj and v_proj
# stacked; nothing else changes but names (and nn.Linear stores [out, in] here and there:
# no transpose).

QWEN3_LAYER = {  # minigpt name in block i -> Qwen3 name in layer i
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.c_gate.weight": "mlp.gate_proj.weight",
    "mlp.c_fc.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


def export_architecture(cfg: GPTConfig) -> str:
    """Which Hugging Face architecture expresses this GPT exactly: "gpt2" (learned
    positions, LayerNorm, GELU MLP) or "qwen3" (RoPE, RMSNorm, QK-norm, SwiGLU, no biases);
    anything else is refused, naming the setting that no architecture here expresses."""
    gelu = cfg.mlp in ("gelu", "gelu_exact")
    gpt2 = cfg.pos_encoding == "learned" and cfg.norm == "layernorm" and gelu and not cfg.qk_norm
    qwen3 = (
        cfg.pos_encoding == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.qk_norm and not cfg.bias
    )
    if cfg.logit_softcap > 0:
        raise CheckpointError(
            "cannot export logit_softcap: neither GPT-2 nor Qwen3 caps their logits (train with "
            "--logit-softcap 0 to export)"
        )
    if gpt2:
        if cfg.mlp_hidden not in (0, 4 * cfg.n_embd):
            raise CheckpointError(f"cannot export mlp_hidden {cfg.mlp_hidden} as GPT-2 (its MLP is 4 * n_embd)")
        return "gpt2"
    if qwen3:
        return "qwen3"
    if cfg.pos_encoding in _POSITION_REFUSAL and cfg.norm == "layernorm" and gelu:
        raise CheckpointError(_POSITION_REFUSAL[cfg.pos_encoding])
    raise CheckpointError(
        f"cannot export this block (pos_encoding {cfg.pos_encoding}, norm {cfg.norm}, mlp {cfg.mlp}, qk_norm "
        f"{cfg.qk_norm}, bias {cfg.bias}): GPT-2 needs learned/layernorm/gelu without qk_norm, Qwen3 needs "
        f"rope/rmsnorm/swiglu with qk_norm and no biases"
    )


def qwen3_config_from_gpt(cfg: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """A config.json that `transformers.Qwen3Config` reads as the same model."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": False,
        "attention_dropout": cfg.dropout if cfg.attn_dropout else 0.0,
        "use_sliding_window": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "use_cache": True,
        "dtype": "float32",
    }


def gpt_config_from_qwen3(hf: dict[str, Any], where: str = CONFIG) -> GPTConfig:
    """The GPTConfig of a Qwen3 config.json, or a CheckpointError naming what differs."""
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in need if k not in hf]
    if missing:
        raise CheckpointError(f"{where}: {missing[0]} is missing", field=missing[0])
    _architectures(hf, where)
    for key in ("hidden_act",):
        _hf_str(hf, key, "silu", where)
    for key in ("attention_bias", "use_sliding_window", "tie_word_embeddings"):
        _hf_bool(hf, key, False, where)
    C, H = hf["hidden_size"], hf["num_attention_heads"]
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if isinstance(hf[key], bool) or not isinstance(hf[key], int):
            raise CheckpointError(f"{where}: {key} must be an integer, got {_shown(hf[key])}", field=key)
    if hf.get("num_key_value_heads", H) != H:
        raise CheckpointError(
            f"{where}: grouped-query attention (num_key_value_heads {hf['num_key_value_heads']} != "
            f"{H} heads) is not supported"
        )
    if isinstance(C, int) and isinstance(H, int) and H > 0 and hf.get("head_dim", C // H) != C // H:
        raise CheckpointError(
            f"{where}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads is not supported"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (minigpt's SwiGLU uses silu)")
    if hf.get("attention_bias", False):
        raise CheckpointError(f"{where}: attention_bias true is not supported")
    if hf.get("use_sliding_window", False):
        raise CheckpointError(f"{where}: use_sliding_window true is not supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(
            f"{where}: rope_parameters must be an object, got {_shown(rope)}", field="rope_parameters"
        )
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise CheckpointError(
            f"{where}: rope scaling {_shown(rope.get('rope_type', rope.get('type')))} is not supported"
        )
    theta = _hf_float(hf, "rope_theta", _hf_float(rope, "rope_theta", 10000.0, where), where)
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"],
            n_head=H,
            n_embd=C,
            dropout=_hf_float(hf, "attention_dropout", 0.0, where),
            bias=False,
            pos_encoding="rope",
            tie_weights=hf.get("tie_word_embeddings", False),
            rope_base=theta,
            layer_norm_eps=_hf_float(hf, "rms_norm_eps", 1e-6, where),
            norm="rmsnorm",
            mlp="swiglu",
            mlp_hidden=hf["intermediate_size"],
            qk_norm=True,
        )
    except CheckpointError:
        raise
    except (MiniGPTError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}", field=getattr(e, "field", None)) from None


def qwen3_state_from_gpt(model: GPT) -> dict[str, torch.Tensor]:
    """Qwen3ForCausalLM's state dict for a minigpt GPT of the Qwen3 shape (fp32)."""
    sd = {n: t.detach().float().cpu() for n, t in model.state_dict().items()}
    cfg = model.config
    out = {
        "model.embed_tokens.weight": sd["transformer.wte.weight"],
        "model.norm.weight": sd["transformer.ln_f.weight"],
    }
    if not cfg.tie_weights:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(cfg.n_embd, dim=0)
        out.update(
            {
                theirs + "self_attn.q_proj.weight": q,
                theirs + "self_attn.k_proj.weight": k,
                theirs + "self_attn.v_proj.weight": v,
            }
        )
        for a, b in QWEN3_LAYER.items():
            out[theirs + b] = sd[ours + a]
    return {n: t.contiguous() for n, t in out.items()}


def gpt_state_from_qwen3(
    tensors: dict[str, torch.Tensor], cfg: GPTConfig, where: str = "weights"
) -> dict[str, torch.Tensor]:
    """The inverse of `qwen3_state_from_gpt`, checking names, shapes and finiteness."""
    shapes = _expected_shapes(cfg)
    t = dict(tensors)
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in t:
            raise CheckpointError(f"{where}: missing tensor {name!r}")
        return t.pop(name)

    out["transformer.wte.weight"] = take("model.embed_tokens.weight")
    out["transformer.ln_f.weight"] = take("model.norm.weight")
    if cfg.tie_weights:
        t.pop("lm_head.weight", None)
        out["lm_head.weight"] = out["transformer.wte.weight"]
    else:
        out["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        out[ours + "attn.c_attn.weight"] = torch.cat(
            [take(theirs + f"self_attn.{x}_proj.weight") for x in "qkv"], dim=0
        )
        for a, b in QWEN3_LAYER.items():
            out[ours + a] = take(theirs + b)
    t = {n: v for n, v in t.items() if not n.endswith("rotary_emb.inv_freq")}
    if t:
        raise CheckpointError(
            f"{where}: unexpected tensor {sorted(t)[0]!r} (not part of a Qwen3 with this config.json)"
        )
    for name, v in out.items():
        if tuple(v.shape) != shapes[name]:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(v.shape)} but config.json implies {shapes[name]}"
            )
        if not v.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name!r} is not floating point")
        check_weight(name, v, where)
    return {n: v.float().contiguous() for n, v in out.items()}


# ---- weights --------------------------------------------------------------------------


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path)  # a regular file only (a FIFO is refused, not waited on)


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    obj = safe_torch_load(path)  # weights_only: a planted pickle cannot run code
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return obj


def _load_sharded(index: Path, load) -> dict[str, torch.Tensor]:
    """The tensors of a sharded checkpoint: `index` maps each name to a shard file."""
    weight_map = files.read_json_object(index, "a shard index", CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a valid shard index (weight_map must map tensor names to file names)")
    shards = sorted(set(weight_map.values()))
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        # A shard must be a plain file name beside the index, never a path elsewhere.
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard {shard!r} is not a file name in the same directory")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index.parent / shard}: missing (listed in {index.name})")
        tensors.update(load(index.parent / shard))
    return tensors


def read_hf_weights(hf_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a Hugging Face model directory (safetensors preferred) and the file
    they came from (for error messages)."""
    for name, load in (
        (WEIGHTS, _load_safetensors),
        (HF_SAFETENSORS_INDEX, lambda index: _load_sharded(index, _load_safetensors)),
        (HF_BIN, _load_pickle),
        (HF_BIN_INDEX, lambda index: _load_sharded(index, _load_pickle)),
    ):
        if (hf_dir / name).is_file():
            return load(hf_dir / name), hf_dir / name
    raise CheckpointError(
        f"{hf_dir}: no weights (expected {WEIGHTS}, {HF_SAFETENSORS_INDEX} or {HF_BIN}; "
        "TensorFlow and Flax files are not read)"
    )


def gpt_state_from_hf(
    tensors: dict[str, torch.Tensor], cfg: GPTConfig, where: str = "weights"
) -> dict[str, torch.Tensor]:
    """Rename and transpose GPT-2 tensors into a state dict for `GPT(cfg)` (fp32).

    Accepts both prefixes, "transformer.h.0..." (GPT2LMHeadModel) and "h.0..." (GPT2Model).
    With tied embeddings an lm_head.weight in the file is ignored (transformers re-ties it
    to wte too); untied, it is required. Example: HF "transformer.h.0.attn.c_attn.weight"
    [C, 3C] -> minigpt "transformer.h.0.attn.c_attn.weight" [3C, C].
    """
    shapes = _expected_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, t in tensors.items():
        if name == "lm_head.weight":
            if not cfg.tie_weights:
                out[name] = t
            continue
        bare = name.removeprefix("transformer.")
        if BUFFER_RE.match(bare):
            continue
        ours = "transformer." + bare
        if ours not in shapes:
            unexpected.append(name)
            continue
        out[ours] = t.t() if bare.endswith(CONV1D_WEIGHTS) else t
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected tensor {unexpected[0]!r} (not part of a GPT-2 with this config.json)"
        )
    if cfg.tie_weights and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    missing = [n for n in shapes if n not in out]
    if missing:
        hint = (
            " (tie_word_embeddings is false, so the output head must be stored)"
            if missing[0] == "lm_head.weight"
            else ""
        )
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r}{hint}")
    for name, t in out.items():
        if tuple(t.shape) != shapes[name]:
            # Report the shape as stored in the file (before our transpose).
            stored, want = tuple(t.shape), shapes[name]
            if name.endswith(CONV1D_WEIGHTS):
                stored, want = stored[::-1], want[::-1]
            raise CheckpointError(f"{where}: tensor {name!r} has shape {stored} but config.json implies {want}")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {t.dtype}, not floating point")
        check_weight(name, t, where)  # a dtype minigpt reads (float8 is refused by name), finite
    return {n: t.float().contiguous() for n, t in out.items()}


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of GPT(cfg), without allocating the model."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def hf_state_from_gpt(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict for a minigpt GPT with learned positions (fp32).

    Conv1D weights are transposed; a model without biases gets zero biases (a zero bias
    and a LayerNorm without bias compute the same thing). A tied output head is left out,
    as transformers saves it: `from_pretrained` re-ties lm_head to wte.
    """
    cfg = model.config
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, shape in _expected_shapes(GPTConfig(**{**cfg.to_dict(), "bias": True})).items():
        if name == "lm_head.weight" and cfg.tie_weights:
            continue
        if name in sd:
            t = sd[name].detach().float().cpu()
            t = t.t() if name.endswith(CONV1D_WEIGHTS) else t
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            raise CheckpointError(f"cannot export: the model has no tensor {name}")
        out[name] = t.contiguous()
    return out


# ---- the two commands -----------------------------------------------------------------


def _check_out(out: Path, src: Path, force: bool) -> None:
    """Refuse to overwrite without --force, and ever to replace the input (or a directory
    holding it, such as the run directory of the checkpoint being exported), or anything
    that is not an output like ours: --force replaces a file or a directory of regular files
    (an earlier export), never a device, FIFO, socket, symbolic link or a directory holding
    directories (`files.check_replaceable`), whatever the user's privileges."""
    o, s = out.resolve(), src.resolve()
    if o == s or o in s.parents:
        raise CheckpointError(f"{out}: holds the input {src}; choose another output directory")
    if (out.exists() or out.is_symlink()) and not force:
        raise CheckpointError(f"{out}: already exists (pass --force to replace it)", kind="exists")
    try:
        files.check_replaceable(out, directory=True)
    except files.FileError as e:
        raise CheckpointError(str(e), kind=e.kind) from None


HF_MODEL_TYPES = ("gpt2", "qwen3")  # the Hugging Face architectures minigpt's GPT reproduces exactly


def hf_architecture(hf: Any, where: str = CONFIG):
    """(GPTConfig, the function that converts its weights) for a Hugging Face config.json:
    GPT-2 or Qwen3; anything else is a CheckpointError naming model_type and what is
    supported. The one place that dispatches on the HF architecture (import-hf and
    --init-from both use it)."""
    if isinstance(hf, dict) and hf.get("model_type") == "qwen3":
        return gpt_config_from_qwen3(hf, where), gpt_state_from_qwen3
    return gpt_config_from_hf(hf, where), gpt_state_from_hf  # GPT-2, or a refusal naming model_type


def hf_tokenizer(hf_dir: Path, vocab_size: int) -> tuple[Tokenizer | None, Path | None]:
    """The tokenizer of a Hugging Face model directory and where it was read (for
    `prepare --tokenizer`): its tokenizer.json, else GPT-2's vocab.json + merges.txt
    (the directory is then the path), else (None, None): the weights can be scored on
    token ids, but text needs a tokenizer. CheckpointError if it is unusable or larger
    than the model's vocabulary (`vocab_size`)."""
    if (hf_dir / TOKENIZER).is_file():
        path = hf_dir / TOKENIZER
    elif (hf_dir / VOCAB_FILE).is_file() and (hf_dir / MERGES_FILE).is_file():
        path = hf_dir
    else:
        return None, None
    try:
        tokenizer = Tokenizer.load(path)
    except MiniGPTError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(
            f"{path}: has {tokenizer.vocab_size} tokens but config.json's vocab_size is {vocab_size} "
            f"(mismatched files?)"
        )
    return tokenizer, path


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """Convert a Hugging Face GPT-2 directory into a minigpt checkpoint directory at `out`.

    The tokenizer (`hf_tokenizer`) is kept when there is one; otherwise the checkpoint has none
    (it can be scored on token ids, but `sample` needs text). Returns `out`.

    >>> import_hf("gpt2-hf/", "ckpt/gpt2")      # doctest: +SKIP
    PosixPath('ckpt/gpt2')
    """
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise CheckpointError(
            f"{hf_dir}: {'not a directory' if hf_dir.exists() else 'not found'} "
            "(expected a Hugging Face GPT-2 or Qwen3 directory)"
        )
    _check_out(out, hf_dir, force)
    hf_cfg = files.read_json(hf_dir / CONFIG, "a Hugging Face model directory has a config.json", CheckpointError)
    cfg, from_hf = hf_architecture(hf_cfg, str(hf_dir / CONFIG))
    tensors, source = read_hf_weights(hf_dir)
    state = from_hf(tensors, cfg, where=str(source))
    del tensors

    tokenizer, _ = hf_tokenizer(hf_dir, cfg.vocab_size)
    model = GPT(cfg)
    model.load_state_dict(state)  # strict: gpt_state_from_hf checked names and shapes
    return save_checkpoint(out, model, tokenizer)


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write a minigpt GPT checkpoint (or a run directory's best/last) as a Hugging Face
    directory: config.json, model.safetensors, generation_config.json and, when the
    checkpoint has a tokenizer, tokenizer.json with its tokenizer_config.json, loadable with
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` and
    `transformers.AutoTokenizer.from_pretrained(out_dir)` (same ids as minigpt's; see
    `hf_tokenizer_config`). Returns `out_dir`.

    The architecture is the one that computes the same function (`export_architecture`):
    GPT-2 for GPT-2's block, Qwen3 for the modern block; anything else is refused, saying why.

    >>> export_hf("out/shakespeare", "shakespeare-hf")      # doctest: +SKIP
    PosixPath('shakespeare-hf')
    """
    path, out = resolve_checkpoint(checkpoint), Path(out_dir)
    # Refuse what cannot map onto GPT-2 from config.json alone, before reading weights.
    kind, settings = read_model_config(path)
    if (method := saved_quantization(path)) is not None:
        raise CheckpointError(f"{path}: is quantized ({method}); export the float checkpoint it was made from")
    if not issubclass(models.kind(kind, "model_type").cls, GPT):
        raise CheckpointError(
            f"{path / CONFIG}: model_type {kind!r} cannot be exported; only GPT checkpoints map onto GPT-2 or Qwen3"
        )
    try:
        arch = export_architecture(GPTConfig.from_dict(settings))
    except MiniGPTError as e:
        raise CheckpointError(f"{path}: {e}") from None
    _check_out(out, path, force)
    ckpt = load_checkpoint(path, "cpu", need_tokenizer=False)
    model: GPT = ckpt.model
    eot_id = ckpt.tokenizer.eot_id if ckpt.tokenizer is not None else None
    if arch == "qwen3":
        hf_config, tensors = qwen3_config_from_gpt(model.config, eot_id), qwen3_state_from_gpt(model)
    else:
        hf_config, tensors = hf_config_from_gpt(model.config, eot_id), hf_state_from_gpt(model)

    # Written under a temporary name beside `out`, then renamed: an interrupted export
    # never leaves a half-written directory that from_pretrained would half-load.
    with files.atomic_directory(out) as tmp:
        save_tensors(tensors, tmp / WEIGHTS)
        _write_json(tmp / CONFIG, hf_config)
        _write_json(tmp / GENERATION_CONFIG, hf_generation_config(eot_id))
        if ckpt.tokenizer is not None:
            (tmp / TOKENIZER).write_text(ckpt.tokenizer.to_str(), encoding="utf-8")
            _write_json(tmp / TOKENIZER_CONFIG, hf_tokenizer_config(ckpt.tokenizer, model.config.block_size))
    return out


# ---- what AutoTokenizer and generate() read beside the weights --------------------------

TOKENIZER_CONFIG, GENERATION_CONFIG = "tokenizer_config.json", "generation_config.json"


def hf_tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """The tokenizer_config.json that makes `transformers.AutoTokenizer` encode exactly as
    minigpt does.

    Subtle: without one, AutoTokenizer picks the tokenizer class of config.json's
    model_type, and transformers 5 rebuilds that class's own pipeline from the vocabulary
    and merges instead of reading tokenizer.json's: for a Qwen3 export that is Qwen2's
    pre-tokenizer (digits one by one, whitespace before a newline glued to it, punctuation
    glued to the next word), not GPT-2's regex the model was trained with, and every
    pipeline, vLLM or TGI that loads the export silently feeds the model other ids.
    `PreTrainedTokenizerFast` runs tokenizer.json as it is, for GPT-2 and Qwen3 exports alike.

    split_special_tokens: a literal "<|endoftext|>" in text stays text, as in
    `Tokenizer.encode` (a call passes split_special_tokens=False for minigpt's
    allow_special=True). clean_up_tokenization_spaces off: decoding gives back the text
    exactly (transformers would otherwise turn " ." into ".").
    """
    eot = EOT if tokenizer.eot_id is not None else None
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": None,  # byte-level: every byte has a token, nothing is unknown
        "pad_token": None,  # as GPT-2; generation_config.json names the pad id for generate()
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "model_max_length": block_size,
    }


def hf_generation_config(eot_id: int | None) -> dict[str, Any]:
    """generation_config.json: `generate()` stops at <|endoftext|> and pads with it (the
    sampling settings stay transformers' own: greedy unless do_sample=True is passed)."""
    return {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
