"""A run that plans itself (plan.py): the rules, the plan line and its record, flags winning
over the plan, exact resume of a planned run, the budget re-planned on a machine that slows
(a fake clock), and a tiny or empty corpus."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from minigpt import plan as plan_mod
from minigpt.plan import (
    CONTEXT,
    REACH,
    REGULARISATION,
    VOCABULARY,
    Budget,
    choose,
    fit_window,
    free_settings,
    pick,
    reach,
    vocab_for,
    window_for,
)
from minigpt.runtime import ThreadGovernor

from .test_trainer import metrics

# A small model and evaluation, so each run takes seconds; the plan still chooses the rest.
SMALL = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--eval-steps",
    "1",
    "--sample-tokens",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--warmup-steps",
    "2",
    "--log-interval",
    "1",
]


def train_cli(*args: str) -> tuple[int, str]:
    """`minigpt train ARGS --quiet` in this process: (exit code, stderr)."""
    from minigpt.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", *args, "--quiet"])
    return rc, err.getvalue()


def plan_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("plan: ")]


def run_json(out: Path) -> dict:
    return json.loads((out / "last" / "run.json").read_text())


# ---- the rules ------------------------------------------------------------------------------------


def test_rules_pick_the_row_of_the_exposure_and_the_text_size():
    assert pick(REGULARISATION, 4.1)["dropout"] == 0.0  # the bundled corpus (2.6 passes, 5 x 192): no dropout
    assert pick(REGULARISATION, 9.7)["dropout"] == 0.1  # Python source (4.1 passes, 5 x 192): 0.1
    assert pick(REGULARISATION, 26.8)["dropout"] == 0.1  # the Russian fortunes (7.5 passes, 5 x 192)
    assert pick(REGULARISATION, 57.1)["dropout"] == 0.15  # tinyshakespeare at 3 minutes (7.6 passes, 5 x 192)
    assert pick(REGULARISATION, 339.0)["dropout"] == 0.3  # the 98 KB text (40 passes, 3 x 96)
    assert not any(rule.settings["attn_dropout"] for rule in REGULARISATION)  # the residual branches only
    sizes = (3_000, 500_000, 750_000, 1_115_394, 5 << 20, 100 << 20)  # tiny, the Italian and Czech fortunes, ...
    assert [vocab_for(n) for n in sizes] == [512, 512, 1024, 2048, 2048, 4096]  # ... tinyshakespeare, bundled, large
    assert all(rule.evidence for table in plan_mod.RULES.values() for rule in table)  # every row says why
    assert all(a.at_least < b.at_least for table in plan_mod.RULES.values() for a, b in zip(table, table[1:]))
    assert [r.at_least for r in VOCABULARY][0] == 0


def test_a_small_corpus_gets_a_window_and_batch_it_can_fill():
    block, batch = fit_window(train_tokens=300, val_tokens=40, block_size=64, batch_size=32)
    assert val_ok(40, block) and 300 - block >= batch and (block, batch) == (32, 32)
    assert fit_window(100_000, 10_000, 64, 32) == (64, 32)  # a normal corpus keeps the preset's
    block, batch = fit_window(train_tokens=30, val_tokens=12, block_size=64, batch_size=32)
    assert val_ok(12, block) and 30 - block >= batch


def test_the_plan_reads_a_longer_context_in_a_smaller_batch_the_same_tokens_a_step():
    """CONTEXT where both are planned: the preset's tokens a step (the rules' exposure was
    measured at them), a longer context than the preset's 64 from some size of text on; one
    of yours keeps the other the preset's; a text that cannot fill the window gets a shorter
    one, as fit_window makes it."""
    both = ["block_size", "batch_size"]
    for tokens in (45_000, 350_000, 60_000_000):
        ctx = pick(CONTEXT, tokens)
        assert window_for(tokens, tokens // 9, both, 64, 32) == (ctx["block_size"], ctx["batch_size"])
        assert ctx["block_size"] * ctx["batch_size"] == 64 * 32
    assert pick(CONTEXT, 350_000)["block_size"] > 64  # tinyshakespeare's size reads further back
    assert window_for(350_000, 40_000, ["block_size"], 64, 32) == (64, 32)  # a --batch-size of yours
    assert window_for(350_000, 40_000, ["batch_size"], 256, 32) == (256, 32)  # a --block-size of yours
    ctx = pick(CONTEXT, 300)
    assert window_for(300, 40, both, 64, 32) == fit_window(300, 40, ctx["block_size"], ctx["batch_size"])
    assert val_ok(40, window_for(300, 40, both, 64, 32)[0])


def reach_by_hand(tokens, near: int, far: int) -> float:
    """`reach` written out: for each trigram, look back for its last occurrence."""
    t = [int(x) for x in tokens]
    found = 0
    for i in range(2, len(t)):
        back = next((i - j for j in range(i - 1, 1, -1) if t[j - 2 : j + 1] == t[i - 2 : i + 1]), None)
        found += back is not None and near < back <= far
    return found / max(1, len(t) - 2)


def test_reach_counts_the_trigrams_last_seen_between_near_and_far_tokens_back():
    """The fast path (one sort) against a scan position by position, on text with repeats at
    every distance; a long text is read in four evenly spaced spans."""
    rng = np.random.default_rng(0)
    for vocab, n in ((3, 300), (5, 400), (40, 500)):
        tokens = rng.integers(0, vocab, n)
        tokens[200:260] = tokens[50:110]  # a copy 150 tokens later: inside (128, 256]
        for near, far in ((128, 256), (8, 40), (0, 3)):
            assert reach(tokens, near, far) == pytest.approx(reach_by_hand(tokens, near, far), abs=1e-12)
    tokens = rng.integers(0, 7, 4_000).astype(np.uint16)
    spans = [tokens[s : s + 250] for s in (0, 1250, 2500, 3750)]  # sample 1000: four spans of 250
    by_hand = sum(reach_by_hand(x, 8, 40) * 248 for x in spans) / (4 * 248)
    assert reach(tokens, 8, 40, sample=1000) == pytest.approx(by_hand, abs=1e-12)
    assert reach(np.zeros(2, dtype=np.uint16)) == 0.0  # no trigram at all


def test_a_text_that_repeats_itself_from_further_back_reads_a_longer_context():
    """REACH where CONTEXT gives 128: the longer window, the same tokens a step; a text under
    CONTEXT's 128 (a tiny text) or a window of yours does not move."""
    both = ["block_size", "batch_size"]
    far, near = REACH[-1].at_least + 0.01, REACH[-1].at_least - 0.01
    long = REACH[-1].settings
    assert long["block_size"] > pick(CONTEXT, 350_000)["block_size"]
    assert long["block_size"] * long["batch_size"] == 64 * 32
    assert window_for(350_000, 40_000, both, 64, 32, far) == (long["block_size"], long["batch_size"])
    assert window_for(350_000, 40_000, both, 64, 32, near) == (128, 16)
    assert window_for(45_000, 5_000, both, 64, 32, far) == (64, 32)  # CONTEXT's 64: not what reach measures
    assert window_for(350_000, 40_000, ["batch_size"], 64, 32, far) == (64, 32)  # a --block-size of yours
    fitted = fit_window(350_000, 200, long["block_size"], long["batch_size"])
    assert window_for(350_000, 200, both, 64, 32, far) == fitted


def test_a_planned_run_trains_in_the_window_the_plan_chose_and_says_so(tmp_path, corpus_file, monkeypatch):
    """The trainer applies CONTEXT's window and, where REACH says so, the longer one (here
    tables that give this small text 128, then 256), says so in the plan line with the reach
    of the split it trained on, and records both; the same window given as flags is the
    user's, not repeated in the line, and no reach is measured for it."""
    monkeypatch.setattr(plan_mod, "CONTEXT", (plan_mod.Rule(0, dict(block_size=128, batch_size=16), "a test"),))
    for reach_row, flags in ((1.0, []), (1.0, ["--block-size", "128", "--batch-size", "16"]), (0.0, [])):
        # REACH's longer window from `reach_row` on: never, or (a row at 0) for this text too
        rows = (plan_mod.Rule(0, {}, "a test"), plan_mod.Rule(reach_row, dict(block_size=256, batch_size=8), "a test"))
        monkeypatch.setattr(plan_mod, "REACH", rows)
        out = tmp_path / f"r{len(flags)}-{reach_row}"
        rc, err = train_cli("--data", str(corpus_file), "--out", str(out), "--max-steps", "2", *flags, *SMALL)
        assert rc == 0, err
        rec = run_json(out)
        window = (256, 8) if reach_row == 0.0 else (128, 16)
        assert (rec["config"]["model"]["block_size"], rec["config"]["optim"]["batch_size"]) == window
        assert ({"block_size", "batch_size"} <= set(rec["plan"]["yours"])) == bool(flags)
        if flags:  # the same window given as flags: the user's, not repeated, and no reach measured
            assert "block 128" not in plan_lines(err)[0] and "reach" not in rec["plan"], plan_lines(err)
            continue
        train = np.fromfile(out / "data" / "train.bin", dtype=np.uint16)  # the split it trained on
        assert rec["plan"]["reach"] == round(reach(train), 4)
        assert f"block {window[0]} x batch {window[1]} (reach {reach(train):.3f})" in plan_lines(err)[0]


def val_ok(val_tokens: int, block: int) -> bool:
    return val_tokens >= block + 1


_CURRENT = dict(
    n_layer=3,
    n_head=6,
    n_embd=192,
    dropout=0.0,
    attn_dropout=True,
    weight_decay=0.1,
    muon_weight_decay=0.0,
    optimizer="muon",
    vocab_size=512,
    block_size=64,
    batch_size=32,
    eval_interval=500,
)


def test_a_run_that_overfits_evaluates_often_enough_for_best_to_find_its_minimum():
    """~EVALUATIONS (6) evaluations where the text is seen >= 4 times (the oracle: `best` can only be as good
    as the evaluation that found it); the preset's interval where it is seen less."""
    from minigpt.plan import EVALUATIONS, eval_interval_for

    assert eval_interval_for(873, 40.0, 500) == 873 // EVALUATIONS
    assert eval_interval_for(3000, 3.7, 500) == 500  # a corpus seen under 4 times: the preset's
    assert eval_interval_for(100, 40.0, 500) == 25  # never below 25 steps
    assert eval_interval_for(100_000, 9.0, 500) == 500  # never above the preset's
    plan = choose(
        train_tokens=45_000,
        tokens_per_s=30_000,
        tokens_per_step=2048,
        seconds_left=280,
        budget_s=285,
        max_steps=2300,
        current=_CURRENT,
        planned=["eval_interval", "dropout"],
    )
    assert plan.settings["eval_interval"] == plan.steps // EVALUATIONS and "eval every" in plan.line()


def test_the_plans_docstring_examples():
    import doctest

    result = doctest.testmod(plan_mod)
    assert result.failed == 0 and result.attempted > 0


def test_a_tiny_text_gets_the_smaller_model_of_the_shape_rule_and_your_shape_wins():
    """The shape follows the training tokens (plan.SHAPES, read here as the oracle): a text
    under the boundary gets the first row's model, a larger one the second's; a width or
    depth the user gave stays."""
    from minigpt.plan import SHAPES

    small, large = SHAPES[0], SHAPES[1]
    kw = dict(tokens_per_s=30_000, tokens_per_step=2048, seconds_left=280, budget_s=285, max_steps=2300,
              current=_CURRENT)  # fmt: skip
    planned = ["n_layer", "n_head", "n_embd", "dropout"]
    tiny = choose(train_tokens=int(large.at_least) - 1, planned=planned, **kw)
    assert {k: tiny.settings[k] for k in small.settings} == small.settings
    assert f"{small.settings['n_layer']}x{small.settings['n_embd']}," in tiny.line()
    big = choose(train_tokens=int(large.at_least), planned=planned, **kw)
    assert {k: big.settings[k] for k in large.settings} == large.settings
    assert small.settings["n_embd"] < large.settings["n_embd"]
    yours = choose(train_tokens=45_000, planned=["n_layer", "dropout"], **kw)
    assert (yours.settings["n_embd"], yours.settings["n_head"]) == (192, 6) and "(yours)" in yours.line()
    heads = choose(train_tokens=45_000, planned=["n_layer", "n_embd", "dropout"], **kw)  # --n-head given: the width too
    assert (heads.settings["n_embd"], heads.settings["n_head"]) == (192, 6)


def test_free_settings_are_the_cpu_defaults_the_user_left_unset():
    assert "dropout" in free_settings("cpu", set()) and "max_time" in free_settings("cpu", set())
    assert "dropout" not in free_settings("cpu", {"dropout"})
    assert "max_time" not in free_settings("cpu", {"max_steps"})  # --max-steps: exact steps, no budget
    assert free_settings("nanogpt-cpu", set()) == free_settings("shakespeare-char", set()) == []
    assert free_settings("cpu", set(), fine_tune=True) == free_settings("cpu", set(), resume=True) == []
    assert free_settings("cpu", {"model"}) == []  # a baseline (--model lstm) trains as asked


# ---- the plan line, its record, and the user's flags ----------------------------------------------------


def test_a_long_enough_cpu_budget_compiles_and_plans_with_the_compiled_speed():
    """The compilation rule: from COMPILATION's threshold of training seconds on the CPU the
    plan compiles, counting the compile's cost and gain (so the steps are those of the
    faster step in the time left) and trains a deeper model unless the depth is yours; a
    shorter budget, another device, --max-steps or the user's --no-compile keep it off; the
    line says so."""
    current = dict(_CURRENT, vocab_size=2048, compile=None)
    planned = [k for k in plan_mod.PLANNABLE if k != "max_time"]
    kw = dict(train_tokens=5_000_000, tokens_per_s=20_000.0, tokens_per_step=2048, budget_s=285.0, max_steps=2300,
              current=current, planned=planned)  # fmt: skip
    gain = plan_mod.compile_gain(192)  # bf16 products, the default
    threshold = plan_mod.COMPILE_COST_S / (1 - 1 / gain)  # seconds left where compiling saves its cost
    assert plan_mod.COMPILATION[1].at_least == plan_mod.COMPILE_COST_S
    long = choose(seconds_left=threshold + 100, cpu=True, **kw)
    assert long.settings["compile"] is True
    # deeper (COMPILED_SHAPES' row for its size), its steps scaled by the cost of the depth in matrix weights
    deeper = pick(plan_mod.COMPILED_SHAPES, 5_000_000)["n_layer"]
    assert long.settings["n_layer"] == deeper > current["n_layer"]
    scale = plan_mod.matmul_params(3, 192, 2048) / plan_mod.matmul_params(deeper, 192, 2048)
    assert plan_mod.matmul_params(3, 192, 2048) == 12 * 3 * 192**2 + 2048 * 192
    seconds = threshold + 100 - plan_mod.COMPILE_COST_S
    assert long.steps == int(int(seconds * 20_000 * gain / 2048) * scale)
    assert f"(~{20 * gain * scale:.0f}k compiled)" in long.line() and "~20k tokens/s" in long.line()
    assert "compiled" in long.line() and f"{deeper}x192" in long.line()
    assert long.to_dict()["measured_tokens_per_s"] == 20_000.0
    mine = choose(seconds_left=threshold + 100, cpu=True, **{**kw, "planned": [k for k in planned if k != "n_layer"]})
    assert mine.settings["n_layer"] == 3 and mine.settings["compile"] is True  # your depth stays
    for short in (
        choose(seconds_left=threshold - 1, cpu=True, **kw),
        choose(seconds_left=threshold + 100, cpu=False, **kw),
        choose(seconds_left=0.0, cpu=True, **{**kw, "budget_s": 0.0}),
    ):
        assert short.settings["compile"] is None and "compiled" not in short.line()
    eager = int((threshold - 1) * 20_000 / 2048)
    assert choose(seconds_left=threshold - 1, cpu=True, **kw).steps == eager  # no gain, no cost
    mine = choose(seconds_left=threshold + 100, cpu=True, **{**kw, "planned": [k for k in planned if k != "compile"],
                  "current": {**current, "compile": False}})  # fmt: skip
    assert mine.settings["compile"] is False and "compiled" not in mine.line()
    forced = choose(seconds_left=10.0, cpu=True, **{**kw, "planned": [k for k in planned if k != "compile"],
                    "current": {**current, "compile": True}})  # fmt: skip
    assert "compiled (yours)" in forced.line()


def test_a_cpu_that_multiplies_in_fp32_compiles_only_where_the_gain_pays_for_the_compile():
    """Without native bf16 a compiled step gains less, the less the wider the model
    (COMPILE_GAINS): the 192 wide model of a 5-minute run stays eager, 3 deep, where the same
    run on a bf16 CPU compiles 5 deep; a budget long enough to save the compile's cost compiles
    it, at the fp32 gain; a tiny text's 96 wide model, which gains more, compiles in 5 minutes."""
    current = dict(_CURRENT, vocab_size=2048, compile=None)
    planned = [k for k in plan_mod.PLANNABLE if k != "max_time"]
    kw = dict(tokens_per_s=20_000.0, tokens_per_step=2048, max_steps=0, current=current, planned=planned, cpu=True)
    bf16, fp32 = (plan_mod.compile_gain(w, b) for w, b in ((192, True), (192, False)))
    assert fp32 < plan_mod.compile_gain(128, False) < plan_mod.compile_gain(96, False) and fp32 < bf16
    five_minutes = dict(train_tokens=1_670_000, budget_s=285.0, seconds_left=250.0)
    assert 250.0 * (1 - 1 / bf16) >= plan_mod.COMPILE_COST_S > 250.0 * (1 - 1 / fp32)
    on_bf16, on_fp32 = (choose(**kw, **five_minutes, bf16=b) for b in (True, False))
    assert on_bf16.settings["compile"] is True and on_bf16.settings["n_layer"] == 5 and "compiled" in on_bf16.line()
    assert on_fp32.settings["compile"] is None and on_fp32.settings["n_layer"] == 3 and "compiled" not in on_fp32.line()
    assert on_fp32.steps == int(250.0 * 20_000 / 2048) and on_fp32.tokens_per_s == 20_000.0
    seconds = plan_mod.COMPILE_COST_S / (1 - 1 / fp32) + 50  # long enough to save the cost in fp32
    longer = choose(**kw, train_tokens=1_670_000, budget_s=seconds + 40, seconds_left=seconds, bf16=False)
    assert longer.settings["compile"] is True and longer.settings["n_layer"] == 5
    scale = plan_mod.matmul_params(3, 192, 2048) / plan_mod.matmul_params(5, 192, 2048)
    assert longer.tokens_per_s == pytest.approx(20_000 * fp32 * scale)
    tiny = choose(**{**kw, "current": {**current, "vocab_size": 512}}, train_tokens=45_000, budget_s=285.0,
                  seconds_left=250.0, bf16=False)  # fmt: skip
    assert tiny.settings["n_embd"] == 96 and tiny.settings["compile"] is True
    assert tiny.settings["n_layer"] == pick(plan_mod.COMPILED_SHAPES, 45_000)["n_layer"]


def test_a_regularised_run_compiles_only_with_the_plans_residual_dropout():
    """A text seen often enough for dropout: the plan's residual-only dropout compiles (each
    mask made once, read by the fused loops) and goes deeper, as a run without dropout does; a
    --dropout of yours keeps the weights' dropout, which is slow compiled, so that run trains
    eagerly."""
    current = dict(_CURRENT, vocab_size=2048, compile=None)
    planned = [k for k in plan_mod.PLANNABLE if k != "max_time"]
    kw = dict(train_tokens=350_000, tokens_per_s=20_000.0, tokens_per_step=2048, budget_s=285.0, max_steps=2300,
              seconds_left=250.0, cpu=True)  # fmt: skip
    planned_run = choose(current=current, planned=planned, **kw)
    weights = 12 * 5 * 192**2 + 2048 * 192  # the compiled 5 x 192 model's, through which a token passes
    rule = pick(REGULARISATION, planned_run.steps * 2048 / 350_000 * weights / 350_000)
    assert rule["dropout"] > 0 and planned_run.settings["dropout"] == rule["dropout"]
    assert planned_run.settings["attn_dropout"] is False and planned_run.settings["compile"] is True
    assert planned_run.settings["n_layer"] == pick(plan_mod.COMPILED_SHAPES, 350_000)["n_layer"]
    assert "residual dropout" in planned_run.line() and "compiled" in planned_run.line()
    yours = choose(current={**current, "dropout": 0.1}, planned=[k for k in planned if k != "dropout"], **kw)
    assert yours.settings["attn_dropout"] is True and yours.settings["compile"] is None
    assert yours.settings["n_layer"] == 3 and "compiled" not in yours.line() and "dropout 0.1 (yours)" in yours.line()
    # Texts that reach the pass cap even eagerly: AT_THE_CAP's row for their size says whether
    # they compile all the same, for depth (the same passes: the run ends sooner), or keep SHAPES'
    # eager model. One text in each row: a tiny one (3 x 96 -> 8 deep), one just under the last
    # boundary (3 x 192, eager) and one from it (5 deep): COMPILED_SHAPES' depth for its size.
    longer = dict(budget_s=1000.0, seconds_left=900.0)
    assert [r.at_least for r in plan_mod.AT_THE_CAP][1:] == [plan_mod.SHAPES[1].at_least, 150_000]
    for tokens in (45_000, 149_999, 350_000):
        assert 900.0 * 20_000 >= plan_mod.MAX_PASSES * tokens  # eagerly, the cap
        run = choose(current=current, planned=planned, **{**kw, **longer, "train_tokens": tokens})
        compiles = pick(plan_mod.AT_THE_CAP, tokens)["compile"]
        assert run.passes == pytest.approx(plan_mod.MAX_PASSES, rel=0.01)
        assert run.settings["compile"] == compiles and ("compiled" in run.line()) == bool(compiles)
        shape = pick(plan_mod.SHAPES, tokens)
        assert run.settings["n_embd"] == shape["n_embd"]  # the width is SHAPES', compiled or not
        deep = pick(plan_mod.COMPILED_SHAPES, tokens)["n_layer"]
        assert run.settings["n_layer"] == (deep if compiles else shape["n_layer"]), tokens
    assert pick(plan_mod.AT_THE_CAP, 45_000)["compile"] and not pick(plan_mod.AT_THE_CAP, 149_999)["compile"]
    # the tiny text deeper than a larger one, each deeper than SHAPES' eager model for its size
    assert pick(plan_mod.COMPILED_SHAPES, 45_000)["n_layer"] > pick(plan_mod.COMPILED_SHAPES, 350_000)["n_layer"]
    assert pick(plan_mod.COMPILED_SHAPES, 350_000)["n_layer"] > pick(plan_mod.SHAPES, 350_000)["n_layer"]


def test_at_the_same_passes_the_text_with_fewer_tokens_per_weight_gets_dropout():
    """The Python source / bundled corpus pair (BENCHMARKS, sixth pass): both seen ~3.5 times
    by the compiled 5 x 192 model; the 1.10M-token text gets dropout, the 1.67M-token one
    none, and each plan's exposure is passes x weights / train tokens, recomputed here."""
    current = dict(_CURRENT, vocab_size=2048, compile=None)
    planned = [k for k in plan_mod.PLANNABLE if k != "max_time"]
    runs = {}
    for name, tokens in (("python", 1_100_000), ("bundled", 1_670_000)):
        # the probe's eager speed that buys ~3.5 passes of the compiled 5-deep model
        gain = plan_mod.compile_gain(192)
        rate = 3.5 * tokens / 250.0 * 2.605 / 1.720 / gain * 250 / (250 - plan_mod.COMPILE_COST_S)
        run = choose(train_tokens=tokens, tokens_per_s=rate, tokens_per_step=2048, seconds_left=250.0, budget_s=285.0,
                     max_steps=0, current=current, planned=planned, cpu=True)  # fmt: skip
        assert run.settings["n_layer"] == 5 and run.settings["compile"] is True
        assert run.passes == pytest.approx(3.5, rel=0.02)
        weights = 12 * 5 * 192**2 + 2048 * 192
        assert run.exposure == pytest.approx(run.passes * weights / tokens, rel=1e-9)
        runs[name] = run
    assert runs["python"].settings["dropout"] == 0.1 and runs["bundled"].settings["dropout"] == 0.0
    assert f"(exposure {runs['python'].exposure:.3g}) -> 5x192, residual dropout 0.1," in runs["python"].line()


@pytest.mark.parametrize("train_tokens, index", [(350_000, 2), (30_000, 4)])
def test_the_matrices_decay_where_muon_updates_them_and_only_there(train_tokens, index):
    """The rules' weight decays (Muon's and AdamW's) go with the row the exposure picks, and
    are said in the line; a run whose --optimizer is AdamW has no Muon matrices: no such setting, no such words.
    tinyshakespeare's size at 3 minutes lands in the row from 32; a tiny text read 40 times in the
    row from 300, AdamW's decay 3."""
    current = dict(_CURRENT, compile=None, vocab_size=2048)
    planned = [k for k in plan_mod.PLANNABLE if k != "max_time"]
    kw = dict(train_tokens=train_tokens, tokens_per_s=20_000.0, tokens_per_step=2048, budget_s=180.0, max_steps=0,
              seconds_left=150.0, cpu=True, planned=planned)  # fmt: skip
    muon = choose(current={**current, "optimizer": "muon"}, **kw)
    upper = REGULARISATION[index + 1].at_least if index + 1 < len(REGULARISATION) else math.inf
    assert REGULARISATION[index].at_least <= muon.exposure < upper
    row = pick(REGULARISATION, muon.exposure)
    decay = row["muon_weight_decay"]
    assert decay > 0 and muon.settings["muon_weight_decay"] == decay and f"Muon wd {decay:g}," in muon.line()
    assert muon.settings["weight_decay"] == row["weight_decay"] and f"wd {row['weight_decay']:g}, Muon" in muon.line()
    adamw = choose(current={**current, "optimizer": "adamw"}, **kw)
    assert "muon_weight_decay" not in adamw.settings and "Muon wd" not in adamw.line()
    assert adamw.settings["dropout"] == muon.settings["dropout"]  # the rest of the row is the same


def test_plan_line_is_printed_once_and_recorded_and_its_dropout_follows_the_exposure(tmp_path, corpus_file):
    """Few passes over the text: no dropout; many: residual dropout — each the rules'
    answer for the exposure (passes times the 1 x 32 model's weights per training token)
    recomputed from the record (the oracle is the table, read independently)."""
    for steps in (2, 30):
        out = tmp_path / f"r{steps}"
        rc, err = train_cli(
            "--data", str(corpus_file), "--out", str(out), "--max-steps", str(steps), "--eval-interval", "100", *SMALL
        )
        assert rc == 0, err
        lines = plan_lines(err)
        assert len(lines) == 1
        rec = run_json(out)
        plan = rec["plan"]
        assert plan["line"] == lines[0]
        tokens_per_step = rec["config"]["optim"]["batch_size"] * rec["config"]["model"]["block_size"]
        passes = steps * tokens_per_step / plan["train_tokens"]
        assert plan["passes"] == pytest.approx(passes, rel=1e-3)
        assert plan["train_tokens"] == len(_split_tokens(out, "train"))
        vocab = json.loads((out / "data" / "meta.json").read_text())["vocab_size"]  # BPE may stop short of 512
        seen = passes * (12 * 32**2 + vocab * 32) / plan["train_tokens"]
        assert plan["exposure"] == pytest.approx(seen, rel=1e-3) and f"(exposure {seen:.3g})" in lines[0]
        rule = pick(REGULARISATION, seen)
        want = rule["dropout"]
        assert rec["config"]["model"]["dropout"] == plan["settings"]["dropout"] == want
        assert f"dropout {want:g}" in lines[0] and f"{steps} steps (yours)" in lines[0]
        decay = rule["muon_weight_decay"]  # the matrices' decay follows the same row
        assert rec["config"]["optim"]["muon_weight_decay"] == plan["settings"]["muon_weight_decay"] == decay
        assert (f"Muon wd {decay:g}" in lines[0]) == (decay > 0)
        assert rec["config"]["model"]["attn_dropout"] is False  # the plan's dropout leaves the weights alone
        assert ("residual dropout" in lines[0]) == (want > 0)
        # the corpus is ~20 KB: the vocabulary for its size
        assert rec["config"]["data"]["vocab_size"] == vocab_for(corpus_file.stat().st_size) == 512
        assert (
            f"vocab {vocab}" in lines[0]
            and "(yours), vocab" not in lines[0]
            and f"vocab {vocab} (yours)" not in lines[0]
        )
        # --eval-interval was given: shown as the user's where the plan would have chosen it (an overfitting run)
        assert ("eval every 100 (yours)" in lines[0]) == (passes >= 4), lines[0]
        assert "1x32 (yours)" in lines[0]  # the shape flags were given
        # the window: CONTEXT's (the text fills it), named in the line where it is not the preset's
        ctx = pick(CONTEXT, plan["train_tokens"])
        window = rec["config"]["model"]["block_size"], rec["config"]["optim"]["batch_size"]
        assert window == (ctx["block_size"], ctx["batch_size"])
        assert (f"block {window[0]} x batch {window[1]}" in lines[0]) == (window != (64, 32))
        assert rec["config"]["planned"] == []  # the record is the plan made: a rerun of it is exact
    assert seen >= 6 and want > 0  # the second run did cross the rules' lines


def test_the_plan_reads_a_gzip_texts_size_from_its_trailer(tmp_path):
    """The vocabulary is chosen from the bytes of text the inputs hold: a .gz file counts
    what it decompresses to (its trailer's size, as the preparation's sample reads it), not a
    guess from its compressed size. Here ~600 KB of repetitive text gzips to a few KB, and
    600 KB is the 1024-token row, where 3x the compressed size is the 512 row's."""
    import gzip

    from minigpt import startup, trainer

    raw = ("the same line of text, again and again\n" * 15_000).encode()
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.txt").write_bytes(b"plain text\n" * 10)
    plan = startup.DataPlan(inputs=[str(tmp_path)], out=tmp_path / "prepared")
    assert trainer._text_bytes(plan) == len(raw) + 110
    assert vocab_for(trainer._text_bytes(plan)) == 1024
    assert vocab_for(3 * (tmp_path / "a.txt.gz").stat().st_size) == 512  # what the estimate chose


def _split_tokens(out: Path, split: str):
    from minigpt.data import Dataset

    return Dataset(out / "data").tokens(split)


def test_flags_win_over_the_plan_and_are_marked_yours(tmp_path, corpus_file):
    out = tmp_path / "r"
    rc, err = train_cli(
        "--data",
        str(corpus_file),
        "--out",
        str(out),
        "--max-steps",
        "30",
        "--eval-interval",
        "100",
        "--dropout",
        "0.05",
        "--vocab-size",
        "300",
        "--weight-decay",
        "0.2",
        "--muon-weight-decay",
        "0",
        *SMALL,
    )
    assert rc == 0, err
    line = plan_lines(err)[0]
    rec = run_json(out)
    assert "dropout 0.05 (yours)" in line and "vocab 300 (yours)" in line and "wd 0.2 (yours)" in line
    assert "Muon wd 0 (yours)" in line  # shown though it is off: the user chose it
    assert rec["config"]["model"]["dropout"] == 0.05 and rec["config"]["optim"]["weight_decay"] == 0.2
    assert rec["config"]["optim"]["muon_weight_decay"] == 0.0
    # a --dropout of yours keeps the preset's placement (the weights too): the plan's rate is for its own
    assert rec["config"]["model"]["attn_dropout"] is True and "residual" not in line
    assert json.loads((out / "data" / "meta.json").read_text())["vocab_size"] <= 300
    assert {"dropout", "vocab_size", "weight_decay", "muon_weight_decay", "n_layer"} <= set(rec["plan"]["yours"])


def test_other_presets_do_not_plan(tmp_path, corpus_file):
    rc, err = train_cli(
        "--preset", "nanogpt-cpu", "--data", str(corpus_file), "--out", str(tmp_path / "r"), "--max-steps", "2", *SMALL
    )
    assert rc == 0, err
    assert plan_lines(err) == [] and "plan" not in run_json(tmp_path / "r")
    assert run_json(tmp_path / "r")["config"]["data"]["vocab_size"] == 4096  # the flag's default, as before


def test_a_planned_run_resumes_exactly_and_keeps_its_plan(tmp_path, corpus_file):
    """N steps in one planned run == N/2, then --resume for N/2 more (dropout included: the
    plan chose it, and the resumed run must keep it; 8 and 16 steps are in the same row of
    the rule, so the two runs train the same model)."""
    common = [*SMALL, "--lr-decay-steps", "16", "--eval-interval", "4"]
    rc, err = train_cli("--data", str(corpus_file), "--out", str(tmp_path / "a"), "--max-steps", "16", *common)
    assert rc == 0, err
    rc, err = train_cli("--data", str(corpus_file), "--out", str(tmp_path / "b"), "--max-steps", "8", *common)
    assert rc == 0, err
    before = run_json(tmp_path / "b")["plan"]
    rc, err = train_cli("--resume", "--out", str(tmp_path / "b"), "--max-steps", "16", *common)
    assert rc == 0, err
    assert plan_lines(err) == []  # a resumed run does not plan again...
    ra, rb = run_json(tmp_path / "a"), run_json(tmp_path / "b")
    assert rb["plan"] == before  # ...and keeps the plan it made
    assert ra["config"]["model"]["dropout"] == rb["config"]["model"]["dropout"] > 0  # both planned dropout
    a, _ = metrics(tmp_path / "a")
    b, _ = metrics(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


@pytest.mark.slow
def test_a_compiled_run_with_dropout_resumes_exactly(tmp_path, corpus_file):
    """The compiled model (its dropout masks drawn from a seed from torch's generator,
    kernels.keep_mask) resumes exactly: N steps == N/2, then --resume for N/2 more; and
    it says how long compiling took."""
    # the decays given: the plan of 6 steps and of 12 would pick them from other rows (exposure 30 and 60)
    common = [*SMALL, "--lr-decay-steps", "12", "--eval-interval", "4", "--compile", "--dropout", "0.2",
              "--weight-decay", "0.3", "--muon-weight-decay", "0.2"]  # fmt: skip
    rc, err = train_cli("--data", str(corpus_file), "--out", str(tmp_path / "a"), "--max-steps", "12", *common)
    assert rc == 0, err
    assert "compiled in" in err and "compiled" in plan_lines(err)[0]
    rc, err = train_cli("--data", str(corpus_file), "--out", str(tmp_path / "b"), "--max-steps", "6", *common)
    assert rc == 0, err
    rc, err = train_cli("--resume", "--out", str(tmp_path / "b"), "--max-steps", "12", *common)
    assert rc == 0, err
    assert run_json(tmp_path / "b")["config"]["run"]["compile"] is True
    a, _ = metrics(tmp_path / "a")
    b, _ = metrics(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    # the oracle can fail: another seed draws other masks, so other losses
    rc, err = train_cli("--data", str(corpus_file), "--out", str(tmp_path / "c"), "--max-steps", "12", *common,
                        "--seed", "7")  # fmt: skip
    c, _ = metrics(tmp_path / "c")
    assert any(abs(a[s] - c[s]) > 1e-4 for s in a)


def _compile_first_with(monkeypatch, first, again):
    """loop.compile_first on a tiny GPT whose first compile is `first` (a module standing in
    for torch.compile's), with torch.compile standing in as `again` for the retry; returns the
    model, the batch, what compile_first returned, and the options the retry was given."""
    import torch

    from minigpt import loop, runtime

    from .conftest import tiny_gpt

    model = tiny_gpt(n_embd=32).train()
    rt = runtime.init_runtime("cpu", "float32")
    given = []

    def fake_compile(m, options=None):
        given.append(options)
        return again(m)

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(5)
    batch = (torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8)))
    torch.manual_seed(5)  # the state compile_first must put back (the tests drew from it before)
    return model, batch, loop.compile_first(loop.Wrapped(first(model), True), model, rt, batch), given


class _Broken:
    """A compiled model whose compiler fails: it leaves gradients behind, then raises."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, y):
        out = self.model(x, y)  # the model's output, or a loop.TrainingLoss's loss
        getattr(out, "loss", out).backward()  # gradients made before the failure are dropped too
        raise RuntimeError("CppCompileError: C++ compile error\nno g++ here")


def test_compile_first_falls_back_to_eager_when_compiling_fails(capsys, monkeypatch):
    """A machine where torch.compile fails (no C++ compiler, say) tries once more without the
    C++ wrapper, then trains without compiling: a line says each, the model comes back wrapped
    eagerly (oneDNN Linears), no gradient is left behind and the random state is as before."""
    import torch

    from minigpt import loop

    torch.manual_seed(5)
    before = torch.rand(3)
    model, batch, wrapped, given = _compile_first_with(monkeypatch, _Broken, _Broken)
    assert not wrapped.compiled and isinstance(wrapped.forward, loop.TrainingLoss) and wrapped.forward.model is model
    assert torch.equal(torch.rand(3), before)
    assert all(p.grad is None for p in model.parameters())
    err = capsys.readouterr().err
    assert "compile: failed (CppCompileError: C++ compile error); compiling again without the C++ wrapper" in err
    assert "compile: failed (CppCompileError: C++ compile error); training without it" in err
    assert given == [{"fallback_random": True}]
    loss = wrapped.forward(*batch)  # the eager model trains
    assert torch.equal(loss, model(*batch).loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_compile_first_compiles_without_the_cpp_wrapper_where_only_that_fails(capsys, monkeypatch):
    """A graph the C++ wrapper cannot call (inductor raises NotImplementedError for some) keeps
    the compile: the retry is torch.compile with every CPU option but the wrapper's, and the
    run trains with what it returned; the random state is as before."""
    import torch

    torch.manual_seed(5)
    before = torch.rand(3)

    def compiled(m):
        return lambda x, y: m(x, y)  # stands in for what torch.compile returns

    model, batch, wrapped, given = _compile_first_with(monkeypatch, _Broken, compiled)
    assert wrapped.compiled and not isinstance(wrapped.forward, torch.nn.Module)
    assert given == [{"fallback_random": True}]  # the CPU's options, the wrapper's two left out
    assert torch.equal(torch.rand(3), before)
    assert all(p.grad is None for p in model.parameters())
    err = capsys.readouterr().err
    assert "compiling again without the C++ wrapper" in err and "compiled in" in err
    assert "training without it" not in err
    assert torch.equal(wrapped.forward(*batch), model(*batch).loss)


def test_compile_first_hides_only_the_traced_norms_dtype_warning(monkeypatch):
    """Tracing QK-norm on bf16 queries warns that the fused norm cannot take mixed dtypes
    (the compiled graph fuses it anyway): compile_first keeps that one warning from the user's
    terminal, and lets every other warning through."""
    import warnings

    from minigpt import loop

    class _Warns:
        def __init__(self, model):
            self.model = model

        def __call__(self, x, y):
            warnings.warn("Mismatch dtype between input and weight: input dtype = BFloat16", UserWarning, stacklevel=2)
            warnings.warn("another warning", UserWarning, stacklevel=2)
            return loop.TrainingLoss(self.model)(x, y)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, _, wrapped, _ = _compile_first_with(monkeypatch, _Warns, _Warns)
    said = [str(w.message) for w in seen]
    assert wrapped.compiled and "another warning" in said
    assert not any(m.startswith("Mismatch dtype") for m in said)


def test_the_cpu_compile_options_build_the_wrapper_apart_from_the_kernels():
    """The CPU's inductor options are real inductor settings, and without the wrapper no
    wrapper setting is left (the retry's); other devices get inductor's defaults."""
    import torch
    import torch._inductor.config as inductor_config

    from minigpt import loop

    cpu = loop.compile_options(torch.device("cpu"))
    assert cpu == {"fallback_random": True, "cpp_wrapper": True, "cpp_wrapper_build_separate": True}
    assert all(hasattr(inductor_config, k) for k in cpu)
    assert loop.compile_options(torch.device("cpu"), cpp_wrapper=False) == {"fallback_random": True}
    assert loop.compile_options(torch.device("cuda")) == {}


# ---- the budget ------------------------------------------------------------------------------------


def simulate(
    budget_s: float,
    *,
    slow_from: float,
    factor: float,
    replan: bool,
    eval_interval: int = 200,
    eval_cost: float = 1.0,
    startup: float = 5.0,
    slows_everything: bool = False,
) -> tuple[float, int]:
    """A run on a fake clock: steps of 0.05 s until `slow_from` seconds, then `factor` times
    slower (a competing load arrives mid-run); an evaluation every eval_interval steps.
    Returns (when the whole process ends, steps). `replan=False` is the old behaviour: the
    step count fixed once, from the first steps. `slows_everything`: the load slows the
    evaluations and the final sample and exit too, as a real competing process does."""
    now = {"t": startup}
    b = Budget(
        budget_s,
        0.0,
        eval_interval=eval_interval,
        schedule="wsd",
        cooldown=0.4,
        eval_cost=eval_cost,
        tail=0.5,
        clock=lambda: now["t"],
    )
    step, total, train_time, fixed = 0, 10**9, 0.0, False
    while step < total:
        dt = 0.05 * (factor if now["t"] >= slow_from else 1.0)
        now["t"] += dt
        train_time += dt
        step += 1
        if not (fixed and not replan):
            new = b.steps(step, total, train_time)
            if new is not None:
                total, fixed = new, True
        slow = factor if slows_everything and now["t"] >= slow_from else 1.0
        if step % eval_interval == 0 or step == total:
            now["t"] += eval_cost * slow
            b.record_eval(eval_cost * slow)
    return now["t"] + 0.5 * (factor if slows_everything and now["t"] >= slow_from else 1.0), step


@pytest.mark.parametrize("budget_s", [60.0, 180.0, 600.0])
def test_budget_replans_when_the_machine_slows_mid_run(budget_s):
    steady, _ = simulate(budget_s, slow_from=10**9, factor=1.0, replan=True)
    assert budget_s * 0.97 <= steady <= budget_s * 1.03  # the promise: within 3%
    slowed, steps = simulate(budget_s, slow_from=budget_s * 0.3, factor=1.6, replan=True)
    assert budget_s * 0.97 <= slowed <= budget_s * 1.03, slowed
    once, once_steps = simulate(budget_s, slow_from=budget_s * 0.3, factor=1.6, replan=False)
    assert once > budget_s * 1.1 and steps < once_steps  # planning once overruns: the oracle can fail


@pytest.mark.parametrize("slow_at", [0.35, 0.75])
def test_budget_holds_when_a_load_slows_everything_4x_even_in_the_cooldown(slow_at):
    """What a competing CPU-bound process did to a --max-time 60 run on 2 cores: every step,
    evaluation and the final sample ~4x slower from 1/3 of the budget. Whether the load comes
    in the stable phase or in the cooldown (planned at 60% of the steps), the run still ends
    never more than 3% late: the reserves scale with the slowdown and the cooldown may be
    shortened. A load arriving in the cooldown can make it end early (the rate estimate lags
    the slowdown, so the reserves are overestimated for a while): up to 10% early, never late."""
    for budget_s in (60.0, 180.0):
        end, _ = simulate(budget_s, slow_from=budget_s * slow_at, factor=4.0, replan=True, slows_everything=True)
        early = 0.97 if slow_at < 0.6 else 0.90
        assert budget_s * early <= end <= budget_s * 1.03, (budget_s, end)


def test_budget_stops_at_the_plans_ceiling():
    now = {"t": 0.0}
    b = Budget(100.0, 0.0, eval_interval=10**6, schedule="wsd", cooldown=0.4, ceiling=50, clock=lambda: now["t"])
    step, total = 0, 10**9
    while step < total:
        now["t"] += 0.01
        step += 1
        total = b.steps(step, total, now["t"]) or total
    assert step == 50


# ---- fewer threads under a competing load (runtime.ThreadGovernor) ----------------------------------------


def govern(pace, steps: int = 2000, recompiles: bool = False) -> tuple[ThreadGovernor, list[int], list[float]]:
    """A run on a fake machine: `pace(threads, t)` is a step's seconds at training time t.
    Returns the governor, the thread count of every step, and the time each step ended."""
    set_to = []
    g = ThreadGovernor(2, set_threads=set_to.append)
    g.recompiles = recompiles
    t, counts, ends = 0.0, [], []
    for _ in range(steps):
        t += pace(g.threads, t)
        counts.append(g.threads)
        ends.append(t)
        g.after_step(t)
    assert set_to == [] or set_to[-1] == g.threads  # every change was made through torch's setter
    return g, counts, ends


def test_a_quiet_machine_keeps_every_thread():
    g, counts, _ = govern(lambda n, t: 0.05 if n == 2 else 0.09)  # 1 thread: ~1.8x slower
    assert counts.count(1) <= ThreadGovernor.TRIAL + 1  # one early probe of a single group, undone
    assert counts[-1] == 2 and g.changes == []


def test_a_compiled_run_tries_fewer_threads_only_when_the_steps_slow_a_lot():
    """A compiled model (another thread count means another compile): a quiet machine never
    leaves its full count, nor does a shared VM whose step times alone wander up to 2x (each
    trial would cost a compile), while a one-core load mid-run (4x) still moves it. The
    oracle can fail: the uncompiled governor tries one thread fewer under the same wander."""
    quiet = ThreadGovernor(2, set_threads=lambda n: None)
    quiet.recompiles = True
    t = 0.0
    for _ in range(500):
        t += 0.05
        quiet.after_step(t)
        assert quiet.threads == 2

    def wander(n, t):  # 20 s in every 60 at 1.6-2x the quiet step: a busy host, nothing of ours
        slow = 1.6 + 0.4 * ((t // 60) % 2) if t % 60 >= 40 else 1.0
        return (0.05 if n == 2 else 0.09) * slow

    _, counts, _ = govern(wander, steps=3000, recompiles=True)
    assert counts.count(1) == 0
    _, counts, _ = govern(wander, steps=3000)
    assert counts.count(1) > ThreadGovernor.TRIAL + 1  # trials beyond the early probe
    g, counts, ends = govern(load(20.0, end=80.0), steps=3000, recompiles=True)
    assert counts[: sum(e < 20.0 for e in ends)].count(1) == 0  # no early probe
    assert any("2 -> 1" in c for c in g.changes)


def load(start: float, end: float = 1e9):
    """What a one-core hog did on the 2-core VM: with 2 threads a step 4x slower, with 1 2x."""
    return lambda n, t: (0.05 * (4.0 if n == 2 else 1.8 * 1.1)) if start <= t < end else (0.05 if n == 2 else 0.09)


@pytest.mark.parametrize("start", [0.0, 20.0])  # from the start (seen by the probe) or mid-run (a slowdown)
def test_a_load_moves_the_run_to_one_thread_and_back_when_it_leaves(start):
    g, counts, ends = govern(load(start, end=start + 60.0), steps=3000)
    during = [c for c, e in zip(counts, ends) if start + 5 <= e < start + 60]
    assert during.count(1) > 0.9 * len(during)  # one thread under the load, but for a few retries of two
    assert counts[-1] == 2  # the load left: back to both threads
    assert any("2 -> 1" in c for c in g.changes) and any("1 -> 2" in c for c in g.changes)
    # The oracle can fail: never moving, the same minute of load trains ~half the steps.
    _, _, never = govern(lambda n, t: load(start, start + 60.0)(2, t), steps=3000)
    done = sum(e < start + 60 for e in ends) - sum(e < start for e in ends)
    done_never = sum(e < start + 60 for e in never) - sum(e < start for e in never)
    assert done > 1.6 * done_never, (done, done_never)


def test_a_lasting_load_retries_two_threads_now_and_then():
    g, counts, ends = govern(load(0.0), steps=4000)
    retries = [i for i in range(1, len(counts)) if counts[i] == 2 and counts[i - 1] == 1]
    assert len(retries) >= 3 and counts.count(1) > 0.9 * len(counts)
    _, _, never = govern(lambda n, t: load(0.0)(2, t), steps=4000)
    assert ends[-1] < 0.6 * never[-1], (ends[-1], never[-1])  # 1 thread is ~2x faster here, less the retries


def loaded_run(budget_s: float, load: tuple[float, float], governed: bool) -> float:
    """A --max-time run on a fake 2-core machine, calling Budget and ThreadGovernor as the
    trainer does: 0.07 s a step on 2 threads and 0.125 s on 1 when quiet; while a one-core
    load runs (wall-clock seconds `load`), 7x slower on 2 threads and 1.1x on 1 (a real
    --max-time 60 run saw 4-7x). Evaluations (every 60 steps, 0.5 s) and the final sample
    (1.5 s) slow down with the steps. Returns when the whole process ends (3 s start-up)."""
    now = {"t": 3.0}
    b = Budget(budget_s, 0.0, eval_interval=60, schedule="wsd", cooldown=0.4, eval_cost=0.5, tail=1.5,
               clock=lambda: now["t"])  # fmt: skip
    g = ThreadGovernor(2, set_threads=lambda n: None) if governed else None
    step, total, train_time, slow = 0, 10**9, 0.0, 1.0
    while step < total:
        threads = g.threads if g else 2
        under_load = load[0] <= now["t"] < load[1]
        dt = (0.07 if threads == 2 else 0.125) * ((7.0 if threads == 2 else 1.1) if under_load else 1.0)
        slow = dt / 0.07
        now["t"] += dt
        train_time += dt
        step += 1
        if g is not None and g.after_step(train_time) is not None:
            b.rate_changed(step, train_time)
        if g is None or g.settled:
            total = b.steps(step, total, train_time) or total
        if step % 60 == 0 or step == total:
            now["t"] += 0.5 * slow
            b.record_eval(0.5 * slow)
    return now["t"] + 1.5 * slow


@pytest.mark.parametrize("budget_s", [60.0, 180.0, 600.0])
@pytest.mark.parametrize("load_share", [(0.0, 2.0), (0.3, 0.55), (0.3, 2.0), (0.5, 2.0), (0.75, 2.0)])
def test_a_run_with_the_governor_keeps_its_promise_under_a_load(budget_s, load_share):
    """Whenever a load comes (from the start, or at 30%, 50%, 75% of the budget) and however
    long it stays, the whole process ends within 3% of the budget. What it took: the budget
    re-measures the pace when the thread count moves (rate_changed), waits out the governor's
    trials (settled), and lengthens a cooldown again when the machine speeds up; before, a
    load over a quarter of a 180 s budget from 30% ended the run at 122 s."""
    end = loaded_run(budget_s, (budget_s * load_share[0], budget_s * load_share[1]), governed=True)
    assert budget_s * 0.97 <= end <= budget_s * 1.03, end


@pytest.mark.parametrize("budget_s", [180.0, 600.0])
def test_a_cooldown_shortened_by_a_passing_load_is_lengthened_again(budget_s):
    """No governor (--threads given): a load over 30-55% of the budget slows every step 7x,
    the plan shortens into its cooldown, the load leaves; the budget lengthens the run again
    rather than ending it early (it ended at 68% of the budget before)."""
    end = loaded_run(budget_s, (budget_s * 0.3, budget_s * 0.55), governed=False)
    assert budget_s * 0.97 <= end <= budget_s * 1.03, end


# ---- tiny and empty text --------------------------------------------------------------------------------


def test_a_tiny_corpus_trains_with_a_window_it_can_fill_and_an_empty_one_is_refused(tmp_path, corpus_text):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text(corpus_text[:2500])
    out = tmp_path / "r"
    rc, err = train_cli("--data", str(tiny), "--out", str(out), "--max-steps", "3", *SMALL)
    assert rc == 0, err
    rec = run_json(out)
    n_train, n_val = len(_split_tokens(out, "train")), len(_split_tokens(out, "val"))
    block, batch = rec["config"]["model"]["block_size"], rec["config"]["optim"]["batch_size"]
    assert n_val >= block + 1 and n_train - block >= batch  # what the trainer needs, met
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, err = train_cli("--data", str(empty), "--out", str(tmp_path / "e"), *SMALL)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "empty" in err, err
    assert not (tmp_path / "e").exists()


# ---- a text larger than the budget can read -------------------------------------------------------


def test_the_sample_holds_what_the_budget_can_train_on_in_a_power_of_two():
    """The oracle: the bytes the tokens take (BYTES_PER_TOKEN, SAMPLE_MARGIN, the validation
    share) recomputed here; the sample is the smallest power of two from SAMPLE_FLOOR that
    holds them, and a text no larger than it is prepared whole."""
    floor = plan_mod.SAMPLE_FLOOR
    for tokens in (1e3, 5e6, 12e6, 40e6, 3e8):
        need = tokens * plan_mod.BYTES_PER_TOKEN * plan_mod.SAMPLE_MARGIN / 0.9
        size = plan_mod.sample_bytes(1 << 40, tokens)
        assert size >= max(need, floor) and size & (size - 1) == 0
        assert size == floor or size < 2 * need
        assert plan_mod.sample_bytes(size, tokens) is None and plan_mod.sample_bytes(size + 1, tokens) == size
    # the suite's 60 MB text: whole in 5 minutes at this VM's speed (~10M tokens), a sample for a short budget
    assert plan_mod.sample_bytes(60_000_000, 10e6) is None and plan_mod.sample_bytes(60_000_000, 2e6) == floor


def test_a_text_larger_than_the_budget_can_read_is_prepared_in_part(tmp_path, monkeypatch, corpus_text):
    """With the floor lowered to 16 KiB and a probe that reads 100 tokens/s, a 3 s budget
    can train on 300 tokens: the text is prepared as a 16 KiB sample (the floor), the plan
    line and run.json say so, and the plan is the sample's (its train tokens)."""
    from minigpt import corpus, trainer

    monkeypatch.setattr(plan_mod, "SAMPLE_FLOOR", 16 << 10)
    monkeypatch.setattr(plan_mod, "process_age", lambda: 0.0)  # the budget counts from the run, not pytest's start
    monkeypatch.setattr(corpus, "MIN_SAMPLE_BYTES", 1 << 10)
    monkeypatch.setattr(corpus, "SAMPLE_SPAN", 2000)
    real, measured = trainer._probe_before_preparing, []

    def probe(*args):
        measured.append(real(*args))  # the real probe runs (a model on random ids), then a rate we know
        return 100.0

    monkeypatch.setattr(trainer, "_probe_before_preparing", probe)
    big = tmp_path / "big.txt"
    big.write_text(corpus_text * (1 + (80 << 10) // len(corpus_text)))
    size = big.stat().st_size
    out = tmp_path / "r"
    rc, err = train_cli("--data", str(big), "--out", str(out), "--max-time", "3", *SMALL)
    assert rc == 0, err
    assert len(measured) == 1 and measured[0] > 0
    want = plan_mod.sample_bytes(size, 3 * 100.0)
    assert want == 16 << 10
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["sample"]["bytes"] == want and meta["sample"]["of_bytes"] == size
    rec = run_json(out)
    assert rec["plan"]["sample"] == {"bytes": want, "of_bytes": size}
    assert rec["plan"]["train_tokens"] == len(_split_tokens(out, "train"))
    assert plan_lines(err)[0].startswith(
        f"plan: {plan_mod._si(rec['plan']['train_tokens'])} train tokens (a 16 KiB sample of"
    )


def test_a_text_within_the_floor_or_a_run_without_a_budget_is_prepared_whole(tmp_path, monkeypatch, corpus_file):
    from minigpt import trainer

    def probe(*args):
        raise AssertionError("no probe before preparing: the text is prepared whole")

    monkeypatch.setattr(trainer, "_probe_before_preparing", probe)
    monkeypatch.setattr(plan_mod, "process_age", lambda: 0.0)
    size = corpus_file.stat().st_size
    for floor, budget in ((size // 4, ["--max-steps", "2"]), (size, ["--max-time", "2"])):
        monkeypatch.setattr(plan_mod, "SAMPLE_FLOOR", floor)
        out = tmp_path / f"r{floor}"
        rc, err = train_cli("--data", str(corpus_file), "--out", str(out), *budget, *SMALL)
        assert rc == 0, err
        assert "sample" not in json.loads((out / "data" / "meta.json").read_text())
        assert "sample" not in plan_lines(err)[0] and "sample" not in run_json(out)["plan"]
