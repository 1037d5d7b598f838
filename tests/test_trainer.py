"""Training: schedule, artefacts, exact resume, signals, kills, NaN, bad input, torchrun."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import load_checkpoint, load_trainer_state
from minigpt.config import TrainConfig, apply_preset, load_toml
from minigpt.errors import MiniGPTError
from minigpt.trainer import lr_at, make_optimizer, train

from .conftest import REPO, assert_one_line_error, run_cli, tiny_gpt

TINY = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=4,
    max_steps=20,
    eval_interval=10,
    eval_steps=2,
    log_interval=1,
    warmup_steps=2,
    lr=3e-3,
    min_lr=3e-4,
    sample_tokens=0,
    device="cpu",
    threads=1,
    dropout=0.0,
    weight_decay=0.1,  # the cpu preset's, given: a CLI run would otherwise plan them (plan.py)
    muon_weight_decay=0.0,
)


def make_cfg(out, data, **kw) -> TrainConfig:
    cfg = TrainConfig()
    apply_preset(cfg, "cpu")
    for k, v in {**TINY, "out": str(out), "data": str(data), **kw}.items():
        cfg.set(k, v)
    cfg.validate()
    return cfg


def tiny_flags(out, data, **kw):
    flags = []
    for k, v in {**TINY, "out": str(out), "data": str(data), **kw}.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def metrics(out):
    lines = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = {l["step"]: l["loss"] for l in lines if "loss" in l}
    evals = {l["step"]: l for l in lines if "val_loss" in l}
    return train, evals


# ---- the pieces ------------------------------------------------------------------------


def test_lr_schedule_known_values():
    assert lr_at(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)  # warmup: (step + 1) / warmup
    assert lr_at(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 0.1, 10, 100) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)  # halfway: (lr + min_lr) / 2
    assert lr_at(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(0, 1.0, 0.1, 0, 100) == pytest.approx(1.0)


def test_weight_decay_only_on_matrices(tmp_path):
    m = tiny_gpt()
    cfg = make_cfg(tmp_path, tmp_path, weight_decay=0.5)
    opt = make_optimizer(m, cfg, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()


def test_config_layers_preset_toml_flags(tmp_path):
    from minigpt.cli import _build_train, _Parser
    from minigpt.config import resolve_train_config

    toml = tmp_path / "c.toml"
    toml.write_text('preset = "shakespeare-char"\nn_layer = 3\n[optim]\nlr = 2e-3\nmax_steps = 7\n')
    p = _Parser()
    _build_train(p)
    cfg = resolve_train_config(p.parse_args(["--config", str(toml), "--max-steps", "9"]))
    assert cfg.preset == "shakespeare-char" and cfg.model.n_embd == 384  # from the preset
    assert cfg.model.n_layer == 3 and cfg.optim.lr == 2e-3  # from the file
    assert cfg.optim.max_steps == 9  # the flag wins
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    toml.write_text("n_layers = 3\n")
    with pytest.raises(MiniGPTError, match="n_layers"):
        resolve_train_config(p.parse_args(["--config", str(toml)]))
    toml.write_text('n_layer = "three"\n')
    with pytest.raises(MiniGPTError, match="n_layer: must be an integer"):
        resolve_train_config(p.parse_args(["--config", str(toml)]))
    assert load_toml(tmp_path / "c.toml") == {"n_layer": "three"}


# ---- a training run -------------------------------------------------------------------------


def test_training_learns_and_writes_everything(tmp_path, dataset_dir):
    out = tmp_path / "run"
    summary = train(make_cfg(out, dataset_dir, max_steps=40, log_interval=10, eval_interval=15), progress=False)
    train_lines, evals = metrics(out)
    assert sorted(train_lines) == [10, 20, 30, 40]  # every --log-interval steps and the last step
    assert sorted(evals) == [0, 15, 30, 40]  # at the start, every --eval-interval, at the end
    assert evals[40]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert all({"val_bpb", "train_loss", "time_s", "tokens"} <= set(e) for e in evals.values())
    # bits per byte is loss / ln 2 / bytes per (non-special) target token: close to the split average
    bpt = json.loads((dataset_dir / "meta.json").read_text())["splits"]["val"]
    ratio = evals[40]["val_loss"] / math.log(2) / (bpt["bytes"] / bpt["tokens"])
    assert evals[40]["val_bpb"] == pytest.approx(ratio, rel=0.25)
    assert os.readlink(out / "last") == "step-0000040"
    assert (out / "best").is_symlink()
    ckpt = load_checkpoint(out / "last")
    assert ckpt.run["step"] == 40 and ckpt.run["config"]["model"]["n_embd"] == 32
    assert json.loads((out / "train_config.json").read_text())["optim"]["max_steps"] == 40
    assert load_trainer_state(out / "last")["step"] == 40
    assert summary["step"] == 40
    # only the checkpoints that last/best point to are kept
    assert {p.name for p in out.glob("step-*")} == {os.readlink(out / "last"), os.readlink(out / "best")}


def test_resume_is_exact(tmp_path, dataset_dir):
    """N steps in one run == N/2 steps, then --resume for N/2 more (dropout and gradient
    accumulation included, so RNG and optimizer state must come back exactly)."""
    kw = dict(max_steps=20, lr_decay_steps=20, dropout=0.1, grad_accum=2, eval_interval=5)
    train(make_cfg(tmp_path / "a", dataset_dir, **kw), progress=False)
    train(make_cfg(tmp_path / "b", dataset_dir, **{**kw, "max_steps": 10}), progress=False)
    resumed = make_cfg(tmp_path / "b", dataset_dir, **kw, resume=True)
    train(resumed, explicit={"max_steps": 20, "resume": True}, progress=False)
    a, _ = metrics(tmp_path / "a")
    b, _ = metrics(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


def test_resume_past_the_end_does_nothing(tmp_path, dataset_dir, capsys):
    train(make_cfg(tmp_path, dataset_dir, max_steps=5), progress=False)
    train(make_cfg(tmp_path, dataset_dir, max_steps=5, resume=True), explicit={"resume": True}, progress=False)
    assert "nothing to do" in capsys.readouterr().out


def _wait_for_lines(path: Path, n: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and sum(1 for l in path.read_text().splitlines() if '"loss"' in l) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.05)
    raise AssertionError("training did not start")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resume_continues_exactly(tmp_path, dataset_dir, sig, code):
    out = tmp_path / "run"
    flags = tiny_flags(out, dataset_dir, max_steps=100000, lr_decay_steps=400, eval_interval=100000)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *flags, "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_lines(out / "metrics.jsonl", 5, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "saved" in stderr and "--resume" in stderr
    k = load_trainer_state(out / "last")["step"]
    assert k >= 5
    # continue for 5 more steps and compare with an uninterrupted run of k + 5 steps
    rc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--resume", "--out", str(out), "--max-steps", str(k + 5), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    ref = tmp_path / "ref"
    train(make_cfg(ref, dataset_dir, max_steps=k + 5, lr_decay_steps=400, eval_interval=100000), progress=False)
    got, _ = metrics(out)
    want, _ = metrics(ref)
    for step in range(1, k + 6):
        assert abs(got[step] - want[step]) < 1e-6, step


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, dataset_dir):
    """Checkpoint every step and kill -9 the run at arbitrary moments: `last` always loads."""
    out = tmp_path / "run"
    flags = tiny_flags(out, dataset_dir, max_steps=100000, eval_interval=1, eval_steps=1)
    kills = 0
    for delay in (0.05, 0.13, 0.29, 0.41):
        args = [sys.executable, str(REPO / "train.py"), *flags, "--quiet"] + (
            ["--resume"] if (out / "last").exists() else []
        )
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for_lines(out / "metrics.jsonl", 3 + kills * 3, proc)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        kills += 1
        ckpt = load_checkpoint(out)  # resolves best, else last
        last = load_checkpoint(out / "last")
        assert torch.isfinite(next(last.model.parameters())).all()
        assert load_trainer_state(out / "last")["step"] >= 1
        assert ckpt.tokenizer is not None
    assert kills == 4


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, dataset_dir, monkeypatch):
    from minigpt import optim as optim_mod  # the optimizers' one home (the trainer calls make_optimizers there)

    real = optim_mod.make_optimizer

    def poisoned(model, cfg, device):
        opt = real(model, cfg, device)
        original_step = opt.step
        calls = {"n": 0}

        def step(*a, **k):
            calls["n"] += 1
            r = original_step(*a, **k)
            if calls["n"] == 13:  # a weight blows up after step 13
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            return r

        opt.step = step
        return opt

    monkeypatch.setattr(optim_mod, "make_optimizer", poisoned)
    out = tmp_path / "run"
    with pytest.raises(MiniGPTError, match=r"the loss became nan by step 14.*intact"):
        train(make_cfg(out, dataset_dir, max_steps=30, eval_interval=5), progress=False)
    ckpt = load_checkpoint(out / "last")
    assert ckpt.run["step"] == 10
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())


@pytest.mark.parametrize("kind, want", [("gpt", [0, 2, 4]), ("ngram", [0, 1])])
def test_a_new_run_does_not_inherit_the_metrics_of_one_that_saved_nothing(tmp_path, dataset_dir, kind, want):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "val_loss": 9.9, "val_bpb": 9.9}\n{"step": 7, "loss": 9.9}\n')
    cfg = make_cfg(out, dataset_dir, max_steps=4, eval_interval=2)
    cfg.set("model", kind)
    train(cfg, progress=False)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [l["step"] for l in lines if "val_loss" in l]
    assert evals == want and all(l.get("val_loss") != 9.9 for l in lines)


# ---- bad input ---------------------------------------------------------------------------


def test_bad_inputs(tmp_path, dataset_dir):
    # Run the cheap ones in-process (the CLI's own error path), one through a subprocess.
    from minigpt.cli import main

    def check(args, *needles):
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["train", *args, "--quiet"])
        lines = err.getvalue().strip().splitlines()
        assert rc == 2 and len(lines) == 1, err.getvalue()
        for n in needles:
            assert n in lines[0], (n, lines[0])

    base = tiny_flags(tmp_path / "r", dataset_dir, max_steps=3)
    check([*base, "--data", str(tmp_path / "nope")], "data directory not found", "minigpt prepare")
    assert not (tmp_path / "r").exists()  # a run that failed before writing anything leaves no empty --out
    (tmp_path / "empty").mkdir()
    check([*base, "--data", str(tmp_path / "empty")], "not a prepared dataset", "minigpt prepare")
    check([*base, "--block-size", "100000"], "fewer than one window", "--block-size")
    check([*base, "--batch-size", "50000"], "distinct windows", "--batch-size")
    check([*base, "--resume"], "no checkpoint to resume")
    check([*base, "--device", "cuda"], "not available")
    check([*base, "--n-head", "3"], "n_embd: must be divisible by n_head")
    (tmp_path / "afile").write_text("x")
    check([*base, "--out", str(tmp_path / "afile" / "run")], "cannot write to the output directory")
    # an existing run is never overwritten by accident; an incompatible resume is refused
    assert main(["train", *base, "--quiet"]) == 0
    before = (tmp_path / "r" / "last" / "model.safetensors").read_bytes()
    check(base, "already holds a training run", "--resume")
    check([*base, "--resume", "--n-embd", "64"], "n_embd=32", "new --out")
    assert (tmp_path / "r" / "last" / "model.safetensors").read_bytes() == before
    proc = run_cli("train", *base, "--tensorboard", "--out", str(tmp_path / "tb"))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert_one_line_error(proc, "tensorboard")


def test_data_directory_with_a_recipe_is_prepared_on_first_use(tmp_path, corpus_text, capsys):
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "text.txt").write_text(corpus_text)
    (data / "dataset.toml").write_text('sources = ["text.txt"]\nvocab_size = 280\n')
    train(make_cfg(tmp_path / "run", data, max_steps=2), progress=False)
    assert "%|" not in capsys.readouterr().err  # no progress bars, the prepare's included
    meta = json.loads((data / "meta.json").read_text())
    assert meta["vocab_size"] == 280 and meta["sources"][0]["path"] == str(data / "text.txt")


@pytest.mark.slow
def test_zero_argument_default_on_the_bundled_corpus(tmp_path):
    """`python train.py` from a fresh copy: prepares the bundled corpus (in the cache
    directory, as no data/shakespeare exists here), trains the CPU default, checkpoints to
    out/shakespeare, prints a sample; then `python sample.py` samples from it. Steps are cut
    short here; the full run is in BENCHMARKS.md."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MINIGPT_CACHE=str(tmp_path / "cache"))
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--max-steps",
            "20",
            "--eval-interval",
            "10",
            "--eval-steps",
            "2",
            "--sample-tokens",
            "30",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "--- sample" in r.stdout
    assert len(list((tmp_path / "cache").glob("shakespeare-*/meta.json"))) == 1
    assert (tmp_path / "out" / "shakespeare" / "last" / "model.safetensors").exists()
    s = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "--max-new-tokens", "20", "--seed", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert s.returncode == 0 and len(s.stdout.strip()) > 0, s.stderr


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("optimizer, tol", [("adamw", 1e-5), ("muon", 2e-3)])
def test_torchrun_two_processes_match_one(tmp_path, dataset_dir, optimizer, tol):
    """2 CPU processes (Gloo) with batch 4 each == 1 process with batch 8. With AdamW to
    float rounding; with Muon only closely: its Newton-Schulz iteration runs in bfloat16
    (torch.optim.Muon), where the all-reduced gradient's last-bit differences from a
    one-process sum can round the other way. In fp32: bf16 autocast (the CPU default where
    the CPU has bf16) rounds each matrix product, which the 1e-5 check would see."""
    common = tiny_flags(
        tmp_path / "x", dataset_dir, max_steps=8, eval_interval=4, dropout=0.0, optimizer=optimizer, dtype="float32"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "train.py"),
            *common,
            "--out",
            str(tmp_path / "ddp"),
            "--batch-size",
            "4",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr
    one = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            *common,
            "--out",
            str(tmp_path / "one"),
            "--batch-size",
            "8",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr
    a, ea = metrics(tmp_path / "ddp")
    b, eb = metrics(tmp_path / "one")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert abs(a[s] - b[s]) < tol, (s, a[s], b[s])
    for s in ea:
        assert abs(ea[s]["val_loss"] - eb[s]["val_loss"]) < tol
    assert "x2 processes" in ddp.stderr
