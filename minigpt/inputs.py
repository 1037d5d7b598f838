"""The text a dataset is prepared from: which files the INPUT arguments name, and their
text, read in chunks and checked as UTF-8.

Each input is a file (plain or .gz), a directory (every non-hidden text file under it,
recursively, sorted; files that look binary are skipped) or a glob. Text is read in
blocks of READ_BLOCK bytes, so memory does not grow with the corpus; invalid UTF-8 is an
error naming the file and byte offset (or, asked for, replaced with U+FFFD).
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import files
from .errors import DataError

READ_BLOCK = 1 << 20  # bytes read at a time

# With surrogateescape decoding, each byte that is not valid UTF-8 becomes one of these.
_BAD_BYTE = re.compile("[\udc80-\udcff]")


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
        st = files.stat_or_none(p)
        return st is not None and stat.S_ISREG(st.st_mode)

    files_: list[Path] = []
    for raw in inputs:
        p = files.path_arg(raw, "an input", DataError)
        st = files.stat_or_none(p)
        if st is not None and stat.S_ISREG(st.st_mode):
            files_.append(p)
        elif st is not None and stat.S_ISDIR(st.st_mode):
            found = sorted(q for q in _walk(p) if is_file(q) and not excluded(q) and not _looks_binary(q))
            if not found:
                raise DataError(f"no text files under directory: {p}")
            files_.extend(found)
        elif glob.has_magic(str(p)):
            found = sorted(
                Path(q) for q in glob.glob(str(p), recursive=True) if is_file(Path(q)) and not excluded(Path(q))
            )
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


def _invalid_utf8(path: Path, at: int) -> DataError:
    return DataError(
        f"{path}: invalid UTF-8 at byte {at} (re-run with --replace-invalid to replace undecodable bytes with U+FFFD)"
    )


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A read error as one line naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise files.os_error(e, path, "cannot read") from None


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
    with _reading(path), _open_binary(path) as f:
        while True:
            block = f.read(READ_BLOCK)
            text = decoder.decode(block, final=not block)
            if text:
                m = _BAD_BYTE.search(text)
                if m:
                    bad_at = offset + len(text[: m.start()].encode("utf-8", "surrogateescape"))
                    if not replace_invalid:
                        raise _invalid_utf8(path, bad_at)
                    first_bad = bad_at if first_bad is None else first_bad
                    offset += len(text.encode("utf-8", "surrogateescape"))
                    text, n = _BAD_BYTE.subn("\ufffd", text)
                    replaced += n
                else:
                    offset += len(text.encode("utf-8"))
                yield text
            if not block:
                break
    if replaced and warn:
        print(
            f"warning: {path}: replaced {replaced} undecodable byte(s) with U+FFFD (first at byte {first_bad})",
            file=sys.stderr,
        )


def read_text_spans(path: Path, spans: Sequence[tuple[int, int]], replace_invalid: bool = False) -> Iterator[str]:
    """The text of each byte range [start, end) of a file (in increasing order), moved to
    whole characters: a character that begins before `start` is left to the range before
    it, one that ends after `end` is kept whole, so adjacent ranges read every character
    once. The file is opened once and each range reached by seeking (a .gz file
    decompresses its way forward). Invalid UTF-8: as read_text_chunks."""

    def continuation(data: bytes, i: int) -> bool:
        return i < len(data) and data[i] & 0xC0 == 0x80

    with _reading(path), _open_binary(path) as f:
        for start, end in spans:
            f.seek(start)
            data = f.read(end - start + 3)  # room to finish the last character
            head, tail = 0, end - start
            while head < 3 and continuation(data, head):
                head += 1
            while tail < len(data) and tail - (end - start) < 3 and continuation(data, tail):
                tail += 1
            text = data[head:tail].decode("utf-8", errors="surrogateescape") if tail > head else ""
            m = _BAD_BYTE.search(text)
            if m and not replace_invalid:
                raise _invalid_utf8(path, start + head + len(text[: m.start()].encode("utf-8", "surrogateescape")))
            yield _BAD_BYTE.sub("\ufffd", text) if m else text


def text_size(path: Path) -> int:
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


def sha256(path: Path) -> str:
    return files.sha256_file(path, READ_BLOCK)
