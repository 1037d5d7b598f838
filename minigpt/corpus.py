"""Corpus preparation: text files -> a prepared dataset directory (see dataset.py).

`prepare()` streams: three passes over the inputs (scan and validate; train the tokenizer
on the train split; encode and write), each holding one chunk of text at a time, so memory
does not grow with the corpus. Every input file is one document; documents are joined
with `<|endoftext|>`. The split is by characters of the concatenated documents, exactly
like nanoGPT's `data[:int(n * 0.9)]`, so validation losses compare with it.

Nothing half-written is ever left under the final names, and nothing that was there is
lost: files are written in a hidden staging directory (`.prepare-PID-XXXXXXXX`, inside
DIR, or beside it when DIR does not exist yet) and published by files.py's atomic writer
(`publish_files`: moved in one by one, meta.json last; or `publish_directory`: the whole
directory renamed to DIR). A failure, Ctrl-C or SIGTERM removes the staging directory and
leaves DIR as it was; one left by `kill -9` is removed by the next prepare (see
`_remove_stale_staging`). `--force` replaces only a dataset's own files, and only regular
files (`files.check_replaceable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import files
from . import inputs as text_inputs
from .dataset import (
    DATASET_FILES,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    RECIPE_FILE,
    SPLITS,
    files_problem,
    read_meta,
    token_dtype,
)
from .errors import DataError, MiniGPTError
from .inputs import read_text_chunks, read_text_spans, resolve_inputs
from .tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, TRAIN_PIECE, Tokenizer, safe_pieces

ENCODE_PIECE = 1 << 13  # characters per piece handed to HF's encode_batch (HF is fastest on pieces of ~8-16 KB)
# A sample (`prepare(sample_bytes=)`) keeps spans of this many bytes: long enough that nearly
# every training window lies inside one, short enough to spread a sample of tens of MB over
# a text of GB in hundreds of places.
SAMPLE_SPAN = 1 << 18
MIN_SAMPLE_BYTES = 1 << 20


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during `prepare`. It unwinds exactly like Ctrl-C's KeyboardInterrupt
    (the same cleanup runs: the staging directory is removed and DIR is left as it was);
    `signum` tells the command line its exit code, 128 + 15 = 143."""

    signum = signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("terminated by SIGTERM")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While preparing, SIGTERM raises `Terminated` instead of killing the process at once
    (which would leave the staging directory behind). Only where SIGTERM has its default
    action: a program that installed its own handler (or ignores SIGTERM) keeps its policy;
    and only in the main thread (the only one that may set handlers)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handle(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise Terminated()

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---- arguments ------------------------------------------------------------------------


def _check_val_fraction(value: Any, name: str = "--val-fraction") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0.0 < value < 1.0:
        raise DataError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def _check_vocab_size(value: Any, name: str = "--vocab-size") -> int:
    # MAX_VOCAB_SIZE: HF's trainer aborts the process on a huge value (see tokenizer.py).
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not MIN_VOCAB_SIZE <= value <= MAX_VOCAB_SIZE
    ):
        raise DataError(
            f"{name} must be a whole number, at least {MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>) and at most "
            f"{MAX_VOCAB_SIZE:,}, got {value!r}"
        )
    return int(value)


# ---- the corpus as a character stream -------------------------------------------------


@dataclass
class _Document:
    path: Path
    chars: int  # characters of text
    bytes: int  # UTF-8 bytes of that text (after any replacement)


def _scan(paths: list[Path], replace_invalid: bool, progress: bool) -> list[_Document]:
    """Pass 1: validate every file and count its characters and bytes."""
    docs = []
    total = sum(text_inputs.text_size(f) for f in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="scan", disable=not progress, leave=False) as bar:
        for f in paths:
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
        start = pos
        for text in read_text_chunks(doc.path, replace_invalid, warn=False):
            if pos < train_chars < pos + len(text):
                cut = train_chars - pos
                yield "train", d, text[:cut]
                yield "val", d, text[cut:]
            else:
                yield ("train" if pos < train_chars else "val"), d, text
            pos += len(text)
        if pos - start != doc.chars:  # the split and the counts were computed from the first pass
            raise DataError(
                f"{doc.path}: changed while being prepared ({doc.chars:,} characters, now {pos - start:,}); run again"
            )


@dataclass(frozen=True)
class _Sample:
    """Which bytes of a text too large to prepare whole are prepared: in each split, the
    first SAMPLE_SPAN bytes of every `stride` (spans spread evenly over the split, so a
    sample of a text sorted by topic or by file still sees all of it). Positions are bytes
    of the files joined in order; the validation split is the last --val-fraction of them
    (of the bytes, where a whole preparation cuts at characters: the same place in ASCII).
    Only the kept spans are read: preparing a sample of a text of GB costs what preparing
    the sample alone does."""

    sizes: tuple[int, ...]  # bytes of text of each file
    train_bytes: int  # where the validation split begins
    stride: int  # bytes from one kept span to the next (>= SAMPLE_SPAN)

    @classmethod
    def of(cls, sizes: list[int], val_fraction: float, sample_bytes: int) -> _Sample:
        total = sum(sizes)
        stride = max(SAMPLE_SPAN, int(SAMPLE_SPAN * total / sample_bytes))
        return cls(tuple(sizes), int(total * (1.0 - val_fraction)), stride)

    def kept(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The kept parts of bytes [start, end), each within one split."""
        for lo, hi in ((start, min(end, self.train_bytes)), (max(start, self.train_bytes), end)):
            base = 0 if lo < self.train_bytes else self.train_bytes  # each split's spans start at its start
            at = lo
            while at < hi:
                offset = (at - base) % self.stride
                if offset < SAMPLE_SPAN:
                    yield at, min(hi, at + SAMPLE_SPAN - offset)
                    at = min(hi, at + SAMPLE_SPAN - offset)
                else:
                    at += self.stride - offset

    def kept_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self.kept(0, sum(self.sizes)))

    def chunks(self, paths: list[Path], replace_invalid: bool) -> Iterator[tuple[str, int, str]]:
        """(split, segment, text) of every kept span in corpus order; a span is a segment
        (its own document), and one that a file boundary cuts is two."""
        pos, segment = 0, 0
        for path, size in zip(paths, self.sizes):
            parts = list(self.kept(pos, pos + size))
            texts = read_text_spans(path, [(lo - pos, hi - pos) for lo, hi in parts], replace_invalid) if parts else ()
            for (lo, _), text in zip(parts, texts):
                if text:
                    yield ("train" if lo < self.train_bytes else "val"), segment, text
                    segment += 1
            pos += size


def _safe_pieces(stream: Iterator[tuple[str, int, str]], piece_chars: int) -> Iterator[tuple[str, int, str]]:
    """Re-cut (split, doc, text) chunks with `safe_pieces`, separately per split and
    document (a document end or the train/val boundary is a cut anyway)."""
    for (split, doc), chunks in itertools.groupby(stream, key=lambda c: (c[0], c[1])):
        for piece in safe_pieces((text for _, _, text in chunks), piece_chars):
            yield split, doc, piece


# ---- prepare --------------------------------------------------------------------------


def _fingerprint(meta: dict) -> dict:
    """What makes two prepared datasets the same dataset."""
    tokenizer = meta.get("tokenizer") or {}
    return {
        "sources": [(s.get("sha256"), s.get("bytes")) for s in meta.get("sources") or []],
        "vocab_size_requested": meta.get("vocab_size_requested"),
        "val_fraction": meta.get("val_fraction"),
        "tokenizer_source": tokenizer.get("source"),
        "tokenizer_sha256": tokenizer.get("sha256") if tokenizer.get("source") else None,
        "sample_bytes": (meta.get("sample") or {}).get("bytes"),
    }


# Staging directories: ".prepare-<pid>-<mkdtemp's 8 characters>". The old unversioned
# ".prepare-<8 characters>" (left by a killed run before pids were in the name) is
# recognised too, so those leftovers are removed as well.
_STAGING = re.compile(r"\.prepare-(?:(\d+)-)?[a-z0-9_]{8}")
_LOCK = ".lock"  # held by the live owner of a staging directory (files.try_lock)
_STAGED_NAMES = {*DATASET_FILES, "old", _LOCK}


def _staging_in_use(path: Path, pid: int | None) -> bool:
    """Whether a staging directory belongs to a live prepare.

    The owner holds the lock on its `.lock` file for its whole life (`files.try_lock`, an
    OS lock the kernel drops when the process dies, even by kill -9), so a lock we can
    take means no owner. The pid in the name covers the instants before the lock is taken
    and after it is dropped (the owner is alive then). A dead owner's pid being reused
    only keeps a leftover until a later run: never the other way round."""
    if pid is not None:
        try:
            os.kill(pid, 0)
            return True  # that process lives (perhaps another prepare before it took its lock)
        except ProcessLookupError:
            pass
        except PermissionError:
            return True  # alive, another user's
        except (OSError, OverflowError):
            pass
    return os.path.lexists(path / _LOCK) and files.is_locked(path / _LOCK)


def _remove_stale_staging(parent: Path) -> None:
    """Remove the staging directories that a killed prepare left in `parent` (only ours:
    the exact name pattern, holding only the names prepare writes, and no live owner).
    Best effort: a directory we cannot list or delete is left as it is."""
    try:
        candidates = [p for p in parent.iterdir() if _STAGING.fullmatch(p.name)]
    except OSError:
        return
    for p in candidates:
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode) or not {q.name for q in p.iterdir()} <= _STAGED_NAMES:
                continue
        except OSError:
            continue
        m = _STAGING.fullmatch(p.name)
        if not _staging_in_use(p, int(m.group(1)) if m.group(1) else None):
            shutil.rmtree(p, ignore_errors=True)


class _Staging:
    """The hidden directory a prepare writes into, and the publishing of its files to `out`.

    If `out` exists, the staging directory is inside it (same file system: the moves are
    renames) and the files are moved in one by one (`files.publish_files`: meta.json last,
    the old dataset's files kept aside until the new ones are all in place, and put back if
    anything fails). If `out` does not exist, the staging directory is beside it and is
    renamed to `out` at the end (`files.publish_directory`), so a failed first prepare
    leaves no `out` at all (nor the parent directories it had to create)."""

    def __init__(self, out: Path):
        self.out = out
        self.in_place = files.stat_or_none(out) is not None
        self.parent = out if self.in_place else out.parent
        self.created: list[Path] = []  # parent directories made for a new `out`
        self.lock = None
        self.path: Path | None = None
        self.published = False

    def __enter__(self) -> _Staging:
        try:
            if not self.in_place:
                self.created = files.create_directories(self.parent)
            self.path = Path(tempfile.mkdtemp(dir=self.parent, prefix=f".prepare-{os.getpid()}-"))
            self.lock = files.try_lock(self.path / _LOCK)  # "in use" (see _staging_in_use); ours is new
        except OSError as e:
            self._remove()
            action = "cannot write" if self.in_place else "cannot create the output directory"
            raise files.os_error(e, self.out, action) from None
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()  # (the pid in our name still says "in use" until we are gone)
            self.lock = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / _LOCK)

    def _remove(self) -> None:
        self._unlock()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if not self.published:
            for d in reversed(self.created):  # only if still empty: never someone else's files
                with contextlib.suppress(OSError):
                    d.rmdir()

    def publish(self) -> None:
        """Publish the finished files to `out` (see the class docstring)."""
        assert self.path is not None
        if not self.in_place:
            self._unlock()  # the lock file is not part of the dataset
            files.publish_directory(self.path, self.out, replace=False)
            self.path, self.published = None, True  # it is `out` now: nothing to remove
            return
        files.publish_files(self.path, self.out, DATASET_FILES, last=META_FILE)
        self.published = True


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
    sample_bytes: int | None = None,
) -> dict:
    """Prepare a dataset directory from text inputs; returns its meta.json contents.

    `sample_bytes`: a text larger than this is prepared in part, about this many bytes of
    it in spans spread evenly over each split (`_Sample`): what a run with minutes to train
    can read of a text of GB, without paying to tokenize the rest. meta.json's "sample"
    records it; a text no larger is prepared whole, as without it.

    If `out_dir` already holds this very dataset (same sources and settings) nothing is
    redone; if it holds another one, DataError unless `force`. Every failure is a
    MiniGPTError (one line) and leaves `out_dir` as it was; SIGTERM raises `Terminated`
    after the same cleanup.
    """
    with _sigterm_unwinds():
        return _prepare(
            inputs, out_dir, vocab_size, val_fraction, tokenizer, force, replace_invalid, progress, sample_bytes
        )


def _check_sample_bytes(value: Any, name: str = "--sample") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SAMPLE_BYTES:
        raise DataError(f"{name} must be a whole number of bytes, at least {MIN_SAMPLE_BYTES:,}, got {value!r}")
    return int(value)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "67108864", "64M", "64MiB", "1.5G" (binary multiples: 1K = 1024). A
    DataError names --sample.

    >>> parse_size("64M"), parse_size("1g"), parse_size("2000000")
    (67108864, 1073741824, 2000000)
    """
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise DataError(f"--sample: expected a size in bytes such as 64M, 1G or 200000000, got {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmg".index(m.group(2).lower() or " "))


def _prepare(
    inputs, out_dir, vocab_size, val_fraction, tokenizer, force, replace_invalid, progress, sample_bytes
) -> dict:
    out = files.path_arg(out_dir, "--out", DataError)
    val_fraction = _check_val_fraction(val_fraction)
    tokenizer = files.path_arg(tokenizer, "--tokenizer", DataError) if tokenizer is not None else None
    if tokenizer is None:
        vocab_size = _check_vocab_size(vocab_size)
    st = files.stat_or_none(out)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise DataError(f"output exists and is not a directory: {out}")
    sample_bytes = _check_sample_bytes(sample_bytes)
    paths = resolve_inputs(inputs, exclude=out)
    tok = Tokenizer.load(tokenizer) if tokenizer else None
    sample = None
    if sample_bytes is not None:
        sizes = [text_inputs.text_size(f) for f in paths]
        if sum(sizes) > sample_bytes:
            sample = _Sample.of(sizes, val_fraction, sample_bytes)
        else:
            sample_bytes = None  # the whole text fits: prepared whole, the same dataset as without

    sources = [{"path": str(f), "bytes": files.stat_or_none(f).st_size, "sha256": text_inputs.sha256(f)} for f in paths]
    planned = {
        "sources": sources,
        "vocab_size_requested": None if tok else vocab_size,
        "val_fraction": val_fraction,
        "tokenizer": {"source": str(tokenizer), "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest()}
        if tok
        else {},
        "sample": {"bytes": sample_bytes} if sample_bytes else None,
    }
    if st is not None:
        _remove_stale_staging(out)
    _remove_stale_staging(out.parent)
    if st is not None and os.path.lexists(out / META_FILE):
        try:
            existing = read_meta(out)
            problem = files_problem(out, existing)
        except MiniGPTError as e:
            existing, problem = None, str(e)
        if existing is not None and problem is None and _fingerprint(existing) == _fingerprint(planned) and not force:
            if progress:
                print(
                    f"{out}: already prepared from the same sources and settings (use --force to rebuild)",
                    file=sys.stderr,
                )
            return existing
        if not force:
            what = (
                "another prepared dataset (its meta.json lists other sources or settings)"
                if existing is not None and problem is None
                else f"a damaged or unreadable dataset ({problem})"
            )
            raise DataError(
                f"{out} already holds {what}; choose another --out or pass --force to replace it", kind="exists"
            )
    elif st is not None and not force:
        foreign = [n for n in ("train.bin", "val.bin") if os.path.lexists(out / n)]
        if foreign:
            raise DataError(
                f"{out} already holds {', '.join(foreign)} without a minigpt meta.json (another tool's dataset?); "
                f"choose another --out or pass --force to replace it",
                kind="exists",
            )

    if st is not None:  # --force replaces a dataset's regular files, never a FIFO, device or link
        for name in DATASET_FILES:
            files.check_replaceable(out / name, directory=False)
    # The staging directory is made before the long passes: a --out that cannot be
    # written fails now, not after minutes of work.
    with _Staging(out) as staging:
        try:
            meta = _build(paths, staging.path, tok, planned, sample, replace_invalid, progress)
            staging.publish()
        except files.FileError:
            raise
        except OSError as e:
            # Writing: name the directory the user gave (the staging name means nothing to them).
            raise files.os_error(e, out, "cannot write") from None
    return meta


def _build(paths, tmp: Path, tok, planned: dict, sample: _Sample | None, replace_invalid, progress) -> dict:
    """The three passes, writing the dataset's files into `tmp`; returns meta (`planned`'s
    sources and settings, and what the passes found). A `sample` has no scan: the files'
    sizes place its spans, and only they are read."""
    val_fraction = planned["val_fraction"]
    if sample is not None:
        total_bytes, kept = sum(sample.sizes), sample.kept_bytes()

        def chunks() -> Iterator[tuple[str, int, str]]:
            return sample.chunks(paths, replace_invalid)

    else:
        docs = _scan(paths, replace_invalid, progress)
        total_chars = sum(d.chars for d in docs)
        if total_chars == 0:
            raise DataError("the corpus is empty: the input files hold no text")
        train_chars = int(total_chars * (1.0 - val_fraction))
        total_bytes = kept = sum(d.bytes for d in docs)

        def chunks() -> Iterator[tuple[str, int, str]]:
            return _split_chunks(docs, train_chars, replace_invalid)

    if tok is None:
        # Pass 2: learn the merges from the training split only (no peeking at validation).
        train_text = (t for s, _, t in _safe_pieces(chunks(), TRAIN_PIECE) if s == "train")
        with tqdm(
            total=int(kept * (1.0 - val_fraction)),
            unit="B",
            unit_scale=True,
            desc="train tokenizer",
            disable=not progress,
            leave=False,
        ) as bar:

            def counted():
                for t in train_text:
                    bar.update(len(t.encode("utf-8")))
                    yield t

            tok = Tokenizer.train(counted(), planned["vocab_size_requested"])
    dtype = token_dtype(tok.vocab_size)

    counts = _encode_splits(chunks(), kept, tok, dtype, tmp, progress)
    for split in SPLITS:
        if counts[split]["tokens"] < 2:
            raise DataError(
                f"the corpus is too small: its {split} split holds {counts[split]['tokens']} token(s), "
                f"and training needs at least one window (an input token and its target) in each split; "
                f"give more text or change --val-fraction"
            )
    text = tok.to_str()
    (tmp / "tokenizer.json").write_text(text, encoding="utf-8")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "vocab_size": tok.vocab_size,
        "vocab_size_requested": planned["vocab_size_requested"],
        "dtype": dtype.name,
        "eot_id": tok.eot_id,
        "val_fraction": val_fraction,
        "splits": counts,
        "sources": planned["sources"],
        **({"sample": {**planned["sample"], "of_bytes": total_bytes, "span_bytes": SAMPLE_SPAN}} if sample else {}),
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            **({"source": planned["tokenizer"]["source"]} if planned["tokenizer"] else {}),
        },
    }
    # ensure_ascii (the default) writes a file name that is not UTF-8 as a \\udcXX escape,
    # which reads back as the same name.
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return meta


def _encode_splits(chunks, total_bytes: int, tok: Tokenizer, dtype, tmp: Path, progress) -> dict:
    """Pass 3: encode both splits of `chunks` ((split, document, text) in corpus order) in
    parallel batches and append them to the .bin files. A sample's documents are its spans."""
    counts = {s: {"file": f"{s}.bin", "tokens": 0, "bytes": 0, "chars": 0, "documents": 0} for s in SPLITS}
    last_doc: dict[str, int | None] = {"train": None, "val": None}
    eot = np.array([tok.eot_id if tok.eot_id is not None else 0], dtype=dtype)
    batch: list[tuple[str, int, str]] = []
    batch_chars = 0

    with contextlib.ExitStack() as stack:
        outs = {s: stack.enter_context(open(tmp / f"{s}.bin", "wb")) for s in SPLITS}
        bar = stack.enter_context(
            tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="encode", disable=not progress)
        )

        def flush():
            nonlocal batch, batch_chars
            # One HF call for the whole batch: it encodes the pieces on all cores.
            arrays = tok.encode_batch_arrays([t for _, _, t in batch], dtype=dtype)
            for (split, doc, text), arr in zip(batch, arrays):
                c = counts[split]
                if last_doc[split] != doc:
                    if last_doc[split] is not None and tok.eot_id is not None:
                        outs[split].write(eot)  # a document boundary inside this split
                        c["tokens"] += 1
                    last_doc[split] = doc
                    c["documents"] += 1
                # file.write (not ndarray.tofile): a full disk raises OSError(ENOSPC), which
                # becomes one line, where tofile raises an errno-less "N requested and M written"
                outs[split].write(arr)
                c["tokens"] += len(arr)
                c["chars"] += len(text)
                nb = len(text.encode("utf-8"))
                c["bytes"] += nb
                bar.update(nb)
            batch, batch_chars = [], 0

        for piece in _safe_pieces(chunks, ENCODE_PIECE):
            batch.append(piece)
            batch_chars += len(piece[2])
            if batch_chars >= text_inputs.READ_BLOCK:
                flush()
        if batch:
            flush()
    return counts


def prepare_from_recipe(data_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Prepare a data directory that carries a `dataset.toml` recipe (sources relative to
    the directory, vocab_size, val_fraction), as the bundled corpus does."""
    data_dir = files.path_arg(data_dir, "the data directory", DataError)
    recipe_path = data_dir / RECIPE_FILE
    recipe = files.load_toml(recipe_path, "dataset recipe")
    known = {"sources": list, "vocab_size": int, "val_fraction": float}
    unknown = sorted(set(recipe) - set(known))
    if unknown:
        raise DataError(f"{recipe_path}: unknown key(s) {', '.join(unknown)} (a recipe has {', '.join(known)})")
    sources = recipe.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise DataError(
            f"{recipe_path}: sources must be a non-empty list of file names (relative to {data_dir}), got {sources!r}"
        )
    return prepare(
        [data_dir / files.path_arg(s, f"{recipe_path}: a source", DataError) for s in sources],
        data_dir,
        vocab_size=_check_vocab_size(recipe.get("vocab_size", 4096), f"{recipe_path}: vocab_size"),
        val_fraction=_check_val_fraction(recipe.get("val_fraction", 0.1), f"{recipe_path}: val_fraction"),
        progress=progress,
    )
