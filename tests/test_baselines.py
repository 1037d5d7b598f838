"""The baselines (n-gram, LSTM, GRU): each checked against an oracle.

- the n-gram's probabilities equal a naive dictionary implementation of interpolated
  Kneser-Ney, and sum to 1 (float64) for every context, seen or not;
- checkpoints round-trip to identical logits; cached RNN decoding equals recomputation;
- `python train.py --model ngram|lstm|gru` runs end to end, and `sample`/`eval` accept
  the result; a small GPT beats the bigram on bits per byte on the same data.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt import cli
from minigpt.baselines import RNNLM, NGramConfig, NGramLM, RNNConfig, kn_discount
from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.config import TrainConfig, apply_preset
from minigpt.data import Dataset, prepare
from minigpt.errors import MiniGPTError
from minigpt.evaluate import evaluate_tokens
from minigpt.models import build
from minigpt.sampling import SamplingParams, generate
from minigpt.trainer import train

REPO = Path(__file__).resolve().parents[1]


# ---- helpers: a made-up corpus where context matters -------------------------------------------


def sentences_text(n: int = 1500, seed: int = 0) -> str:
    """Lines drawn from 12 fixed "sentences" over a 15-word vocabulary. Words recur across
    sentences, so one previous word says little (a bigram is unsure), while a few words
    of context pin the sentence down (a model with context is nearly certain)."""
    rng = random.Random(seed)
    words = "the cat dog sat ran on under mat log red big small old king and".split()
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 8))) + "." for _ in range(12)]
    return "\n".join(rng.choice(sents) for _ in range(n)) + "\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "corpus.txt").write_text(sentences_text(), encoding="utf-8")
    prepare([d / "corpus.txt"], d / "data", vocab_size=300, progress=False)
    return d / "data"


def tiny_config(data: Path, out: Path, model: str, **over) -> TrainConfig:
    cfg = TrainConfig()
    apply_preset(cfg, "cpu")
    settings = dict(
        model=model,
        data=str(data),
        out=str(out),
        device="cpu",
        sample_tokens=0,
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=16,
        batch_size=8,
        max_steps=20,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        eval_interval=10,
        eval_steps=2,
        log_interval=5,
    )
    settings.update(over)
    for k, v in settings.items():
        cfg.set(k, v)
    cfg.validate()
    return cfg


def eval_lines(run: Path) -> list[dict]:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if "val_loss" in l]


# ---- the n-gram model: against a naive implementation of interpolated Kneser-Ney ---------------


def reference_kn(tokens: list[int], n: int, V: int):
    """Chen & Goodman's interpolated Kneser-Ney written the slow, obvious way: dictionaries
    of counts and the recursion as a recursive function. Returns P(w, context)."""
    raw = {k: Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, n + 1)}
    used = {n: raw[n]}
    for k in range(1, n):  # continuation counts: distinct left neighbours of each k-gram
        used[k] = Counter(g[1:] for g in raw[k + 1])
    D = {}
    for k in range(1, n + 1):
        c = np.array(list(used[k].values()))
        n1, n2 = int((c == 1).sum()), int((c == 2).sum())
        D[k] = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5

    def P(w: int, h: tuple, k: int) -> float:
        if k == 0:
            return 1.0 / V
        followers = {g[-1]: c for g, c in used[k].items() if g[:-1] == h and c > 0}
        total = sum(followers.values())
        if total == 0:
            return P(w, h[1:], k - 1)
        return max(followers.get(w, 0) - D[k], 0) / total + D[k] * len(followers) / total * P(w, h[1:], k - 1)

    return P, D


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ngram_equals_reference_and_sums_to_one_for_every_context(order):
    V = 5
    rng = np.random.default_rng(order)
    # Skewed, so that some n-grams are seen once, some twice, some many times, some never.
    tokens = rng.choice(V, size=300, p=[0.4, 0.3, 0.15, 0.1, 0.05]).tolist()
    model = NGramLM(NGramConfig(vocab_size=V, order=order)).fit(np.array(tokens))
    P, D = reference_kn(tokens, order, V)
    assert model.discount.tolist() == pytest.approx([D[k] for k in range(1, order + 1)], abs=1e-15)
    # Every possible context of order - 1 tokens (seen or not) as one batch; position t of
    # each row also gives the shorter contexts that start a sequence.
    ctx_len = max(1, order - 1)
    contexts = torch.tensor(list(product(range(V), repeat=ctx_len)))
    probs = model.probs(contexts)  # [V^ctx_len, ctx_len, V] float64
    assert probs.dtype == torch.float64
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2], dtype=torch.float64), rtol=0, atol=1e-12)
    assert (probs > 0).all()
    for i, ctx in enumerate(contexts.tolist()):
        for t in range(ctx_len):
            h = tuple(ctx[max(0, t - order + 2) : t + 1]) if order > 1 else ()
            want = [P(w, h, len(h) + 1) for w in range(V)]
            assert probs[i, t].tolist() == pytest.approx(want, abs=1e-12), (ctx, t)


def test_kn_worked_example_from_the_docstring():
    a, b, c = 0, 1, 2  # "a b a c"
    model = NGramLM(NGramConfig(vocab_size=3, order=2)).fit(np.array([a, b, a, c]))
    p = model.probs(torch.tensor([[a, b, c]]))[0]
    assert (p[0] * 12).tolist() == pytest.approx([2, 5, 5])  # after a
    assert (p[1] * 12).tolist() == pytest.approx([8, 2, 2])  # after b: only a followed it
    assert (p[2] * 12).tolist() == pytest.approx([4, 4, 4])  # after c: never a context -> P_1
    assert kn_discount(np.array([1, 1, 1, 2, 5])) == pytest.approx(0.6)


def test_ngram_sums_to_one_on_every_seen_and_unseen_context_of_real_text(dataset):
    data = Dataset(dataset)
    train_tokens = np.asarray(data.tokens("train"), dtype=np.int64)
    model = NGramLM(NGramConfig(vocab_size=data.vocab_size, order=3)).fit(train_tokens)
    seen = torch.from_numpy(np.unique(np.lib.stride_tricks.sliding_window_view(train_tokens, 2), axis=0))
    unseen = torch.randint(0, data.vocab_size, (200, 2), generator=torch.Generator().manual_seed(0))
    for ctx in (seen, unseen):
        s = model.probs(ctx).sum(-1)
        assert torch.allclose(s, torch.ones_like(s), rtol=0, atol=1e-12)
    # forward's logits are the log-probabilities: softmax gives the distribution back
    out = model(seen[:4])
    assert torch.allclose(out.logits.double().softmax(-1), model.probs(seen[:4]), atol=1e-6)


def test_ngram_counts_millions_of_tokens_in_seconds():
    import time

    tokens = np.random.default_rng(0).zipf(1.3, size=1_000_000) % 2048
    t0 = time.perf_counter()
    model = NGramLM(NGramConfig(vocab_size=2048, order=3)).fit(tokens)
    assert time.perf_counter() - t0 < 10
    assert model.config.sizes[0] == len(np.unique(tokens))
    assert model.counts_3.sum() == len(tokens) - 2  # raw counts at the top order


# ---- checkpoints -------------------------------------------------------------------------------


def _models():
    torch.manual_seed(0)
    ngram = NGramLM(NGramConfig(vocab_size=50, order=3)).fit(np.random.default_rng(0).integers(0, 50, 2000))
    return {
        "lstm": RNNLM(RNNConfig(vocab_size=50, block_size=16, n_layer=2, n_embd=24, cell="lstm")),
        "gru": RNNLM(RNNConfig(vocab_size=50, block_size=16, n_layer=2, n_embd=24, cell="gru")),
        "lstm-untied": RNNLM(
            RNNConfig(vocab_size=50, block_size=16, n_layer=1, n_embd=24, cell="lstm", tie_weights=False)
        ),
        "ngram": ngram,
    }


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm-untied", "ngram"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, name):
    model = _models()[name].eval()
    x = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    save_checkpoint(tmp_path / "ckpt", model, None)
    loaded = load_checkpoint(tmp_path / "ckpt", need_tokenizer=False)
    assert loaded.model_type == model.model_type
    assert type(loaded.model) is type(model)
    assert torch.equal(loaded.model(x).logits, model(x).logits)
    if name in ("lstm", "gru"):  # the tied head is the embedding, stored once
        assert loaded.model.lm_head.weight is loaded.model.wte.weight
    # build() from the config alone gives an empty model of the same shape
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    fresh = build(cfg["model_type"], cfg["model"])
    assert set(fresh.state_dict()) == set(model.state_dict())


def test_a_fresh_ngram_takes_the_counts_of_a_state_dict():
    # What the trainer does on --resume: load a trained state into a freshly built model.
    trained = _models()["ngram"]
    fresh = NGramLM(NGramConfig(vocab_size=50, order=3))
    fresh.load_state_dict(trained.state_dict())
    x = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(fresh(x).logits, trained(x).logits)
    assert fresh.config.sizes == trained.config.sizes


@pytest.mark.parametrize("name", ["lstm", "gru", "ngram"])
def test_no_attention_to_inspect(name):
    model = _models()[name]
    with pytest.raises(MiniGPTError, match="no attention"):
        model(torch.zeros(1, 3, dtype=torch.long), return_attention=True)


# ---- RNN decoding: the cached path against recomputation ---------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=10)])
def test_cached_rnn_generation_equals_uncached(cell, params):
    torch.manual_seed(0)
    model = RNNLM(RNNConfig(vocab_size=40, block_size=32, n_layer=2, n_embd=32, cell=cell)).eval()
    prompts = [[1, 2, 3]] * 2
    run = lambda cache: [s.tokens for s in generate(model, prompts, 29, params, seed=5, use_cache=cache)]  # noqa: E731
    assert run(True) == run(False)  # within block_size, both see the whole text


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cached_rnn_reads_its_whole_history_past_block_size(cell):
    # Past block_size the cache carries the state on (an RNN has no window): the oracle is
    # greedy decoding by recomputing the whole, uncropped text every step.
    torch.manual_seed(1)
    model = RNNLM(RNNConfig(vocab_size=40, block_size=8, n_layer=2, n_embd=32, cell=cell)).eval()
    got = [s.tokens[0] for s in generate(model, [[7, 3]], 30, SamplingParams(temperature=0.0))]
    seq = [7, 3]
    with torch.no_grad():
        for _ in range(30):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[2:]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_explicit_recurrence_equals_torch_nn_and_compiles_for_decoding(cell):
    torch.manual_seed(3)
    model = RNNLM(RNNConfig(vocab_size=30, block_size=8, n_layer=2, n_embd=16, cell=cell)).eval()
    x = torch.randn(3, 6, 16)
    _, warm = model.rnn(x[:, :2])
    for state in (None, warm):
        want, want_state = model.rnn(x, state)
        got, got_state = model.explicit_rnn(x, state)
        assert torch.allclose(got, want, atol=1e-6)
        for g, w in zip(got_state if cell == "lstm" else [got_state], want_state if cell == "lstm" else [want_state]):
            assert torch.allclose(g, w, atol=1e-6)
    # The sampler compiles its one-token decode step with fullgraph=True (on CUDA); dynamo
    # refuses nn.LSTM/GRU, so the compiled step must trace the explicit path as one graph.
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    eager_cache, compiled_cache = model.make_cache(2), model.make_cache(2)
    for cache in (eager_cache, compiled_cache):
        cache.reset()
        model(prompt, kv_cache=cache)
    step = torch.compile(lambda tok: model(tok, kv_cache=compiled_cache).logits, fullgraph=True, backend="eager")
    tok = prompt[:, -1:]
    for _ in range(4):
        want = model(tok, kv_cache=eager_cache).logits
        assert torch.allclose(step(tok), want, atol=1e-5)
        tok = want[:, -1].argmax(-1, keepdim=True)


def test_rnn_prompts_of_different_lengths_decode_as_if_alone():
    torch.manual_seed(2)
    model = RNNLM(RNNConfig(vocab_size=40, block_size=32, n_layer=2, n_embd=32, cell="lstm")).eval()
    prompts = [[5], [1, 2, 3, 4], [9, 9]]
    greedy = SamplingParams(temperature=0.0)
    # Compare the probabilities too: an untrained RNN's argmax barely depends on its state.
    together = [(s.tokens, s.top_probs) for s in generate(model, prompts, 12, greedy, top=5)]
    for b, p in enumerate(prompts):
        alone = [(s.tokens[0], s.top_probs[0]) for s in generate(model, [p], 12, greedy, top=5)]
        assert [t[b] for t, _ in together] == [t for t, _ in alone]
        for (_, probs), (_, want) in zip(together, alone):
            assert probs[b] == pytest.approx(want, abs=1e-6)


# ---- training through the trainer and the command line ------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_trains_then_samples_and_evaluates_through_the_cli(tmp_path, dataset, cell, capsys):
    out = tmp_path / cell
    summary = train(tiny_config(dataset, out, cell, max_steps=40, eval_interval=20, lr=1e-2), progress=False)
    evals = eval_lines(out)
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # it learned something
    assert json.loads((out / "last" / "run.json").read_text())["model_type"] == cell
    capsys.readouterr()

    assert (
        cli.main(
            [
                "sample",
                "--checkpoint",
                str(out),
                "--prompt",
                "the cat",
                "--max-new-tokens",
                "20",
                "--seed",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("the cat")

    rc = cli.main(
        ["eval", "--checkpoint", str(out), "--samples", "2", "--max-new-tokens", "30", "--json", "--device", "cpu"]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    n_val = len(Dataset(dataset).tokens("val"))
    assert report["model_type"] == cell and report["val_tokens"] == n_val - 1
    # the text is one document (no <|endoftext|> in val): bpb = loss / ln 2 / bytes per token
    assert report["bits_per_byte"] == pytest.approx(
        report["val_loss"] * report["val_tokens"] / math.log(2) / report["val_bytes"], rel=1e-9
    )
    assert summary["val_loss"] == pytest.approx(evals[-1]["val_loss"])


def test_train_py_model_ngram_end_to_end(tmp_path, dataset, capsys):
    out = tmp_path / "ngram"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--model",
            "ngram",
            "--ngram-order",
            "3",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--block-size",
            "16",
            "--batch-size",
            "8",
            "--eval-steps",
            "2",
            "--sample-tokens",
            "20",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--- sample (20 tokens) ---" in proc.stdout
    evals = eval_lines(out)
    assert [e["step"] for e in evals] == [0, 1]
    vocab = Dataset(dataset).vocab_size
    assert evals[0]["val_loss"] == pytest.approx(math.log(vocab), rel=1e-6)  # before counting: uniform
    assert evals[1]["val_bpb"] < evals[0]["val_bpb"] / 3
    run = json.loads((out / "last" / "run.json").read_text())
    assert run["model_type"] == "ngram" and run["tokens_seen"] == len(Dataset(dataset).tokens("train"))
    assert (out / "train_config.json").is_file() and (out / "best").exists()
    # the sampler and the evaluator take it like any checkpoint
    assert (
        cli.main(["sample", "--checkpoint", str(out), "--prompt", "the", "--max-new-tokens", "10", "--seed", "0"]) == 0
    )
    assert capsys.readouterr().out.startswith("the")
    assert cli.main(["eval", "--checkpoint", str(out), "--samples", "1", "--max-new-tokens", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_type"] == "ngram" and report["bits_per_byte"] < evals[0]["val_bpb"] / 3


def test_a_trained_gpt_beats_the_bigram_on_bits_per_byte(tmp_path, dataset):
    # ~1-3 s on 2 CPU cores: 150 steps of a 2-layer, 64-wide GPT.
    data = Dataset(dataset)
    bpb = {}
    for name, model, over in (
        ("gpt", "gpt", dict(n_layer=2, n_embd=64, block_size=32, batch_size=16, max_steps=150, eval_interval=150)),
        ("bigram", "ngram", dict(ngram_order=2)),
    ):
        train(tiny_config(dataset, tmp_path / name, model, **over), progress=False)
        m = load_checkpoint(tmp_path / name).model
        window, stride = m.score_window()
        bpb[name] = evaluate_tokens(m, data.tokens("val"), data.tokenizer.byte_lengths, window=window, stride=stride)[
            "bpb"
        ]
    assert bpb["gpt"] < 0.6 * bpb["bigram"], bpb
