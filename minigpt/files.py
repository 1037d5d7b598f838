"""Files: the one place that writes them, reads structured ones, and words OS errors.

Every file minigpt writes goes through `atomic_write` (bytes or text) or
`atomic_output` (for writers that want a path, such as numpy or matplotlib), and every
directory through `atomic_directory`: the content is written under a temporary name in
the same directory, flushed to disk, then renamed over the target. A full disk, a kill
or an exception half-way therefore never leaves a truncated file, and never destroys a
good file that was there before: either the old one survives or the new one is whole.

Writers replace only what they wrote (`check_replaceable`): an existing target that is a
device, a FIFO, a socket, a symbolic link, or a directory that is not one of ours is refused
in one line, whatever the user's privileges (`--force` as root must never turn /dev/null
into a directory). Readers open only regular files (`open_regular`): a FIFO named as a
config.json is refused at once instead of blocking forever.

Every JSON number read goes through one rule (`parse_json`): integers within int64, floats
finite (a 400-digit integer or 1e999 is refused where the file is parsed, so nothing out of
range reaches the validators, let alone torch).

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
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import MiniGPTError

# A structured file minigpt reads (config.json, run.json, meta.json, a metrics line) is
# small; anything bigger is not one of ours, and reading it whole could exhaust memory.
MAX_JSON_BYTES = 64 << 20
# The one numeric rule for JSON we read: an integer fits in int64 (what torch and numpy
# hold), a float is finite. Larger integers and 1e999 are refused where the file is parsed.
MAX_JSON_INT = 2**63 - 1


class FileError(MiniGPTError, OSError):
    """An OS-level failure to read or write a file, worded for one line. It is still an
    OSError, so library callers that catch those keep working."""

    def __init__(self, message: str, errno_: int | None = None, *, kind: str | None = None):
        super().__init__(message, kind=kind)
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


def umask() -> int:
    """The process's umask (the only portable way to read it is to set it and put it back).
    Temporary files and directories are made private (0600/0700); what we publish gets the
    modes any other file would get (0666/0777 less the umask), so a model.safetensors is
    as readable as the config.json beside it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lstat(path: str | os.PathLike) -> os.stat_result | None:
    """os.lstat, None if nothing is there; any other failure (permission denied, a path
    component that is a file) is one line naming the path."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(e, path, "cannot access") from None


def topmost_missing(path: str | os.PathLike) -> Path | None:
    """The outermost directory that creating `path` would create (None if it exists):
    what to remove to leave no trace after a failed first run."""
    created = None
    for p in [Path(path), *Path(path).parents]:
        if os.path.lexists(p):
            break
        created = p
    return created


def create_directories(path: str | os.PathLike) -> list[Path]:
    """Create `path` and its missing parents; returns the ones this call created, outermost
    first (so a failure can remove exactly those, innermost first, and nothing else). A
    directory another process creates at the same instant is not claimed: two trainers
    started at once must not both believe they made --out (the one refused by the run
    lock would then delete the other's directory)."""
    top = topmost_missing(path)
    if top is None:
        return []
    chain = [Path(path)]
    while chain[-1] != top:
        chain.append(chain[-1].parent)
    made = []
    try:
        for d in reversed(chain):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
                continue  # another process made it meanwhile: it is not ours to remove
            made.append(d)
    except OSError:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return made


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_replaceable(path: str | os.PathLike, *, directory: bool) -> None:
    """Refuse to replace what minigpt did not write: the rule of every `--force`.

    Nothing there is fine. A file writer replaces only a regular file; a directory writer
    only a real directory (not a link to one) holding nothing but regular files, as every
    directory minigpt writes does (a checkpoint, an export): so never a home directory or
    a system one. A device, FIFO, socket or symbolic link is refused whatever the user's
    privileges (FileError with kind "not-ours", one line naming what is there)."""
    p = Path(path)
    st = lstat(p)
    if st is None:
        return

    def refuse(what: str) -> FileError:
        return FileError(
            f"{p} is {what}, which minigpt did not write; it replaces only its own outputs "
            f"(remove it or choose another path)",
            kind="not-ours",
        )

    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(p)
        raise refuse(f"a symbolic link (to {target})")
    if not directory:
        if not stat.S_ISREG(st.st_mode):
            raise refuse(_kind_of(st.st_mode))
        return
    if not stat.S_ISDIR(st.st_mode):
        raise refuse(_kind_of(st.st_mode))
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError as e:
        raise os_error(e, p, "cannot read directory") from None
    for e in entries:
        if not e.is_file(follow_symlinks=False):
            raise refuse(f"a directory holding {e.name!r} ({_kind_of(e.stat(follow_symlinks=False).st_mode)})")


def open_regular(path: str | os.PathLike, what: str = "file") -> int:
    """A read-only descriptor of `path`, which must be a regular file (a symbolic link to
    one is fine). Opened with O_NONBLOCK and checked with fstat, so a FIFO (which would
    block an ordinary open until a writer comes) or a device is refused at once."""
    p = Path(path)
    st = None
    with contextlib.suppress(OSError):
        st = os.stat(p)
    if st is not None and not stat.S_ISREG(st.st_mode):  # before open: a device's open can have effects
        raise FileError(
            f"{p}: is {_kind_of(st.st_mode)}, not a regular file"
            if not stat.S_ISDIR(st.st_mode)
            else f"{p}: is a directory, not a {what}"
        )
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileError(f"{p}: not found") from None
    except IsADirectoryError:
        raise FileError(f"{p}: is a directory, not a {what}") from None
    except OSError as e:
        raise os_error(e, p, "cannot read") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # swapped in between the stat and the open
        os.close(fd)
        raise FileError(f"{p}: is {_kind_of(mode)}, not a regular file")
    return fd


def require_regular(path: str | os.PathLike, what: str = "file") -> Path:
    """`path`, after checking that it names a regular file (for readers that open it
    themselves: safetensors, torch.load)."""
    os.close(open_regular(path, what))
    return Path(path)


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


def fsync_files(directory: Path, names: Sequence[str] | None = None) -> None:
    """Flush the regular files in `directory` (those named, or all) and the directory
    itself: what is renamed into place next must be on disk first."""
    for f in (directory / n for n in names) if names is not None else directory.iterdir():
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def publish_directory(tmp: Path, path: Path, *, replace: bool = True) -> None:
    """Rename the finished directory `tmp` to `path` (same parent). An existing `path`
    (checked by `check_replaceable`) is moved aside first and deleted after, so there is
    no instant without a complete one. OSErrors propagate (the caller words them)."""
    mask = umask()
    for f in tmp.iterdir():  # some writers (safetensors) make their files 0600: outputs are alike
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)
    fsync_files(tmp)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp made it private; outputs are not
    if os.path.lexists(path):
        if not replace:
            raise FileError(f"cannot write {path}: it already exists", kind="exists")
        check_replaceable(path, directory=True)
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)  # fails (ENOTEMPTY/EEXIST) if another process made `path` meanwhile
    fsync_dir(path.parent)


def publish_files(staged: Path, out: Path, names: Sequence[str], *, last: str) -> None:
    """Move the files `names` from the finished directory `staged` into the existing
    directory `out`, which may hold other files (a data directory keeps its sources): the
    atomic writer of prepared datasets.

    `last` (the file that says "complete", e.g. meta.json) leaves first and arrives last,
    so `out` is never a mix that looks complete. Each replaced file (checked by
    `check_replaceable`) waits in `staged/old` until all new ones are in; on any failure
    the new files are removed and the old ones put back, and the error propagates."""
    for name in names:
        check_replaceable(out / name, directory=False)
    fsync_files(staged, names)
    mode = 0o666 & ~umask()
    for name in names:
        os.chmod(staged / name, mode)
    old = staged / "old"
    old.mkdir()
    others = [n for n in names if n != last]
    moved: list[str] = []  # names whose previous version is in `old`
    installed: list[str] = []
    try:
        for name in (last, *others):
            if os.path.lexists(out / name):
                os.replace(out / name, old / name)
                moved.append(name)
            if name != last:
                os.replace(staged / name, out / name)
                installed.append(name)
        os.replace(staged / last, out / last)
    except BaseException:
        for name in installed:
            with contextlib.suppress(OSError):
                os.unlink(out / name)
        for name in (*others, last):
            if name in moved:
                with contextlib.suppress(OSError):
                    os.replace(old / name, out / name)
        raise
    fsync_dir(out)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error, the
    file written there is flushed and renamed to `path`. On any error (or a kill) the
    temporary file is removed and an existing `path` is left untouched.

    `suffix` keeps an extension on the temporary name, for writers that choose a format
    by it (matplotlib's savefig)."""
    path = Path(path)
    _check_name(path)
    check_replaceable(path, directory=False)
    parent = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    except OSError as e:
        raise os_error(e, path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; an output is not
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            raise FileError(f"cannot write {path}: it is a directory")
        check_replaceable(path, directory=False)  # again: something may have appeared meanwhile
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
    file in it is flushed and the directory renamed to `path` (`publish_directory`: an
    existing `path` is replaced only if it is a directory of ours, and there is no instant
    without a complete one). On failure the temporary directory is removed and `path` is
    as it was."""
    path = Path(path)
    _check_name(path)
    if replace:
        check_replaceable(path, directory=True)  # before any work, and again when publishing
    elif os.path.lexists(path):
        raise FileError(f"cannot write {path}: it already exists", kind="exists")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    except OSError as e:
        raise os_error(e, path) from None
    try:
        yield tmp
        publish_directory(tmp, path, replace=replace)
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
        with os.fdopen(open_regular(path), "rb") as f:
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
    check_replaceable(path, directory=False)  # a FIFO would block the append; a link would write elsewhere
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError as e:
        raise os_error(e, path) from None


def read_bytes(path: str | os.PathLike, *, limit: int | None = None, what: str = "file") -> bytes:
    """A file's bytes, or one line saying why not (missing vs. unreadable vs. too big vs.
    not a regular file: a FIFO or device is refused, never waited on)."""
    p = Path(path)
    fd = open_regular(p, what)
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if limit is not None and size > limit:
                raise FileError(f"{p}: {size:,} bytes is too large for a {what} (at most {limit:,})")
            return f.read()
    except FileError:
        raise
    except OSError as e:
        raise os_error(e, p, "cannot read") from None


class _OutOfRange(ValueError):
    pass


def _json_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"
        raise _OutOfRange(f"the integer {shown} is out of range (at most 2^63 - 1 in magnitude)")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
        raise _OutOfRange(f"the number {shown} is out of range for a 64-bit float")
    return value


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """json.loads under the one numeric rule (integers within int64, floats finite, no
    NaN/Infinity literals). Raises ValueError (or RecursionError for deep nesting)."""
    return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_no_constants)


def parse_json(text: str | bytes, where: str, error: type[MiniGPTError] = MiniGPTError) -> Any:
    """JSON text -> value, or `error` naming `where`. Deep nesting (which makes Python's
    parser recurse until it fails), NaN/Infinity literals and numbers out of range (`loads`)
    are refused."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return loads(text)
    except _OutOfRange as e:
        raise error(f"{where}: {e}") from None
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
    an object, one nested too deeply or one holding a number out of range (`loads`) is
    skipped (a log is read for what it can give)."""
    p = Path(path)
    try:
        text = read_bytes(p, what="log file").decode("utf-8", errors="replace")
    except FileError:
        raise
    out = []
    for line in text.splitlines():
        try:
            obj = loads(line)
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
    if not p.exists() and not p.is_symlink():
        raise MiniGPTError(f"{what}: file not found: {p}")
    raw = read_bytes(p, limit=MAX_JSON_BYTES, what=f"{what} file")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MiniGPTError(f"{what}: {p}: not UTF-8 (invalid byte at offset {e.start})") from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise MiniGPTError(f"{what}: {p}: {e}") from None


def try_lock(path: str | os.PathLike):
    """Take the exclusive lock on file `path` (created if missing) without waiting: the
    held lock (release it with `.release()`), or None if another process holds it.

    An OS lock (flock on POSIX, LockFileEx on Windows, through `filelock`): the kernel
    drops it when its process dies, even by kill -9, so a stale lock never blocks a
    later run."""
    import filelock  # lazily: only the writers that hold a lock need it

    lock = filelock.FileLock(os.fspath(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return None
    except OSError as e:
        raise os_error(e, path) from None
    return lock


def is_locked(path: str | os.PathLike) -> bool:
    """Whether another process holds the lock on `path` (`try_lock`); a lock file we
    cannot open counts as held (when in doubt, leave it alone)."""
    try:
        lock = try_lock(path)
    except MiniGPTError:
        return True
    if lock is None:
        return True
    lock.release()
    return False


def path_arg(raw: Any, what: str, error: type[MiniGPTError] = MiniGPTError) -> Path:
    """A path argument as a Path, refusing what would silently mean something else: an
    empty string (Path("") is the current directory) or a NUL byte (which os calls reject
    with a ValueError). Bytes are decoded like the command line's arguments are, so a
    name that is not UTF-8 works end to end."""
    try:
        s = os.fspath(raw)
    except TypeError:
        raise error(f"{what} must be a path, got {type(raw).__name__}") from None
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if s == "":
        raise error(f"{what} is an empty path (name a file or directory; use . for the current directory)")
    if "\x00" in s:
        raise error(f"{what} {s!r} contains a NUL character")
    return Path(s)


def stat_or_none(path: str | os.PathLike, follow: bool = True) -> os.stat_result | None:
    """os.stat, None if the path does not exist; any other failure (permission denied, a
    path component that is a file, a symlink loop) is one line naming the path."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(e, path, "cannot access") from None
