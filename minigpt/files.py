"""Files: the one place that writes them, reads structured ones, and words OS errors.

Every file minigpt writes goes through `atomic_write` (bytes or text) or
`atomic_output` (for writers that want a path, such as numpy or matplotlib), and every
directory through `atomic_directory`: the content is written under a temporary name in
the same directory, flushed to disk, then renamed over the target. A full disk, a kill
or an exception half-way therefore never leaves a truncated file, and never destroys a
good file that was there before: either the old one survives or the new one is whole.

OS errors (a full disk, a read-only file system, a missing or unreadable directory, an
output path under a regular file) become one `MiniGPTError` line naming the path and the
reason (`os_error`), so the command line reports them without a traceback.

No torch here: this module sits at the bottom, next to `errors.py`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MiniGPTError

# A structured file minigpt reads (config.json, run.json, meta.json, a metrics line) is
# small; anything bigger is not one of ours, and reading it whole could exhaust memory.
MAX_JSON_BYTES = 64 << 20


class FileError(MiniGPTError, OSError):
    """An OS-level failure to read or write a file, worded for one line. It is still an
    OSError, so library callers that catch those keep working."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_

    @property
    def environmental(self) -> bool:
        """A full disk or quota: the environment failed, not the user's input (exit 1)."""
        return self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def os_error(e: OSError, path: str | os.PathLike | None = None, action: str = "cannot write") -> FileError:
    """One line for an OSError: "cannot write out/x: No space left on device".

    `path` defaults to the file the error names. Permission problems say so (Python's
    message for EACCES is already "Permission denied"; we only make sure a missing
    *directory* is not reported as a missing file)."""
    where = path if path is not None else (e.filename or "")
    reason = e.strerror or str(e) or type(e).__name__
    # mkdir(parents=True) under a regular file fails with EEXIST, and opening a file there
    # with ENOTDIR: either way the user's mistake is a file where a directory should be.
    under_file = next((str(p) for p in Path(os.fsdecode(where)).parents if p.is_file()), None) if where else None
    if under_file is not None and e.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = f"{under_file} is a file, not a directory"
    elif isinstance(e, NotADirectoryError) or e.errno == errno.ENOTDIR:
        reason = "a path component is a file, not a directory"
    elif e.errno == errno.EROFS:
        reason = "read-only file system"
    return FileError(f"{action} {os.fsdecode(where)}: {reason}", e.errno)


def _umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is)."""
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


def _check_name(path: Path) -> None:
    if str(path) in ("", "."):
        raise MiniGPTError("an output path is empty")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error, the
    file written there is flushed and renamed to `path`. On any error (or a kill) the
    temporary file is removed and an existing `path` is left untouched.

    `suffix` keeps an extension on the temporary name, for writers that choose a format
    by it (matplotlib's savefig)."""
    path = Path(path)
    _check_name(path)
    parent = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    except OSError as e:
        raise os_error(e, path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; an output is not
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            raise FileError(f"cannot write {path}: it is a directory")
        os.replace(tmp, path)
        fsync_dir(parent)
    except FileError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise os_error(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically (see `atomic_output`)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Pretty JSON, atomically. NaN/inf are refused (they are not JSON)."""
    return atomic_write(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; once the block succeeds, every
    file in it is flushed and the directory renamed to `path` (an existing `path` is moved
    aside first and deleted after, so there is no instant without a complete one).
    On failure the temporary directory is removed and `path` is as it was."""
    path = Path(path)
    _check_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    except OSError as e:
        raise os_error(e, path) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs are not
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileError(f"cannot write {path}: it already exists")
            old = path.parent / f".old-{path.name}-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    except FileError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(e, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_png_name(path: str | os.PathLike) -> Path:
    """The rule for --png: the name ends in .png (checked before any work, and on save)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise MiniGPTError(f"--png {p}: the file name must end in .png")
    return p


def save_png(fig, path: str | os.PathLike, **kw) -> Path:
    """Save a matplotlib figure as PNG, atomically. The format is PNG whatever the name
    says, so a name with another suffix (`c.xyz`, `c.jpg`) is refused in one line rather
    than left to matplotlib's format guessing (which fails with a ValueError)."""
    p = check_png_name(path)
    with atomic_output(p, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", **kw)
    return p


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (what `sha256sum` prints), read in blocks; an OS
    error is one line naming the file."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(block), b""):
                h.update(chunk)
    except OSError as e:
        raise os_error(e, path, "cannot read") from None
    return h.hexdigest()


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None: they are not JSON, and a
    reader in another language would refuse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file (metrics.jsonl). A line cut short by a kill is
    skipped by the readers, so appending needs no temporary file."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError as e:
        raise os_error(e, path) from None


def read_bytes(path: str | os.PathLike, *, limit: int | None = None, what: str = "file") -> bytes:
    """A file's bytes, or one line saying why not (missing vs. unreadable vs. too big)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if limit is not None and size > limit:
            raise FileError(f"{p}: {size:,} bytes is too large for a {what} (at most {limit:,})")
        return p.read_bytes()
    except FileError:
        raise
    except IsADirectoryError:
        raise FileError(f"{p}: is a directory, not a {what}") from None
    except FileNotFoundError:
        raise FileError(f"{p}: not found") from None
    except OSError as e:
        raise os_error(e, p, "cannot read") from None


def parse_json(text: str | bytes, where: str, error: type[MiniGPTError] = MiniGPTError) -> Any:
    """JSON text -> value, or `error` naming `where`. Deep nesting (which makes Python's
    parser recurse until it fails) and NaN/Infinity literals are refused."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a minigpt file") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 (invalid byte at offset {e.start})") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({e})") from None


def read_json(path: str | os.PathLike, what: str, error: type[MiniGPTError] = MiniGPTError) -> Any:
    """A JSON file, or `error` naming it: missing (saying what it should hold), unreadable,
    too large, not UTF-8, not JSON, or nested too deeply."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise error(f"{p}: missing ({what})")
    try:
        raw = read_bytes(p, limit=MAX_JSON_BYTES, what=what)
    except FileError as e:
        raise error(str(e)) from None
    return parse_json(raw, str(p), error)


def read_json_object(path: str | os.PathLike, what: str, error: type[MiniGPTError] = MiniGPTError) -> dict[str, Any]:
    """`read_json`, refusing anything but a JSON object."""
    obj = read_json(path, what, error)
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object ({what}), got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON-object lines of a log file. A line cut short by a kill, a line that is not
    an object, or one nested too deeply is skipped (a log is read for what it can give)."""
    p = Path(path)
    try:
        text = read_bytes(p, what="log file").decode("utf-8", errors="replace")
    except FileError:
        raise
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def load_toml(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict, or a MiniGPTError naming it."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport (a declared dependency there)
        import tomli as tomllib
    p = Path(path)
    if not p.exists():
        raise MiniGPTError(f"{what}: file not found: {p}")
    raw = read_bytes(p, limit=MAX_JSON_BYTES, what=f"{what} file")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MiniGPTError(f"{what}: {p}: not UTF-8 (invalid byte at offset {e.start})") from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise MiniGPTError(f"{what}: {p}: {e}") from None
