"""Where a training run starts: its output directory, its data (a prepared dataset, or text
to prepare first), a fine-tune's SOURCE and the config it implies, a resumed run's saved
config, and the checks that the data can fill a window and a batch. Everything here runs
before the first step, and refuses bad input before anything is written to --out where it
can (trainer.py calls it, in that order)."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files, pretrained
from . import plan as plan_mod
from .checkpoint import RunDirectory, read_run
from .config import FINETUNE_PRESET, PRESETS, ModelArgs, TrainConfig
from .data import RECIPE_FILE, Dataset, prepare, prepare_from_recipe, resolve_inputs
from .errors import CheckpointError, DataError, MiniGPTError
from .runtime import Runtime


def make_out(out: Path) -> Path | None:
    """Create the run directory (and check it is writable, so a run never trains for
    minutes and then fails to save). Returns the topmost directory this call created
    (None if `out` existed), so a run that fails before saving anything can remove it;
    a directory another process made at the same instant is not claimed (files.create_directories)."""
    made = []
    try:
        made = files.create_directories(out)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        for d in reversed(made):
            shutil.rmtree(d, ignore_errors=True)
        raise files.os_error(e, out, "cannot write to the output directory") from None
    return made[0] if made else None


def open_data(cfg: TrainConfig, rt: Runtime, progress: bool = True) -> Dataset:
    data_dir = Path(cfg.data.data)
    if not (data_dir / "meta.json").exists() and (data_dir / RECIPE_FILE).exists():
        if rt.is_main:
            rt.print(f"preparing {data_dir} (first use; see {data_dir / RECIPE_FILE})", file=sys.stderr)
            prepare_from_recipe(data_dir, progress=progress)
        rt.barrier()
    return Dataset(data_dir)


# ---- fine-tuning: SOURCE, and data in its tokenizer -----------------------------------------


def finetune_config(cfg: TrainConfig, explicit: dict[str, Any]) -> tuple[TrainConfig, pretrained.Source]:
    """SOURCE loaded, and the run's config made to describe the model it is: SOURCE's kind
    and shape (flags the user typed that would change them are refused; a preset's or a
    file's are replaced), --block-size (0: SOURCE's) and --dropout, and the weights'
    SHA-256 in `init_from_sha256` (checked against it when the user gave one)."""
    m = cfg.model
    spec = pretrained.inspect_source(m.init_from)  # config.json only: refusals come before reading weights
    pretrained.check_flags(spec, explicit)
    block_size = m.block_size or spec.block_size
    pretrained.check_block_size(spec, block_size)
    pretrained.check_freeze(spec, cfg.optim.freeze_layers)
    source = pretrained.load_source(spec, block_size=block_size, dropout=m.dropout)
    source.require_tokenizer()
    if m.init_from_sha256 is not None and m.init_from_sha256.lower() != source.weights_sha256:
        raise CheckpointError(
            f"--init-from {spec.name}: its weights' SHA-256 is {source.weights_sha256}, not the "
            f"--init-from-sha256 given ({m.init_from_sha256})"
        )
    cfg = TrainConfig.from_dict(cfg.to_dict())  # the caller's config is left as it was
    settings = source.model.config.to_dict()
    for name in ModelArgs.__dataclass_fields__:
        if name in settings and name not in ("block_size", "dropout"):
            cfg.set(name, settings[name])
    cfg.set("model", spec.kind)
    cfg.set("block_size", block_size)
    cfg.set("init_from_sha256", source.weights_sha256)
    if cfg.preset == FINETUNE_PRESET and "lr" not in explicit and cfg.optim.lr == PRESETS[FINETUNE_PRESET]["lr"]:
        # The finetune preset's rate is GPT-2's; a smaller source wants a larger one (plan.FINETUNE_LR).
        lr = plan_mod.finetune_lr(source.model.num_params())
        if "min_lr" not in explicit and cfg.optim.min_lr == cfg.optim.lr:
            cfg.optim.min_lr = lr  # still a constant rate
        cfg.optim.lr = lr
    cfg.validate()
    return cfg, source


@dataclass
class DataPlan:
    """Text given as --data, to prepare into `out` once --out exists (`inputs` None: --data
    is a prepared dataset, or a directory with a recipe that prepares itself in place)."""

    inputs: list[str] | None = None
    out: Path | None = None
    tokenizer: Path | None = None  # tokenizer.json to encode with; None: train one of vocab_size
    vocab_size: int = 4096
    val_fraction: float = 0.1
    sample_bytes: int | None = None  # a text larger than the budget can read: prepare this much of it


def has_text_files(d: Path) -> bool:
    return any(q.is_file() and not any(part.startswith(".") for part in q.relative_to(d).parts) for q in d.rglob("*"))


def data_plan(cfg: TrainConfig, source: pretrained.Source | None, *, resuming: bool) -> DataPlan:
    """What --data is. A prepared dataset (meta.json) is used as it is, and so is a
    directory with a dataset.toml recipe (prepared in place on first use), except in a
    fine-tune, where the recipe's sources are text for SOURCE's tokenizer. A file, a
    glob or a directory of text files is text to prepare. A path that does not exist is
    left to `Dataset` to report."""
    d = Path(cfg.data.data)
    recipe = d / RECIPE_FILE
    inputs: list[str] | None = None
    val_fraction = 0.1
    if d.is_dir():
        prepared = (d / "meta.json").exists() or (d / "train.bin").exists()
        if source is not None and recipe.is_file() and not (prepared and speaks(d, source)):
            raw = files.load_toml(recipe, "dataset recipe")
            sources = raw.get("sources")
            if not isinstance(sources, list) or not sources or not all(isinstance(x, str) for x in sources):
                raise DataError(f'{recipe}: lists no sources (expected sources = ["file.txt", ...])')
            inputs = [str(d / x) for x in sources]
            val_fraction = raw.get("val_fraction", 0.1)
            if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool):
                raise DataError(f"{recipe}: val_fraction must be a number, got {val_fraction!r}")
        elif not prepared and not recipe.is_file() and has_text_files(d):
            inputs = [str(d)]
    elif d.is_file() or (not d.exists() and glob.has_magic(str(d))):
        inputs = [str(d)]
    if inputs is None:
        return DataPlan()
    if resuming:
        raise DataError(
            f"--data {d}: is text to prepare, but --resume continues on the prepared dataset its run recorded; "
            f"drop --data (or name a prepared dataset directory)"
        )
    out = Path(cfg.data.data_out) if cfg.data.data_out else Path(cfg.run.out) / "data"
    resolve_inputs(inputs, exclude=out)  # missing or empty inputs are refused before anything is written
    return DataPlan(
        inputs, out, source.tokenizer_path if source is not None else None, cfg.data.vocab_size, val_fraction
    )


def speaks(d: Path, source: pretrained.Source) -> bool:
    """Whether the prepared dataset in `d` is in SOURCE's tokenizer."""
    try:
        return Dataset(d).tokenizer.to_str() == source.require_tokenizer().to_str()
    except MiniGPTError:
        return False


def check_tokenizer(data: Dataset, source: pretrained.Source | None) -> None:
    """A fine-tune's data must be in SOURCE's tokenizer: the same ids must mean the same text."""
    if source is None:
        return
    ours, theirs = data.tokenizer, source.require_tokenizer()
    if ours.to_str() != theirs.to_str():
        how = (
            f"{ours.vocab_size} vs {theirs.vocab_size} tokens"
            if ours.vocab_size != theirs.vocab_size
            else "other merges"
        )
        raise DataError(
            f"--data {data.path}: prepared with another tokenizer than --init-from {source.name}'s ({how}); "
            f"give the text itself as --data and it is prepared with {source.name}'s tokenizer"
        )


def prepare_text(plan: DataPlan, rt: Runtime, progress: bool) -> Dataset:
    """`minigpt prepare` of the text into plan.out (on the main process; the others wait),
    with SOURCE's tokenizer or a new one. A directory that already holds this dataset is
    reused as it is."""
    if rt.is_main:
        if progress:  # (with --quiet, a text that turns out bad leaves its error as the one line on stderr)
            how = f"with {plan.tokenizer}" if plan.tokenizer else f"with a new tokenizer of {plan.vocab_size} tokens"
            if plan.sample_bytes:
                how += f"; {plan_mod.sample_text(plan.sample_bytes)} spread over it: more than the budget can train on"
            rt.print(f"preparing {', '.join(plan.inputs)} into {plan.out} ({how})", file=sys.stderr)
        # A directory that held a dataset before: prepare either reuses it (the same text and
        # settings) or refuses it, with advice that names its own flags (--out, --force).
        held = any((plan.out / n).exists() for n in ("meta.json", "train.bin", "val.bin"))
        try:
            prepare(
                plan.inputs,
                plan.out,
                vocab_size=plan.vocab_size,
                val_fraction=plan.val_fraction,
                tokenizer=plan.tokenizer,
                progress=progress,
                sample_bytes=plan.sample_bytes,
            )
        except DataError:
            if held:
                raise DataError(
                    f"--data-out {plan.out}: already holds another dataset (other text, settings or tokenizer); "
                    f"choose another --data-out"
                ) from None
            raise
    rt.barrier()
    return Dataset(plan.out)


def resume_config(cfg: TrainConfig, explicit: dict[str, Any], run_dir: RunDirectory) -> tuple[TrainConfig, Path]:
    """The saved run's config, with the flags given now applied on top. Changing the
    model's shape (or kind) is refused: the weights would not fit."""
    last = run_dir.last()
    if last is None:
        raise MiniGPTError(
            f"--resume: no checkpoint to resume in {run_dir.path} (expected {run_dir.path}/last/); "
            f"train without --resume first"
        )
    run = read_run(last)
    if not isinstance(run.get("config"), dict):
        raise MiniGPTError(f"--resume: {last / 'run.json'} records no training config")
    try:
        saved = TrainConfig.from_dict(run["config"])
    except MiniGPTError as e:
        raise MiniGPTError(f"--resume: {last / 'run.json'}: {e}") from None
    model_fields = set(saved.model.__dataclass_fields__)
    frozen_fields = {"freeze_embeddings", "freeze_layers"}  # the optimizer state covers exactly the trainable weights
    for k, v in explicit.items():
        if k in model_fields and getattr(saved.model, k) != v:
            raise MiniGPTError(
                f"--resume: the checkpoint in {last} has {k}={getattr(saved.model, k)!r}, not {v!r}; "
                f"a different model needs a new --out"
            )
        if k in frozen_fields and getattr(saved.optim, k) != v:
            raise MiniGPTError(
                f"--resume: the run in {run_dir.path} trains with {k}={getattr(saved.optim, k)!r}, not {v!r}; "
                f"freezing other weights is a new fine-tune (a new --out)"
            )
        if k not in ("resume",):
            saved.set(k, v)
    saved.run.resume = True
    saved.validate()
    return saved, last


def check_windows(cfg: TrainConfig, data: Dataset, world_size: int) -> None:
    """Each split must hold one window of block_size + 1 tokens, and the train split a global
    batch of distinct windows."""
    m, o = cfg.model, cfg.optim
    train_tokens, val_tokens = data.tokens("train"), data.tokens("val")
    for split, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < m.block_size + 1:
            raise DataError(
                f"the {split} split of {data.path} holds {len(toks)} tokens, fewer than one window of "
                f"block_size {m.block_size} needs ({m.block_size + 1}); lower --block-size or prepare more text"
            )
    global_batch = o.batch_size * o.grad_accum * world_size
    if global_batch > len(train_tokens) - m.block_size:
        raise DataError(
            f"the train split has only {len(train_tokens) - m.block_size} distinct windows of block_size "
            f"{m.block_size}, fewer than a global batch of {global_batch}; lower --batch-size/--grad-accum"
        )
