"""The sampler: each transform against its definition, a fair die, cache == recompute,
stop strings, and the text layer on a model whose output is known in advance."""

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from minigpt.completion import complete, encode_prompt
from minigpt.errors import ConfigError
from minigpt.model import GPTOutput
from minigpt.sampling import (
    Batch,
    Dice,
    SamplingParams,
    apply_repetition_penalty,
    apply_temperature,
    generate,
    min_p_filter,
    roll,
    shape_logits,
    top_k_filter,
    top_p_filter,
)
from minigpt.tokenizer import Tokenizer

from .conftest import tiny_gpt

NEG = float("-inf")


def kept(logits):
    return torch.isfinite(logits).tolist()


# ---- transforms on hand-made logits ---------------------------------------------------------


def test_temperature_divides():
    x = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.equal(apply_temperature(x, 0.5), x / 0.5)
    assert torch.equal(apply_temperature(x, 1.0), x)


def test_top_k_keeps_k_largest():
    x = torch.tensor([[0.1, 3.0, -2.0, 2.5, 1.0]])
    assert kept(top_k_filter(x, 2)) == [[False, True, False, True, False]]
    assert kept(top_k_filter(x, 0)) == [[True] * 5]
    assert kept(top_k_filter(x, 10)) == [[True] * 5]


@pytest.mark.parametrize(
    "p, expect",
    [
        (0.5, [True, False, False, False]),
        (0.8, [True, True, False, False]),
        (0.81, [True, True, True, False]),
        (0.96, [True, True, True, True]),
        (1.0, [True, True, True, True]),
        (0.01, [True, False, False, False]),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, expect):
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    order = [1, 3, 0, 2]  # by probability
    got = kept(top_p_filter(probs.log(), p))[0]
    assert [got[i] for i in order] == expect


def test_min_p_relative_threshold():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert kept(min_p_filter(probs.log(), 0.4)) == [[True, True, False, False]]  # threshold 0.2
    assert kept(min_p_filter(probs.log(), 0.1)) == [
        [True, True, True, False]
    ]  # threshold 0.05 keeps >= 0.05? 0.05 < 0.05 is False
    assert kept(min_p_filter(probs.log(), 0.0)) == [[True] * 4]


def test_repetition_penalty_definition():
    x = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(x, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]
    assert torch.equal(apply_repetition_penalty(x, seen, 1.0), x)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(top_k=10**20), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(temperature=10**400), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p="0.5"), "top_p"),
    ],
)
def test_invalid_params(kw, field):
    """Each refusal carries the field it is about (`ConfigError.field`) and names it first."""
    with pytest.raises(ConfigError) as e:
        SamplingParams(**kw)
    assert e.value.field == field and str(e.value).startswith(field + " ")
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_the_settings_are_declared_once_and_read_by_the_flags_and_the_checks():
    """`settings()` is SamplingParams' fields: names, types and neutral defaults; every
    bound it declares is where the check refuses (the values just inside pass)."""
    from dataclasses import fields

    from minigpt.sampling import settings

    assert [s.name for s in settings()] == [f.name for f in fields(SamplingParams)]
    assert SamplingParams() == SamplingParams(**{s.name: s.neutral for s in settings()})
    SamplingParams(**{s.name: s.suggested for s in settings()})  # the CLI's defaults are valid
    for s in settings():
        assert s.type in (int, float) and s.flag == "--" + s.name.replace("_", "-")
        if s.lo_open:
            with pytest.raises(ConfigError):
                SamplingParams(**{s.name: s.lo})
        else:
            SamplingParams(**{s.name: s.lo})
            with pytest.raises(ConfigError):
                SamplingParams(**{s.name: s.lo - 1})
        if s.hi != math.inf:
            SamplingParams(**{s.name: s.hi})
            with pytest.raises(ConfigError):
                SamplingParams(**{s.name: s.hi * 2})
    # sample's --help shows the declared defaults and help
    import argparse

    from minigpt.cli import _add_sampling

    p = argparse.ArgumentParser()
    _add_sampling(p)
    args = p.parse_args([])
    for s in settings():
        assert getattr(args, s.name) == s.suggested
        assert s.help in " ".join(p.format_help().split())


# ---- the die ----------------------------------------------------------------------------


def chi2_sf_even_df(x: float, df: int) -> float:
    """Survival function of the chi-square distribution for even df (closed form)."""
    k = df // 2
    return math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(k))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_die_is_fair(temperature):
    """Empirical frequencies of 200k rolls match softmax(logits / T): a chi-square test
    (7 outcomes, 6 degrees of freedom). The seed is fixed, so the outcome is too; a
    biased die gives statistics in the thousands, far from the 1e-4 cut."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5, 0.2])
    probs = torch.softmax(shape_logits(logits[None], SamplingParams(temperature=temperature)), -1)[0]
    torch.testing.assert_close(probs, torch.softmax(logits.double() / temperature, -1).float())
    n = 200_000
    g = torch.Generator().manual_seed(1234)
    draws = roll(probs.expand(n, -1), g)
    counts = torch.bincount(draws, minlength=7).double()
    expected = probs.double() * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2_sf_even_df(chi2, 6) > 1e-4, chi2
    # and the test has power: the same counts are far from the untempered or a flat die
    for wrong in (torch.softmax(logits.double(), -1) if temperature != 1.0 else torch.full((7,), 1 / 7.0),):
        bad = ((counts - wrong * n) ** 2 / (wrong * n)).sum().item()
        assert chi2_sf_even_df(bad, 6) < 1e-12


def test_roll_never_picks_zero_probability():
    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3]]).expand(5000, -1)
    draws = roll(probs, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}


# ---- the loop against a full recompute --------------------------------------------------------


def ids(steps, row=0):
    return [s.tokens[row] for s in steps if s.new[row]]


@pytest.mark.parametrize("pe", ["learned", "sinusoidal", "rope"])
def test_greedy_is_argmax_of_full_recompute(pe):
    m = tiny_gpt(pos_encoding=pe)
    prompt = torch.randint(0, 300, (12,)).tolist()
    out = ids(list(generate(m, [prompt], 15, SamplingParams(temperature=0))))
    seq = list(prompt)
    for tok in out:
        expect = m(torch.tensor([seq])).logits[0, -1].argmax().item()
        assert tok == expect
        seq.append(tok)
    again = ids(list(generate(m, [prompt], 15, SamplingParams(temperature=0), seed=99)))
    assert again == out  # greedy ignores the seed


@pytest.mark.parametrize("pe", ["learned", "sinusoidal", "rope"])
def test_cached_equals_uncached_batch(pe):
    m = tiny_gpt(pos_encoding=pe)
    prompts = [torch.randint(0, 300, (10,)).tolist() for _ in range(3)]
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=50)):
        a = list(generate(m, prompts, 12, params, seed=7, use_cache=True))
        b = list(generate(m, prompts, 12, params, seed=7, use_cache=False))
        assert [s.tokens for s in a] == [s.tokens for s in b]


def test_prompts_of_different_lengths_match_one_at_a_time():
    m = tiny_gpt()
    prompts = [torch.randint(0, 300, (n,)).tolist() for n in (3, 11, 7)]
    batch = list(generate(m, prompts, 10, SamplingParams(temperature=0)))
    for r, p in enumerate(prompts):
        alone = list(generate(m, [p], 10, SamplingParams(temperature=0), use_cache=False))
        assert ids(batch, r) == ids(alone)


@pytest.mark.parametrize("pe", ["learned", "rope"])
def test_longer_than_block_size_slides_like_cropping(pe):
    """Prompt of 40 and 30 new tokens with block_size 32: the cached path (which slides by
    recomputing the last 32 tokens) equals cropping the input every step."""
    m = tiny_gpt(pos_encoding=pe)
    prompt = torch.randint(0, 300, (40,)).tolist()
    cached = ids(list(generate(m, [prompt], 30, SamplingParams(temperature=0))))
    seq = list(prompt)
    for tok in cached:
        assert tok == m(torch.tensor([seq[-32:]])).logits[0, -1].argmax().item()
        seq.append(tok)


def test_same_seed_same_tokens_and_top_k_1_is_greedy():
    m = tiny_gpt()
    p = [[5, 6, 7]]
    a = ids(list(generate(m, p, 20, SamplingParams(temperature=1.0), seed=3)))
    b = ids(list(generate(m, p, 20, SamplingParams(temperature=1.0), seed=3)))
    c = ids(list(generate(m, p, 20, SamplingParams(temperature=1.0), seed=4)))
    assert a == b and a != c
    greedy = ids(list(generate(m, p, 20, SamplingParams(temperature=0))))
    for seed in range(3):
        assert ids(list(generate(m, p, 20, SamplingParams(temperature=1.5, top_k=1), seed=seed))) == greedy


def test_stop_ids_and_zero_tokens():
    m = tiny_gpt()
    assert list(generate(m, [[1, 2]], 0)) == []
    greedy = ids(list(generate(m, [[1, 2]], 10, SamplingParams(temperature=0))))
    stop_at = greedy[3]
    out = list(generate(m, [[1, 2]], 10, SamplingParams(temperature=0), stop_ids=[stop_at]))
    assert ids(out) == greedy[: greedy.index(stop_at) + 1] and out[-1].finished == [True]


def test_top_candidates_are_reported():
    m = tiny_gpt()
    step = next(generate(m, [[1, 2, 3]], 1, SamplingParams(temperature=1.0, top_k=5), seed=0, top=3))
    assert len(step.top_ids[0]) == 3 and step.top_probs[0] == sorted(step.top_probs[0], reverse=True)
    assert step.tokens[0] in torch.topk(m(torch.tensor([[1, 2, 3]])).logits[0, -1], 5).indices.tolist()
    assert math.exp(step.logprobs[0]) <= step.top_probs[0][0] + 1e-6


def test_bad_generate_arguments():
    m = tiny_gpt()
    with pytest.raises(ConfigError, match="max-new-tokens"):
        list(generate(m, [[1]], -1))
    with pytest.raises(ConfigError, match="at least one token"):
        list(generate(m, [[]], 3))


def test_max_new_tokens_costs_only_what_is_generated():
    """10**12 new tokens would be 8 TB of ids allocated up front; the buffer grows instead,
    so the first steps come at once and are the steps of a short run."""
    m = tiny_gpt()
    huge = list(itertools.islice(generate(m, [[1, 2], [3]], 10**12, SamplingParams(temperature=0.9), seed=5), 6))
    short = list(generate(m, [[1, 2], [3]], 6, SamplingParams(temperature=0.9), seed=5))
    assert [s.tokens for s in huge] == [s.tokens for s in short]


# ---- per-row dice, per-row generators, rows joining and leaving ---------------------------------


ROW_PARAMS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.7, top_k=20),
    SamplingParams(temperature=1.3, top_p=0.9, repetition_penalty=1.3),
    SamplingParams(temperature=1.0, min_p=0.05),
]


def test_dice_shapes_each_row_like_its_own_params():
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    seen = torch.rand(4, 300) < 0.2
    together = shape_logits(logits, Dice(ROW_PARAMS, torch.device("cpu")), seen)
    for b, p in enumerate(ROW_PARAMS):
        alone = shape_logits(logits[b : b + 1], p, seen[b : b + 1])
        torch.testing.assert_close(torch.softmax(together[b], -1), torch.softmax(alone[0], -1))
        assert torch.equal(torch.isfinite(together[b]), torch.isfinite(alone[0]))


def test_rows_with_their_own_params_and_seeds_draw_what_they_would_alone():
    m = tiny_gpt()
    prompts = [torch.randint(0, 300, (n,)).tolist() for n in (4, 9, 2, 6)]
    seeds = [11, 12, 13, 14]
    together = list(generate(m, prompts, 15, ROW_PARAMS, seed=seeds, top=3))
    for b, (p, prm, s) in enumerate(zip(prompts, ROW_PARAMS, seeds)):
        alone = list(generate(m, [p], 15, prm, seed=s, top=3))
        assert ids(together, b) == ids(alone)
        assert [t.logprobs[b] for t in together] == pytest.approx([t.logprobs[0] for t in alone], abs=1e-5)
    # A row with its own generator draws the noise a one-row batch with that seed draws.
    one = ids(list(generate(m, [prompts[1]], 15, ROW_PARAMS[1], seed=[12])))
    assert one == ids(list(generate(m, [prompts[1]], 15, ROW_PARAMS[1], seed=12)))


def _alone(model, prompt, params, seed, n):
    return ids(list(generate(model, [prompt], n, params, seed=seed)))


# GPT-2's block (learned positions) and the modern one (rotary, RMSNorm, SwiGLU, QK-norm)
MODERN = {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False}
GPT_VARIANTS = {"learned": {"pos_encoding": "learned"}, "rope": {"pos_encoding": "rope"}, "modern": MODERN}


@pytest.mark.parametrize("variant", GPT_VARIANTS)
def test_rows_join_and_leave_a_running_batch(variant):
    """Rows join mid-run (one longer than what the batch holds, one shorter), one leaves,
    the cache fills up and slides past block_size (32): every row still draws exactly
    what it draws alone, and joining never re-prefills the rows already running."""
    m = tiny_gpt(**GPT_VARIANTS[variant])
    g = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(0, 300, (n,), generator=g).tolist()  # noqa: E731
    plan = {  # step at which it joins: (prompt, params, seed, steps it stays)
        0: [(prompt(5), ROW_PARAMS[1], 1, 40)],
        3: [(prompt(20), ROW_PARAMS[2], 2, 12), (prompt(2), ROW_PARAMS[0], 3, 25)],
        9: [(prompt(30), ROW_PARAMS[3], 4, 30)],
    }
    batch = Batch(m)
    got, want, prefills_before_joins = {}, {}, None
    for step in range(45):
        for p, prm, s, n in plan.get(step, []):
            row = batch.add(p, prm, torch.Generator().manual_seed(s), tag=(step, s))
            got[row.tag], want[row.tag] = row, (_alone(m, p, prm, s, n), n)
        if step == 3:
            prefills_before_joins = batch.prefills
        for d in batch.step():
            if len(d.row.new_ids) == want[d.row.tag][1]:
                batch.remove(d.row)
        if step == 4:
            assert batch.prefills == prefills_before_joins  # the joiners did not re-prefill the others
    for tag, row in got.items():
        assert row.new_ids == want[tag][0], tag
    assert len(batch) == 0 and batch.joins == 4


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_rows_join_and_leave_a_running_batch(cell):
    from minigpt.baselines import RNNLM, RNNConfig

    torch.manual_seed(2)
    m = RNNLM(RNNConfig(vocab_size=40, block_size=16, n_layer=2, n_embd=32, cell=cell)).eval()
    p = SamplingParams(temperature=1.0)
    batch = Batch(m)
    a = batch.add([1, 2, 3], p, torch.Generator().manual_seed(1))
    for _ in range(4):
        batch.step()
    b = batch.add([5, 6, 7, 8, 9], p, torch.Generator().manual_seed(2))
    for _ in range(3):
        batch.step()
    batch.remove(a)
    for _ in range(5):
        batch.step()
    assert a.new_ids == _alone(m, [1, 2, 3], p, 1, 7)
    assert b.new_ids == _alone(m, [5, 6, 7, 8, 9], p, 2, 8)
    assert batch.prefills == 1


def _model(kind):
    if kind in GPT_VARIANTS:
        return tiny_gpt(**GPT_VARIANTS[kind])
    from minigpt.baselines import RNNLM, RNNConfig

    torch.manual_seed(3)
    # block_size 64: the recompute path reads the last block_size tokens, the state all of
    # them; they agree while no text outgrows the block (this plan's reach 48)
    return RNNLM(RNNConfig(vocab_size=300, block_size=64, n_layer=2, n_embd=32, cell=kind)).eval()


def _run_plan(batch, plan, steps):
    """Drive a batch through `plan` ({step: [(prompt, params, seed, steps it stays)]});
    returns each row's drawn ids and logprobs by tag, and the prefill count after each step."""
    rows, stays, prefills = {}, {}, []
    for step in range(steps):
        for p, prm, s, n in plan.get(step, []):
            row = batch.add(p, prm, torch.Generator().manual_seed(s), tag=(step, s))
            rows[row.tag], stays[row.tag] = (row, []), n
        for d in batch.step():
            rows[d.row.tag][1].append(d.logprob)
            if len(d.row.new_ids) == stays[d.row.tag]:
                batch.remove(d.row)
        prefills.append(batch.prefills)
    return {tag: (row.new_ids, lps) for tag, (row, lps) in rows.items()}, prefills


@pytest.mark.parametrize("kind", [*GPT_VARIANTS, "lstm", "gru"])
def test_a_running_batch_draws_what_recomputing_draws(kind):
    """The cached path against the no-cache recompute path on one plan: rows join (longer
    and shorter than what the batch holds) and leave mid-batch, the cache reaches the
    context limit (block_size 32) and makes room by dropping the padding the rows left
    behind (no prefill), then a window fills block_size and the batch slides."""
    m = _model(kind)
    g = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(0, 300, (n,), generator=g).tolist()  # noqa: E731
    plan = {  # step: [(prompt, params, seed, steps it stays)]
        0: [(prompt(3), ROW_PARAMS[0], 1, 45), (prompt(20), ROW_PARAMS[1], 2, 5)],
        8: [(prompt(10), ROW_PARAMS[2], 3, 30), (prompt(1), ROW_PARAMS[3], 4, 3)],
        14: [(prompt(25), ROW_PARAMS[1], 5, 20)],
    }
    cached, prefills = _run_plan(Batch(m), plan, 50)
    recomputed, _ = _run_plan(Batch(m, use_cache=False), plan, 50)
    assert cached.keys() == recomputed.keys()
    for tag, (new_ids, logprobs) in cached.items():
        assert new_ids == recomputed[tag][0], tag
        assert logprobs == pytest.approx(recomputed[tag][1], abs=1e-4), tag
    # Without making room the cache would be full by step 12 (20 slots + 12 tokens): no
    # prefill until a row's window really fills block_size (the first row at step 29).
    assert prefills[20] == 1
    if kind in GPT_VARIANTS:
        assert prefills[-1] > 1  # then the window slides: every step re-prefills
    else:
        assert prefills[-1] == 1  # an RNN has no window: its state carries on


# ---- extreme settings stay finite -----------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-38),
        SamplingParams(top_p=1e-46),
        SamplingParams(repetition_penalty=1e-38),
        SamplingParams(temperature=1e-38, top_p=1e-46, repetition_penalty=1e-38, min_p=1.0),
        SamplingParams(temperature=1e30, repetition_penalty=1e38),
        # below float32's smallest number (they round to 0 in a float32 tensor) and above its largest
        SamplingParams(temperature=1e-46),
        SamplingParams(temperature=5e-324),
        SamplingParams(repetition_penalty=1e-46),
        SamplingParams(temperature=1e300, repetition_penalty=1e300),
    ],
)
def test_extreme_settings_give_finite_logprobs_and_valid_json(params, byte_tok):
    m = tiny_gpt(vocab_size=byte_tok.vocab_size)
    with torch.no_grad():
        m.transformer.ln_f.weight.mul_(300)  # logits of +-10s: divided by 1e-38 they overflow float32
    steps = list(generate(m, [[5, 6, 7], [8]], 12, params, seed=0, top=5))
    for s in steps:
        assert all(math.isfinite(x) and x <= 0 for x in s.logprobs)
        assert all(math.isfinite(p) for row in s.top_probs for p in row)
        assert all(abs(sum(row) - 1) < 1e-3 or sum(row) <= 1 + 1e-3 for row in s.top_probs)
    outs = complete(m, byte_tok, "ab", num_samples=2, max_new_tokens=12, params=params, seed=0)
    json.dumps([o.__dict__ for o in outs], allow_nan=False)  # NaN or inf would raise here
    if params in (
        SamplingParams(temperature=1e-38),
        SamplingParams(top_p=1e-46),
        SamplingParams(temperature=1e-46),
        SamplingParams(temperature=5e-324),
    ):
        # Both are the greedy die in the limit: only the most likely token is left.
        greedy = list(generate(m, [[5, 6, 7], [8]], 12, SamplingParams(temperature=0)))
        assert [s.tokens for s in steps] == [s.tokens for s in greedy]


def test_a_face_of_probability_zero_never_wins_even_against_zero_noise():
    from minigpt.sampling import _race

    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.25, 0.0, 0.75]])
    assert _race(probs, torch.zeros(2, 4)).tolist() in ([2, 1], [2, 3])
    assert _race(probs, torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, 1.0, 1.0, 9.0]])).tolist() == [2, 1]


# ---- the text layer, on a model that follows a script -------------------------------------------


class ScriptedLM(nn.Module):
    """Predicts, after each token, the next token of `script` (a bigram lookup), so the
    generated text is known in advance. Tokens must be unique within the script."""

    def __init__(self, script_ids, vocab_size, block_size=64):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size)
        self.w = nn.Parameter(torch.zeros(1))
        nxt = torch.zeros(vocab_size, dtype=torch.long)
        for a, b in zip(script_ids, script_ids[1:]):
            nxt[a] = b
        self.register_buffer("nxt", nxt)

    def make_cache(self, batch_size, max_len=None, *, device=None, dtype=None):
        return None  # no cache: the sampler re-reads the window every step (as for the n-gram)

    def forward(self, idx, targets=None, *, kv_cache=None, return_attention=False):
        logits = torch.full((*idx.shape, self.config.vocab_size), -30.0)
        logits.scatter_(-1, self.nxt[idx][..., None], 30.0)
        return GPTOutput(logits, None, None)


@pytest.fixture(scope="module")
def byte_tok():
    return Tokenizer.train(["x"], vocab_size=257)


def scripted(tok, text, end_with_eot=False):
    ids = tok.encode(text) + ([tok.eot_id] if end_with_eot else [])
    return ScriptedLM(ids, tok.vocab_size)


def test_stop_string_ends_just_before_it(byte_tok):
    model = scripted(byte_tok, "abcdefghijklmnop")
    [c] = complete(model, byte_tok, "a", max_new_tokens=20, stop=["fg", "zz"], params=SamplingParams(temperature=0))
    assert c.text == "bcde" and c.finish_reason == "stop"
    assert byte_tok.decode(c.ids) == "bcdefg"  # ids include the token that completed the stop string
    [c] = complete(model, byte_tok, "a", max_new_tokens=5, params=SamplingParams(temperature=0))
    assert c.text == "bcdef" and c.finish_reason == "length"


def test_stop_string_inside_one_token():
    tok = Tokenizer.train(["hello world " * 50], vocab_size=300)
    text = "hello world"
    model = scripted(tok, text)
    first = tok.encode(text)[0]
    rest = tok.decode(tok.encode(text)[1:])
    stop = rest[len(rest) // 2 : len(rest) // 2 + 2]
    [c] = complete(
        model, tok, tok.decode([first]), max_new_tokens=20, stop=[stop], params=SamplingParams(temperature=0)
    )
    assert c.text == rest[: rest.index(stop)]


def test_eot_ends_a_sample(byte_tok):
    model = scripted(byte_tok, "abc", end_with_eot=True)
    [c] = complete(model, byte_tok, "a", max_new_tokens=20, params=SamplingParams(temperature=0))
    assert c.text == "bc" and c.finish_reason == "eot" and c.ids[-1] == byte_tok.eot_id


def test_streaming_gives_the_same_text_and_never_a_broken_character(byte_tok):
    model = scripted(byte_tok, "xé€yzw")
    pieces = []
    [c] = complete(
        model,
        byte_tok,
        "x",
        max_new_tokens=20,
        params=SamplingParams(temperature=0),
        on_text=lambda row, t: pieces.append(t),
        stop=["zw"],
    )
    assert "".join(pieces) == c.text == "é€y"
    assert all("\ufffd" not in p for p in pieces)


def test_empty_prompt_starts_from_eot(byte_tok):
    assert encode_prompt(byte_tok, "") == [byte_tok.eot_id]
    model = ScriptedLM([byte_tok.eot_id] + byte_tok.encode("hi!"), byte_tok.vocab_size)
    [c] = complete(model, byte_tok, "", max_new_tokens=3, params=SamplingParams(temperature=0))
    assert c.text == "hi!"


def test_num_samples_are_independent_draws():
    m = tiny_gpt()
    tok = Tokenizer.train(["abc def " * 30], vocab_size=300)
    outs = complete(m, tok, "abc", num_samples=4, max_new_tokens=8, seed=0)
    assert len({tuple(o.ids) for o in outs}) > 1
    # the model's vocabulary (300) is larger than the tokenizer's: ids past it are never drawn
    assert tok.vocab_size < 300 and all(i < tok.vocab_size for o in outs for i in o.ids)
    again = complete(m, tok, "abc", num_samples=4, max_new_tokens=8, seed=0)
    assert [o.ids for o in outs] == [o.ids for o in again]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_and_compiled_decode_match_eager():  # pragma: no cover - needs a GPU
    m = tiny_gpt().cuda()
    prompts = [torch.randint(0, 300, (9,)).tolist() for _ in range(4)]
    eager = [s.tokens for s in generate(m, prompts, 40, SamplingParams(temperature=0), cuda_graph=False)]
    graph = [s.tokens for s in generate(m, prompts, 40, SamplingParams(temperature=0), cuda_graph=True)]
    compiled = [
        s.tokens for s in generate(m, prompts, 40, SamplingParams(temperature=0), cuda_graph=True, compile=True)
    ]
    assert eager == graph == compiled
    a = [s.tokens for s in generate(m, prompts, 40, SamplingParams(temperature=0.9), seed=1, cuda_graph=True)]
    b = [s.tokens for s in generate(m, prompts, 40, SamplingParams(temperature=0.9), seed=1, cuda_graph=False)]
    assert a == b


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["learned", "modern"])
def test_cuda_graph_over_a_running_batch_matches_eager(kind):  # pragma: no cover - needs a GPU
    """Rows joining and leaving give the CUDA-graph path new caches (a new capture each),
    and making room shifts the captured cache's slots under the graph: the tokens stay
    those of the eager path."""
    m = _model(kind).cuda()
    g = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(0, 300, (n,), generator=g).tolist()  # noqa: E731
    plan = {
        0: [(prompt(3), ROW_PARAMS[0], 1, 45), (prompt(20), ROW_PARAMS[1], 2, 5)],
        8: [(prompt(10), ROW_PARAMS[2], 3, 30)],
    }
    graph, _ = _run_plan(Batch(m, cuda_graph=True), plan, 50)
    eager, _ = _run_plan(Batch(m, cuda_graph=False), plan, 50)
    assert {t: ids for t, (ids, _) in graph.items()} == {t: ids for t, (ids, _) in eager.items()}


@pytest.mark.parametrize("value", [-(10**30), -(10**5000)], ids=["1e30", "1e5000"])
def test_an_integer_too_large_for_a_float_is_refused_in_one_clear_line(value):
    """A whole-number setting given an integer no float can hold (the server's fuzz test sent
    top_k = -10**1000): refused with its size, not an OverflowError (a 500 in the server)."""
    from minigpt.sampling import settings

    top_k = next(s for s in settings() if s.name == "top_k")
    problem = top_k.problem(value)
    assert problem is not None and problem.startswith("must be") and f"{value.bit_length()} bits" in problem
    with pytest.raises(ConfigError, match="bits"):
        SamplingParams(top_k=value)
