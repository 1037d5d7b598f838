"""`minigpt prepare` and the prepared-dataset readers under bad input: every failure is one
line (exit 2, or 1 for a full disk), nothing that existed is lost, nothing is left behind,
and no input makes the work blow up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt import corpus as data_mod
from minigpt import files
from minigpt.data import Dataset, prepare, prepare_from_recipe, read_meta
from minigpt.errors import DataError, MiniGPTError
from minigpt.tokenizer import MAX_VOCAB_SIZE

from .conftest import REPO, assert_one_line_error, make_corpus, run_cli

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under d (hidden ones included) and its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".prepare-")] if d.is_dir() else []


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("small") / "small.txt"
    p.write_text(make_corpus(200), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A corpus that takes a few seconds to prepare (time to send a signal mid-way)."""
    p = tmp_path_factory.mktemp("big") / "big.txt"
    p.write_text(make_corpus(60_000, seed=1), encoding="utf-8")
    return p


@pytest.fixture
def prepared(tmp_path, small) -> Path:
    out = tmp_path / "ds"
    prepare([small], out, vocab_size=280, progress=False)
    return out


# ---- numbers and paths: refused up front, naming the flag --------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--vocab-size", "1000000000"], ["--vocab-size", f"at most {MAX_VOCAB_SIZE:,}", "1000000000"]),
        (["--vocab-size", str(MAX_VOCAB_SIZE + 1)], ["--vocab-size"]),
        (["--vocab-size", "-5"], ["--vocab-size", "at least 257"]),
        (["--val-fraction", "0"], ["--val-fraction"]),
        (["--val-fraction", "1"], ["--val-fraction"]),
        (["--val-fraction", "nan"], ["--val-fraction", "nan"]),
        (["--val-fraction", "-inf"], ["--val-fraction"]),
        (["--tokenizer", ""], ["--tokenizer is an empty path"]),
    ],
)
def test_numbers_out_of_range_name_the_flag(tmp_path, small, args, needles):
    out = tmp_path / "out"
    proc = run_cli("prepare", str(small), "--out", str(out), "--quiet", *args)
    assert_one_line_error(proc, *needles)
    assert not out.exists()


def test_empty_paths_are_refused_not_the_current_directory(tmp_path, small):
    (tmp_path / "stray.txt").write_text("would be picked up as an input\n" * 50)
    proc = run_cli("prepare", str(small), "--out", "", "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "--out is an empty path")
    proc = run_cli("prepare", "", "--out", "o", "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "input is an empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stray.txt"]
    with pytest.raises(DataError, match="empty path"):
        Dataset("")
    with pytest.raises(DataError, match="NUL"):
        prepare([str(small)], tmp_path / "a\x00b", progress=False)


def test_out_under_a_file_or_in_proc(tmp_path, small):
    f = tmp_path / "file.txt"
    f.write_text("x")
    proc = run_cli("prepare", str(small), "--out", str(f / "x"), "--quiet")
    assert_one_line_error(proc, str(f), "not a directory")
    proc = run_cli("prepare", str(small), "--out", str(f), "--quiet")
    assert_one_line_error(proc, "not a directory")
    if Path("/proc/self").exists():
        proc = run_cli("prepare", str(small), "--out", "/proc/minigpt-test/x", "--quiet")
        assert_one_line_error(proc, "/proc/minigpt-test/x")
    assert f.read_text() == "x"


# ---- the file system fails: a full disk, a read-only one ----------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 160 KB tmpfs (root only; skipped where mounting is not allowed). Always unmounted."""
    d = tmp_path / "fs"
    d.mkdir()
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_disk_is_one_line_and_loses_nothing(tmpfs, tmp_path, small):
    big = tmp_path / "more.txt"
    big.write_text(make_corpus(6000, seed=3), encoding="utf-8")
    # a first prepare that does not fit: no --out, no parent it made, no staging directory
    proc = run_cli("prepare", str(big), "--out", str(tmpfs / "new" / "d"), "--vocab-size", "280", "--quiet")
    assert proc.returncode == 1, proc.stderr  # the environment failed: exit code 1, still one line
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "No space left on device" in proc.stderr and str(tmpfs / "new" / "d") in proc.stderr
    assert list(tmpfs.iterdir()) == []
    # a good dataset that fits, then a --force replacement that does not: the old one stays
    out = tmpfs / "d"
    prepare([small], out, vocab_size=280, progress=False)
    before = snapshot(out)
    proc = run_cli("prepare", str(big), "--out", str(out), "--vocab-size", "280", "--force", "--quiet")
    assert proc.returncode == 1 and "No space left on device" in proc.stderr, proc.stderr
    assert snapshot(out) == before
    assert Dataset(out).tokens("train").size > 0


def test_read_only_file_system(tmpfs, small):
    prepare([small], tmpfs / "d", vocab_size=280, progress=False)
    before = snapshot(tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    proc = run_cli("prepare", str(small), "--out", str(tmpfs / "x"), "--quiet")
    assert_one_line_error(proc, str(tmpfs / "x"), "read-only file system")
    proc = run_cli("prepare", str(small), "--out", str(tmpfs / "d"), "--vocab-size", "300", "--force", "--quiet")
    assert_one_line_error(proc, "read-only file system")
    assert snapshot(tmpfs) == before
    # the same dataset again is still a no-op on a read-only disk (nothing to write)
    assert run_cli("prepare", str(small), "--out", str(tmpfs / "d"), "--vocab-size", "280", "--quiet").returncode == 0


# ---- permissions (as an unprivileged user: root ignores them) -----------------------------------


def _run_cli_forked(uid: int | None, *args: str) -> subprocess.CompletedProcess:
    """`minigpt ARGS` in a forked child that first drops to `uid` (only the child changes
    identity, and it always ends in os._exit, never returning into pytest). A fork, not a
    new interpreter: the unprivileged user may not be able to read the Python install."""
    import io
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 99
        try:
            os.close(r)
            sys.stderr = io.TextIOWrapper(os.fdopen(w, "wb"), encoding="utf-8", errors="backslashreplace")
            sys.stdout = io.StringIO()
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            from minigpt.cli import main

            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), "", err)


@pytest.fixture
def unprivileged():
    """(run, workdir, own): run(*args) runs the CLI as an unprivileged user (as root: a
    forked child switched to `nobody`), in a directory that user owns."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    import minigpt.cli  # noqa: F401  (loaded before the fork: the child may not read the install)

    work = Path(tempfile.mkdtemp(prefix="minigpt-perm-"))
    uid = 65534 if ROOT else None
    try:
        os.chmod(work, 0o755)

        def own(p: Path) -> Path:
            if uid is not None:
                os.chown(p, uid, uid)
            return p

        own(work)
        yield (lambda *args: _run_cli_forked(uid, *args)), work, own
    finally:
        for p in [work, *work.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(work, ignore_errors=True)


def test_unreadable_input_says_permission_denied(unprivileged):
    run, work, own = unprivileged
    text = make_corpus(100)
    f = work / "secret.txt"
    f.write_text(text)
    own(f)
    os.chmod(f, 0)
    proc = run("prepare", str(f), "--out", str(work / "o1"), "--quiet")
    assert_one_line_error(proc, str(f), "Permission denied")
    # a file inside a directory that cannot be searched is unreadable, not missing
    locked = work / "locked"
    locked.mkdir()
    (locked / "a.txt").write_text(text)
    own(locked)
    os.chmod(locked, 0)
    proc = run("prepare", str(locked / "a.txt"), "--out", str(work / "o2"), "--quiet")
    assert_one_line_error(proc, "Permission denied")
    assert "No such file" not in proc.stderr
    # a directory input with an unreadable subdirectory: an error, not a silently smaller corpus
    tree = work / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text(text)
    sub = tree / "sub"
    sub.mkdir()
    own(sub)
    os.chmod(sub, 0)
    proc = run("prepare", str(tree), "--out", str(work / "o3"), "--quiet")
    assert_one_line_error(proc, str(sub), "Permission denied")
    assert leftovers(work) == [] and not any((work / n).exists() for n in ("o1", "o2", "o3"))


def test_unwritable_output_directory(unprivileged):
    run, work, own = unprivileged
    f = work / "in.txt"
    f.write_text(make_corpus(100))
    out = work / "out"
    out.mkdir()
    own(out)
    os.chmod(out, 0o555)
    proc = run("prepare", str(f), "--out", str(out), "--vocab-size", "280", "--quiet")
    assert_one_line_error(proc, str(out), "Permission denied")
    proc = run("prepare", str(f), "--out", str(out / "deeper" / "d"), "--vocab-size", "280", "--quiet")
    assert_one_line_error(proc, "Permission denied")
    assert list(out.iterdir()) == []


# ---- file names that are not UTF-8 --------------------------------------------------------------


def test_names_that_are_not_utf8_work_end_to_end(tmp_path, small):
    src = tmp_path / "src"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.txt")  # Latin-1 bytes: not UTF-8
    try:
        (src / name).write_text(small.read_text(encoding="utf-8"), encoding="utf-8")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / os.fsdecode(b"out-\xff")
    meta = prepare([src], out, vocab_size=280, progress=False)
    assert meta["sources"][0]["path"] == str(src / name)
    ds = Dataset(out)
    assert ds.meta["sources"][0]["path"] == str(src / name)  # read back exactly (a \udcXX escape in JSON)
    assert ds.tokenizer.decode(ds.tokens("train")) + ds.tokenizer.decode(ds.tokens("val")) == small.read_text(
        encoding="utf-8"
    )
    # the same by the command line, the names given as raw bytes: refused in one line, or it works
    out2 = os.fsencode(str(tmp_path)) + b"/o\xff"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minigpt.cli",
            "prepare",
            os.fsencode(str(src / name)),
            "--out",
            out2,
            "--vocab-size",
            "280",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    if proc.returncode == 0:
        Dataset(os.fsdecode(out2))
    else:
        err = proc.stderr.decode("utf-8", "replace").strip()
        assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err


# ---- leftovers: signals, kill -9, failures --------------------------------------------------------


def _start_and_wait_for_staging(big: Path, out: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minigpt.cli",
            "prepare",
            str(big),
            "--out",
            str(out),
            "--vocab-size",
            "300",
            "--quiet",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    where = out if out.exists() else out.parent
    deadline = time.monotonic() + 60
    while not leftovers(where) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare finished before it could be signalled"
    time.sleep(0.3)  # into the passes
    return proc


def test_sigterm_cleans_up_like_ctrl_c(prepared, big):
    before = snapshot(prepared)
    proc = _start_and_wait_for_staging(big, prepared, "--force")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(prepared) == before and leftovers(prepared) == []
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)


def test_sigterm_during_a_first_prepare_leaves_no_out(tmp_path, big):
    out = tmp_path / "a" / "b"
    proc = _start_and_wait_for_staging(big, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert not (tmp_path / "a").exists()


def test_terminated_unwinds_in_process(prepared, small, monkeypatch):
    """The library side: SIGTERM in the middle raises Terminated (a KeyboardInterrupt), the
    dataset is as it was, and the default SIGTERM action is back afterwards."""
    before = snapshot(prepared)
    real = data_mod._encode_splits

    def encode_then_sigterm(*a, **k):
        counts = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; never reached
        return counts

    monkeypatch.setattr(data_mod, "_encode_splits", encode_then_sigterm)
    with pytest.raises(data_mod.Terminated) as e:
        prepare([small], prepared, vocab_size=300, force=True, progress=False)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signal.SIGTERM
    assert snapshot(prepared) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_kill_9_leftover_is_removed_by_the_next_prepare(prepared, small, big):
    before = snapshot(prepared)
    proc = _start_and_wait_for_staging(big, prepared, "--force")
    proc.kill()
    proc.wait(timeout=60)
    assert leftovers(prepared), "kill -9 leaves the staging directory (nothing can remove it then)"
    # the next prepare, even one with nothing to do, removes it
    prepare([small], prepared, vocab_size=280, progress=False)
    assert leftovers(prepared) == []
    assert snapshot(prepared) == before


def test_only_dead_owners_staging_is_removed(prepared, small):
    def staging(name: str, files=("train.bin",)) -> Path:
        d = prepared / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
        return d

    dead = staging(".prepare-99999999-abcdefgh")  # no such pid
    legacy = staging(".prepare-k2j4h5g6")  # the old unversioned name
    alive = staging(f".prepare-{os.getpid()}-abcdefgh")  # this process is alive
    locked = staging(".prepare-99999998-abcdefgh")  # dead pid, but locked: a live owner elsewhere
    notes = staging(".prepare-notes", ("notes.txt",))  # not ours by name
    foreign = staging(".prepare-99999997-abcdefgh", ("my-notes.txt",))  # not ours by content
    held = files.try_lock(locked / ".lock")  # the OS lock a live owner holds on its staging directory
    try:
        prepare([small], prepared, vocab_size=280, progress=False)  # a no-op run
    finally:
        held.release()
    assert not dead.exists() and not legacy.exists()
    assert alive.exists() and locked.exists() and notes.exists() and foreign.exists()


def test_a_failed_prepare_loses_nothing(prepared, tmp_path):
    before = snapshot(prepared)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab")
    with pytest.raises(DataError, match="too small"):
        prepare([tiny], prepared, vocab_size=280, force=True, progress=False)
    assert snapshot(prepared) == before
    # a first prepare that fails leaves neither --out nor the parents it created
    with pytest.raises(DataError, match="too small"):
        prepare([tiny], tmp_path / "x" / "y" / "z", vocab_size=280, progress=False)
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_a_failure_while_moving_files_in_puts_the_old_dataset_back(prepared, small, monkeypatch):
    before = snapshot(prepared)
    real = os.replace
    failed = []

    def failing(src, dst, *a, **k):  # the new tokenizer.json cannot be moved in (once)
        if Path(dst) == prepared / "tokenizer.json" and not failed:
            failed.append(src)
            raise OSError(5, "Input/output error")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(MiniGPTError, match="Input/output error"):
        prepare([small], prepared, vocab_size=300, force=True, progress=False)
    monkeypatch.undo()
    assert failed and ".prepare-" in str(failed[0])  # it failed half-way through the moves
    assert snapshot(prepared) == before and leftovers(prepared) == []
    Dataset(prepared)


# ---- unbounded work ---------------------------------------------------------------------------------


def test_a_megabyte_line_without_whitespace_prepares_in_seconds(tmp_path):
    """It had not finished after 200 s: BPE training on one enormous "word" is quadratic.
    (The timeout is the assertion.)"""
    import random
    import string

    rng = random.Random(0)
    letters = "".join(rng.choices(string.ascii_letters, k=1 << 20))
    (tmp_path / "line.txt").write_text(letters)
    (tmp_path / "blank.txt").write_text("\n" * 300_000 + "x")  # and whitespace only
    out = tmp_path / "d"
    proc = run_cli(
        "prepare",
        str(tmp_path / "line.txt"),
        str(tmp_path / "blank.txt"),
        "--out",
        str(out),
        "--vocab-size",
        "512",
        "--quiet",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ds = Dataset(out)
    whole = ds.tokenizer.decode(np.concatenate([ds.tokens("train"), ds.tokens("val")]))
    assert whole == letters + "<|endoftext|>" + "\n" * 300_000 + "x"


# ---- meta.json: one reader, one line for anything malformed ------------------------------------------


def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


def _write_meta(d: Path, meta) -> None:
    (d / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda m: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (lambda m: "[1, 2]", "expected a JSON object"),
        (lambda m: '{"format": NaN}', "not valid JSON"),
        (lambda m: "{" + '"a": 1, ' * 10 + "", "not valid JSON"),
        (lambda m: {**m, "vocab_size": "x"}, "vocab_size"),
        (lambda m: {**m, "vocab_size": -3}, "vocab_size"),
        (lambda m: {**m, "vocab_size": 10**12}, "vocab_size"),
        (lambda m: {**m, "vocab_size": True}, "vocab_size"),
        (lambda m: {k: v for k, v in m.items() if k != "splits"}, "splits"),
        (lambda m: {k: v for k, v in m.items() if k != "dtype"}, "dtype"),
        (lambda m: {**m, "dtype": "float32"}, "dtype"),
        (lambda m: {**m, "dtype": "uint16", "vocab_size": 70_000}, "cannot hold"),
        (lambda m: {**m, "version": 99}, "newer minigpt"),
        (lambda m: {**m, "format": "nanogpt"}, "not a minigpt dataset"),
        (lambda m: {**m, "eot_id": 10**6}, "eot_id"),
        (lambda m: {**m, "splits": {**m["splits"], "val": {**m["splits"]["val"], "tokens": -1}}}, "splits.val.tokens"),
        (lambda m: {**m, "splits": {**m["splits"], "val": {**m["splits"]["val"], "tokens": 1.5}}}, "splits.val.tokens"),
        (lambda m: {**m, "splits": {**m["splits"], "train": {**m["splits"]["train"], "file": "../../x"}}}, "train.bin"),
        (lambda m: {**m, "splits": {**m["splits"], "train": []}}, "splits.train"),
        (lambda m: {**m, "sources": {"a": 1}}, "sources"),
        (lambda m: {**m, "tokenizer": [1]}, "tokenizer"),
    ],
)
def test_malformed_meta_json_is_one_line(prepared, small, mutate, needle):
    _write_meta(prepared, mutate(_meta(prepared)))
    with pytest.raises(DataError) as e:
        Dataset(prepared)
    msg = str(e.value)
    assert str(prepared / "meta.json") in msg and needle in msg and "\n" not in msg, msg
    # prepare over it: refused without --force (saying why), replaced with it
    with pytest.raises(DataError, match="damaged or unreadable"):
        prepare([small], prepared, vocab_size=280, progress=False)


def test_damaged_dataset_is_replaced_with_force(prepared, small):
    _write_meta(prepared, "[" * 100_000)
    meta = prepare([small], prepared, vocab_size=280, force=True, progress=False)
    ds = Dataset(prepared)  # a whole dataset again: meta.json and the token files agree
    assert ds.meta == meta and len(ds.tokens("train")) == meta["splits"]["train"]["tokens"] > 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_meta_json_is_a_dataset_or_one_data_error(dataset_dir, tmp_path_factory, data):
    """Replace or delete any one field (at any depth): Dataset and every accessor either
    work or raise DataError; never KeyError, TypeError, ValueError or a crash."""
    d = tmp_path_factory.mktemp("meta")
    for f in ("train.bin", "val.bin", "tokenizer.json"):
        shutil.copy(dataset_dir / f, d / f)
    meta = _meta(dataset_dir)
    node, parent, key = meta, None, None
    while isinstance(node, (dict, list)) and node and (parent is None or data.draw(st.booleans())):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        meta = data.draw(_JSON)
    elif isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = data.draw(_JSON)
    _write_meta(d, meta)
    try:
        ds = Dataset(d)
        for split in ("train", "val"):
            ds.check_token_ids(split)
            ds.bytes_per_token(split)
        _ = ds.tokenizer
    except DataError as e:
        assert "\n" not in str(e)


def test_token_files_that_do_not_fit_meta_json(prepared):
    train = prepared / "train.bin"
    train.write_bytes(train.read_bytes() + b"\x00")  # not a multiple of the dtype
    with pytest.raises(DataError, match=r"do not match meta.json: train.bin has [\d,]+ bytes"):
        Dataset(prepared)
    train.unlink()
    with pytest.raises(DataError, match="train.bin is missing"):
        Dataset(prepared)


def test_ids_past_the_vocabulary_are_found_once(prepared):
    ds = Dataset(prepared)
    assert ds.max_token_id("val") < ds.vocab_size
    val = prepared / "val.bin"
    ids = np.fromfile(val, dtype=ds.dtype)
    ids[3] = np.iinfo(ds.dtype).max
    ids.tofile(val)
    fresh = Dataset(prepared)
    with pytest.raises(DataError, match=r"val.bin: holds token id 65,535, past the vocabulary of 280"):
        fresh.check_token_ids("val")
    assert fresh.check_token_ids("train").dtype == ds.dtype
    with pytest.raises(DataError, match="model's vocabulary of 100"):
        fresh.check_token_ids("train", vocab_size=100)
    # cached: the old Dataset checked val.bin before the change and keeps its answer
    assert ds.max_token_id("val") < ds.vocab_size
    with pytest.raises(DataError, match="no split 'test'"):
        ds.tokens("test")


def test_read_meta_is_the_reader(prepared):
    assert read_meta(prepared) == Dataset(prepared).meta
    with pytest.raises(DataError, match="missing"):
        read_meta(prepared / "nowhere")


# ---- dataset.toml ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, needle",
    [
        ("sources = [", "dataset recipe"),
        ("sources = 'small.txt'", "sources must be a non-empty list"),
        ("sources = []", "sources must be a non-empty list"),
        ("sources = [1]", "sources must be a non-empty list"),
        ("sources = ['']", "sources must be a non-empty list"),
        ("sources = ['small.txt']\nvocab_size = 'big'", "vocab_size"),
        ("sources = ['small.txt']\nvocab_size = 1000000000", "vocab_size"),
        ("sources = ['small.txt']\nvocab_size = 300.5", "vocab_size"),
        ("sources = ['small.txt']\nval_fraction = 2", "val_fraction"),
        ("sources = ['small.txt']\nval_fraction = nan", "val_fraction"),
        ("sources = ['small.txt']\nvocab-size = 300", "unknown key"),
        ("sources = ['missing.txt']", "no such file or directory"),
        ("x = " + "[" * 2000 + "]" * 2000, "dataset recipe"),
    ],
)
def test_malformed_recipe_is_one_line_and_writes_nothing(tmp_path, small, recipe, needle):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(small, d / "small.txt")
    (d / "dataset.toml").write_text(recipe)
    with pytest.raises(MiniGPTError) as e:
        prepare_from_recipe(d, progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert sorted(p.name for p in d.iterdir()) == ["dataset.toml", "small.txt"]


def test_a_good_recipe_still_prepares(tmp_path, small):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(small, d / "small.txt")
    (d / "dataset.toml").write_text("sources = ['small.txt']\nvocab_size = 280\nval_fraction = 0.2\n")
    meta = prepare_from_recipe(d, progress=False)
    assert meta["vocab_size"] == 280 and Dataset(d).meta["val_fraction"] == 0.2


# ---- structure ---------------------------------------------------------------------------------------


def test_only_the_tokenizer_module_touches_hf_tokenizers():
    for p in (REPO / "minigpt").glob("*.py"):
        src = p.read_text(encoding="utf-8")
        if p.name != "tokenizer.py":
            assert "._hf" not in src and "import tokenizers" not in src and "from tokenizers" not in src, p.name
