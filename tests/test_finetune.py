"""Fine-tuning: `train --init-from SOURCE`, checked against transformers' GPT-2.

Every SOURCE is made here: a GPT-2 built and saved by transformers (random weights,
biases and LayerNorm gains moved off their init so nothing passes by accident) with the
session's trained tokenizer, a minigpt run trained in the test, and a fake Hugging Face
cache laid out in tmp_path. The oracles:

- step 0 of a fine-tune is SOURCE's loss on the new data: transformers' loss of the
  saved GPT-2 on the very windows the trainer evaluates (fp32, 1e-4);
- after fine-tuning, `export-hf` + transformers gives the loss `minigpt eval` reports
  on the whole validation split (fp32, 1e-4);
- resume is exact (the same losses and weights as an uninterrupted run);
- a fine-tune from a minigpt checkpoint keeps its tokenizer byte for byte, and text is
  tokenized by SOURCE's tokenizer exactly as `minigpt prepare --tokenizer` does;
- frozen weights are bit-for-bit SOURCE's after training.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minigpt import pretrained
from minigpt.checkpoint import load_checkpoint
from minigpt.cli import _build_train, _Parser, main
from minigpt.config import PRESETS, resolve_train_config
from minigpt.data import eval_offsets, prepare, windows
from minigpt.evaluate import window_plan
from minigpt.tokenizer import Tokenizer

from .conftest import REPO, assert_one_line_error, run_cli

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ATOL = 1e-4
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=32)
# A short fine-tune: the finetune preset, with sizes for a 0.04M-parameter model.
FAST = [
    "--max-steps",
    "4",
    "--eval-interval",
    "2",
    "--eval-steps",
    "2",
    "--batch-size",
    "4",
    "--sample-tokens",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--quiet",
]


def hf_gpt2_dir(path: Path, tokenizer: Tokenizer | None, *, seed: int = 0, **shape) -> Path:
    """A GPT-2 saved by transformers' save_pretrained, every parameter randomised (matrices
    and biases N(0, 0.1), LayerNorm gains N(1, 0.2)), with `tokenizer` as tokenizer.json."""
    shape = {**SHAPE, **shape}
    cfg = GPT2Config(
        vocab_size=tokenizer.vocab_size if tokenizer else 300,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        **shape,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if gain else 0.1) + (1.0 if gain else 0.0))
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save(path / "tokenizer.json")
    return path


def cli(*args: str) -> tuple[int, str, str]:
    """`minigpt ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def lines(run: Path) -> tuple[dict[int, float], dict[int, dict]]:
    ms = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in ms if "loss" in m}, {m["step"]: m for m in ms if "val_loss" in m}


def hf_loss(model: GPT2LMHeadModel, tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> float:
    """transformers' mean cross-entropy over the windows tokens[o : o + block_size + 1]."""
    x, y = windows(tokens, offsets, block_size, torch.device("cpu"))
    with torch.no_grad():
        logits = model(x).logits
    return F.cross_entropy(logits.double().reshape(-1, logits.size(-1)), y.reshape(-1)).item()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory, tokenizer) -> Path:
    return hf_gpt2_dir(tmp_path_factory.mktemp("hf") / "gpt2-tiny", tokenizer)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, hf_source, dataset_dir) -> Path:
    """hf_source fine-tuned for 4 steps on the session's dataset, context cropped 32 -> 16."""
    run = tmp_path_factory.mktemp("ft") / "run"
    code, _, err = cli(
        "train",
        "--init-from",
        str(hf_source),
        "--data",
        str(dataset_dir),
        "--out",
        str(run),
        "--block-size",
        "16",
        "--lr",
        "1e-3",
        *FAST,
    )
    assert code == 0, err
    return run


# ---- the oracles ---------------------------------------------------------------------------


def test_step_0_is_the_source_loss_on_the_new_data(finetuned, hf_source, dataset_dir):
    """The first evaluation line is transformers' loss of SOURCE on the same windows
    (cropped to 16 positions: the learned table keeps its first 16 rows)."""
    _, evals = lines(finetuned)
    theirs = GPT2LMHeadModel.from_pretrained(hf_source).eval()
    for split, key in (("train", "train_loss"), ("val", "val_loss")):
        tokens = np.fromfile(dataset_dir / f"{split}.bin", dtype=np.uint16)
        offsets = eval_offsets(len(tokens), 16, 2 * 4)  # eval_steps x batch_size, the trainer's fixed windows
        assert evals[0][key] == pytest.approx(hf_loss(theirs, tokens, offsets, 16), abs=ATOL), split
    assert evals[4]["val_loss"] < evals[0]["val_loss"]  # and fine-tuning at 1e-3 lowered it


def test_export_of_a_fine_tune_scores_in_transformers_what_eval_reports(finetuned, dataset_dir, tmp_path):
    code, out, err = cli(
        "eval", "--checkpoint", str(finetuned), "--json", "--samples", "1", "--max-new-tokens", "4", "--device", "cpu"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["window"] == 16 and report["data"] == str(dataset_dir)
    code, _, err = cli("export-hf", str(finetuned), str(tmp_path / "hf"))
    assert code == 0, err
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.n_positions == 16
    # The whole validation split in non-overlapping windows, each target scored once.
    val = np.fromfile(dataset_dir / "val.bin", dtype=np.uint16)
    starts, done, W, _ = window_plan(len(val), 16)
    nats, n = 0.0, 0
    for s, d in zip(starts, done):
        x = torch.from_numpy(val[s : s + W].astype(np.int64))[None]
        y = torch.from_numpy(val[s + 1 : s + W + 1].astype(np.int64))
        with torch.no_grad():
            nll = F.cross_entropy(theirs(x).logits[0].double(), y, reduction="none")
        fresh = torch.from_numpy(np.arange(s + 1, s + W + 1) > d)
        nats, n = nats + nll[fresh].sum().item(), n + int(fresh.sum())
    assert n == len(val) - 1 == report["val_tokens"]
    assert report["val_loss"] == pytest.approx(nats / n, abs=ATOL)


def test_a_fine_tune_records_where_it_started(finetuned, hf_source):
    digest = sha256(hf_source / "model.safetensors")
    run = json.loads((finetuned / "last" / "run.json").read_text())
    assert run["init_from"] == {
        "source": str(hf_source),
        "path": str(hf_source),
        "form": "hf",
        "model_type": "gpt",
        "block_size": 32,
        "weights": ["model.safetensors"],
        "weights_sha256": digest,
    }
    config = json.loads((finetuned / "train_config.json").read_text())
    assert config["preset"] == "finetune"
    assert config["model"]["init_from"] == str(hf_source) and config["model"]["init_from_sha256"] == digest
    assert config["model"]["block_size"] == 16 and config["model"]["n_embd"] == 32  # the model it is
    assert config["optim"]["lr"] == config["optim"]["min_lr"] == 1e-3  # the finetune schedule stays constant
    # The tokenizer the run saves is SOURCE's.
    assert (
        Tokenizer.load(finetuned / "last" / "tokenizer.json").to_str()
        == Tokenizer.load(hf_source / "tokenizer.json").to_str()
    )


def test_text_is_prepared_with_the_source_tokenizer(tmp_path, hf_source, corpus_file, dataset_dir, finetuned):
    """--data TEXT: prepared into OUT/data (or --data-out) with SOURCE's tokenizer, giving
    exactly the tokens `prepare --tokenizer` gives, so the run is the prepared-data run."""
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        "--init-from",
        str(hf_source),
        "--data",
        str(corpus_file),
        "--out",
        str(run),
        "--block-size",
        "16",
        "--lr",
        "1e-3",
        *FAST,
    )
    assert code == 0, err
    for name in ("train.bin", "val.bin"):
        assert (run / "data" / name).read_bytes() == (dataset_dir / name).read_bytes()
    assert json.loads((run / "train_config.json").read_text())["data"]["data"] == str(run / "data")
    # The same tokens, windows and source: the same run as on the prepared dataset.
    (got, got_evals), (want, want_evals) = lines(run), lines(finetuned)
    assert got == want
    assert {s: e["val_loss"] for s, e in got_evals.items()} == {s: e["val_loss"] for s, e in want_evals.items()}
    # --data-out puts it elsewhere; a glob is text too.
    run2, shared = tmp_path / "run2", tmp_path / "prepared"
    code, _, err = cli(
        "train",
        "--init-from",
        str(hf_source),
        "--data",
        str(corpus_file.parent / "*.txt"),
        "--data-out",
        str(shared),
        "--out",
        str(run2),
        "--block-size",
        "16",
        *FAST,
    )
    assert code == 0, err
    assert (shared / "train.bin").read_bytes() == (dataset_dir / "train.bin").read_bytes()
    assert not (run2 / "data").exists()


def test_text_without_init_from_trains_a_tokenizer_first(tmp_path, corpus_file):
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        "--data",
        str(corpus_file),
        "--vocab-size",
        "280",
        "--out",
        str(run),
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        *FAST,
    )
    assert code == 0, err
    assert json.loads((run / "data" / "meta.json").read_text())["vocab_size"] == 280
    assert load_checkpoint(run).tokenizer.vocab_size == 280


# ---- the name form: the local Hugging Face cache ------------------------------------------------


def fake_cache(root: Path, repo: str, source: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The hub cache's layout: blobs named by content, a snapshot of symbolic links to
    them, and refs/main naming the snapshot."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for f in source.iterdir():
        blob = folder / "blobs" / sha256(f)
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.mark.parametrize(
    "cached_as, asked",
    [
        ("openai-community/gpt2", "gpt2"),  # the hub's name today, asked for by its legacy name
        ("gpt2", "gpt2"),  # a cache filled before the move
        ("gpt2", "openai-community/gpt2"),
        ("someone/tiny-gpt2", "someone/tiny-gpt2"),
    ],
)
def test_a_model_name_is_found_in_the_hf_cache(tmp_path, monkeypatch, hf_source, cached_as, asked):
    snap = fake_cache(tmp_path / "home" / "hub", cached_as, hf_source)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    spec = pretrained.inspect_source(asked)
    assert (spec.path, spec.form, spec.block_size) == (Path(snap), "hf-cache", 32)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE wins over HF_HOME
    with pytest.raises(pretrained.CheckpointError, match="not|no model"):
        pretrained.inspect_source(asked)


def test_fine_tune_from_a_cached_name(tmp_path, monkeypatch, hf_source, dataset_dir):
    snap = fake_cache(tmp_path / "hub", "openai-community/gpt2", hf_source)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    code, _, err = cli("train", "--init-from", "gpt2", "--data", str(dataset_dir), "--out", str(run), *FAST)
    assert code == 0, err
    info = json.loads((run / "last" / "run.json").read_text())["init_from"]
    assert info["form"] == "hf-cache" and info["path"] == str(snap)
    assert info["weights_sha256"] == sha256(hf_source / "model.safetensors")  # read through the blob links
    assert json.loads((run / "train_config.json").read_text())["model"]["block_size"] == 32  # the source's


def test_a_name_missing_from_the_cache_says_how_to_get_it(tmp_path, dataset_dir):
    proc = run_cli(
        "train",
        "--init-from",
        "distilgpt2",
        "--data",
        str(dataset_dir),
        "--out",
        str(tmp_path / "run"),
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert_one_line_error(
        proc,
        "distilgpt2",
        "hf download distilbert/distilgpt2",
        "huggingface-cli download distilbert/distilgpt2",
        "pip install huggingface_hub",
    )
    assert not (tmp_path / "run").exists()


# ---- from a minigpt run: tokenizer byte for byte, exact resume, freezing, dropout --------------


@pytest.fixture(scope="module")
def minigpt_run(tmp_path_factory, dataset_dir) -> Path:
    run = tmp_path_factory.mktemp("scratch") / "run"
    code, _, err = cli(
        "train",
        "--data",
        str(dataset_dir),
        "--out",
        str(run),
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "16",
        "--max-steps",
        "6",
        "--eval-interval",
        "3",
        "--eval-steps",
        "2",
        "--batch-size",
        "4",
        "--log-interval",
        "1",
        "--sample-tokens",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    )
    assert code == 0, err
    return run


def test_a_minigpt_run_keeps_its_tokenizer_byte_for_byte(tmp_path, minigpt_run, dataset_dir, corpus_file):
    source_tok = (minigpt_run / "best" / "tokenizer.json").read_bytes()
    for data in (dataset_dir, corpus_file):  # a prepared dataset, and text prepared with the run's tokenizer
        run = tmp_path / f"ft-{data.name}"
        code, _, err = cli("train", "--init-from", str(minigpt_run), "--data", str(data), "--out", str(run), *FAST)
        assert code == 0, err
        assert (run / "last" / "tokenizer.json").read_bytes() == source_tok
        info = json.loads((run / "last" / "run.json").read_text())["init_from"]
        assert info["form"] == "minigpt" and info["path"] == str(minigpt_run / "best")  # a run's best
        assert info["weights_sha256"] == sha256(minigpt_run / "best" / "model.safetensors")
        # step 0 is the source checkpoint's own evaluation of these windows
        src = load_checkpoint(minigpt_run).model
        val = np.fromfile(dataset_dir / "val.bin", dtype=np.uint16)
        x, y = windows(val, eval_offsets(len(val), 16, 8), 16, torch.device("cpu"))
        with torch.no_grad():
            want = src(x, y).loss.item()
        assert lines(run)[1][0]["val_loss"] == pytest.approx(want, abs=1e-6)


def test_resume_of_a_fine_tune_is_exact(tmp_path, hf_source, dataset_dir):
    """6 steps straight == 3 steps, then --resume for 3 more (dropout on, so the RNG state
    must come back too): the same losses and the same weights."""
    common = [
        "--init-from",
        str(hf_source),
        "--data",
        str(dataset_dir),
        "--lr",
        "1e-3",
        "--dropout",
        "0.1",
        "--grad-accum",
        "2",
        "--eval-interval",
        "3",
        "--eval-steps",
        "1",
        "--batch-size",
        "2",
        "--sample-tokens",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    ]
    assert cli("train", *common, "--out", str(tmp_path / "a"), "--max-steps", "6")[0] == 0
    assert cli("train", *common, "--out", str(tmp_path / "b"), "--max-steps", "3")[0] == 0
    code, _, err = cli("train", "--resume", "--out", str(tmp_path / "b"), "--max-steps", "6", "--quiet")
    assert code == 0, err
    a, b = lines(tmp_path / "a")[0], lines(tmp_path / "b")[0]
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(a[s] == b[s] for s in a), (a, b)
    wa, wb = (
        load_file(tmp_path / "a" / "last" / "model.safetensors"),
        load_file(tmp_path / "b" / "last" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    run = json.loads((tmp_path / "b" / "last" / "run.json").read_text())
    assert run["init_from"]["source"] == str(hf_source) and run["config"]["model"]["dropout"] == 0.1


def test_frozen_weights_stay_the_source_and_dropout_is_applied(tmp_path, hf_source, dataset_dir):
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        "--init-from",
        str(hf_source),
        "--data",
        str(dataset_dir),
        "--out",
        str(run),
        "--freeze-embeddings",
        "--freeze-layers",
        "1",
        "--dropout",
        "0.2",
        "--lr",
        "1e-2",
        *FAST,
    )
    assert code == 0, err
    assert "frozen: embeddings, layer 0" in err
    src = pretrained.load_source(pretrained.inspect_source(str(hf_source))).model.state_dict()
    ckpt = load_checkpoint(run / "last")
    assert ckpt.model.config.dropout == 0.2
    got = ckpt.model.state_dict()
    frozen = [k for k in got if k.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.", "lm_head"))]
    assert len(frozen) == 2 + 12 + 1
    assert all(torch.equal(got[k], src[k]) for k in frozen)
    assert all(not torch.equal(got[k], src[k]) for k in got if k not in frozen)
    # A resumed run freezes the same weights, and refuses to freeze others.
    code, _, err = cli("train", "--resume", "--out", str(run), "--max-steps", "5", "--freeze-layers", "0", "--quiet")
    assert code == 2 and "freeze_layers=1" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "--resume", "--out", str(run), "--max-steps", "6", "--quiet")
    assert code == 0, err
    got = load_checkpoint(run / "last").model.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in frozen)


def test_a_baseline_run_fine_tunes_too(tmp_path, dataset_dir):
    """Any kind that learns by gradient: an LSTM, its context cropped and dropout applied
    (the same weights in a model of that shape), its embedding frozen."""
    src = tmp_path / "lstm"
    code, _, err = cli(
        "train",
        "--model",
        "lstm",
        "--data",
        str(dataset_dir),
        "--out",
        str(src),
        "--n-layer",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "16",
        *FAST,
    )
    assert code == 0, err
    run = tmp_path / "ft"
    code, _, err = cli(
        "train",
        "--init-from",
        str(src),
        "--data",
        str(dataset_dir),
        "--out",
        str(run),
        "--block-size",
        "8",
        "--dropout",
        "0.1",
        "--freeze-embeddings",
        "--lr",
        "1e-2",
        *FAST,
    )
    assert code == 0, err
    before, after = load_checkpoint(src).model, load_checkpoint(run / "last").model
    assert after.model_type == "lstm" and (after.config.block_size, after.config.dropout) == (8, 0.1)
    assert torch.equal(after.wte.weight, before.wte.weight)
    assert not torch.equal(after.rnn.weight_hh_l1, before.rnn.weight_hh_l1)
    code, _, err = cli(
        "train",
        "--init-from",
        str(src),
        "--data",
        str(dataset_dir),
        "--out",
        str(tmp_path / "x"),
        "--freeze-layers",
        "1",
        *FAST,
    )
    assert code == 2 and "--freeze-layers takes GPTs" in err and not (tmp_path / "x").exists()


def test_a_recipe_directory_is_text_for_a_fine_tune(tmp_path, hf_source, corpus_text, dataset_dir):
    """`--data DIR` with a dataset.toml (as the bundled corpus has): without --init-from it
    prepares itself in place with its own tokenizer; a fine-tune prepares its sources with
    SOURCE's tokenizer into OUT/data and leaves DIR as it was."""
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "play.txt").write_text(corpus_text)
    (data / "dataset.toml").write_text('sources = ["play.txt"]\nvocab_size = 280\n')
    code, _, err = cli(
        "train", "--init-from", str(hf_source), "--data", str(data), "--out", str(tmp_path / "run"), *FAST
    )
    assert code == 0, err
    assert sorted(p.name for p in data.iterdir()) == ["dataset.toml", "play.txt"]
    assert (tmp_path / "run" / "data" / "val.bin").read_bytes() == (dataset_dir / "val.bin").read_bytes()


# ---- everything else a run has --------------------------------------------------------------------


def test_every_command_works_on_a_fine_tuned_run(finetuned, minigpt_run, tmp_path):
    for args in (
        ["sample", "--checkpoint", str(finetuned), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "1"],
        ["eval", "--checkpoint", str(finetuned), "--samples", "2", "--max-new-tokens", "8", "--device", "cpu"],
        ["compare", str(finetuned), str(minigpt_run), "--json"],
        ["attention", "--checkpoint", str(finetuned), "--prompt", "ROMEO: love"],
        ["heads", "--checkpoint", str(finetuned), "--json"],
        ["export-hf", str(finetuned), str(tmp_path / "hf")],
    ):
        code, out, err = cli(*args)
        assert code == 0, (args, err)
        if args[0] == "compare":
            rows = json.loads(out)
            assert [r["model_type"] for r in rows] == ["gpt", "gpt"] and rows[0]["step"] == 4


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues_a_fine_tune_exactly(tmp_path, hf_source, dataset_dir):
    out = tmp_path / "run"
    flags = [
        "--init-from",
        str(hf_source),
        "--data",
        str(dataset_dir),
        "--lr",
        "1e-3",
        "--eval-interval",
        "100000",
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
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *flags, "--max-steps", "100000", "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text().count('"loss"') < 3:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    k = json.loads((out / "last" / "run.json").read_text())["step"]
    code, _, err = cli("train", "--resume", "--out", str(out), "--max-steps", str(k + 2), "--quiet")
    assert code == 0, err
    assert cli("train", *flags, "--max-steps", str(k + 2), "--out", str(tmp_path / "ref"))[0] == 0
    got, want = lines(out)[0], lines(tmp_path / "ref")[0]
    assert all(got[s] == pytest.approx(want[s], abs=1e-6) for s in range(1, k + 3))


# ---- bad input: one line, exit 2, nothing written to --out ---------------------------------------


class _Payload:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path, hf_source, minigpt_run, dataset_dir, corpus_file, tokenizer
):
    out = tmp_path / "out"

    def refused(*args: str, needles=(), source: Path | str | None = None, data: Path | str = dataset_dir):
        extra = [] if source is None else ["--init-from", str(source)]
        code, _, err = cli("train", *extra, "--data", str(data), "--out", str(out), *args, *FAST)
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        for n in needles:
            assert n in err, (n, err)
        assert not out.exists(), err

    def copy(name: str) -> Path:
        return Path(shutil.copytree(hf_source, tmp_path / name))

    refused(source=tmp_path / "nope", needles=["nope", "no such directory"])
    (tmp_path / "empty").mkdir()
    refused(source=tmp_path / "empty", needles=["not a model", "config.json"])
    refused(source=corpus_file, needles=["is a file"])
    llama = copy("llama")
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    refused(source=llama, needles=["'llama' is not supported", "gpt2", "gpt, lstm, gru"])
    wide = copy("wide")
    (wide / "config.json").write_text(json.dumps({**json.loads((wide / "config.json").read_text()), "n_embd": 64}))
    refused(source=wide, needles=["shape", "config.json"])
    # A pickle where safetensors belong, and a planted pytorch_model.bin: refused, never run.
    marker = tmp_path / "pwned"
    evil = copy("evil")
    (evil / "model.safetensors").write_bytes(pickle.dumps({"transformer.wte.weight": _Payload(marker)}))
    refused(source=evil, needles=["model.safetensors", "cannot read safetensors"])
    (evil / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": _Payload(marker)}, evil / "pytorch_model.bin")
    refused(source=evil, needles=["pytorch_model.bin", "refused"])
    assert not marker.exists()
    no_tok = copy("no-tokenizer")
    (no_tok / "tokenizer.json").unlink()
    refused(source=no_tok, needles=["has no tokenizer.json"])
    ngram = tmp_path / "ngram"
    assert (
        cli(
            "train",
            "--model",
            "ngram",
            "--data",
            str(dataset_dir),
            "--out",
            str(ngram),
            "--quiet",
            "--sample-tokens",
            "0",
            "--device",
            "cpu",
        )[0]
        == 0
    )
    refused(source=ngram, needles=["learns by counting"])
    # data in another tokenizer
    other = tmp_path / "other-data"
    prepare([corpus_file], other, vocab_size=280, progress=False)
    refused(source=hf_source, data=other, needles=["another tokenizer", "give the text itself"])
    # flags that would change the shape, or clash
    refused("--n-layer", "3", source=hf_source, needles=["--n-layer 3", "n_layer is 2"])
    refused("--model", "lstm", source=hf_source, needles=["--model lstm"])
    refused("--vocab-size", "500", source=hf_source, needles=["--vocab-size"])
    refused("--block-size", "64", source=hf_source, needles=["--block-size 64", "at most 32"])
    refused("--freeze-layers", "3", source=hf_source, needles=["--freeze-layers 3", "only 2 layers"])
    refused("--freeze-layers", "1", needles=["freeze_layers", "only with --init-from"])
    refused("--init-from-sha256", "0" * 64, source=hf_source, needles=["SHA-256", "0" * 64])
    refused("--resume", source=hf_source, needles=["--init-from and --resume", "pass one of them"])
    refused(source=hf_source, data=tmp_path / "no-such-text.txt", needles=["data directory not found"])
    bad_text = tmp_path / "bad.txt"
    bad_text.write_bytes(b"valid text\n" * 50 + b"\xff\xfe broken\n")
    refused(source=hf_source, data=bad_text, needles=["invalid UTF-8"])  # fails while preparing: --out removed
    # one more through a real process: the exit code and stderr the user sees
    proc = run_cli("train", "--init-from", str(llama), "--data", str(dataset_dir), "--out", str(out))
    assert_one_line_error(proc, "model_type 'llama' is not supported")
    assert not out.exists()


# ---- the command line ---------------------------------------------------------------------------


def test_help_and_defaults_of_a_fine_tune():
    p = _Parser()
    _build_train(p)
    text = p.format_help()
    for needle in (
        "--init-from SOURCE",
        "(with --init-from: 3e-05)",
        "(with --init-from: the source's)",
        "--freeze-embeddings",
        "--freeze-layers N",
        "--data-out DIR",
    ):
        assert needle in " ".join(text.split()), needle
    cfg = resolve_train_config(p.parse_args(["--init-from", "gpt2"]))
    assert cfg.preset == "finetune" and cfg.optim.lr == cfg.optim.min_lr == 3e-5 and cfg.optim.warmup_steps == 0
    assert cfg.model.block_size == 0  # SOURCE's, decided when it is read
    assert cfg.run.out == "out/finetune"  # beside the default run, not into it
    cfg = resolve_train_config(p.parse_args(["--init-from", "gpt2", "--lr", "1e-4"]))
    assert cfg.optim.lr == cfg.optim.min_lr == 1e-4  # still constant
    cfg = resolve_train_config(p.parse_args(["--init-from", "gpt2", "--lr", "1e-4", "--min-lr", "1e-5"]))
    assert cfg.optim.min_lr == 1e-5
    cfg = resolve_train_config(p.parse_args(["--init-from", "gpt2", "--preset", "cpu"]))
    assert cfg.preset == "cpu" and cfg.optim.lr == PRESETS["cpu"]["lr"]  # a named preset wins over finetune
    assert resolve_train_config(p.parse_args([])).preset == "cpu"


def test_a_gpt2_directory_with_vocab_and_merges_fine_tunes_on_text(
    tmp_path, hf_source, corpus_file, dataset_dir, tokenizer
):
    """GPT-2 with its tokenizer as OpenAI released it (vocab.json + merges.txt, no
    tokenizer.json): text is prepared with it into exactly the tokens the tokenizer.json
    gives, and import-hf keeps it as the checkpoint's tokenizer."""
    from .test_tokenizer import write_vocab_merges

    src = tmp_path / "gpt2-original-files"
    shutil.copytree(hf_source, src)
    (src / "tokenizer.json").unlink()
    write_vocab_merges(tokenizer, src)
    run = tmp_path / "run"
    code, _, err = cli(
        "train", "--init-from", str(src), "--data", str(corpus_file), "--out", str(run), "--block-size", "16", *FAST
    )
    assert code == 0, err
    for name in ("train.bin", "val.bin"):
        assert (run / "data" / name).read_bytes() == (dataset_dir / name).read_bytes()
    code, _, err = cli("import-hf", str(src), str(tmp_path / "ckpt"))
    assert code == 0, err
    kept = load_checkpoint(tmp_path / "ckpt").tokenizer
    for text in ("Thou art my sweet rose.", "  héllo\n\tworld", "to be<|endoftext|>"):
        assert kept.encode(text) == tokenizer.encode(text)
