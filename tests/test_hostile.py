"""A hostile but realistic user, by class of failure (not case by case): every output
path under a file, in a read-only directory or on a full disk; every file minigpt reads
fed malformed, deeply nested or wrongly typed content; every size at and past its cap;
closed and full standard streams; runs that collide. The promise each test checks: one
line on stderr naming what and where, exit code 2 (1 for a full disk), nothing that
existed before destroyed, nothing left behind.

(Preparation's share of this lives in tests/test_prepare_hardening.py, sampling's in
tests/test_sampling.py.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt import cli, config
from minigpt.checkpoint import RunDirectory, load_checkpoint, load_trainer_state, read_run, save_checkpoint
from minigpt.errors import MiniGPTError
from minigpt.evaluate import load_run

from .conftest import REPO, tiny_gpt

TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--max-steps",
    "4",
    "--eval-interval",
    "2",
    "--eval-steps",
    "1",
    "--sample-tokens",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--quiet",
]


def main(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr). An exception escaping main is a
    bug and fails the test by itself."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def one_line(rc, err, code=2, *needles):
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1 and "Traceback" not in err, (rc, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "c"
    save_checkpoint(path, tiny_gpt(vocab_size=tokenizer.vocab_size), tokenizer)
    return path


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory, dataset_dir):
    out = tmp_path_factory.mktemp("runs") / "ngram"
    rc, _, err = main("train", "--model", "ngram", "--data", str(dataset_dir), "--out", str(out), *TINY)
    assert rc == 0, err
    return out


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs, then filled to the last byte (CI runs as root; elsewhere: skipped)."""
    mnt = tmp_path / "full"
    if not _mount_tmpfs(mnt, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> None:
    with open(mnt / ".filler", "wb", buffering=0) as f:  # unbuffered: closing has nothing left to flush
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)


@pytest.fixture
def read_only(tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- class 1/2: outputs that cannot be written, and never at the cost of a good file ---------------


def _output_commands(ckpt, ngram_run, dataset_dir, target: Path) -> list[list[str]]:
    """Every command that writes a file or directory, aimed at `target`."""
    t = str(target)
    return [
        ["train", "--data", str(dataset_dir), "--out", t, *TINY],
        ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--npz", t + ".npz"],
        ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--html", t + ".html"],
        ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--png", t + ".png"],
        ["compare", str(ngram_run), "--png", t + ".png"],
        ["export-hf", str(ckpt), t],
    ]


def test_every_output_under_a_regular_file_is_one_line(ckpt, ngram_run, dataset_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for argv in _output_commands(ckpt, ngram_run, dataset_dir, afile / "x"):
        rc, _, err = main(*argv)
        one_line(rc, err, 2, "afile")
        assert "not a directory" in err or "is a file" in err, err
    assert afile.read_text() == "keep me"


def test_every_output_in_a_read_only_directory_is_one_line(ckpt, ngram_run, dataset_dir, read_only):
    for argv in _output_commands(ckpt, ngram_run, dataset_dir, read_only / "x"):
        rc, _, err = main(*argv)
        one_line(rc, err, 2, "read-only")
    assert list(read_only.iterdir()) == []


def test_a_full_disk_is_one_line_and_keeps_the_good_files(ckpt, ngram_run, dataset_dir, full_disk):
    good = {}
    for name, argv in [
        ("a.npz", ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO: hi", "--npz"]),
        ("a.html", ["attention", "--checkpoint", str(ckpt), "--prompt", "ROMEO: hi", "--html"]),
        ("a.png", ["compare", str(ngram_run), "--png"]),
    ]:
        rc, _, err = main(*argv, str(full_disk / name))
        assert rc == 0, err
        good[name] = (full_disk / name).read_bytes()
    fill(full_disk)
    cases = [
        [
            "attention",
            "--checkpoint",
            str(ckpt),
            "--prompt",
            "ROMEO: to be or not to be",
            "--npz",
            str(full_disk / "a.npz"),
        ],
        [
            "attention",
            "--checkpoint",
            str(ckpt),
            "--prompt",
            "ROMEO: to be or not to be",
            "--html",
            str(full_disk / "a.html"),
        ],
        ["compare", str(ngram_run), str(ngram_run), "--png", str(full_disk / "a.png")],
        ["export-hf", str(ckpt), str(full_disk / "hf")],
        ["import-hf", str(full_disk), str(full_disk / "imported")],  # no config.json: refused before writing
        ["train", "--data", str(dataset_dir), "--out", str(full_disk / "run"), *TINY],
    ]
    for argv in cases:
        rc, _, err = main(*argv)
        assert rc in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, rc, err)
    for name, data in good.items():
        assert (full_disk / name).read_bytes() == data, f"{name} was damaged"
    left = sorted(p.name for p in full_disk.iterdir())
    assert left == [".filler", *sorted(good)], left  # no temporary files, no half-written run or export


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The fault-injecting writer (for machines where no small disk can be mounted): any
    failure between writing and renaming removes the temporary file and keeps the old one."""
    from minigpt import files

    target = tmp_path / "f.json"
    files.atomic_write(target, "old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(files.FileError, match="No space left on device") as e:
        files.atomic_write(target, "new")
    assert e.value.environmental
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


# ---- class 1: standard streams -----------------------------------------------------------------------


def _sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_closed_or_full_standard_streams(ckpt, ngram_run):
    py = f"{sys.executable} -m minigpt.cli"
    base = f"sample --checkpoint {ckpt} --max-new-tokens 5 --seed 0"
    full = _sh(f"{py} {base} --prompt hi >/dev/full")
    assert full.returncode == 1 and "No space left on device" in full.stderr, full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and "Traceback" not in full.stderr
    closed = _sh(f"{py} {base} --prompt hi >&-")
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed.stderr
    no_stdin = _sh(f"{py} {base} <&- | head -c 0; exit 0")  # no prompt and stdin closed: an empty prompt
    assert "Traceback" not in no_stdin.stderr, no_stdin.stderr
    j = _sh(f"{py} compare {ngram_run} --json >/dev/full")
    assert j.returncode == 1 and len(j.stderr.strip().splitlines()) == 1 and "Traceback" not in j.stderr, j.stderr


def test_arguments_that_are_not_utf8_are_refused(ckpt, tmp_path):
    for argv in (
        [b"sample", b"--checkpoint", str(ckpt).encode(), b"--prompt", b"caf\xe9"],
        [b"train", b"--out", str(tmp_path).encode() + b"/\xff\xfe"],
    ):
        r = subprocess.run(
            [sys.executable.encode(), b"-m", b"minigpt.cli", *argv], cwd=REPO, capture_output=True, timeout=120
        )
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode == 2 and "not valid UTF-8" in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--checkpoint", "--out", "--data"])
def test_an_empty_path_is_refused_not_taken_as_the_current_directory(flag, ckpt, dataset_dir, tmp_path):
    if flag == "--checkpoint":
        rc, _, err = main("sample", "--checkpoint", "", "--prompt", "hi")
    else:
        argv = {"--out": str(tmp_path / "r"), "--data": str(dataset_dir)}
        argv[flag] = ""
        rc, _, err = main("train", "--data", argv["--data"], "--out", argv["--out"], *TINY)
    one_line(rc, err, 2, "empty")


# ---- class 4: every size at and past its cap --------------------------------------------------------


def _numeric_settings():
    caps = {
        "n_layer": config.MAX_LAYERS,
        "n_head": config.MAX_WIDTH,
        "n_embd": config.MAX_WIDTH,
        "block_size": config.MAX_CONTEXT,
        "ngram_order": config.MAX_NGRAM_ORDER,
        "max_steps": config.MAX_STEPS,
        "batch_size": config.MAX_BATCH,
        "grad_accum": config.MAX_BATCH,
        "eval_interval": config.MAX_STEPS,
        "eval_steps": config.MAX_STEPS,
        "log_interval": config.MAX_STEPS,
        "warmup_steps": config.MAX_STEPS,
        "lr_decay_steps": config.MAX_STEPS,
        "sample_tokens": config.MAX_CONTEXT,
        "threads": 4096,
        "seed": config.MAX_SEED,
    }
    return sorted(caps.items())


@pytest.mark.parametrize("name, cap", _numeric_settings())
def test_every_integer_training_setting_at_and_past_its_cap(name, cap):
    """At the cap the settings validate (width and depth alone, so the size check does not
    fire first); one past it, or negative, is refused naming the setting."""

    def cfg_with(v):
        c = config.TrainConfig()
        config.apply_preset(c, "cpu")
        if name in ("n_layer", "n_embd", "n_head"):  # keep the model small while one of them is at its cap
            c.set("n_layer", 1), c.set("n_embd", 2), c.set("n_head", 1)
        c.set(name, v)
        return c

    if name not in ("n_layer", "n_embd"):  # n_layer/n_embd at the cap are caught by the size check instead
        cfg_with(cap).validate()
    for bad in (cap + 1, -1):
        with pytest.raises(MiniGPTError, match=name):
            cfg_with(bad).validate()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--n-layer", "100000000"], "n_layer"),
        (["--n-embd", "65536", "--n-layer", "12"], "parameters"),
        (["--lr", "1e30"], "lr"),
        (["--lr", "nan"], "lr"),
        (["--beta2", "1"], "beta2"),
        (["--seed", "-1"], "seed"),
        (["--seed", "99999999999999999999999"], "seed"),
    ],
)
def test_training_flags_past_their_bounds_are_refused_at_once(argv, needle, dataset_dir, tmp_path):
    rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(tmp_path / "r"), *TINY, *argv)
    one_line(rc, err, 2, needle)
    assert not (tmp_path / "r").exists()


def test_a_toml_integer_too_large_for_anything(dataset_dir, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("n_layer = 99999999999999999999\n")
    rc, _, err = main("train", "--config", str(toml), "--data", str(dataset_dir), "--out", str(tmp_path / "r"))
    assert rc == 2 and err.count("\n") == 1 and "n_layer" in err, (rc, err)
    assert not (tmp_path / "r").exists()


# ---- class 5: every file minigpt reads, malformed --------------------------------------------------

NESTED = "[" * 100000 + "]" * 100000
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


def _readers(tmp: Path, ckpt: Path):
    """(file name, function that reads it) for every run-file format, on a fresh copy of a
    good checkpoint/run, so a test can spoil one file at a time."""
    import shutil

    run = tmp / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(ckpt, run / "step-0000001")
    os.symlink("step-0000001", run / "last")
    c = run / "last"
    # saved to the step directory itself: a writer never replaces a symbolic link (`last` stays one)
    save_checkpoint(
        run / "step-0000001",
        load_checkpoint(c).model,
        load_checkpoint(c).tokenizer,
        run={"step": 1},
        trainer_state={"step": 1},
    )
    return run, {
        "config.json": lambda: load_checkpoint(c),
        "run.json": lambda: (read_run(c), load_run(run)),
        "metrics.jsonl": lambda: load_run(run),
        "tokenizer.json": lambda: load_checkpoint(c),
        "trainer_state.pt": lambda: load_trainer_state(c),
    }


def _reads_cleanly(fn) -> None:
    try:
        fn()
    except MiniGPTError:
        pass  # one line, as promised


def test_deeply_nested_json_in_every_run_file(tmp_path, ckpt):
    """A file minigpt must read is refused in one error naming it; a log line is skipped."""
    for name in ("config.json", "run.json", "tokenizer.json"):
        run, readers = _readers(tmp_path, ckpt)
        (run / "last" / name).write_text(NESTED)
        with pytest.raises(MiniGPTError, match=name.replace(".", r"\.")):
            readers[name]()
    run, readers = _readers(tmp_path, ckpt)
    (run / METRICS_NAME).write_text(NESTED + "\n" + json.dumps({"step": 3, "val_bpb": 2.5, "time_s": 1.0}) + "\n")
    assert load_run(run)["curve"] == [(1.0, 2.5)]  # the nested line skipped, the good one read


METRICS_NAME = "metrics.jsonl"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=JSON,
    name=st.sampled_from(["config.json", "run.json", "metrics.jsonl"]),
    key=st.sampled_from(
        [
            "model",
            "model_type",
            "version",
            "format",
            "step",
            "config",
            "val_bpb",
            "time_s",
            "num_params",
            "train_time_s",
        ]
    ),
)
def test_wrongly_typed_json_in_every_run_file(tmp_path_factory, ckpt, value, name, key):
    tmp = tmp_path_factory.mktemp("typed")
    run, readers = _readers(tmp, ckpt)
    if name == "metrics.jsonl":
        (run / METRICS_NAME).write_text(json.dumps({"step": value, key: value}) + "\n" + json.dumps(value) + "\n")
    else:
        p = run / "last" / name
        obj = json.loads(p.read_text())
        obj[key] = value
        p.write_text(json.dumps(obj))
        (run / "last" / "spare.json").write_text(json.dumps(value))
    _reads_cleanly(readers[name])
    if name != "metrics.jsonl":
        (run / "last" / name).write_text(json.dumps(value))  # the whole file replaced by any JSON value
        _reads_cleanly(readers[name])


@pytest.mark.parametrize(
    "state",
    [
        {"step": "banana", "optimizer": [1, 2, 3]},
        {"step": 3, "optimizer": [1, 2, 3]},
        {"step": -1},
        [1, 2, 3],
        {"step": 2, "rng": {"torch": "not a tensor"}},
        {"step": 2, "best_val_loss": "low"},
    ],
)
def test_wrongly_typed_trainer_state_is_refused(tmp_path, ckpt, state):
    save_checkpoint(tmp_path / "c", load_checkpoint(ckpt).model, None, trainer_state=state)
    with pytest.raises(MiniGPTError, match="trainer_state.pt"):
        load_trainer_state(tmp_path / "c")


def test_resume_from_a_run_json_with_nonsense_config(tmp_path, dataset_dir):
    out = tmp_path / "r"
    rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY)
    assert rc == 0, err
    run_json = out / "last" / "run.json"
    good = json.loads(run_json.read_text())
    for spoil in ({"optim": {"lr": "fast"}}, {"model": {"n_layer": None}}, [1, 2]):
        bad = json.loads(json.dumps(good))
        if isinstance(spoil, list):
            bad = spoil
        else:
            for section, values in spoil.items():
                bad["config"][section].update(values)
        run_json.write_text(json.dumps(bad))
        rc, _, err = main(
            "train", "--data", str(dataset_dir), "--out", str(out), "--resume", "--max-steps", "6", "--quiet"
        )
        one_line(rc, err, 2, "run.json")


def test_hf_config_json_malformed_is_one_line(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    for text in (NESTED, "[1, 2]", '{"model_type": "gpt2", "n_embd": "wide"}', '{"model_type": "llama"}'):
        (hf / "config.json").write_text(text)
        rc, _, err = main("import-hf", str(hf), str(tmp_path / "out"))
        one_line(rc, err, 2, "config.json")
    assert not (tmp_path / "out").exists()


def test_eval_data_with_ids_past_the_vocabulary(ngram_run, dataset_dir, tmp_path):
    import shutil

    import numpy as np

    bad = tmp_path / "bad"
    shutil.copytree(dataset_dir, bad)
    meta = json.loads((bad / "meta.json").read_text())
    val = np.fromfile(bad / "val.bin", dtype=meta["dtype"])
    val[3] = np.iinfo(val.dtype).max
    val.tofile(bad / "val.bin")
    rc, _, err = main(
        "eval", "--checkpoint", str(ngram_run), "--data", str(bad), "--samples", "1", "--max-new-tokens", "2"
    )
    one_line(rc, err, 2, "token id")


# ---- class 6: silently wrong results ---------------------------------------------------------------


def test_non_finite_weights_are_refused_everywhere(tmp_path, tokenizer):
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan", model, tokenizer)
    for argv in (
        ["sample", "--checkpoint", str(tmp_path / "nan"), "--prompt", "hi", "--max-new-tokens", "2"],
        ["export-hf", str(tmp_path / "nan"), str(tmp_path / "hf")],
        ["eval", "--checkpoint", str(tmp_path / "nan"), "--data", str(tmp_path)],
    ):
        rc, _, err = main(*argv)
        one_line(rc, err, 2, "NaN")
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    hf.save_pretrained(tmp_path / "hf-inf")
    rc, _, err = main("import-hf", str(tmp_path / "hf-inf"), str(tmp_path / "imp"))
    one_line(rc, err, 2, "NaN or infinite")
    assert not (tmp_path / "imp").exists()


# ---- class 3 and 8: runs that stop early; runs that collide ------------------------------------------


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, dataset_dir, monkeypatch):
    from minigpt import optim as optim_mod

    real = optim_mod.make_optimizer

    def poisoned(model, cfg, device):
        opt = real(model, cfg, device)
        step = opt.step

        def bad_step(*a, **k):
            r = step(*a, **k)
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            return r

        opt.step = bad_step
        return opt

    monkeypatch.setattr(optim_mod, "make_optimizer", poisoned)
    out = tmp_path / "deep" / "run"
    rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY, "--log-interval", "1")
    # the run's own progress lines come first; the failure is the one error line at the end
    last = err.strip().splitlines()[-1]
    assert (
        rc == 2 and "Traceback" not in err and last.startswith("minigpt train: error: ") and err.count("error:") == 1
    ), err
    assert "loss became nan" in last and "no checkpoint had been saved" in last
    assert not (tmp_path / "deep").exists()  # every directory the run created is gone


def test_ctrl_c_while_counting_an_ngram_saves_its_checkpoint(tmp_path, dataset_dir, monkeypatch):
    from minigpt.baselines import NGramLM

    real_fit = NGramLM.fit

    def fit_then_interrupted(self, tokens):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while counting
        return real_fit(self, tokens)

    monkeypatch.setattr(NGramLM, "fit", fit_then_interrupted)
    out = tmp_path / "ng"
    rc, _, err = main("train", "--model", "ngram", "--data", str(dataset_dir), "--out", str(out), *TINY)
    assert rc == 128 + signal.SIGINT, err
    assert load_checkpoint(out).run["step"] == 1  # the promised checkpoint


def test_a_held_run_directory_refuses_a_second_trainer(tmp_path, dataset_dir):
    out = tmp_path / "r"
    rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY)
    assert rc == 0, err
    with RunDirectory(out).lock():  # as if another trainer were running there
        for extra in (["--resume", "--max-steps", "6"], []):
            rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY, *extra)
            one_line(rc, err, 2, "in use by another")
    rc, _, err = main(
        "train", "--data", str(dataset_dir), "--out", str(out), *TINY[:-1], "--resume", "--max-steps", "6"
    )
    assert rc == 0, err  # released at the end of the block


def test_a_lock_dies_with_its_process(tmp_path, dataset_dir):
    """kill -9 of the holder releases the lock (the kernel drops it): never a stale lock."""
    out = tmp_path / "r"
    out.mkdir()
    code = (
        "import sys, time; from minigpt.checkpoint import RunDirectory\n"
        f"with RunDirectory({str(out)!r}).lock():\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY)
        one_line(rc, err, 2, "in use by another")
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = main("train", "--data", str(dataset_dir), "--out", str(out), *TINY)
    assert rc == 0, err


def test_two_trainers_started_at_once_never_share_a_directory(tmp_path, dataset_dir):
    out = tmp_path / "r"
    flags = ["train", "--data", str(dataset_dir), "--out", str(out), *TINY, "--max-steps", "40"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "minigpt.cli", *flags],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results  # one trains; the other is refused (held, or finds the finished run)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [l["step"] for l in lines if "loss" in l]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run's log, not two interleaved


# ---- the viewer opens where the command pointed ------------------------------------------------------


def test_attention_html_opens_on_the_asked_layer_and_head(ckpt, tmp_path):
    from minigpt.inspection import viewer_data  # noqa: F401  (the data the page reads)

    rc, _, err = main(
        "attention",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "ROMEO: hi",
        "--layer",
        "1",
        "--head",
        "1",
        "--html",
        str(tmp_path / "a.html"),
    )
    assert rc == 0, err
    page = (tmp_path / "a.html").read_text()
    start = page.index('id="minigpt-data">') + len('id="minigpt-data">')
    data = json.loads(page[start : page.index("</script>", start)])
    assert (data["layer"], data["head"]) == (1, 1)
