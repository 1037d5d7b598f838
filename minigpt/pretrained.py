"""Where a fine-tune starts: `train --init-from SOURCE`, resolved, checked and loaded.

SOURCE is one of:

    a minigpt run directory         its best checkpoint, else its last (as `sample` reads it)
    a minigpt checkpoint directory  config.json {"format": "minigpt-checkpoint", ...} + model.safetensors
    a Hugging Face GPT-2 directory  config.json {"model_type": "gpt2", ...} + model.safetensors (or
                                    shards; pytorch_model.bin only through torch.load(weights_only=True))
    a model name                    gpt2, distilgpt2, openai-community/gpt2-medium: its snapshot in the
                                    local Hugging Face cache, found offline (never downloaded)

A path that exists is read as a path; anything else shaped like a hub name is looked up
in the cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) with
huggingface_hub's own resolution (`snapshot_download(..., local_files_only=True)`: the
`models--ORG--NAME/refs/main` -> `snapshots/REV/` layout; huggingface_hub is a dependency,
of tokenizers too). A snapshot path that leaves the cache (a `refs/main` holding
`../../../elsewhere`) is refused. A bare legacy name is tried under its current
organisation too: `gpt2` is `openai-community/gpt2` on the hub today, and a cache may hold
either.

The steps are separate so that the trainer refuses bad input before it reads weights or
writes anything:

    spec = inspect_source("gpt2")                    # which directory, kind and shape (config.json only)
    check_flags(spec, {"n_layer": 6})                # ConfigError: the shape comes from SOURCE
    check_block_size(spec, 256); check_freeze(spec, 2)
    src = load_source(spec, block_size=256, dropout=0.1)   # weights (position table cropped), tokenizer, SHA-256
    freeze(src.model, embeddings=True, layers=2)     # requires_grad off; the optimizer skips them

Nothing here unpickles: safetensors are read as data; a pytorch_model.bin goes through
`checkpoint.safe_torch_load` (weights_only=True), which refuses anything but tensors.
(The Hugging Face directory reading is hf.py's public functions; the pieces that would
belong in hf.py if it grew a "load without saving" entry point are `_load_hf` and
`weights_files` below.)
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import files, models
from .checkpoint import (
    CONFIG,
    FORMAT,
    PICKLED_NAMES,
    TOKENIZER,
    WEIGHTS,
    load_checkpoint,
    read_model_config,
    resolve_checkpoint,
)
from .config import GPTConfig, dataclass_from_dict
from .errors import CheckpointError, ConfigError, MiniGPTError
from .hf import HF_MODEL_TYPES, hf_architecture, hf_tokenizer, read_hf_weights
from .model import GPT
from .tokenizer import Tokenizer

__all__ = [
    "SourceSpec",
    "Source",
    "inspect_source",
    "load_source",
    "check_flags",
    "check_block_size",
    "check_freeze",
    "freeze",
    "hf_cache_dir",
    "hf_cache_snapshot",
    "weights_files",
    "weights_sha256",
]

HF_GPT2 = "gpt2"  # the Hugging Face model_type minigpt's GPT reproduces (see hf.py)
# Names the hub has moved under an organisation: a cache filled before the move holds
# models--gpt2, one filled after models--openai-community--gpt2. Both are tried.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# A hub repo id: NAME or ORG/NAME, letters, digits, '-', '_', '.' (huggingface_hub's rule).
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# Flags that would give the model another shape (or kind) than SOURCE's.
SHAPE_FLAGS = (
    "model",
    "n_layer",
    "n_head",
    "n_embd",
    "bias",
    "pos_encoding",
    "tie_weights",
    "ngram_order",
    "norm",
    "mlp",
    "qk_norm",
    "logit_softcap",
)
FORMS = {
    "minigpt": "a minigpt checkpoint",
    "hf": "a Hugging Face GPT-2 directory",
    "hf-cache": "a Hugging Face cache snapshot",
}
READ_BLOCK = 1 << 20


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---- where SOURCE is ----------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it
    once, at import): HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME or
    ~/.cache, /huggingface/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def _inside_snapshots(cache: Path, repo: str, found: Path) -> bool:
    """Whether `found` is a snapshot of `repo` in `cache`: models--ORG--NAME/snapshots/REV
    with REV a plain name. huggingface_hub joins whatever `refs/main` holds onto that
    folder, so a ref of `../../../elsewhere` would name a directory outside the cache;
    checked on the path as written (the cache itself may be a symbolic link)."""
    snapshots = os.path.normpath(cache / ("models--" + repo.replace("/", "--")) / "snapshots")
    where = os.path.normpath(found)
    return os.path.dirname(where) == snapshots and Path(where).name not in ("", ".", "..")


def hf_cache_snapshot(name: str) -> Path:
    """The cached snapshot directory of hub model `name` (offline), or a CheckpointError
    in one line saying how to get it.

    >>> hf_cache_snapshot("gpt2")      # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/607a30d7...')
    """
    cache = hf_cache_dir()
    repos = [name]
    if name in HUB_ALIASES:
        repos.append(HUB_ALIASES[name])
    elif name in HUB_ALIASES.values():
        repos.append(next(k for k, v in HUB_ALIASES.items() if v == name))
    import huggingface_hub  # lazily: only a hub name needs it (and its import takes a while)

    for repo in repos:
        try:
            found = Path(huggingface_hub.snapshot_download(repo, local_files_only=True, cache_dir=cache))
        except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError), HFValidationError (a ValueError)
            continue
        if not _inside_snapshots(cache, repo, found):
            raise CheckpointError(
                f"--init-from {name}: the Hugging Face cache's refs/main for {repo} points outside the cache "
                f"({found}); refusing to read it (repair or delete {cache / ('models--' + repo.replace('/', '--'))})"
            )
        return found
    hub = HUB_ALIASES.get(name, name)
    raise CheckpointError(
        f"--init-from {name}: no such directory, and no model {name!r} in the Hugging Face cache ({cache}); "
        f"to fine-tune the hub's model, download it once with `hf download {hub}` (older huggingface_hub: "
        f"`huggingface-cli download {hub}`; either comes with `pip install huggingface_hub`), then run this again"
    )


@dataclass
class SourceSpec:
    """What SOURCE is, from its config.json alone (no weights read yet)."""

    name: str  # as the user gave it
    path: Path  # the directory holding config.json and the weights
    form: str  # a key of FORMS
    kind: str  # the model kind (models.py), e.g. GPT.model_type
    config: dict[str, Any]  # the model's settings, as its kind's config class writes them

    @property
    def block_size(self) -> int:
        return int(self.config["block_size"])


def _supported() -> str:
    kinds = [k.name for k in models.KINDS.values() if k.cls.learns_by == "gradient"]
    return (
        f'--init-from takes GPT-2 models (Hugging Face model_type "{HF_GPT2}": gpt2, distilgpt2, '
        f'gpt2-medium/-large/-xl and their fine-tunes), Qwen3 models of the shape minigpt exports ("qwen3"), '
        f"and minigpt checkpoints ({', '.join(kinds)})"
    )


def _directory_form(p: Path) -> tuple[Path, str]:
    """(checkpoint directory, "minigpt" | "hf") of an existing directory, or why it is not a model."""
    if (p / CONFIG).is_file():
        meta = files.read_json_object(p / CONFIG, "the model's config", CheckpointError)
        return p, "minigpt" if meta.get("format") == FORMAT else "hf"
    if any((p / n / CONFIG).is_file() for n in ("best", "last")):
        return resolve_checkpoint(p), "minigpt"  # a run directory: its best, else its last
    pickled = [n for n in PICKLED_NAMES if (p / n).exists()]
    hint = f" (it holds {pickled[0]}, a pickle without a config, which minigpt never loads)" if pickled else ""
    raise CheckpointError(
        f"--init-from {p}: not a model: no {CONFIG} (a model directory has one) and no best/ or last/ checkpoint "
        f"(a run directory has them){hint}"
    )


def inspect_source(name: str) -> SourceSpec:
    """Find SOURCE and read its config.json: its kind and shape, or one line saying why it
    cannot be fine-tuned (missing, not a model, another architecture, a kind that does
    not learn by gradient)."""
    p = Path(name).expanduser()
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise CheckpointError(
                f"--init-from {name}: is a file; SOURCE is a directory (a minigpt run or checkpoint, or a Hugging Face "
                f"model directory with config.json) or a model name such as gpt2"
            )
        path, form = _directory_form(p)
    elif _HUB_NAME.fullmatch(name) and not name.startswith((".", "~")):
        path, form = hf_cache_snapshot(name), "hf-cache"
        if (path / CONFIG).is_file() and files.read_json_object(
            path / CONFIG, "the model's config", CheckpointError
        ).get("format") == FORMAT:
            form = "minigpt"  # a minigpt checkpoint uploaded to the hub reads as one
    else:
        raise CheckpointError(f"--init-from {name}: no such directory (and not a model name such as gpt2)")

    if form == "minigpt":
        kind, settings = read_model_config(path)
        try:
            k = models.kind(kind, "model_type")
            config = dataclass_from_dict(k.config_cls, settings).to_dict()  # types and ranges checked, no model built
        except MiniGPTError as e:
            raise CheckpointError(f"{path / CONFIG}: {e}") from None
        if k.cls.learns_by != "gradient":
            raise CheckpointError(
                f"--init-from {name}: is {k.describe}, which learns by counting, not by gradient steps; "
                f"nothing to fine-tune ({_supported()})"
            )
        return SourceSpec(name, path, form, kind, config)

    hf = files.read_json_object(path / CONFIG, "a Hugging Face model directory has a config.json", CheckpointError)
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{path / CONFIG}: model_type {model_type!r} is not supported: {_supported()}")
    cfg, _ = hf_architecture(hf, str(path / CONFIG))  # names any setting minigpt cannot reproduce
    return SourceSpec(name, path, form, GPT.model_type, cfg.to_dict())


# ---- what the flags may and may not change --------------------------------------------------


def check_flags(spec: SourceSpec, explicit: dict[str, Any]) -> None:
    """Refuse the flags the user typed that would give the model another kind or shape
    than SOURCE's (a value equal to SOURCE's is accepted), and --vocab-size (the
    tokenizer is SOURCE's). Settings that came from a preset or a file are not refused:
    the trainer replaces them with SOURCE's."""
    for k in SHAPE_FLAGS:
        if k not in explicit:
            continue
        have = spec.kind if k == "model" else spec.config.get(k)
        if explicit[k] != have:
            what = f"whose {k} is {have}" if have is not None else f"which has no {k} setting"
            raise ConfigError(
                f"{_flag(k)} {explicit[k]}: the model's kind and shape come from --init-from {spec.name}, {what}; "
                f"drop {_flag(k)} (or train from scratch without --init-from)"
            )
    if "vocab_size" in explicit:
        raise ConfigError(
            f"--vocab-size {explicit['vocab_size']}: a fine-tune speaks --init-from {spec.name}'s tokenizer; "
            "drop --vocab-size"
        )


def check_block_size(spec: SourceSpec, block_size: int) -> None:
    """A context up to SOURCE's: a shorter one crops the position table (nanoGPT's
    `crop_block_size`); a longer one would need positions it never learned."""
    if block_size > spec.block_size:
        raise ConfigError(
            f"--block-size {block_size}: --init-from {spec.name} has a context of {spec.block_size} tokens, and its "
            f"position table cannot grow; use at most {spec.block_size} (a smaller value crops it)"
        )


def check_freeze(spec: SourceSpec, layers: int) -> None:
    """--freeze-layers N needs a GPT with at least N blocks."""
    if not layers:
        return
    k = models.kind(spec.kind, "model_type")
    if not issubclass(k.cls, GPT):
        raise ConfigError(
            f"--freeze-layers {layers}: --init-from {spec.name} is {k.describe}, whose layers are one recurrent "
            f"module; --freeze-layers takes GPTs (--freeze-embeddings works on every kind)"
        )
    if layers > spec.config["n_layer"]:
        raise ConfigError(f"--freeze-layers {layers}: --init-from {spec.name} has only {spec.config['n_layer']} layers")


# ---- loading --------------------------------------------------------------------------------


def weights_files(source: Path) -> list[Path]:
    """The files holding a model's weights: the file itself, or for a shard index
    (*.index.json) the shards it names, in order."""
    if not source.name.endswith(".index.json"):
        return [source]
    weight_map = files.read_json_object(source, "a shard index", CheckpointError).get("weight_map") or {}
    return [source.parent / n for n in sorted(set(weight_map.values()))]


def _file_sha256(path: Path) -> str:
    return files.sha256_file(path, READ_BLOCK)


def weights_sha256(paths: list[Path]) -> str:
    """SHA-256 of a model's weights as stored: of the file (what `sha256sum
    model.safetensors` prints, and the hub lists), or for shards, of the `sha256sum`
    lines of the shards ("HEX  NAME\\n" each, in name order)."""
    if len(paths) == 1:
        return _file_sha256(paths[0])
    lines = "".join(f"{_file_sha256(p)}  {p.name}\n" for p in sorted(paths, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _fit_state(state: dict[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """`state` for `model`, whose context may be shorter: a tensor whose first dimension
    is longer than the model's (the learned position table) keeps its first rows."""
    expected = model.state_dict()
    out = {}
    for name, t in state.items():
        want = expected[name].shape
        if t.shape != want:
            if t.dim() == len(want) and t.shape[1:] == want[1:] and t.shape[0] > want[0]:
                t = t[: want[0]]  # positions 0 .. block_size - 1: the rows a shorter context uses
            else:
                raise CheckpointError(
                    f"{where}: tensor {name} has shape {tuple(t.shape)}, the model needs {tuple(want)}"
                )
        out[name] = t
    return out


@dataclass
class Source:
    """A loaded SOURCE: the model to fine-tune (context cropped, dropout set), its
    tokenizer, and the identity of its weights."""

    spec: SourceSpec
    model: nn.Module
    tokenizer: Tokenizer | None
    tokenizer_path: Path | None
    weights: list[Path] = field(default_factory=list)
    weights_sha256: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def record(self) -> dict[str, Any]:
        """What a fine-tuned run records about where it started (run.json "init_from")."""
        return {
            "source": self.spec.name,
            "path": str(self.spec.path),
            "form": self.spec.form,
            "model_type": self.spec.kind,
            "block_size": self.spec.block_size,
            "weights": [p.name for p in self.weights],
            "weights_sha256": self.weights_sha256,
        }

    def require_tokenizer(self) -> Tokenizer:
        """The tokenizer the data must speak, or one line saying that SOURCE has none."""
        if self.tokenizer is None:
            raise CheckpointError(
                f"--init-from {self.spec.name}: {self.spec.path} has no {TOKENIZER} (nor vocab.json + merges.txt), so "
                "text cannot be turned into the token ids it was trained on; "
                f"add the model's {TOKENIZER} to that directory"
            )
        return self.tokenizer


def _load_hf(spec: SourceSpec, cfg: GPTConfig) -> tuple[nn.Module, list[Path]]:
    """A GPT of shape `cfg` (SOURCE's, context possibly cropped, dropout set) holding a
    Hugging Face GPT-2 directory's weights, and the files they came from."""
    tensors, source = read_hf_weights(spec.path)  # safetensors, or a pickle under weights_only=True
    hf = files.read_json_object(spec.path / CONFIG, "a Hugging Face model directory has a config.json", CheckpointError)
    _, from_hf = hf_architecture(hf, str(spec.path / CONFIG))
    state = from_hf(tensors, GPTConfig.from_dict(spec.config), where=str(source))  # checked against config.json
    del tensors
    model = GPT(cfg)
    model.load_state_dict(_fit_state(state, model, str(source)))
    return model, weights_files(source)


def load_source(spec: SourceSpec, *, block_size: int | None = None, dropout: float | None = None) -> Source:
    """SOURCE's model with `block_size` (None: SOURCE's; smaller crops the position
    table) and `dropout` (None: SOURCE's), its tokenizer (None if it has none) and its
    weights' SHA-256. Weights that do not match config.json, or are not finite, are one
    CheckpointError naming the file.

    >>> src = load_source(inspect_source("out/shakespeare"), block_size=32)   # doctest: +SKIP
    >>> src.model.config.block_size, src.weights_sha256[:8]                   # doctest: +SKIP
    (32, '3f1c9a0e')
    """
    want = dict(spec.config)
    if block_size is not None:
        check_block_size(spec, block_size)
        want["block_size"] = block_size
    if dropout is not None and "dropout" in want:
        want["dropout"] = dropout
    try:
        if spec.form == "minigpt":
            ckpt = load_checkpoint(spec.path, need_tokenizer=False)
            model, tokenizer = ckpt.model, ckpt.tokenizer
            if want != spec.config:  # another context or dropout: the same weights in a model of that shape
                adapted = models.build(spec.kind, want)
                adapted.load_state_dict(_fit_state(model.state_dict(), adapted, str(spec.path / WEIGHTS)))
                model = adapted
            weights = [spec.path / WEIGHTS]
        else:
            model, weights = _load_hf(spec, GPTConfig.from_dict(want))
            tokenizer, tokenizer_path = hf_tokenizer(spec.path, model.config.vocab_size)
    except MiniGPTError as e:
        raise type(e)(f"--init-from {spec.name}: {e}") from None
    model.train()
    if spec.form == "minigpt":
        tokenizer_path = spec.path / TOKENIZER if tokenizer is not None else None
    return Source(spec, model, tokenizer, tokenizer_path, weights, weights_sha256(weights))


# ---- freezing -------------------------------------------------------------------------------


def freeze(model: nn.Module, *, embeddings: bool = False, layers: int = 0) -> list[str]:
    """Keep parts of a loaded model as they are: `embeddings` turns off the gradients of
    every embedding table (tokens, learned positions; a tied output head is the token
    table, so it stays too), `layers` those of the first N Transformer blocks. The
    optimizer then never sees them (`trainer.make_optimizer` takes trainable parameters
    only), so a frozen weight is bit-for-bit the loaded one at every step. Returns what
    was frozen, for the log (e.g. ["embeddings", "layers 0-1"]).
    """
    done = []
    if embeddings:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight.requires_grad_(False)
        done.append("embeddings")
    if layers:
        if not isinstance(model, GPT):
            raise ConfigError(
                f"freeze_layers: only a GPT's blocks can be frozen one by one, not {type(model).__name__}'s"
            )
        if layers > model.config.n_layer:
            raise ConfigError(f"freeze_layers: {layers} is more than the model's {model.config.n_layer} layers")
        for block in model.transformer.h[:layers]:
            block.requires_grad_(False)
        done.append("layer 0" if layers == 1 else f"layers 0-{layers - 1}")
    return done
