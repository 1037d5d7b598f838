"""A run that ends with its verdict (issue 27): where the model is, which step `best` holds and
its bits per byte, against a Kneser-Ney n-gram counted on the same data; a warning while
validation worsens; fine-tune defaults chosen by the source's size, reporting the best step."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

from minigpt import trainer as trainer_mod
from minigpt.baselines import NGramConfig, NGramLM
from minigpt.data import Dataset
from minigpt.plan import finetune_lr
from minigpt.runtime import Runtime
from minigpt.trainer import YARDSTICK_ORDER, evaluate, padded_byte_lengths, train

from .test_trainer import make_cfg, metrics


def test_the_last_lines_name_best_its_step_its_bits_per_byte_and_the_ngrams(tmp_path, dataset_dir, capsys):
    out = tmp_path / "run"
    cfg = make_cfg(out, dataset_dir, max_steps=30, eval_interval=10, eval_steps=2)
    train(cfg, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    model_line, yard_line = err[-2], err[-1]
    _, evals = metrics(out)
    best_step = min((s for s in evals if s > 0), key=lambda s: evals[s]["val_loss"])
    assert f"{out}/best is step {best_step}, {evals[best_step]['val_bpb']:.4f} bits/byte" in model_line
    # The oracle: the n-gram counted here and scored on the windows of the run's own evaluations
    # (the trainer's call for the GPT: batch_size x eval_steps), independently of the verdict's code.
    data = Dataset(dataset_dir)
    ngram = NGramLM(NGramConfig(vocab_size=data.vocab_size, order=YARDSTICK_ORDER)).fit(data.tokens("train"))
    want = evaluate(
        ngram,
        data.tokens("val"),
        padded_byte_lengths(data.tokenizer, data.vocab_size),
        block_size=16,
        batch_size=4,
        steps=2,
        rt=Runtime(torch.device("cpu"), torch.float32),
    )["bpb"]
    got = float(re.search(r"scores ([0-9.]+) bits/byte", yard_line).group(1))
    assert got == pytest.approx(want, abs=1e-4)
    assert f"a {YARDSTICK_ORDER}-gram (Kneser-Ney) counted on the train split" in yard_line
    gap = abs(want - evals[best_step]["val_bpb"])
    assert f"{gap:.4f} {'better' if want > evals[best_step]['val_bpb'] else 'worse'}" in yard_line


def test_a_worsening_validation_is_reported_while_it_happens(tmp_path, dataset_dir, capsys, monkeypatch):
    """Force validation to rise after step 10 (the real losses plus a growing penalty): the
    warning appears at the second rise in a row, and names the step `best` holds."""
    real = trainer_mod.eval_splits

    def worsening(*a, **k):
        ev = real(*a, **k)
        step = ev["step"]
        return {**ev, "val_loss": ev["val_loss"] + (step - 10) * 1.0 if step > 10 else ev["val_loss"]}

    monkeypatch.setattr(trainer_mod, "eval_splits", worsening)
    out = tmp_path / "run"
    train(make_cfg(out, dataset_dir, max_steps=40, eval_interval=10, eval_steps=1), progress=False)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "has risen" in line]
    assert [w.split(":")[0].split()[-1] for w in warnings] == ["30", "40"]  # the 2nd and 3rd rise in a row
    assert f"{out}/best holds step 10" in warnings[0] and "overfitting" in warnings[0]
    assert f"{out}/best is step 10" in err.strip().splitlines()[-2]
    assert json.loads((out / "best" / "run.json").read_text())["step"] == 10


def test_no_warning_while_validation_improves(tmp_path, dataset_dir, capsys):
    train(make_cfg(tmp_path / "run", dataset_dir, max_steps=20, eval_interval=5, eval_steps=1), progress=False)
    _, evals = metrics(tmp_path / "run")
    vals = [evals[s]["val_loss"] for s in sorted(evals)]
    rises = [b > a for a, b in zip(vals, vals[1:])]
    assert not any(x and y for x, y in zip(rises, rises[1:]))  # precondition: no two rises in a row
    assert "has risen" not in capsys.readouterr().err


def test_a_small_source_fine_tunes_at_its_own_rate_and_the_last_line_reports_the_best_step(tmp_path, dataset_dir):
    from minigpt.cli import main

    assert finetune_lr(2_000_000) == 1e-3 and finetune_lr(124_000_000) == 3e-5
    src = tmp_path / "src"
    train(make_cfg(src, dataset_dir, max_steps=4, eval_interval=4), progress=False)
    out = tmp_path / "ft"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(
            [
                "train",
                "--init-from",
                str(src),
                "--data",
                str(dataset_dir),
                "--out",
                str(out),
                "--max-steps",
                "6",
                "--eval-interval",
                "2",
                "--eval-steps",
                "1",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--sample-tokens",
                "0",
                "--quiet",
            ]
        )
    assert rc == 0, err.getvalue()
    optim = json.loads((out / "train_config.json").read_text())["optim"]
    assert optim["lr"] == optim["min_lr"] == 1e-3  # a minigpt-sized source: 1e-3, still constant
    _, evals = metrics(out)
    best = min((s for s in evals if s > 0), key=lambda s: evals[s]["val_loss"])
    line = next(x for x in err.getvalue().splitlines() if x.startswith("fine-tuned"))
    assert f"-> {evals[best]['val_loss']:.4f} at step {best} (best)" in line
