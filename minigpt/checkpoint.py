"""Checkpoints: the one module that writes and reads them. Nothing here unpickles.

A *checkpoint* is a directory:

    model.safetensors   the weights (a tied output head is stored once, as the embedding)
    config.json         {"format": "minigpt-checkpoint", "version": 1, "model_type": "gpt",
                         "model": {...GPTConfig...}}
    tokenizer.json      the tokenizer the model was trained with
    run.json            (training) the run's full config and progress: step, losses, time
    trainer_state.pt    (training) optimizer moments, step, RNG states; read with
                        torch.load(weights_only=True), which refuses arbitrary objects

A *run directory* (`--out`) holds checkpoints `step-NNNNNNN/` plus two symbolic links,
`last` and `best` (lowest validation loss). Saving writes a new step directory under a
temporary name, renames it into place, then atomically repoints the links
(`os.replace` of a new link over the old one). A process killed at any instant leaves
`last` pointing at a complete checkpoint: either the old one or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, MiniGPTError
from .tokenizer import Tokenizer

FORMAT = "minigpt-checkpoint"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, RUN, TRAINER_STATE = (
    "model.safetensors", "config.json", "tokenizer.json", "run.json", "trainer_state.pt"
)
PICKLED_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "ckpt.pt", "model.bin")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_model(model_type: str, config: dict[str, Any]) -> nn.Module:
    """Construct an (untrained) model of a kind named in config.json."""
    if model_type == "gpt":
        from .model import GPT, GPTConfig

        return GPT(GPTConfig.from_dict(config))
    if model_type in ("lstm", "gru", "ngram"):
        from . import baselines

        return baselines.build(model_type, config)
    raise CheckpointError(f"unknown model_type {model_type!r} (known: gpt, lstm, gru, ngram)")


def _tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept once (safetensors refuses aliases)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue  # e.g. lm_head.weight tied to transformer.wte.weight
        if key is not None:
            seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: Tokenizer | None,
    *,
    run: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at `path`, atomically (temporary directory + rename).

    An existing directory at `path` is replaced only once the new one is complete.
    """
    path = Path(path)
    model = unwrap(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is not
        save_file(_tensors_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        _write_json(tmp / CONFIG, {"format": FORMAT, "version": FORMAT_VERSION, "model_type": model.model_type, "model": cfg})
        if tokenizer is not None:
            (tmp / TOKENIZER).write_text(tokenizer.to_str(), encoding="utf-8")
        if run is not None:
            _write_json(tmp / RUN, run)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():
            old = path.parent / f".old-{path.name}-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _point(link: Path, target_name: str) -> None:
    """Atomically make `link` a symbolic link to `target_name` (a sibling)."""
    tmp = link.parent / f".{link.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


class RunDirectory:
    """The checkpoints of one training run: step-NNNNNNN/ directories, `last` and `best`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def save(self, step: int, model, tokenizer, *, run, trainer_state, is_best: bool) -> Path:
        name = f"step-{step:07d}"
        save_checkpoint(self.path / name, model, tokenizer, run=run, trainer_state=trainer_state)
        _point(self.path / "last", name)
        if is_best:  # only an evaluated checkpoint can be the best; without one, readers use `last`
            _point(self.path / "best", name)
        self._prune()
        _fsync_dir(self.path)
        return self.path / name

    def _prune(self) -> None:
        """Delete checkpoints that neither `last` nor `best` points to, and leftovers of
        interrupted saves."""
        keep = {os.readlink(self.path / n) for n in ("last", "best") if (self.path / n).is_symlink()}
        for p in self.path.iterdir():
            if p.name.startswith("step-") and p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith((".tmp-step-", ".old-step-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    def last(self) -> Path | None:
        p = self.path / "last"
        return p if (p / CONFIG).is_file() else None

    def best(self) -> Path | None:
        p = self.path / "best"
        return p if (p / CONFIG).is_file() else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory's `best` (else `last`) checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (train one with `python train.py`, or pass --checkpoint DIR)")
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory: a checkpoint is a directory holding {WEIGHTS}, {CONFIG} and {TOKENIZER}")
    if (p / CONFIG).exists() or (p / WEIGHTS).exists():
        return p
    for name in ("best", "last"):
        if (p / name / CONFIG).is_file():
            return p / name
    raise CheckpointError(f"no checkpoint in {p}: expected {CONFIG} + {WEIGHTS}, or a run directory with best/ or last/")


@dataclass
class Checkpoint:
    path: Path
    model: nn.Module
    tokenizer: Tokenizer | None
    model_type: str
    run: dict[str, Any] | None = field(default=None)


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or a CheckpointError naming it (missing: says what it should hold)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *, need_tokenizer: bool = True) -> Checkpoint:
    """Load a checkpoint (or a run directory's best/last) onto `device`.

    Every failure is a CheckpointError naming the file: missing, truncated, not JSON,
    weights that do not fit the config. Pickled files (pytorch_model.bin, *.pt) are never
    opened; trainer_state.pt is only read by `load_trainer_state`, with weights_only=True.
    """
    path = resolve_checkpoint(path)
    meta = read_json(path / CONFIG, "the model's config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG}: not a minigpt checkpoint config (for Hugging Face GPT-2 use `minigpt import-hf`)")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path / CONFIG}: written by a newer minigpt (format version {meta['version']})")
    model_type = meta.get("model_type", "gpt")
    try:
        model = build_model(model_type, meta.get("model", {}))
    except MiniGPTError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None
    except TypeError as e:
        raise CheckpointError(f"{path / CONFIG}: invalid model config ({e})") from None

    weights = path / WEIGHTS
    if not weights.is_file():
        pickled = [n for n in PICKLED_NAMES if (path / n).exists()]
        hint = f" ({', '.join(pickled)} is a pickle, which minigpt never loads)" if pickled else ""
        raise CheckpointError(f"{weights}: missing{hint}")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot read safetensors file (truncated or corrupt?): {e}") from None
    expected = model.state_dict()
    tied = {n for n in expected if n == "lm_head.weight"} if getattr(getattr(model, "config", None), "tie_weights", False) else set()
    missing = [n for n in expected if n not in tensors and n not in tied]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise CheckpointError(f"{weights}: does not match {CONFIG} ({what})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights}: tensor {name} has shape {tuple(t.shape)} but {CONFIG} implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    model.to(device)
    model.eval()

    tokenizer = None
    if (path / TOKENIZER).is_file():
        try:
            tokenizer = Tokenizer.load(path / TOKENIZER)
        except MiniGPTError as e:
            raise CheckpointError(f"{path / TOKENIZER}: {e}") from None
        vocab = getattr(model.config, "vocab_size", None) if not isinstance(model.config, dict) else model.config.get("vocab_size")
        if vocab is not None and tokenizer.vocab_size > vocab:
            raise CheckpointError(
                f"{path / TOKENIZER}: has {tokenizer.vocab_size} tokens but the model only {vocab} (mismatched files?)"
            )
    elif need_tokenizer:
        raise CheckpointError(f"{path / TOKENIZER}: missing (this checkpoint has no tokenizer, so text cannot be encoded)")
    run = read_json(path / RUN, "run info") if (path / RUN).is_file() else None
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, model_type=model_type, run=run)


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer/step/RNG state saved beside a training checkpoint (no code runs)."""
    f = Path(path) / TRAINER_STATE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (this checkpoint cannot be resumed)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a planted pickle, EOFError/RuntimeError for truncation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{f}: refused or unreadable ({first})") from None
