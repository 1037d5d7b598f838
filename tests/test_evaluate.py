"""`minigpt eval` and `minigpt compare`, each number checked against an oracle:
a known answer (8 bits per byte for a uniform byte model, a hand-computed example), a
brute-force recomputation (every target scored once, memorised spans found by scanning
all substrings), or a hand-made text (distinct-n)."""

from __future__ import annotations

import doctest
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import minigpt.baselines
import minigpt.evaluate as ev
from minigpt import cli
from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.config import GPTConfig, TrainConfig, apply_preset
from minigpt.data import Dataset, prepare
from minigpt.evaluate import (
    bits_per_byte,
    distinct_n,
    evaluate_tokens,
    loss_sums,
    memorization,
    metrics_from_sums,
    repetition_rate,
    window_plan,
)
from minigpt.model import GPT, GPTOutput
from minigpt.trainer import train


def test_docstring_examples():
    for module in (ev, minigpt.baselines):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ---- helpers --------------------------------------------------------------------------------------


def made_up_text(n_lines: int = 600, seed: int = 0) -> str:
    rng = random.Random(seed)
    who = ["the miller", "a fox", "old Tom", "the queen", "my aunt"]
    did = ["sang", "baked bread", "ran home", "slept", "laughed at the moon"]
    when = ["at dawn", "on Sunday", "in the rain", "after supper"]
    return "".join(f"{rng.choice(who)} {rng.choice(did)} {rng.choice(when)}.\n" for _ in range(n_lines))


def make_dataset(root: Path, name: str = "data", vocab_size: int = 300, text: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    src = root / f"{name}.txt"
    src.write_text(text if text is not None else made_up_text(), encoding="utf-8")
    prepare([src], root / name, vocab_size=vocab_size, progress=False)
    return root / name


def train_ngram_run(data: Path, out: Path, order: int = 3) -> Path:
    cfg = TrainConfig()
    apply_preset(cfg, "cpu")
    for k, v in dict(
        model="ngram",
        ngram_order=order,
        data=str(data),
        out=str(out),
        device="cpu",
        sample_tokens=0,
        block_size=16,
        batch_size=8,
        eval_steps=2,
    ).items():
        cfg.set(k, v)
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def ngram_run(dataset, tmp_path_factory) -> Path:
    return train_ngram_run(dataset, tmp_path_factory.mktemp("runs") / "trigram", order=3)


class ContextFree(nn.Module):
    """The same next-token distribution after every position: logits = log q."""

    model_type = "gpt"

    def __init__(self, q: np.ndarray, block_size: int = 8):
        super().__init__()
        self.logq = nn.Parameter(torch.log(torch.as_tensor(q, dtype=torch.float32)), requires_grad=False)
        self.config = GPTConfig(vocab_size=len(q), block_size=block_size, n_layer=1, n_head=1, n_embd=4)

    def forward(self, idx, targets=None, **_):
        return GPTOutput(self.logq.expand(*idx.shape, -1), None, None)


# ---- bits per byte, loss, perplexity ---------------------------------------------------------------


def test_a_uniform_model_over_the_256_bytes_scores_exactly_8_bits_per_byte(tmp_path):
    data = Dataset(make_dataset(tmp_path, vocab_size=257))  # plain bytes, no merges
    blen = data.tokenizer.byte_lengths
    assert data.vocab_size == 257 and sorted(set(blen.tolist())) == [0, 1]
    q = (blen == 1) / 256.0  # 1/256 on every byte, 0 on <|endoftext|>
    model = ContextFree(q, block_size=64)
    r = evaluate_tokens(model, data.tokens("val"), blen, window=64)
    assert r["bpb"] == pytest.approx(8.0, abs=1e-6)
    assert r["loss"] == pytest.approx(math.log(256), abs=1e-6)
    assert r["perplexity"] == pytest.approx(256, rel=1e-6)
    assert r["tokens"] == len(data.tokens("val")) - 1 == r["bytes"]


def test_bits_per_byte_on_a_hand_computed_example():
    # 4 tokens standing for 1, 2, 3 and 0 bytes (the last: <|endoftext|>); the model says
    # q = [0.1, 0.2, 0.3, 0.4] after every position. Text 0 1 2 3 1: targets 1 2 3 1.
    q = np.array([0.1, 0.2, 0.3, 0.4])
    blen = np.array([1, 2, 3, 0])
    y = torch.tensor([[1, 2, 3, 1]])
    sums = loss_sums(torch.log(torch.tensor(q, dtype=torch.float32)).expand(1, 4, 4), y, torch.from_numpy(blen))
    m = metrics_from_sums(sums)
    # loss: (ln 5 + ln 10/3 + ln 2.5 + ln 5) / 4 = 1.334785 nats
    assert m["loss"] == pytest.approx(1.334785, abs=1e-6)
    # bpb leaves the 0-byte target out: (ln 5 + ln 10/3 + ln 5) / ln 2 / (2 + 3 + 2) = 0.911546
    assert m["bpb"] == pytest.approx(0.911546, abs=1e-6)
    assert (m["tokens"], m["bytes"]) == (4, 7)
    # the same through the streaming evaluator
    r = evaluate_tokens(ContextFree(q), np.array([0, 1, 2, 3, 1]), blen, window=2)
    assert (r["loss"], r["bpb"]) == pytest.approx((m["loss"], m["bpb"]), abs=1e-6)
    # with no 0-byte target, bpb = loss / ln 2 / (bytes per token)
    r = evaluate_tokens(ContextFree(q), np.array([0, 1, 2, 1, 2]), blen, window=3)
    assert r["bpb"] == pytest.approx(r["loss"] / math.log(2) / (10 / 4), rel=1e-12)
    assert bits_per_byte(3 * math.log(256), 3) == 8.0


def test_window_plan_scores_every_target_exactly_once_with_the_promised_context():
    for n in range(2, 41):
        for window in range(1, 13):
            for stride in range(1, window + 1):
                starts, done, W, S = window_plan(n, window, stride)
                scored = []
                for s, d in zip(starts, done):
                    assert 0 <= s and s + W <= n - 1  # the window's inputs and targets exist
                    for j in range(W):
                        t = s + 1 + j
                        if t > d:
                            scored.append(t)
                            if d > 0:  # after the first window: at least W - S + 1 tokens of context
                                assert t - s >= W - S + 1
                assert sorted(scored) == list(range(1, n)), (n, window, stride)


@pytest.mark.parametrize(
    "window,stride,batch,max_tokens",
    [(8, None, 3, 0), (8, 3, 2, 0), (5, 5, 16, 50), (200, None, 4, 0), (1, None, 7, 0)],
)
def test_streaming_eval_equals_the_sum_over_every_target(window, stride, batch, max_tokens):
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(7))
    tokens = rng.integers(0, 7, size=103).astype(np.uint16)
    blen = np.array([1, 2, 3, 1, 0, 4, 2])
    per_token = np.full(len(tokens), np.nan)
    r = evaluate_tokens(
        ContextFree(q),
        tokens,
        blen,
        window=window,
        stride=stride,
        batch_size=batch,
        max_tokens=max_tokens,
        nats_out=per_token,
    )
    n = max_tokens or len(tokens)
    targets = tokens[1:n].astype(np.int64)
    nats = -np.log(q.astype(np.float32).astype(np.float64))[targets]  # the oracle, in float64
    np.testing.assert_allclose(per_token[1:n], nats, rtol=1e-6)  # each target's own loss, at its position
    assert np.isnan(per_token[0]) and np.isnan(per_token[n:]).all()  # nothing else written
    assert r["tokens"] == n - 1 and r["bytes"] == blen[targets].sum()
    assert r["loss"] == pytest.approx(nats.mean(), rel=1e-6)
    assert r["bpb"] == pytest.approx(nats[blen[targets] > 0].sum() / math.log(2) / blen[targets].sum(), rel=1e-6)


def test_ngram_eval_gives_every_target_its_full_context():
    # The n-gram accepts any length: one forward pass over the whole text is the oracle.
    rng = np.random.default_rng(1)
    tokens = rng.choice(6, size=1000, p=[0.3, 0.3, 0.2, 0.1, 0.05, 0.05])
    model = minigpt.baselines.NGramLM(minigpt.baselines.NGramConfig(vocab_size=6, order=4)).fit(tokens[:700])
    val = tokens[700:]
    window, stride = model.score_window()
    assert stride == window - 2
    r = evaluate_tokens(model, val, np.ones(6, dtype=np.int64), window=window, stride=stride, batch_size=1)
    p = model.probs(torch.from_numpy(val[None, :-1]))[0]
    oracle = -p[torch.arange(len(val) - 1), torch.from_numpy(val[1:])].log().mean().item()
    assert r["loss"] == pytest.approx(oracle, rel=1e-6)


def test_copied_positions_equal_a_brute_force_search():
    """Each position is marked iff some n-token window covering it occurs in the training
    tokens, checked window by window in plain Python (the oracle)."""
    rng = np.random.default_rng(3)
    train = rng.integers(0, 4, size=300)
    tokens = np.concatenate([rng.integers(0, 4, size=40), train[100:120], rng.integers(0, 4, size=40)])
    for n in (3, 6, 10):
        seen = {tuple(train[i : i + n]) for i in range(len(train) - n + 1)}
        want = np.zeros(len(tokens), dtype=bool)
        for o in range(len(tokens) - n + 1):
            if tuple(tokens[o : o + n]) in seen:
                want[o : o + n] = True
        got = ev.copied_positions(tokens, train, n=n)
        np.testing.assert_array_equal(got, want)
        assert got[40:60].all()  # the copied stretch, whatever n
    assert not ev.copied_positions(tokens[:2], train, n=3).any()  # shorter than a span


def test_evaluating_nothing_is_an_error():
    with pytest.raises(ev.DataError, match="nothing to evaluate"):
        evaluate_tokens(ContextFree(np.ones(3) / 3), np.array([1]), np.ones(3), window=4)


# ---- diversity ----------------------------------------------------------------------------------------


def test_distinct_n_on_hand_made_texts():
    texts = ["the cat sat", "the cat ran"]  # words: the cat sat the cat ran
    assert distinct_n(texts, 1) == 4 / 6  # the, cat, sat, ran
    assert distinct_n(texts, 2) == 3 / 4  # the cat (x2), cat sat, cat ran
    assert distinct_n(texts, 3) == 2 / 2
    assert distinct_n(["a a a a"], 1) == 1 / 4
    assert distinct_n(["  spaced\nout\ttext "], 1) == 1.0  # any whitespace separates words
    assert math.isnan(distinct_n(["one"], 2))  # no bigram at all


def test_repetition_rate_on_hand_made_texts():
    assert repetition_rate(["a b c d e f g"], n=4) == 0.0
    # "x y z w" four times: 13 4-grams, only 4 distinct; the other 9 repeat an earlier one
    assert repetition_rate(["x y z w " * 4], n=4) == pytest.approx(9 / 13)
    assert repetition_rate(["a b c d", "a b c d"], n=4) == 0.0  # across samples: not a loop
    assert math.isnan(repetition_rate(["short"], n=4))


# ---- memorisation -------------------------------------------------------------------------------------


def brute_force_memorization(samples, train, n):
    """The oracle: Python sets of every training n-gram, every substring tried."""
    grams = {tuple(train[i : i + n]) for i in range(len(train) - n + 1)}
    total = sum(max(0, len(s) - n + 1) for s in samples)
    found = sum(tuple(s[i : i + n]) in grams for s in samples for i in range(len(s) - n + 1))
    text = "," + ",".join(map(str, train)) + ","
    longest = 0
    for s in samples:
        for i in range(len(s)):
            for j in range(i + longest + 1, len(s) + 1):
                if "," + ",".join(map(str, s[i:j])) + "," in text:
                    longest = j - i
                else:
                    break
    return total, found, longest


def test_memorisation_finds_a_planted_copy_and_nothing_in_new_text():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 300, size=50_000).astype(np.uint16)
    fresh = rng.integers(0, 300, size=120).tolist()
    copied = fresh[:30] + train[1234:1254].tolist() + fresh[30:60]
    assert copied[29] != train[1233] and copied[50] != train[1254]  # the copy is exactly 20 tokens
    m = memorization([copied], train)
    assert (m.longest, m.longest_sample, m.longest_offset, m.longest_train_offset) == (20, 0, 30, 1234)
    assert (m.memorized, m.ngrams) == (20 - 8 + 1, 80 - 8 + 1)
    m = memorization([fresh, fresh[::-1]], train)
    assert m.memorized == 0 and m.rate == 0.0 and m.longest < 8 and m.ngrams == 2 * (120 - 7)


@pytest.mark.parametrize("chunk", [ev.CHUNK, 37])
def test_memorisation_equals_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(ev, "CHUNK", chunk)  # small chunks: spans cross chunk boundaries
    rng = np.random.default_rng(3)
    train = rng.integers(0, 3, size=400)  # 3 symbols: many partial matches
    samples = [rng.integers(0, 3, size=k).tolist() for k in (30, 12, 5, 0)] + [train[100:160].tolist()]
    for n in (2, 8):
        m = memorization(samples, train, n=n)
        assert (m.ngrams, m.memorized, m.longest) == brute_force_memorization(samples, train, n)


def test_memorisation_survives_hash_collisions(monkeypatch):
    # Give every token the same hash value: every window of a length collides with every
    # other. Only the token-by-token check stands between this and nonsense.
    init = ev._Hasher.__init__

    def colliding(self, *a, **kw):
        init(self, *a, **kw)
        self.values[:] = 12345

    monkeypatch.setattr(ev._Hasher, "__init__", colliding)
    rng = np.random.default_rng(4)
    train = rng.integers(0, 4, size=300)
    samples = [rng.integers(0, 4, size=25).tolist(), train[50:70].tolist()]
    m = memorization(samples, train, n=8)
    assert (m.ngrams, m.memorized, m.longest) == brute_force_memorization(samples, train, 8)


# ---- `minigpt eval` ------------------------------------------------------------------------------------


def test_eval_cli_table_and_json_on_an_ngram_run(ngram_run, dataset, capsys):
    assert cli.main(["eval", "--checkpoint", str(ngram_run), "--samples", "3", "--max-new-tokens", "40"]) == 0
    table = capsys.readouterr().out
    for label in ("bits per byte", "perplexity", "distinct-1/2/3", "repetition", "memorised", "longest copy"):
        assert label in table

    assert cli.main(["eval", "--checkpoint", str(ngram_run), "--samples", "3", "--max-new-tokens", "40", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in (
        "val_loss",
        "perplexity",
        "bits_per_byte",
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "repetition_rate",
        "memorized_8gram_rate",
        "longest_memorized_span",
        "longest_memorized_text",
        "val_tokens",
        "val_bytes",
        "checkpoint",
        "model_type",
    ):
        assert key in r, key
    # The oracle: the n-gram's probability of the whole split in one pass (float64).
    data = Dataset(dataset)
    val = np.asarray(data.tokens("val"), dtype=np.int64)
    model = load_checkpoint(ngram_run).model
    p = model.probs(torch.from_numpy(val[None, :-1]))[0]
    nats = -p[torch.arange(len(val) - 1), torch.from_numpy(val[1:])].log()
    blen = torch.from_numpy(data.tokenizer.byte_lengths)[torch.from_numpy(val[1:])]
    assert r["val_tokens"] == len(val) - 1 and r["val_bytes"] == int(blen.sum())
    assert r["val_loss"] == pytest.approx(nats.mean().item(), rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-9)
    assert r["bits_per_byte"] == pytest.approx(
        (nats * (blen > 0)).sum().item() / math.log(2) / blen.sum().item(), rel=1e-6
    )
    assert r["model_type"] == "ngram" and r["samples"] == 3
    assert 0 <= r["memorized_8gram_rate"] <= 1 and r["longest_memorized_span"] >= 1

    # --max-tokens: only the first N tokens
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                str(ngram_run),
                "--samples",
                "1",
                "--max-new-tokens",
                "10",
                "--max-tokens",
                "100",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["val_tokens"] == 99 and r["val_exact"] is False


def test_eval_cli_on_a_gpt_with_zero_weights_scores_log2_257(tmp_path, capsys):
    # All-zero weights give all-zero logits: uniform over 256 bytes + <|endoftext|>.
    data = make_dataset(tmp_path, vocab_size=257)
    model = GPT(GPTConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=16))
    for p in model.parameters():
        nn.init.zeros_(p)
    save_checkpoint(tmp_path / "ckpt", model, Dataset(data).tokenizer)
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(data),
                "--samples",
                "2",
                "--max-new-tokens",
                "20",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["bits_per_byte"] == pytest.approx(math.log2(257), abs=1e-6)
    assert r["perplexity"] == pytest.approx(257, rel=1e-5)


def test_eval_reports_the_half_context_stride_beside_non_overlapping_windows(tmp_path, capsys):
    """Both figures the README compares: non-overlapping windows (nanoGPT's way) and windows
    overlapping by half the context (every token after the first window has at least half a
    context, as an n-gram has); each equals evaluate_tokens called with that stride (the oracle)."""
    data = make_dataset(tmp_path, vocab_size=300)
    ds = Dataset(data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ds.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "ckpt", model, ds.tokenizer)
    argv = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(data), "--samples", "0"]
    assert cli.main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    val, lengths = ds.tokens("val"), ds.tokenizer.byte_lengths
    want_full = evaluate_tokens(model.eval(), val, lengths, window=16, stride=16)["bpb"]
    want_half = evaluate_tokens(model.eval(), val, lengths, window=16, stride=8)["bpb"]
    assert r["bits_per_byte"] == pytest.approx(want_full, rel=1e-6)
    assert r["bits_per_byte_half_stride"] == pytest.approx(want_half, rel=1e-6)
    assert r["bits_per_byte_half_stride"] != pytest.approx(r["bits_per_byte"], rel=1e-9)
    assert cli.main(argv) == 0
    assert "stride half" in capsys.readouterr().out


# ---- bad input: one line on stderr, exit code 2 ---------------------------------------------------------


def _assert_fails(capsys, argv, match):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_eval_refuses_a_dataset_with_another_tokenizer(ngram_run, tmp_path, capsys):
    other = make_dataset(tmp_path, vocab_size=280)
    _assert_fails(capsys, ["eval", "--checkpoint", str(ngram_run), "--data", str(other)], "tokenizer")


def test_eval_refuses_a_negative_sample_count(ngram_run, capsys):
    _assert_fails(
        capsys, ["eval", "--checkpoint", str(ngram_run), "--samples", "-1"], "--samples: must be between 0 and"
    )


def test_eval_samples_0_skips_the_sampling_half(ngram_run, capsys, monkeypatch):
    """--samples 0: the validation numbers of a sampling run, no sampling at all (the
    sampler would fail here), the sample metrics null in --json and "none" in the table."""
    argv = ["eval", "--checkpoint", str(ngram_run), "--max-tokens", "200", "--json"]
    assert cli.main([*argv, "--samples", "1", "--max-new-tokens", "10"]) == 0
    with_samples = json.loads(capsys.readouterr().out)

    def no_sampling(*a, **k):
        raise AssertionError("eval --samples 0 sampled")

    monkeypatch.setattr(ev, "complete", no_sampling)
    assert cli.main([*argv, "--samples", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("val_loss", "perplexity", "bits_per_byte", "val_tokens", "val_bytes"):
        assert r[key] == with_samples[key], key
    assert r["samples"] == 0 and r["sample_tokens"] is None and r["distinct_1"] is None
    assert cli.main(argv[:-1] + ["--samples", "0"]) == 0
    table = capsys.readouterr().out
    assert "bits per byte" in table and "none (--samples 0)" in table and "distinct" not in table


def test_eval_refuses_an_empty_validation_split(ngram_run, dataset, tmp_path, capsys):
    # A copy of the dataset whose val split holds no token (prepare itself refuses to make one).
    empty = tmp_path / "empty"
    empty.mkdir()
    for f in ("train.bin", "tokenizer.json"):
        (empty / f).write_bytes((dataset / f).read_bytes())
    (empty / "val.bin").write_bytes(b"")
    meta = json.loads((dataset / "meta.json").read_text())
    meta["splits"]["val"].update(tokens=0, bytes=0, chars=0)
    (empty / "meta.json").write_text(json.dumps(meta))
    _assert_fails(capsys, ["eval", "--checkpoint", str(ngram_run), "--data", str(empty)], "validation split")


def test_eval_needs_data_when_the_checkpoint_does_not_name_it(tmp_path, dataset, capsys):
    model = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(tmp_path / "bare", model, Dataset(dataset).tokenizer)  # no run.json
    _assert_fails(capsys, ["eval", "--checkpoint", str(tmp_path / "bare")], "--data")


def test_eval_refuses_bad_sampling_flags(ngram_run, capsys):
    _assert_fails(capsys, ["eval", "--checkpoint", str(ngram_run), "--top-p", "0"], "top-p")


# ---- `minigpt compare` -----------------------------------------------------------------------------------


def test_compare_two_runs_table_json_png(ngram_run, dataset, tmp_path, capsys):
    bigram = train_ngram_run(dataset, tmp_path / "bigram", order=2)
    runs = [str(ngram_run), str(bigram)]
    assert cli.main(["compare", *runs]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["run", "model"] and len(table) == 4
    assert all("ngram" in line for line in table[2:])

    assert cli.main(["compare", *runs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == runs
    for r, run in zip(rows, runs):
        evals = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if "val_bpb" in l]
        info = json.loads((Path(run) / "last" / "run.json").read_text())
        assert r["best_val_bpb"] == min(e["val_bpb"] for e in evals)
        assert r["final_val_bpb"] == evals[-1]["val_bpb"]
        assert r["num_params"] == sum(load_checkpoint(run).model.config.sizes)  # n-grams stored
        assert (r["model_type"], r["tokens_seen"], r["step"]) == ("ngram", info["tokens_seen"], 1)
    assert rows[0]["best_val_bpb"] < rows[1]["best_val_bpb"]  # a trigram beats a bigram here

    png = tmp_path / "curves.png"
    assert cli.main(["compare", *runs, "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_bad_run_dirs(ngram_run, tmp_path, capsys, monkeypatch):
    _assert_fails(capsys, ["compare", str(tmp_path / "missing")], "no such run directory")
    (tmp_path / "empty").mkdir()
    _assert_fails(capsys, ["compare", str(tmp_path / "empty")], "not a training run")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)  # as if not installed
    _assert_fails(
        capsys, ["compare", str(ngram_run), "--png", str(tmp_path / "x.png")], "pip install 'minigpt-toolkit[viz]'"
    )
