"""Corpus preparation (text files -> token files) and the batch sampler that serves training.

`prepare()` turns text into a *prepared dataset directory*:

    DIR/train.bin       token ids of the first (1 - val_fraction) of the text (uint16 or uint32)
    DIR/val.bin         token ids of the rest
    DIR/tokenizer.json  the byte-level BPE that made them (trained on the train split only)
    DIR/meta.json       vocabulary size, dtype, token/byte/char counts per split, sources

It streams: three passes over the inputs (scan and validate; train the tokenizer on the
train split; encode and write), each holding one chunk of text at a time, so memory
does not grow with the corpus. Every input file is one document; documents are joined
with `<|endoftext|>`. The split is by characters of the concatenated documents, exactly
like nanoGPT's `data[:int(n * 0.9)]`, so validation losses compare with it.

Nothing half-written is ever left under the final names: files are written in a
temporary directory inside DIR and renamed at the end, `meta.json` last (a dataset
counts as prepared only once its meta.json exists and the file sizes match it).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .errors import DataError
from .tokenizer import TRAIN_PIECE, Tokenizer, safe_pieces

if TYPE_CHECKING:  # torch is imported only by the batch loader: `prepare` does not need it
    import torch

FORMAT = "minigpt-dataset"
FORMAT_VERSION = 1
RECIPE_FILE = "dataset.toml"  # optional: how `train` prepares a data directory on first use
READ_BLOCK = 1 << 20  # bytes read at a time
ENCODE_PIECE = 1 << 13  # characters per piece handed to HF's encode_batch (HF is fastest on pieces of ~8-16 KB)

# With surrogateescape decoding, each byte that is not valid UTF-8 becomes one of these.
_BAD_BYTE = re.compile("[\udc80-\udcff]")


# ---- inputs ---------------------------------------------------------------------------


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8192)
    if head[:2] == b"\x1f\x8b":  # gzip: judge by the name (a .gz text file is an input)
        return not path.name.endswith(".gz")
    return b"\x00" in head


def resolve_inputs(inputs: Sequence[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Expand INPUT arguments into a sorted, de-duplicated list of text files.

    Each input is a file (plain or .gz), a directory (every non-hidden text file under
    it, recursively, sorted by path; files that look binary are skipped) or a glob.
    Files that a directory or glob finds inside `exclude` (the output directory) are
    skipped; a file named explicitly is always an input.
    """
    if not inputs:
        raise DataError("no input given: name a text file, a .gz file, a directory or a glob")
    exclude = exclude.resolve() if exclude else None

    def excluded(p: Path) -> bool:
        return exclude is not None and (p.resolve() == exclude or exclude in p.resolve().parents)

    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
                and not excluded(q)
                and not _looks_binary(q)
            )
            if not found:
                raise DataError(f"no text files under directory: {p}")
            files.extend(found)
        elif glob.has_magic(str(raw)):
            found = sorted(Path(q) for q in glob.glob(str(raw), recursive=True) if Path(q).is_file() and not excluded(Path(q)))
            if not found:
                raise DataError(f"no files match: {raw}")
            files.extend(found)
        elif p.exists():
            raise DataError(f"not a regular file or directory: {p}")
        else:
            raise DataError(f"no such file or directory: {p}")
    unique, seen = [], set()
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _open_binary(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_text_chunks(path: Path, replace_invalid: bool = False, warn: bool = True) -> Iterator[str]:
    """Yield the text of one file in chunks of about READ_BLOCK bytes.

    Invalid UTF-8 raises DataError naming the file and the byte offset of the first bad
    byte; with `replace_invalid` each bad byte becomes U+FFFD (and, with `warn`, one
    warning per file says how many there were).
    """
    # surrogateescape turns each undecodable byte into one lone surrogate, so a fast regex
    # scan finds them and encoding back with surrogateescape gives the exact byte offset.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    offset = 0  # bytes of the file decoded before the current chunk
    replaced, first_bad = 0, None
    try:
        with _open_binary(path) as f:
            while True:
                block = f.read(READ_BLOCK)
                text = decoder.decode(block, final=not block)
                if text:
                    m = _BAD_BYTE.search(text)
                    if m:
                        bad_at = offset + len(text[: m.start()].encode("utf-8", "surrogateescape"))
                        if not replace_invalid:
                            raise DataError(
                                f"{path}: invalid UTF-8 at byte {bad_at} "
                                f"(re-run with --replace-invalid to replace undecodable bytes with U+FFFD)"
                            )
                        first_bad = bad_at if first_bad is None else first_bad
                        offset += len(text.encode("utf-8", "surrogateescape"))
                        text, n = _BAD_BYTE.subn("\ufffd", text)
                        replaced += n
                    else:
                        offset += len(text.encode("utf-8"))
                    yield text
                if not block:
                    break
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if replaced and warn:
        print(
            f"warning: {path}: replaced {replaced} undecodable byte(s) with U+FFFD (first at byte {first_bad})",
            file=sys.stderr,
        )


def _text_size(path: Path) -> int:
    """Bytes of text in a file, for progress bars: its size, or for gzip the size its
    trailer records (exact below 4 GiB)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b" or size < 18:
            return size
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# ---- the corpus as a character stream -------------------------------------------------


@dataclass
class _Document:
    path: Path
    chars: int  # characters of text
    bytes: int  # UTF-8 bytes of that text (after any replacement)


def _scan(files: list[Path], replace_invalid: bool, progress: bool) -> list[_Document]:
    """Pass 1: validate every file and count its characters and bytes."""
    docs = []
    total = sum(_text_size(f) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="scan", disable=not progress, leave=False) as bar:
        for f in files:
            chars = nbytes = 0
            for text in read_text_chunks(f, replace_invalid):
                chars += len(text)
                n = len(text.encode("utf-8"))
                nbytes += n
                bar.update(n)
            if chars:  # an empty file is not a document
                docs.append(_Document(f, chars, nbytes))
    return docs


def _split_chunks(docs: list[_Document], train_chars: int, replace_invalid: bool) -> Iterator[tuple[str, int, str]]:
    """Yield (split, document index, text) in corpus order; the text of a chunk never
    spans the train/val boundary nor two documents."""
    pos = 0  # characters of the concatenated documents seen so far
    for d, doc in enumerate(docs):
        for text in read_text_chunks(doc.path, replace_invalid, warn=False):
            if pos < train_chars < pos + len(text):
                cut = train_chars - pos
                yield "train", d, text[:cut]
                yield "val", d, text[cut:]
            else:
                yield ("train" if pos < train_chars else "val"), d, text
            pos += len(text)


def _safe_pieces(stream: Iterator[tuple[str, int, str]], piece_chars: int) -> Iterator[tuple[str, int, str]]:
    """Re-cut (split, doc, text) chunks with `safe_pieces`, separately per split and
    document (a document end or the train/val boundary is a cut anyway)."""
    for (split, doc), chunks in itertools.groupby(stream, key=lambda c: (c[0], c[1])):
        for piece in safe_pieces((text for _, _, text in chunks), piece_chars):
            yield split, doc, piece


# ---- prepare --------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _fingerprint(meta: dict) -> dict:
    """What makes two prepared datasets the same dataset."""
    return {
        "sources": [(s["sha256"], s["bytes"]) for s in meta.get("sources", [])],
        "vocab_size_requested": meta.get("vocab_size_requested"),
        "val_fraction": meta.get("val_fraction"),
        "tokenizer_source": meta.get("tokenizer", {}).get("source"),
        "tokenizer_sha256": meta.get("tokenizer", {}).get("sha256") if meta.get("tokenizer", {}).get("source") else None,
    }


DATASET_FILES = ("train.bin", "val.bin", "tokenizer.json", "meta.json")


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    tokenizer: str | os.PathLike | None = None,
    force: bool = False,
    replace_invalid: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare a dataset directory from text inputs; returns its meta.json contents.

    If `out_dir` already holds this very dataset (same sources and settings) nothing is
    redone; if it holds another one, DataError unless `force`.
    """
    out = Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    files = resolve_inputs(inputs, exclude=out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output exists and is not a directory: {out}")
    tok = Tokenizer.load(tokenizer) if tokenizer else None
    if tok is None and vocab_size < 257:
        raise DataError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")

    sources = [{"path": str(f), "bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files]
    planned = {
        "sources": sources,
        "vocab_size_requested": None if tok else vocab_size,
        "val_fraction": val_fraction,
        "tokenizer": {"source": str(tokenizer), "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest()}
        if tok
        else {},
    }
    existing = _read_meta_if_any(out)
    if existing is not None:
        if _fingerprint(existing) == _fingerprint(planned) and not force and _files_consistent(out, existing):
            if progress:
                print(f"{out}: already prepared from the same sources and settings (use --force to rebuild)", file=sys.stderr)
            return existing
        if not force:
            raise DataError(
                f"{out} already holds another prepared dataset (its meta.json lists other sources or settings); "
                f"choose another --out or pass --force to replace it"
            )
    elif out.is_dir() and not force:
        foreign = [n for n in ("train.bin", "val.bin") if (out / n).exists()]
        if foreign:
            raise DataError(
                f"{out} already holds {', '.join(foreign)} without a minigpt meta.json (another tool's dataset?); "
                f"choose another --out or pass --force to replace it"
            )

    docs = _scan(files, replace_invalid, progress)
    total_chars = sum(d.chars for d in docs)
    if total_chars == 0:
        raise DataError("the corpus is empty: the input files hold no text")
    train_chars = int(total_chars * (1.0 - val_fraction))

    if tok is None:
        # Pass 2: learn the merges from the training split only (no peeking at validation).
        train_text = (
            t for s, _, t in _safe_pieces(_split_chunks(docs, train_chars, replace_invalid), TRAIN_PIECE) if s == "train"
        )
        with tqdm(total=train_chars, unit="char", unit_scale=True, desc="train tokenizer", disable=not progress, leave=False) as bar:
            def counted():
                for t in train_text:
                    bar.update(len(t))
                    yield t

            tok = Tokenizer.train(counted(), vocab_size)
    dtype = token_dtype(tok.vocab_size)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".prepare-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".prepare-"))
    try:
        counts = _encode_splits(docs, train_chars, tok, dtype, tmp, replace_invalid, progress)
        for split in ("train", "val"):
            if counts[split]["tokens"] < 2:
                raise DataError(
                    f"the corpus is too small: its {split} split holds {counts[split]['tokens']} token(s), "
                    f"and training needs at least one window (an input token and its target) in each split; "
                    f"give more text or change --val-fraction"
                )
        tok.save(tmp / "tokenizer.json")
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab_size": tok.vocab_size,
            "vocab_size_requested": planned["vocab_size_requested"],
            "dtype": dtype.name,
            "eot_id": tok.eot_id,
            "val_fraction": val_fraction,
            "splits": counts,
            "sources": sources,
            "tokenizer": {
                "file": "tokenizer.json",
                "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest(),
                **({"source": str(tokenizer)} if tokenizer else {}),
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # Invalidate the old dataset first, then move the new files in, meta.json last:
        # at every instant DIR is either a complete dataset or visibly unprepared.
        (out / "meta.json").unlink(missing_ok=True)
        for name in DATASET_FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _encode_splits(docs, train_chars, tok: Tokenizer, dtype, tmp: Path, replace_invalid, progress) -> dict:
    """Pass 3: encode both splits in parallel batches and append them to the .bin files."""
    counts = {s: {"file": f"{s}.bin", "tokens": 0, "bytes": 0, "chars": 0, "documents": 0} for s in ("train", "val")}
    files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
    last_doc: dict[str, int | None] = {"train": None, "val": None}
    total_bytes = sum(d.bytes for d in docs)
    eot = np.array([tok.eot_id if tok.eot_id is not None else 0], dtype=dtype)
    batch: list[tuple[str, int, str]] = []
    batch_chars = 0

    def flush():
        nonlocal batch, batch_chars
        # One HF call for the whole batch: it encodes the pieces on all cores.
        ids = tok._hf.encode_batch_fast([t for _, _, t in batch], add_special_tokens=False)
        for (split, doc, text), enc in zip(batch, ids):
            c = counts[split]
            if last_doc[split] != doc:
                if last_doc[split] is not None and tok.eot_id is not None:
                    eot.tofile(files[split])  # a document boundary inside this split
                    c["tokens"] += 1
                last_doc[split] = doc
                c["documents"] += 1
            arr = np.asarray(enc.ids, dtype=dtype)
            arr.tofile(files[split])
            c["tokens"] += len(arr)
            c["chars"] += len(text)
            nb = len(text.encode("utf-8"))
            c["bytes"] += nb
            bar.update(nb)
        batch, batch_chars = [], 0

    try:
        with tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="encode", disable=not progress) as bar:
            for piece in _safe_pieces(_split_chunks(docs, train_chars, replace_invalid), ENCODE_PIECE):
                batch.append(piece)
                batch_chars += len(piece[2])
                if batch_chars >= READ_BLOCK:
                    flush()
            if batch:
                flush()
    finally:
        for f in files.values():
            f.close()
    return counts


def _read_meta_if_any(out: Path) -> dict | None:
    path = out / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"format": "unreadable"}
    return meta if isinstance(meta, dict) else {"format": "unreadable"}


def _files_consistent(out: Path, meta: dict) -> bool:
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        return all(
            (out / meta["splits"][s]["file"]).stat().st_size == meta["splits"][s]["tokens"] * itemsize
            for s in ("train", "val")
        ) and (out / "tokenizer.json").is_file()
    except (KeyError, TypeError, OSError):
        return False


def prepare_from_recipe(data_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Prepare a data directory that carries a `dataset.toml` recipe (sources relative to
    the directory, vocab_size, val_fraction), as the bundled corpus does."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data_dir = Path(data_dir)
    recipe_path = data_dir / RECIPE_FILE
    try:
        recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{recipe_path}: cannot read recipe: {e}") from None
    sources = [data_dir / s for s in recipe.get("sources", [])]
    if not sources:
        raise DataError(f"{recipe_path}: lists no sources")
    return prepare(
        sources,
        data_dir,
        vocab_size=int(recipe.get("vocab_size", 4096)),
        val_fraction=float(recipe.get("val_fraction", 0.1)),
        progress=progress,
    )


# ---- prepared datasets ----------------------------------------------------------------


class Dataset:
    """A prepared dataset directory, its splits memory-mapped (nothing read until used)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        how = (
            f"prepare it with `minigpt prepare TEXT_FILES... --out {self.path}`"
            + (" (or let `minigpt train` do it from its dataset.toml)" if (self.path / RECIPE_FILE).is_file() else "")
        )
        if not self.path.is_dir():
            raise DataError(f"data directory not found: {self.path}; {how}")
        meta = _read_meta_if_any(self.path)
        if meta is None:
            raise DataError(f"{self.path} is not a prepared dataset (no meta.json); {how}")
        if meta.get("format") != FORMAT:
            raise DataError(f"{self.path / 'meta.json'} is not a minigpt dataset description; {how}")
        if not _files_consistent(self.path, meta):
            raise DataError(f"{self.path}: the token files do not match meta.json (a half-finished prepare?); {how}")
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.load(self.path / "tokenizer.json")
        return self._tokenizer

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memory map (an empty array if it has none)."""
        info = self.meta["splits"][split]
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / info["file"], dtype=self.dtype, mode="r")

    def bytes_per_token(self, split: str) -> float:
        info = self.meta["splits"][split]
        return info["bytes"] / max(1, info["tokens"])


class WindowSampler:
    """Random training windows (x, y) drawn from a token array.

    The windows of optimizer step `s` are a pure function of (seed, s): one generator
    seeded with [seed, s] draws the global batch's `world_size * grad_accum * batch_size`
    start offsets, and rank r's micro-step m takes slice `(r * grad_accum + m)`. So:
    - resuming needs no sampler state (the step number is the data position);
    - each rank reads its own windows (per-rank streams, no overlap within a step);
    - any split of the same global batch over processes and accumulation steps sees the
      same windows, which is what lets a 2-process run be checked against 1 process.

    `y` is `x` shifted by one token: position t of y is the token that follows x[t].
    """

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
        device: "str | torch.device" = "cpu",
    ):
        import torch

        if len(tokens) < block_size + 1:
            raise DataError(
                f"the split holds {len(tokens)} tokens but one window of block_size {block_size} needs "
                f"{block_size + 1}; lower --block-size or give more text"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.grad_accum, self.rank, self.world_size, self.seed = grad_accum, rank, world_size, seed
        self.device = torch.device(device)
        self._step, self._offsets = None, None

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of the whole global batch of `step` (all ranks, all micro-steps)."""
        if self._step != step:
            rng = np.random.default_rng([self.seed, step])
            n = self.world_size * self.grad_accum * self.batch_size
            self._offsets = rng.integers(0, len(self.tokens) - self.block_size, size=n)
            self._step = step
        return self._offsets

    def get(self, step: int, micro_step: int = 0) -> "tuple[torch.Tensor, torch.Tensor]":
        i = (self.rank * self.grad_accum + micro_step) * self.batch_size
        return windows(self.tokens, self.offsets(step)[i : i + self.batch_size], self.block_size, self.device)


def windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int, device: "torch.device") -> "tuple[torch.Tensor, torch.Tensor]":
    """Gather windows tokens[o : o + block_size + 1] for each offset into (x, y) int64 tensors."""
    import torch

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
