"""Prepared datasets, read for training: `Dataset` and the batch sampler.

A *prepared dataset directory* (written by `minigpt prepare`, see corpus.py) holds:

    DIR/train.bin       token ids of the first (1 - val_fraction) of the text (uint16 or uint32)
    DIR/val.bin         token ids of the rest
    DIR/tokenizer.json  the byte-level BPE that made them (trained on the train split only)
    DIR/meta.json       vocabulary size, dtype, token/byte/char counts per split, sources

A dataset counts as prepared only once its meta.json exists and the file sizes match it.
`read_meta` is the one reader of meta.json: everything that opens a prepared dataset goes
through it (via `Dataset`), so a malformed or wrongly typed file is one line, not a crash.
The splits are memory-mapped; `WindowSampler` draws training windows from them as a pure
function of (seed, step).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import files
from .errors import DataError
from .tokenizer import MAX_VOCAB_SIZE, Tokenizer

if TYPE_CHECKING:  # torch is imported only by the batch loader: `prepare` does not need it
    import torch

FORMAT = "minigpt-dataset"
FORMAT_VERSION = 1
META_FILE = "meta.json"
RECIPE_FILE = "dataset.toml"  # optional: how `train` prepares a data directory on first use
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
DATASET_FILES = ("train.bin", "val.bin", "tokenizer.json", META_FILE)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_meta(data_dir: str | os.PathLike) -> dict:
    """The meta.json of a prepared dataset, checked: the one reader of that file.

    Refused with one line naming the file: unreadable, too large, not JSON, nested too
    deeply, or any field of the wrong type or out of range (the sizes must be counts, the
    dtype uint16/uint32 and wide enough for the vocabulary, the split files `train.bin`
    and `val.bin`). Only what readers rely on is required: format, vocab_size, dtype and
    each split's file and tokens; the other fields are checked when present.
    """
    path = Path(data_dir) / META_FILE
    meta = files.read_json_object(path, "a prepared dataset's description", DataError)

    def bad(msg: str) -> DataError:
        return DataError(f"{path}: {msg}")

    if meta.get("format") != FORMAT:
        raise bad(f"not a minigpt dataset description (format {meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("version", FORMAT_VERSION)
    if not _is_count(version) or version < 1:
        raise bad(f"version must be a positive whole number, got {version!r}")
    if version > FORMAT_VERSION:
        raise bad(f"written by a newer minigpt (format version {version}; this one reads {FORMAT_VERSION})")
    vocab = meta.get("vocab_size")
    if not _is_count(vocab) or not 256 <= vocab <= MAX_VOCAB_SIZE:
        raise bad(f"vocab_size must be a whole number between 256 and {MAX_VOCAB_SIZE:,}, got {vocab!r}")
    dtype = meta.get("dtype")
    if dtype not in DTYPES:
        raise bad(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if vocab - 1 > np.iinfo(dtype).max:
        raise bad(f"dtype {dtype} cannot hold the ids of a {vocab:,}-token vocabulary")
    eot = meta.get("eot_id")
    if eot is not None and (not _is_count(eot) or eot >= vocab):
        raise bad(f"eot_id must be a token id below vocab_size {vocab}, got {eot!r}")
    frac = meta.get("val_fraction")
    if "val_fraction" in meta and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1):
        raise bad(f"val_fraction must be a number between 0 and 1, got {frac!r}")
    req = meta.get("vocab_size_requested")
    if req is not None and not _is_count(req):
        raise bad(f"vocab_size_requested must be a whole number or null, got {req!r}")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits must be an object with train and val")
    for s in SPLITS:
        info = splits.get(s)
        if not isinstance(info, dict):
            raise bad(f"splits.{s} must be an object, got {type(info).__name__}")
        if info.get("file") != f"{s}.bin":
            raise bad(f"splits.{s}.file must be {s}.bin, got {info.get('file')!r}")
        for key in ("tokens", "bytes", "chars", "documents"):
            if (key == "tokens" or key in info) and not _is_count(info.get(key)):
                raise bad(f"splits.{s}.{key} must be a whole number >= 0, got {info.get(key)!r}")
    sources = meta.get("sources", [])
    if not isinstance(sources, list) or not all(
        isinstance(x, dict)
        and isinstance(x.get("path"), str)
        and _is_count(x.get("bytes"))
        and isinstance(x.get("sha256"), str)
        for x in sources
    ):
        raise bad("sources must be a list of {path, bytes, sha256} objects")
    tokenizer = meta.get("tokenizer", {})
    if not isinstance(tokenizer, dict) or not all(
        isinstance(tokenizer.get(k, ""), str) for k in ("file", "sha256", "source")
    ):
        raise bad("tokenizer must be an object of strings (file, sha256, source)")
    return meta


def files_problem(out: Path, meta: dict) -> str | None:
    """Why the files of a dataset do not match its (checked) meta.json, or None."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for s in SPLITS:
        info = meta["splits"][s]
        st = files.stat_or_none(out / info["file"])
        if st is None:
            return f"{info['file']} is missing"
        want = info["tokens"] * itemsize
        if not stat.S_ISREG(st.st_mode) or st.st_size != want:
            return (
                f"{info['file']} has {st.st_size:,} bytes, but meta.json says {info['tokens']:,} {meta['dtype']} "
                f"tokens ({want:,} bytes)"
            )
    st = files.stat_or_none(out / "tokenizer.json")
    if st is None or not stat.S_ISREG(st.st_mode):
        return "tokenizer.json is missing"
    return None


class Dataset:
    """A prepared dataset directory, its splits memory-mapped (nothing read until used)."""

    def __init__(self, path: str | os.PathLike):
        self.path = files.path_arg(path, "the data directory", DataError)
        how = f"prepare it with `minigpt prepare TEXT_FILES... --out {self.path}`" + (
            " (or let `minigpt train` do it from its dataset.toml)" if os.path.lexists(self.path / RECIPE_FILE) else ""
        )
        st = files.stat_or_none(self.path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            what = "data directory not found" if st is None else "not a directory"
            raise DataError(f"{what}: {self.path}; {how}")
        if not os.path.lexists(self.path / META_FILE):
            raise DataError(f"{self.path} is not a prepared dataset (no meta.json); {how}")
        try:
            meta = read_meta(self.path)
        except DataError as e:
            raise DataError(f"{e}; re-run prepare with --force to rebuild it") from None
        problem = files_problem(self.path, meta)
        if problem is not None:
            raise DataError(
                f"{self.path}: the token files do not match meta.json: {problem} (a half-finished prepare?); {how}"
            )
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self._tokenizer: Tokenizer | None = None
        self._max_id: dict[str, int] = {}

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tok = Tokenizer.load(self.path / "tokenizer.json")
            if tok.vocab_size > self.vocab_size:
                raise DataError(
                    f"{self.path / 'tokenizer.json'}: has {tok.vocab_size:,} tokens but meta.json's vocab_size is "
                    f"{self.vocab_size:,} (files from two different datasets?)"
                )
            self._tokenizer = tok
        return self._tokenizer

    def _split(self, split: str) -> dict:
        if split not in SPLITS:
            raise DataError(f"no split {split!r} in a prepared dataset (there are {', '.join(SPLITS)})")
        return self.meta["splits"][split]

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memory map (an empty array if it has none).
        The ids are not checked here (that reads the whole file): see `check_token_ids`."""
        info = self._split(split)
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.dtype)
        path = self.path / info["file"]
        try:
            size = os.stat(path).st_size
            if size != info["tokens"] * self.dtype.itemsize:
                raise DataError(
                    f"{path}: has {size:,} bytes, but meta.json says {info['tokens']:,} {self.dtype.name} tokens "
                    f"(changed since it was opened?)"
                )
            return np.memmap(path, dtype=self.dtype, mode="r", shape=(info["tokens"],))
        except OSError as e:
            raise files.os_error(e, path, "cannot read") from None

    def max_token_id(self, split: str) -> int:
        """The largest token id in a split (-1 if it is empty): one vectorised pass over the
        file the first time, cached after."""
        if split not in self._max_id:
            toks = self.tokens(split)
            try:
                self._max_id[split] = int(toks.max()) if len(toks) else -1
            except OSError as e:  # a read error surfaces as the pages are touched
                raise files.os_error(e, self.path / self._split(split)["file"], "cannot read") from None
        return self._max_id[split]

    def check_token_ids(self, split: str, vocab_size: int | None = None) -> np.ndarray:
        """The split's tokens (as `tokens`), after checking that every id is below the
        dataset's vocabulary and below `vocab_size` (a model's) when given. A file holding
        a larger id (corrupt, or from another tokenizer) is a DataError naming it, where
        indexing an embedding with it would crash. The check is cached (`max_token_id`)."""
        limit = self.vocab_size if vocab_size is None else min(self.vocab_size, int(vocab_size))
        top = self.max_token_id(split)
        if top >= limit:
            whose = "the vocabulary" if limit == self.vocab_size else "the model's vocabulary"
            raise DataError(
                f"{self.path / self._split(split)['file']}: holds token id {top:,}, past {whose} of {limit:,} "
                f"(a corrupt file, or ids from another tokenizer); re-run prepare with --force"
            )
        return self.tokens(split)

    def bytes_per_token(self, split: str) -> float:
        info = self._split(split)
        if "bytes" not in info:
            raise DataError(f"{self.path / META_FILE}: splits.{split} records no byte count")
        return info["bytes"] / max(1, info["tokens"])


class WindowSampler:
    """Training windows (x, y) drawn from a token array, pass by pass.

    Each pass over the split (an epoch) cuts it into windows of block_size tokens at a random
    phase and visits them in a random order, without replacement: every token is trained on
    as often as every other, where windows drawn with replacement (nanoGPT's) would leave
    e^-k of a text seen k times on average never seen at all and others seen twice as often.
    A split of more than MAX_PERMUTED windows (a text no run of minutes passes over even
    once, where the two hardly differ) draws its windows with replacement instead: no
    permutation of it is kept in memory.

    The windows of optimizer step `s` are a pure function of (seed, s): the global batch's
    `world_size * grad_accum * batch_size` windows are the next ones of the sequence of
    passes (pass e's order and phase come from a generator seeded with [seed, e]), and rank
    r's micro-step m takes slice `(r * grad_accum + m)`. So:
    - resuming needs no sampler state (the step number is the data position);
    - each rank reads its own windows (per-rank streams, no overlap within a step);
    - any split of the same global batch over processes and accumulation steps sees the
      same windows, which is what lets a 2-process run be checked against 1 process.

    `y` is `x` shifted by one token: position t of y is the token that follows x[t].
    """

    MAX_PERMUTED = 1 << 22  # windows: a pass's order as int64 is 32 MiB at most

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        *,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        import torch  # lazily: only the batch loader needs torch (`prepare` does not)

        if len(tokens) < block_size + 1:
            raise DataError(
                f"the split holds {len(tokens)} tokens but one window of block_size {block_size} needs "
                f"{block_size + 1}; lower --block-size or give more text"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.grad_accum, self.rank, self.world_size, self.seed = grad_accum, rank, world_size, seed
        self.device = torch.device(device)
        self._step, self._offsets = None, None
        # A pass's windows start at phase + i * block_size, i < per_pass, phase < phases:
        # every start leaves room for block_size + 1 tokens (the last start is len - block - 1).
        last = len(tokens) - block_size - 1
        self.phases = min(block_size, last + 1)
        self.per_pass = (last - (self.phases - 1)) // block_size + 1
        self._pass, self._order = None, None

    def _pass_order(self, e: int) -> tuple[np.ndarray, int]:
        """Pass e's window order (a permutation of range(per_pass)) and its phase."""
        if self._pass != e:
            rng = np.random.default_rng([self.seed, e, 0x5A3])
            self._order = rng.permutation(self.per_pass), int(rng.integers(0, self.phases))
            self._pass = e
        return self._order

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of the whole global batch of `step` (all ranks, all micro-steps)."""
        if self._step != step:
            n = self.world_size * self.grad_accum * self.batch_size
            if self.per_pass > self.MAX_PERMUTED:
                rng = np.random.default_rng([self.seed, step])
                self._offsets = rng.integers(0, len(self.tokens) - self.block_size, size=n)
            else:
                # the global indices of this step's windows: which pass, which window of it
                passes, within = np.divmod(step * n + np.arange(n), self.per_pass)
                self._offsets = np.empty(n, dtype=np.int64)
                for e in np.unique(passes):  # one pass, or two where the step straddles
                    order, phase = self._pass_order(int(e))
                    here = passes == e
                    self._offsets[here] = phase + order[within[here]] * self.block_size
            self._step = step
        return self._offsets

    def get(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        i = (self.rank * self.grad_accum + micro_step) * self.batch_size
        return windows(self.tokens, self.offsets(step)[i : i + self.batch_size], self.block_size, self.device)


def windows(
    tokens: np.ndarray, offsets: np.ndarray, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows tokens[o : o + block_size + 1] for each offset into (x, y) int64 tensors."""
    import torch  # lazily: only the batch loader needs torch (`prepare` does not)

    idx = np.asarray(offsets)[:, None] + np.arange(block_size + 1)
    xy = torch.from_numpy(tokens[idx].astype(np.int64))  # one fancy-index copy out of the memmap
    if device.type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def eval_offsets(n_tokens: int, block_size: int, count: int, seed: int = 1234) -> np.ndarray:
    """The same `count` random window offsets every time (evaluations stay comparable)."""
    rng = np.random.default_rng([seed, 0xE7A1])
    return rng.integers(0, n_tokens - block_size, size=count)
