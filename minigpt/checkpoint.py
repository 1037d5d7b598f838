"""Checkpoints and run directories: the one module that writes and reads their files.
Nothing here unpickles.

A *checkpoint* is a directory:

    model.safetensors   the weights (a tied output head is stored once, as the embedding)
    config.json         {"format": "minigpt-checkpoint", "version": 1, "model_type": "gpt",
                         "model": {...GPTConfig...}}
    tokenizer.json      the tokenizer the model was trained with
    run.json            (training) the run's full config and progress: step, losses, time
    trainer_state.pt    (training) optimizer moments, step, RNG states; read with
                        torch.load(weights_only=True), which refuses arbitrary objects

A *run directory* (`--out`) holds checkpoints `step-NNNNNNN/` plus two symbolic links,
`last` and `best` (lowest validation loss), and the run's logs:

    metrics.jsonl       one JSON object per line: training lines and evaluation lines
    train_config.json   the resolved settings of the run (each checkpoint's run.json too)
    .lock               held (an OS lock, `files.try_lock`) by the one process training into it
 Saving writes a new step directory under a
temporary name, renames it into place, then atomically repoints the links
(`os.replace` of a new link over the old one). A process killed at any instant leaves
`last` pointing at a complete checkpoint: either the old one or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import files, models
from .errors import CheckpointError, MiniGPTError
from .files import fsync_dir, read_json_object
from .tokenizer import Tokenizer

FORMAT = "minigpt-checkpoint"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, RUN, TRAINER_STATE = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "run.json",
    "trainer_state.pt",
)
METRICS, TRAIN_CONFIG, LOCK = "metrics.jsonl", "train_config.json", ".lock"
PICKLED_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "ckpt.pt", "model.bin")
# The weight dtypes minigpt reads (converted to the model's dtype on load). Others (float8,
# complex, quantised) are refused by name: torch cannot even check them for NaN.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_STATE_BYTES = 64 << 30  # trainer_state.pt: optimizer moments of a model up to the size cap


# ---- writing a checkpoint --------------------------------------------------------------


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


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (a full disk) raised as the FileError
    every other write raises: safetensors reports them as SafetensorError("... os error N")."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})  # "pt": transformers checks it
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        n = int(code.group(1)) if code else None
        raise files.FileError(f"cannot write {path}: {os.strerror(n) if n else e}", n) from None


def _json_text(obj: Any) -> str:
    return json_dumps(obj, indent=2) + "\n"


def json_dumps(obj: Any, indent: int | None = None) -> str:
    """JSON with non-finite floats as null (`files.json_safe`): an infinite best loss
    before any evaluation is written as null and read back as infinity."""
    return json.dumps(files.json_safe(obj), indent=indent, allow_nan=False)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: Tokenizer | None,
    *,
    run: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at `path`, atomically (temporary directory + rename).

    An existing directory at `path` is replaced only once the new one is complete."""
    model = models.unwrap(model)
    with files.atomic_directory(path) as tmp:
        save_tensors(_tensors_to_save(model), tmp / WEIGHTS)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_type": model.model_type,
            "model": model.config.to_dict(),
        }
        (tmp / CONFIG).write_text(_json_text(meta), encoding="utf-8")
        if tokenizer is not None:
            (tmp / TOKENIZER).write_text(tokenizer.to_str(), encoding="utf-8")
        if run is not None:
            (tmp / RUN).write_text(_json_text(run), encoding="utf-8")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
    return Path(path)


# ---- reading a checkpoint ----------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory's `best` (else `last`) checkpoint."""
    if str(path).strip() == "":
        raise CheckpointError("the checkpoint path is empty: name a run or checkpoint directory")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (train one with `python train.py`, or pass --checkpoint DIR)")
    if not p.is_dir():
        raise CheckpointError(
            f"{p} is not a directory: a checkpoint is a directory holding {WEIGHTS}, {CONFIG} and {TOKENIZER}"
        )
    if (p / CONFIG).exists() or (p / WEIGHTS).exists():
        return p
    for name in ("best", "last"):
        if (p / name / CONFIG).is_file():
            return p / name
    raise CheckpointError(
        f"no checkpoint in {p}: expected {CONFIG} + {WEIGHTS}, or a run directory with best/ or last/"
    )


def read_model_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(model kind, model settings) from a checkpoint's config.json, checked for shape but
    before any weights are read: callers can refuse a kind early (e.g. no attention)."""
    meta = read_json_object(path / CONFIG, "the model's config", CheckpointError)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path / CONFIG}: not a minigpt checkpoint config (for Hugging Face GPT-2 use `minigpt import-hf`)"
        )
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path / CONFIG}: version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path / CONFIG}: written by a newer minigpt (format version {version})")
    kind = meta.get("model_type", "gpt")
    settings = meta.get("model", {})
    if not isinstance(kind, str):
        raise CheckpointError(f"{path / CONFIG}: model_type must be a string, got {kind!r}")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path / CONFIG}: model must be a JSON object, got {type(settings).__name__}")
    return kind, settings


@dataclass
class Checkpoint:
    path: Path
    model: nn.Module
    tokenizer: Tokenizer | None
    model_type: str
    run: dict[str, Any] | None = field(default=None)


def check_weight(name: str, t: torch.Tensor, where: str | os.PathLike) -> None:
    """The rule for every floating-point tensor read from a file (ours, or Hugging Face's):
    a dtype on `WEIGHT_DTYPES` (named in the refusal) and finite values."""
    if not t.is_floating_point():
        return
    if t.dtype not in WEIGHT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in WEIGHT_DTYPES)
        raise CheckpointError(
            f"{where}: tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}, which minigpt does not read "
            f"(weights must be {allowed})"
        )
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{where}: tensor {name} holds NaN or infinite values (a diverged or corrupt model)")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU (a regular file only: a FIFO is refused, not
    waited on), or one CheckpointError naming it."""
    try:
        files.require_regular(path, "safetensors file")
        return load_file(str(path), device="cpu")
    except files.FileError as e:
        raise CheckpointError(str(e)) from None
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def _load_weights(path: Path, model: nn.Module) -> None:
    weights = path / WEIGHTS
    if not os.path.lexists(weights):
        pickled = [n for n in PICKLED_NAMES if (path / n).exists()]
        hint = f" ({', '.join(pickled)} is a pickle, which minigpt never loads)" if pickled else ""
        raise CheckpointError(f"{weights}: missing{hint}")
    tensors = load_safetensors(weights)
    expected = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_weights", False) else set()
    missing = [n for n in expected if n not in tensors and n not in tied]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise CheckpointError(f"{weights}: does not match {CONFIG} ({what})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights}: tensor {name} has shape {tuple(t.shape)} "
                f"but {CONFIG} implies {tuple(expected[name].shape)}"
            )
        if t.dtype != expected[name].dtype and not (t.is_floating_point() and expected[name].is_floating_point()):
            raise CheckpointError(f"{weights}: tensor {name} has dtype {t.dtype}, expected {expected[name].dtype}")
        check_weight(name, t, weights)
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, need_tokenizer: bool = True
) -> Checkpoint:
    """Load a checkpoint (or a run directory's best/last) onto `device`.

    Every failure is a CheckpointError naming the file: missing, truncated, not JSON,
    weights that do not fit the config or are not finite. Pickled files
    (pytorch_model.bin, *.pt) are never opened; trainer_state.pt is only read by
    `load_trainer_state`, with weights_only=True.
    """
    path = resolve_checkpoint(path)
    kind, settings = read_model_config(path)
    try:
        model = models.build(kind, settings)
    except MiniGPTError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None
    _load_weights(path, model)
    model.to(device)
    model.eval()

    tokenizer = None
    if (path / TOKENIZER).is_file():
        try:
            tokenizer = Tokenizer.load(path / TOKENIZER)
        except MiniGPTError as e:
            raise CheckpointError(f"{path / TOKENIZER}: {e}") from None
        if tokenizer.vocab_size > model.config.vocab_size:
            raise CheckpointError(
                f"{path / TOKENIZER}: has {tokenizer.vocab_size} tokens "
                f"but the model only {model.config.vocab_size} (mismatched files?)"
            )
    elif need_tokenizer:
        raise CheckpointError(
            f"{path / TOKENIZER}: missing (this checkpoint has no tokenizer, so text cannot be encoded)"
        )
    run = read_run(path) if (path / RUN).is_file() else None
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, model_type=kind, run=run)


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's run.json: a JSON object whose numbers are numbers. Its "config" is
    checked by `config.TrainConfig.from_dict` where it is used (resume)."""
    p = Path(path) / RUN
    run = read_json_object(p, "run info", CheckpointError)
    for key in ("step", "tokens_seen", "num_params"):
        v = run.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise CheckpointError(f"{p}: {key} must be a non-negative integer, got {v!r}")
    for key in ("train_time_s", "best_val_loss", "val_loss", "val_bpb", "train_loss"):
        v = run.get(key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise CheckpointError(f"{p}: {key} must be a number, got {v!r}")
    for key in ("config",):
        if key in run and not isinstance(run[key], dict):
            raise CheckpointError(f"{p}: {key} must be a JSON object, got {type(run[key]).__name__}")
    if "model_type" in run and not isinstance(run["model_type"], str):
        raise CheckpointError(f"{p}: model_type must be a string, got {run['model_type']!r}")
    return run


def _number(state: dict, key: str, f: Path, kind: type, default=None):
    v = state.get(key, default)
    ok = (
        isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind is float
        else isinstance(v, int) and not isinstance(v, bool)
    )
    if not ok or (isinstance(v, (int, float)) and v < 0):
        raise CheckpointError(
            f"{f}: {key} must be a non-negative {'number' if kind is float else 'integer'}, got {v!r}"
        )
    return kind(v)


def safe_torch_load(path: Path) -> Any:
    """The one place minigpt calls torch.load: weights_only=True, whose unpickler accepts
    tensors, dicts, lists and numbers only, so a planted pickle cannot run code. A refused
    or unreadable file is one CheckpointError; torch's own advice to retry with
    weights_only=False (which must never be followed for a file one did not write) and its
    pickle-protocol warning are not passed on."""
    try:
        files.require_regular(path, "PyTorch file")
    except files.FileError as e:
        raise CheckpointError(str(e)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol ...": noise before the refusal
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = re.search(r"WeightsUnpickler error: ([^\n]*?\.)(?: |$)", str(e))
        reason = why.group(1) if why else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: this pickle holds objects other than tensors, which could run code ({reason})"
        ) from None
    except Exception as e:  # EOFError/RuntimeError/zipfile errors for truncated or foreign files
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable (truncated or not a PyTorch file?): {first}") from None


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The optimizer/step/RNG state saved beside a training checkpoint (no code runs),
    with its fields checked: step, tokens_seen (integers), best_val_loss and train_time_s
    (numbers), optimizer (a state dict), rng (a dict of tensors)."""
    f = Path(path) / TRAINER_STATE
    if not os.path.lexists(f):
        raise CheckpointError(f"{f}: missing (this checkpoint cannot be resumed)")
    state = safe_torch_load(f)
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected a dict of training state, got {type(state).__name__}")
    state["step"] = _number(state, "step", f, int)
    state["tokens_seen"] = _number(state, "tokens_seen", f, int, 0)
    state["train_time_s"] = _number(state, "train_time_s", f, float, 0.0)
    best = state.get("best_val_loss", float("inf"))
    if best is None:
        best = float("inf")
    if not isinstance(best, (int, float)) or isinstance(best, bool):
        raise CheckpointError(f"{f}: best_val_loss must be a number, got {best!r}")
    state["best_val_loss"] = float(best)
    for key in ("rng", "scaler"):
        if key in state and not isinstance(state[key], dict):
            raise CheckpointError(f"{f}: {key} must be a dict, got {type(state[key]).__name__}")
    opt = state.get("optimizer")  # one optimizer's state, or a list (Muon + AdamW)
    if opt is not None and not (
        isinstance(opt, dict) or (isinstance(opt, list) and opt and all(isinstance(o, dict) for o in opt))
    ):
        raise CheckpointError(f"{f}: optimizer must be a state dict or a list of them, got {type(opt).__name__}")
    rng = state.get("rng")
    if rng is not None and not isinstance(rng.get("torch"), torch.Tensor):
        raise CheckpointError(f"{f}: rng must hold the torch generator state as a tensor")
    return state


# ---- run directories -------------------------------------------------------------------


def _point(link: Path, target_name: str) -> None:
    """Atomically make `link` a symbolic link to `target_name` (a sibling)."""
    tmp = link.parent / f".{link.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


class RunDirectory:
    """One training run's directory: step-NNNNNNN/ checkpoints, the `last` and `best`
    links, metrics.jsonl, train_config.json and the lock that keeps it to one trainer."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- checkpoints

    def save(self, step: int, model, tokenizer, *, run, trainer_state, is_best: bool) -> Path:
        name = f"step-{step:07d}"
        try:
            save_checkpoint(self.path / name, model, tokenizer, run=run, trainer_state=trainer_state)
            _point(self.path / "last", name)
            if is_best:  # only an evaluated checkpoint can be the best; without one, readers use `last`
                _point(self.path / "best", name)
            self._prune()
            fsync_dir(self.path)
        except files.FileError:
            raise
        except OSError as e:
            raise files.os_error(e, self.path / name) from None
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

    # -- the run's logs

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def append_metrics(self, line: dict[str, Any]) -> None:
        files.append_line(self.metrics_path, json_dumps(line))

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's lines whose fields have the types the writer gives them (a line
        cut short by a kill, or edited into nonsense, is skipped)."""
        if not self.metrics_path.is_file():
            return []
        out = []
        for obj in files.read_jsonl(self.metrics_path):
            step = obj.get("step")
            if not (isinstance(step, int) and not isinstance(step, bool)):
                continue
            if any(
                not (v is None or isinstance(v, (int, float)) and not isinstance(v, bool))
                for k, v in obj.items()
                if k != "step"
            ):
                continue
            out.append(obj)
        return out

    def reset_metrics(self) -> None:
        """A new run: lines left by one that saved no checkpoint (e.g. stopped by a NaN) go."""
        try:
            self.metrics_path.unlink(missing_ok=True)
        except OSError as e:
            raise files.os_error(e, self.metrics_path) from None

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop metric lines written after the checkpoint we resume from (they
        belong to steps that will be redone)."""
        if not self.metrics_path.is_file():
            return
        keep = [json_dumps(m) for m in self.read_metrics() if m["step"] <= step]
        files.atomic_write(self.metrics_path, "".join(line + "\n" for line in keep))

    def write_train_config(self, config: dict[str, Any]) -> None:
        files.atomic_write(self.path / TRAIN_CONFIG, _json_text(config))

    # -- one trainer at a time

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process's lifetime in the block: an OS lock on
        `.lock` (`files.try_lock`: flock on POSIX, LockFileEx on Windows), released on any
        exit, even kill -9 (the kernel drops it with the process), so a stale lock never
        blocks a later run. A second trainer, a --resume or
        a fine-tune into a held directory is refused with one line."""
        held = files.try_lock(self.path / LOCK)
        if held is None:
            raise MiniGPTError(
                f"{self.path} is in use by another minigpt training process; wait for it to finish, "
                f"or choose another --out",
                kind="locked",
            )
        try:
            yield
        finally:
            held.release()
