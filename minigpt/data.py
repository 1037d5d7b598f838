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

Nothing half-written is ever left under the final names, and nothing that was there is
lost: files are written in a hidden staging directory (`.prepare-PID-XXXXXXXX`, inside
DIR, or beside it when DIR does not exist yet) and moved in at the end, `meta.json` last
(a dataset counts as prepared only once its meta.json exists and the file sizes match
it). A failure, Ctrl-C or SIGTERM removes the staging directory and leaves DIR as it was;
one left by `kill -9` is removed by the next prepare (see `_remove_stale_staging`).

`read_meta` is the one reader of meta.json: everything that opens a prepared dataset goes
through it (via `Dataset`), so a malformed or wrongly typed file is one line, not a crash.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
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
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from . import files
from .errors import DataError, MiniGPTError
from .tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, TRAIN_PIECE, Tokenizer, safe_pieces

try:
    import fcntl
except ImportError:  # not POSIX (Windows): staging directories are told apart by pid alone
    fcntl = None

if TYPE_CHECKING:  # torch is imported only by the batch loader: `prepare` does not need it
    import torch

FORMAT = "minigpt-dataset"
FORMAT_VERSION = 1
META_FILE = "meta.json"
RECIPE_FILE = "dataset.toml"  # optional: how `train` prepares a data directory on first use
READ_BLOCK = 1 << 20  # bytes read at a time
ENCODE_PIECE = 1 << 13  # characters per piece handed to HF's encode_batch (HF is fastest on pieces of ~8-16 KB)
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")

# With surrogateescape decoding, each byte that is not valid UTF-8 becomes one of these.
_BAD_BYTE = re.compile("[\udc80-\udcff]")


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
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
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


def _path_arg(raw: Any, what: str) -> Path:
    """A path argument as a Path, refusing what would silently mean something else: an
    empty string (Path("") is the current directory) or a NUL byte (which os calls reject
    with a ValueError). Bytes are decoded like the command line's arguments are, so a
    name that is not UTF-8 works end to end."""
    try:
        s = os.fspath(raw)
    except TypeError:
        raise DataError(f"{what} must be a path, got {type(raw).__name__}") from None
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if s == "":
        raise DataError(f"{what} is an empty path (name a file or directory; use . for the current directory)")
    if "\x00" in s:
        raise DataError(f"{what} {s!r} contains a NUL character")
    return Path(s)


def _check_val_fraction(value: Any, name: str = "--val-fraction") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0.0 < value < 1.0:
        raise DataError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def _check_vocab_size(value: Any, name: str = "--vocab-size") -> int:
    # MAX_VOCAB_SIZE: HF's trainer aborts the process on a huge value (see tokenizer.py).
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not MIN_VOCAB_SIZE <= value <= MAX_VOCAB_SIZE:
        raise DataError(
            f"{name} must be a whole number, at least {MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>) and at most "
            f"{MAX_VOCAB_SIZE:,}, got {value!r}"
        )
    return int(value)


def _stat(path: Path, follow: bool = True) -> os.stat_result | None:
    """os.stat, None if the path does not exist; any other failure (permission denied, a
    path component that is a file, a symlink loop) is one line naming the path."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise files.os_error(e, path, "cannot access") from None


# ---- inputs ---------------------------------------------------------------------------


def _looks_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as e:
        raise files.os_error(e, path, "cannot read") from None
    if head[:2] == b"\x1f\x8b":  # gzip: judge by the name (a .gz text file is an input)
        return not path.name.endswith(".gz")
    return b"\x00" in head


def _walk(root: Path) -> Iterator[Path]:
    """Every non-hidden file under `root` (symlinked directories are not entered, so a
    link loop cannot recurse). An unreadable directory is an error, not a silent skip:
    its files would be missing from the corpus."""

    def fail(e: OSError) -> None:
        raise files.os_error(e, e.filename or root, "cannot read directory")

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def resolve_inputs(inputs: Sequence[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Expand INPUT arguments into a sorted, de-duplicated list of text files.

    Each input is a file (plain or .gz), a directory (every non-hidden text file under
    it, recursively, sorted by path; files that look binary are skipped) or a glob.
    Files that a directory or glob finds inside `exclude` (the output directory) are
    skipped; a file named explicitly is always an input.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)) or not inputs:
        raise DataError("no input given: name a text file, a .gz file, a directory or a glob")
    exclude = exclude.resolve() if exclude else None

    def excluded(p: Path) -> bool:
        return exclude is not None and (p.resolve() == exclude or exclude in p.resolve().parents)

    def is_file(p: Path) -> bool:
        st = _stat(p)
        return st is not None and stat.S_ISREG(st.st_mode)

    files_: list[Path] = []
    for raw in inputs:
        p = _path_arg(raw, "an input")
        st = _stat(p)
        if st is not None and stat.S_ISREG(st.st_mode):
            files_.append(p)
        elif st is not None and stat.S_ISDIR(st.st_mode):
            found = sorted(q for q in _walk(p) if is_file(q) and not excluded(q) and not _looks_binary(q))
            if not found:
                raise DataError(f"no text files under directory: {p}")
            files_.extend(found)
        elif glob.has_magic(str(p)):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if is_file(Path(q)) and not excluded(Path(q)))
            if not found:
                raise DataError(f"no files match: {p}")
            files_.extend(found)
        elif st is not None:
            raise DataError(f"not a regular file or directory: {p}")
        else:
            raise DataError(f"no such file or directory: {p}")
    unique, seen = [], set()
    for f in files_:
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
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise files.os_error(e, path, "cannot read") from None
    if replaced and warn:
        print(
            f"warning: {path}: replaced {replaced} undecodable byte(s) with U+FFFD (first at byte {first_bad})",
            file=sys.stderr,
        )


def _text_size(path: Path) -> int:
    """Bytes of text in a file, for progress bars: its size, or for gzip the size its
    trailer records (exact below 4 GiB)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b" or size < 18:
                return size
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError as e:
        raise files.os_error(e, path, "cannot read") from None


def _sha256(path: Path) -> str:
    return files.sha256_file(path, READ_BLOCK)


# ---- the corpus as a character stream -------------------------------------------------


@dataclass
class _Document:
    path: Path
    chars: int  # characters of text
    bytes: int  # UTF-8 bytes of that text (after any replacement)


def _scan(paths: list[Path], replace_invalid: bool, progress: bool) -> list[_Document]:
    """Pass 1: validate every file and count its characters and bytes."""
    docs = []
    total = sum(_text_size(f) for f in paths)
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
    tokenizer = meta.get("tokenizer") or {}
    return {
        "sources": [(s.get("sha256"), s.get("bytes")) for s in meta.get("sources") or []],
        "vocab_size_requested": meta.get("vocab_size_requested"),
        "val_fraction": meta.get("val_fraction"),
        "tokenizer_source": tokenizer.get("source"),
        "tokenizer_sha256": tokenizer.get("sha256") if tokenizer.get("source") else None,
    }


DATASET_FILES = ("train.bin", "val.bin", "tokenizer.json", META_FILE)

# Staging directories: ".prepare-<pid>-<mkdtemp's 8 characters>". The old unversioned
# ".prepare-<8 characters>" (left by a killed run before pids were in the name) is
# recognised too, so those leftovers are removed as well.
_STAGING = re.compile(r"\.prepare-(?:(\d+)-)?[a-z0-9_]{8}")
_STAGED_NAMES = {*DATASET_FILES, "old"}


def _staging_in_use(path: Path, pid: int | None) -> bool:
    """Whether a staging directory belongs to a live prepare.

    The owner holds an exclusive flock on the directory for its whole life; the kernel
    drops it when the process dies, even by kill -9, so a lock we can take means no owner.
    The pid in the name covers the instant between mkdtemp and flock (the owner is alive
    then), and is the whole test where there is no flock. A dead owner's pid being reused
    only keeps a leftover until a later run: never the other way round."""
    if pid is not None:
        try:
            os.kill(pid, 0)
            return True  # that process lives (perhaps another prepare between mkdtemp and flock)
        except ProcessLookupError:
            pass
        except PermissionError:
            return True  # alive, another user's
        except (OSError, OverflowError):
            pass
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # (releases the probe's lock, if it got one)


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
    """The hidden directory a prepare writes into, and the move of its files to `out`.

    If `out` exists, the staging directory is inside it (same file system: the moves are
    renames) and the files are moved in one by one, meta.json last; the old dataset's
    files are kept aside until the new ones are all in place, and put back if anything
    fails. If `out` does not exist, the staging directory is beside it and is renamed to
    `out` at the end, so a failed first prepare leaves no `out` at all (nor the parent
    directories it had to create)."""

    def __init__(self, out: Path):
        self.out = out
        self.in_place = _stat(out) is not None
        self.parent = out if self.in_place else out.parent
        self.created: list[Path] = []  # parent directories made for a new `out`
        self.fd: int | None = None
        self.path: Path | None = None
        self.published = False

    def __enter__(self) -> "_Staging":
        try:
            if not self.in_place:
                missing = []
                p = self.parent
                while _stat(p) is None:
                    missing.append(p)
                    p = p.parent
                for d in reversed(missing):
                    d.mkdir()
                    self.created.append(d)
            self.path = Path(tempfile.mkdtemp(dir=self.parent, prefix=f".prepare-{os.getpid()}-"))
            self.fd = os.open(self.path, os.O_RDONLY)
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX)  # "in use" (see _staging_in_use)
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

    def _remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self.fd is not None:
            os.close(self.fd)  # (drops the lock)
            self.fd = None
        if not self.published:
            for d in reversed(self.created):  # only if still empty: never someone else's files
                with contextlib.suppress(OSError):
                    d.rmdir()

    def publish(self) -> None:
        """Move the finished files to `out` (see the class docstring)."""
        assert self.path is not None
        staged = self.path
        for name in DATASET_FILES:
            with open(staged / name, "rb") as f:  # durable before they become the dataset
                os.fsync(f.fileno())
        files.fsync_dir(staged)
        if not self.in_place:
            os.chmod(staged, 0o777 & ~_umask())  # mkdtemp made it private; a dataset is not
            os.rename(staged, self.out)  # fails (ENOTEMPTY/EEXIST) if another run made `out` meanwhile
            self.path, self.published = None, True  # it is `out` now: nothing to remove
            files.fsync_dir(self.out.parent)
            return
        old = staged / "old"
        old.mkdir()
        moved: list[str] = []  # names whose previous version is in `old`
        installed: list[str] = []
        try:
            # meta.json goes first: from here DIR is visibly unprepared until the new one
            # arrives, never a mix that looks complete.
            for name in (META_FILE, *DATASET_FILES[:-1]):
                if os.path.lexists(self.out / name):
                    os.replace(self.out / name, old / name)
                    moved.append(name)
                if name != META_FILE:
                    os.replace(staged / name, self.out / name)
                    installed.append(name)
            os.replace(staged / META_FILE, self.out / META_FILE)
            self.published = True
        except BaseException:
            # Put the old dataset back as it was (meta.json last), then report the failure.
            for name in installed:
                with contextlib.suppress(OSError):
                    os.unlink(self.out / name)
            for name in (*DATASET_FILES[:-1], META_FILE):
                if name in moved:
                    with contextlib.suppress(OSError):
                        os.replace(old / name, self.out / name)
            raise
        files.fsync_dir(self.out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    redone; if it holds another one, DataError unless `force`. Every failure is a
    MiniGPTError (one line) and leaves `out_dir` as it was; SIGTERM raises `Terminated`
    after the same cleanup.
    """
    with _sigterm_unwinds():
        return _prepare(inputs, out_dir, vocab_size, val_fraction, tokenizer, force, replace_invalid, progress)


def _prepare(inputs, out_dir, vocab_size, val_fraction, tokenizer, force, replace_invalid, progress) -> dict:
    out = _path_arg(out_dir, "--out")
    val_fraction = _check_val_fraction(val_fraction)
    tokenizer = _path_arg(tokenizer, "--tokenizer") if tokenizer is not None else None
    if tokenizer is None:
        vocab_size = _check_vocab_size(vocab_size)
    st = _stat(out)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise DataError(f"output exists and is not a directory: {out}")
    paths = resolve_inputs(inputs, exclude=out)
    tok = Tokenizer.load(tokenizer) if tokenizer else None

    sources = [{"path": str(f), "bytes": _stat(f).st_size, "sha256": _sha256(f)} for f in paths]
    planned = {
        "sources": sources,
        "vocab_size_requested": None if tok else vocab_size,
        "val_fraction": val_fraction,
        "tokenizer": {"source": str(tokenizer), "sha256": hashlib.sha256(tok.to_str().encode()).hexdigest()}
        if tok
        else {},
    }
    if st is not None:
        _remove_stale_staging(out)
    _remove_stale_staging(out.parent)
    if st is not None and os.path.lexists(out / META_FILE):
        try:
            existing = read_meta(out)
            problem = _files_problem(out, existing)
        except MiniGPTError as e:
            existing, problem = None, str(e)
        if existing is not None and problem is None and _fingerprint(existing) == _fingerprint(planned) and not force:
            if progress:
                print(f"{out}: already prepared from the same sources and settings (use --force to rebuild)", file=sys.stderr)
            return existing
        if not force:
            what = (
                "another prepared dataset (its meta.json lists other sources or settings)"
                if existing is not None and problem is None
                else f"a damaged or unreadable dataset ({problem})"
            )
            raise DataError(f"{out} already holds {what}; choose another --out or pass --force to replace it")
    elif st is not None and not force:
        foreign = [n for n in ("train.bin", "val.bin") if os.path.lexists(out / n)]
        if foreign:
            raise DataError(
                f"{out} already holds {', '.join(foreign)} without a minigpt meta.json (another tool's dataset?); "
                f"choose another --out or pass --force to replace it"
            )

    # The staging directory is made before the long passes: a --out that cannot be
    # written fails now, not after minutes of work.
    with _Staging(out) as staging:
        try:
            meta = _build(
                paths, staging.path, tok, vocab_size, val_fraction, planned, sources, tokenizer, replace_invalid, progress
            )
            staging.publish()
        except OSError as e:
            # Writing: name the directory the user gave (the staging name means nothing to them).
            raise files.os_error(e, out, "cannot write") from None
    return meta


def _build(paths, tmp: Path, tok, vocab_size, val_fraction, planned, sources, tokenizer, replace_invalid, progress) -> dict:
    """The three passes, writing the dataset's files into `tmp`; returns meta."""
    docs = _scan(paths, replace_invalid, progress)
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

    counts = _encode_splits(docs, train_chars, tok, dtype, tmp, replace_invalid, progress)
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
        "sources": sources,
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            **({"source": str(tokenizer)} if tokenizer else {}),
        },
    }
    # ensure_ascii (the default) writes a file name that is not UTF-8 as a \\udcXX escape,
    # which reads back as the same name.
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return meta


def _encode_splits(docs, train_chars, tok: Tokenizer, dtype, tmp: Path, replace_invalid, progress) -> dict:
    """Pass 3: encode both splits in parallel batches and append them to the .bin files."""
    counts = {s: {"file": f"{s}.bin", "tokens": 0, "bytes": 0, "chars": 0, "documents": 0} for s in SPLITS}
    last_doc: dict[str, int | None] = {"train": None, "val": None}
    total_bytes = sum(d.bytes for d in docs)
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

        for piece in _safe_pieces(_split_chunks(docs, train_chars, replace_invalid), ENCODE_PIECE):
            batch.append(piece)
            batch_chars += len(piece[2])
            if batch_chars >= READ_BLOCK:
                flush()
        if batch:
            flush()
    return counts


def prepare_from_recipe(data_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Prepare a data directory that carries a `dataset.toml` recipe (sources relative to
    the directory, vocab_size, val_fraction), as the bundled corpus does."""
    data_dir = _path_arg(data_dir, "the data directory")
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
        [data_dir / _path_arg(s, f"{recipe_path}: a source") for s in sources],
        data_dir,
        vocab_size=_check_vocab_size(recipe.get("vocab_size", 4096), f"{recipe_path}: vocab_size"),
        val_fraction=_check_val_fraction(recipe.get("val_fraction", 0.1), f"{recipe_path}: val_fraction"),
        progress=progress,
    )


# ---- prepared datasets ----------------------------------------------------------------


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


def _files_problem(out: Path, meta: dict) -> str | None:
    """Why the files of a dataset do not match its (checked) meta.json, or None."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for s in SPLITS:
        info = meta["splits"][s]
        st = _stat(out / info["file"])
        if st is None:
            return f"{info['file']} is missing"
        want = info["tokens"] * itemsize
        if not stat.S_ISREG(st.st_mode) or st.st_size != want:
            return (
                f"{info['file']} has {st.st_size:,} bytes, but meta.json says {info['tokens']:,} {meta['dtype']} "
                f"tokens ({want:,} bytes)"
            )
    st = _stat(out / "tokenizer.json")
    if st is None or not stat.S_ISREG(st.st_mode):
        return "tokenizer.json is missing"
    return None


class Dataset:
    """A prepared dataset directory, its splits memory-mapped (nothing read until used)."""

    def __init__(self, path: str | os.PathLike):
        self.path = _path_arg(path, "the data directory")
        how = (
            f"prepare it with `minigpt prepare TEXT_FILES... --out {self.path}`"
            + (" (or let `minigpt train` do it from its dataset.toml)" if os.path.lexists(self.path / RECIPE_FILE) else "")
        )
        st = _stat(self.path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            what = "data directory not found" if st is None else "not a directory"
            raise DataError(f"{what}: {self.path}; {how}")
        if not os.path.lexists(self.path / META_FILE):
            raise DataError(f"{self.path} is not a prepared dataset (no meta.json); {how}")
        try:
            meta = read_meta(self.path)
        except DataError as e:
            raise DataError(f"{e}; re-run prepare with --force to rebuild it") from None
        problem = _files_problem(self.path, meta)
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
