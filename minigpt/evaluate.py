"""How good is a generative model? `minigpt eval` and `minigpt compare`.

Three questions, three kinds of number:

1. How well does it predict held-out text? On the whole validation split:
   mean loss (nats per token), perplexity = exp(loss), and bits per byte, which unlike
   loss per token does not depend on the tokenizer (see `bits_per_byte`).
2. Are its samples diverse? distinct-n and the repetition rate of generated text.
3. Does it copy its training text? The share of generated 8-token n-grams found verbatim
   in the training split, and the longest generated span found there (a privacy risk:
   a model that recites its training data can leak it).

`minigpt compare` puts training runs side by side (GPT and baselines alike) from the
metrics.jsonl and run.json that every run writes.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import DIST_NAME, files
from .checkpoint import RunDirectory, read_run
from .completion import complete
from .data import windows
from .errors import DataError, MiniGPTError

LN2 = math.log(2)
MEMO_N = 8  # memorisation is measured on 8-token n-grams
REP_N = 4  # repetition rate on word 4-grams


# ---- 1. prediction: loss, perplexity, bits per byte -------------------------------------------


def loss_sums(logits: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor) -> torch.Tensor:
    """The four sums that loss and bits per byte are made of, over one batch:

        [nats over all targets, number of targets, nats over targets with >= 1 byte, their bytes]

    as a float64 tensor [4] on the logits' device. logits [B, T, V], targets [B, T]
    (-1 = not a target: ignored), byte_lengths [V] (bytes each token id stands for; 0 for
    special tokens like <|endoftext|>, which are left out of the bits-per-byte sums: they
    stand for no text, and a tokenizer-free model would not have to predict them).
    Sum these over batches (and processes), then call `metrics_from_sums`.
    """
    t = targets.reshape(-1).long()
    valid = t >= 0
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), t, ignore_index=-1, reduction="none").double()
    nbytes = byte_lengths.to(t.device)[t.clamp_min(0)].double() * valid
    nll_b = torch.where(nbytes > 0, nll, torch.zeros_like(nll))  # (not nll * mask: inf * 0 is nan)
    return torch.stack([nll.sum(), valid.sum().double(), nll_b.sum(), nbytes.sum()])


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """Total nats over some text / ln 2 / the bytes of that text (nan if no bytes).

    Loss per token rewards long tokens: a model with 4-byte tokens makes a quarter of the
    predictions of a byte-level one over the same text. Bits per byte divides the whole
    text's cost by its length in bytes, so any two models compare on the same scale.
    A model that spreads its bets evenly over the 256 byte values pays exactly 8.

    >>> bits_per_byte(nats=3 * math.log(256), n_bytes=3)   # uniform over bytes, 3 bytes
    8.0
    >>> round(bits_per_byte(nats=2.0, n_bytes=4), 4)        # 2 nats / ln 2 = 2.885 bits over 4 bytes
    0.7213
    """
    return nats / LN2 / n_bytes if n_bytes > 0 else float("nan")


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """loss (mean nats per target), perplexity = exp(loss), bpb, and the token and byte counts."""
    nats, n, nats_b, nbytes = (float(x) for x in sums.cpu())
    loss = nats / n if n > 0 else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bpb": bits_per_byte(nats_b, nbytes),
        "tokens": int(n),
        "bytes": int(nbytes),
    }


def window_plan(n_tokens: int, window: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Windows that score every target of a token array exactly once.

    The targets are tokens 1 .. n-1 (token 0 has nothing before it). Window k reads
    tokens[s_k : s_k + W] and would score tokens s_k + 1 .. s_k + W; it scores only
    those past `done[k]`, the last target an earlier window scored. Starts step by
    `stride` S; the last window is moved back to end exactly at the last token.
    Returns (starts, done, W, S), W = min(window, n - 1), S = min(stride or W, W).

    - S = W (the default): non-overlapping windows, one forward pass per token. The
      target at offset j of a window sees j + 1 tokens of context: the same mix the
      model was trained and is validated on by the trainer, so this is the exact value
      of what the trainer's val_bpb estimates.
    - S < W: a sliding window; every target after the first window sees at least
      W - S + 1 tokens of context, at W / S times the cost. Lower (better) numbers for
      models that use long context; S = W / 2 is a common compromise.

    >>> window_plan(10, 4)          # targets 1..9: windows score 1-4, 5-8, then 9 (from start 5)
    (array([0, 4, 5]), array([0, 4, 8]), 4, 4)
    >>> window_plan(10, 4, 2)[0]    # sliding: starts 0, 2, 4, 5
    array([0, 2, 4, 5])
    """
    if n_tokens < 2:
        raise DataError(f"nothing to evaluate: {n_tokens} token(s) hold no (context, target) pair")
    W = max(1, min(window, n_tokens - 1))
    S = max(1, min(stride or W, W))
    last = n_tokens - 1 - W
    starts = np.append(np.arange(0, last, S), last).astype(np.int64)
    done = np.concatenate([[0], starts[:-1] + W]).astype(np.int64)
    return starts, done, W, S


@torch.no_grad()
def evaluate_tokens(
    model: nn.Module,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    *,
    window: int,
    stride: int | None = None,
    batch_size: int = 16,
    max_tokens: int = 0,
    progress: bool | None = False,
    nats_out: np.ndarray | None = None,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` over a whole token array (e.g. the
    validation split), each target scored exactly once (see `window_plan` for how
    context is given). Streams: `batch_size` windows per forward pass, read straight
    from the memory map. `max_tokens` > 0 evaluates only the first max_tokens tokens.
    Computed in float32 with float64 sums. `progress`: a tqdm bar on stderr (None: only
    when stderr is a terminal). Returns `metrics_from_sums`' dict plus the window and
    stride used. `nats_out` (a float array as long as `tokens`): each scored target's loss in
    nats is written at its position (benchmarks compare models token by token).
    """
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens)
    starts, done, W, S = window_plan(n, window, stride)
    device = next(model.parameters()).device
    blen = torch.as_tensor(np.asarray(byte_lengths, dtype=np.int64), device=device)
    if len(blen) < model.config.vocab_size:
        blen = F.pad(blen, (0, model.config.vocab_size - len(blen)))
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    offsets = np.arange(W)
    with tqdm(
        total=n - 1, desc="eval", unit="tok", unit_scale=True, disable=progress is False, leave=False, file=sys.stderr
    ) as bar:
        for i in range(0, len(starts), batch_size):
            s, d = starts[i : i + batch_size], done[i : i + batch_size]
            x, y = windows(tokens, s, W, device)
            fresh = torch.from_numpy((s[:, None] + 1 + offsets) > d[:, None]).to(device)  # [b, W] not yet scored
            y = y.masked_fill(~fresh, -1)
            logits = model(x).logits
            sums += loss_sums(logits, y, blen)
            if nats_out is not None:
                nll = F.cross_entropy(logits.float().transpose(1, 2), y.long(), ignore_index=-1, reduction="none")
                at = torch.from_numpy(s[:, None] + 1 + offsets).to(device)[fresh]
                nats_out[at.cpu().numpy()] = nll[fresh].double().cpu().numpy()
            bar.update(int(fresh.sum()))
    model.train(was_training)
    out = metrics_from_sums(sums)
    if out["tokens"] != n - 1:  # the plan's promise; cheap to check
        raise AssertionError(f"scored {out['tokens']} targets, expected {n - 1}")
    return {**out, "window": W, "stride": S}


# ---- 2. diversity ---------------------------------------------------------------------------------


def _ngrams(seq: Sequence, n: int) -> list[tuple]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams / all word n-grams, pooled over
    all samples. Words are whitespace-separated, so the number does not depend on the
    tokenizer. 1.0 = no n-gram ever repeats; near 0 = the same phrases over and over.
    nan if the texts hold no n-gram at all.

    >>> distinct_n(["the cat the cat"], 1)     # {the, cat} / 4 words
    0.5
    >>> round(distinct_n(["the cat the cat"], 2), 4)   # {the cat, cat the} / 3 bigrams
    0.6667
    """
    grams = [g for t in texts for g in _ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(texts: Sequence[str], n: int = REP_N) -> float:
    """The share of word n-grams that repeat an n-gram seen earlier *in the same sample*
    (Welleck et al. 2019's seq-rep-n, pooled over samples). It catches a model stuck in
    a loop, which distinct-n (pooled over all samples) would confuse with samples that
    merely resemble each other. nan if the texts hold no n-gram.

    >>> repetition_rate(["a b a b a b"], n=2)   # ab ba ab ba ab: the last 3 repeat
    0.6
    >>> repetition_rate(["a b c", "a b c"], n=2)   # repeats across samples do not count
    0.0
    """
    total = repeats = 0
    for t in texts:
        grams = _ngrams(t.split(), n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else float("nan")


# ---- 3. memorisation ------------------------------------------------------------------------------

# Spans are compared by 64-bit polynomial hashes, h(w_0..w_{L-1}) = sum_i R[w_i] * P^i mod 2^64
# (R: a fixed random 64-bit value per token id), computed for every window of the training
# split at once from prefix sums (numpy's uint64 arithmetic wraps mod 2^64). A hash match is
# confirmed by comparing the tokens, so a collision can never count as a copy.
_P = 0x9E3779B97F4A7C15  # odd, hence invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
CHUNK = 1 << 20  # training tokens hashed at a time: memory stays O(CHUNK), not O(split)


class _Hasher:
    def __init__(self, vocab_size: int, max_len: int):
        rng = np.random.default_rng(0x5EED)
        self.values = rng.integers(0, np.iinfo(np.uint64).max, size=vocab_size, dtype=np.uint64, endpoint=True)
        n = max_len + 1
        self.pw = self._powers(_P, n)
        self.ipw = self._powers(_P_INV, n)

    @staticmethod
    def _powers(base: int, n: int) -> np.ndarray:
        """base^0 .. base^(n-1) mod 2^64."""
        out = np.full(n, base, dtype=np.uint64)
        out[0] = 1
        return np.cumprod(out, dtype=np.uint64)

    def windows(self, seq: np.ndarray, L: int) -> np.ndarray:
        """Hashes of every window seq[a : a + L], a = 0 .. len(seq) - L: uint64 [len(seq) - L + 1].
        With S[a] = sum_{i<a} R[seq_i] P^i, h(a) = (S[a + L] - S[a]) * P^-a."""
        m = len(seq)
        if m < L:
            return np.zeros(0, np.uint64)
        prefix = np.zeros(m + 1, np.uint64)
        np.cumsum(self.values[seq] * self.pw[:m], out=prefix[1:])
        return (prefix[L:] - prefix[: m - L + 1]) * self.ipw[: m - L + 1]


def _search(
    samples: list[np.ndarray], train: np.ndarray, L: int, hasher: _Hasher, *, first_only: bool = False
) -> dict[tuple[int, int], int]:
    """Every span samples[s][o : o + L] found verbatim in `train`: {(s, o): train offset}.
    With `first_only`, stop at the first one found."""
    pending: dict[int, list[tuple[int, int]]] = {}
    for s, seq in enumerate(samples):
        for o, h in enumerate(hasher.windows(seq, L).tolist()):
            pending.setdefault(h, []).append((s, o))
    found: dict[tuple[int, int], int] = {}

    def confirm(value: int, seg: np.ndarray, c: int, a: int) -> None:
        """Settle the queries hashed to `value` that equal seg[a : a + L] token for token."""
        left = []
        for s, o in pending[value]:
            if np.array_equal(samples[s][o : o + L], seg[a : a + L]):
                found[(s, o)] = c + a
            else:
                left.append((s, o))
        if left:
            pending[value] = left
        else:
            del pending[value]

    for c in range(0, max(0, len(train) - L + 1), CHUNK):
        if not pending:
            break
        seg = np.asarray(train[c : c + CHUNK + L - 1], dtype=np.int64)
        h = hasher.windows(seg, L)
        keys = np.sort(np.fromiter(pending.keys(), dtype=np.uint64, count=len(pending)))
        pos = np.searchsorted(keys, h).clip(max=len(keys) - 1)
        hit = np.flatnonzero(keys[pos] == h)
        if not hit.size:
            continue
        values, first = np.unique(h[hit], return_index=True)
        for value, a in zip(values.tolist(), hit[first].tolist()):
            confirm(value, seg, c, a)
            if value in pending:  # a hash collision: that window was not a copy; try the others
                for b in hit[h[hit] == value][1:].tolist():
                    confirm(value, seg, c, b)
                    if value not in pending:
                        break
            if first_only and found:
                return found
    return found


@dataclass
class Memorization:
    """What `memorization` found. Offsets are in tokens."""

    ngrams: int  # generated n-grams checked (n = MEMO_N)
    memorized: int  # of those, found verbatim in the training split
    rate: float  # memorized / ngrams (nan if no sample is n tokens long)
    longest: int  # length of the longest generated span found verbatim in training
    longest_sample: int  # which sample it is in (-1: none)
    longest_offset: int  # where in that sample
    longest_train_offset: int  # where in the training split


def memorization(
    samples: Sequence[Sequence[int]], train_tokens: np.ndarray, *, n: int = MEMO_N, vocab_size: int | None = None
) -> Memorization:
    """How much of the generated token ids is copied from the training split.

    - the share of the samples' n-grams (n = 8 tokens by default) that occur anywhere in
      the training split, counting every occurrence in the samples;
    - the longest span of any sample that occurs verbatim in the training split, found by
      binary search on its length (if a span of length L occurs, so do its sub-spans, so
      "some span of length L occurs" is monotone in L).

    Each probe is one streaming pass over the training split (rolling hashes, checked
    token by token on a hit): O(train tokens) time and O(CHUNK) memory per pass,
    about log2(longest sample) + 1 passes.

    >>> train = np.array([5, 1, 2, 3, 4, 9])
    >>> m = memorization([[7, 1, 2, 3, 8]], train, n=2)   # bigrams 71 12 23 38: 12 and 23 found
    >>> (m.ngrams, m.memorized, m.longest, m.longest_offset, m.longest_train_offset)
    (4, 2, 3, 1, 1)
    """
    seqs = [np.asarray(s, dtype=np.int64) for s in samples]
    V = vocab_size or 1 + max(
        [int(train_tokens.max(initial=0)) if len(train_tokens) else 0] + [int(s.max()) for s in seqs if len(s)]
    )
    max_len = max([len(s) for s in seqs] + [0])
    hasher = _Hasher(V, CHUNK + max_len)
    total = sum(max(0, len(s) - n + 1) for s in seqs)
    hits = _search(seqs, train_tokens, n, hasher) if total else {}
    rate = len(hits) / total if total else float("nan")

    # Longest copied span: binary search, starting from what the n-gram pass proved.
    lo, best = 0, (-1, -1, -1)
    if hits:
        (s, o), t = next(iter(hits.items()))
        lo, best = n, (s, o, t)
    hi = min(max_len, len(train_tokens))
    if hits:
        hi = max(hi, lo)
    else:
        hi = min(hi, n - 1)  # no n-gram is copied, so no longer span is either
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = _search(seqs, train_tokens, mid, hasher, first_only=True)
        if got:
            (s, o), t = next(iter(got.items()))
            lo, best = mid, (s, o, t)
        else:
            hi = mid - 1
    return Memorization(total, len(hits), rate, lo, *best)


def copied_positions(
    tokens: np.ndarray, train_tokens: np.ndarray, *, n: int = MEMO_N, vocab_size: int | None = None
) -> np.ndarray:
    """A bool per position of `tokens`: inside some n-token span that occurs verbatim in the
    training split (the spans `memorization` counts), e.g. to score a validation text's
    copies of training text apart from the rest.

    >>> copied_positions(np.array([7, 1, 2, 3, 8]), np.array([5, 1, 2, 3, 4, 9]), n=2).astype(int)
    array([0, 1, 1, 1, 0])
    """
    seq = np.asarray(tokens, dtype=np.int64)
    out = np.zeros(len(seq), dtype=bool)
    if len(seq) < n or len(train_tokens) < n:
        return out
    V = vocab_size or 1 + max(int(train_tokens.max()), int(seq.max()))
    for _, o in _search([seq], train_tokens, n, _Hasher(V, CHUNK + len(seq))):
        out[o : o + n] = True
    return out


# ---- `minigpt eval` --------------------------------------------------------------------------------


def evaluate_checkpoint(
    model: nn.Module,
    tokenizer,
    data,
    *,
    max_tokens: int = 0,
    batch_size: int = 16,
    samples: int = 10,
    prompt: str = "",
    max_new_tokens: int = 200,
    params=None,
    seed: int = 0,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Every number `minigpt eval` reports, for a model and a prepared `Dataset` whose
    tokenizer is the model's. Returns a flat dict (the --json object, less the paths).
    `samples=0` skips the sampling half: its numbers are then None (null in --json)."""
    val = data.tokens("val")
    if len(val) < 2:
        raise DataError(
            f"the validation split of {data.path} is empty ({len(val)} token(s)): nothing to evaluate; "
            "prepare it with more text or a larger --val-fraction"
        )
    if samples < 0:
        raise MiniGPTError(f"--samples must be >= 0, got {samples}")
    for split in ("val", "train"):  # an id past the model's vocabulary would index out of its tables
        data.check_token_ids(split, model.config.vocab_size)
    window, stride = model.score_window()
    ev = evaluate_tokens(
        model,
        val,
        tokenizer.byte_lengths,
        window=window,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        progress=progress,
    )
    # The same tokens scored again with windows that overlap by half the context, so every token
    # after the first window sees at least half a context, as an n-gram always sees its own.
    # Non-overlapping windows are how nanoGPT's figures are measured; this one compares
    # fairly with an n-gram. (A model with a state, an RNN, already carries its whole context.)
    half = None
    if stride == window and window >= 2:
        half = evaluate_tokens(
            model,
            val,
            tokenizer.byte_lengths,
            window=window,
            stride=window // 2,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
        )["bpb"]
    report = {
        "model_type": model.model_type,
        "val_loss": ev["loss"],
        "perplexity": ev["perplexity"],
        "bits_per_byte": ev["bpb"],
        "bits_per_byte_half_stride": half,
        "val_tokens": ev["tokens"],
        "val_bytes": ev["bytes"],
        "val_exact": max_tokens <= 0 or max_tokens >= len(val),
        "window": ev["window"],
        "stride": ev["stride"],
        "samples": samples,
    }
    if samples == 0:
        return {**report, **dict.fromkeys(_SAMPLE_KEYS)}
    outs = complete(
        model, tokenizer, prompt, num_samples=samples, max_new_tokens=max_new_tokens, params=params, seed=seed
    )
    texts = [c.text for c in outs]
    ids = [c.ids for c in outs]
    memo = memorization(ids, data.tokens("train"), vocab_size=model.config.vocab_size)
    longest_ids = (
        ids[memo.longest_sample][memo.longest_offset : memo.longest_offset + memo.longest] if memo.longest else []
    )
    return {
        **report,
        "sample_tokens": sum(len(i) for i in ids),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "repetition_rate": repetition_rate(texts),
        "memorized_8gram_rate": memo.rate,
        "memorized_8grams": memo.memorized,
        "total_8grams": memo.ngrams,
        "longest_memorized_span": memo.longest,
        "longest_memorized_text": tokenizer.decode(longest_ids),
        "longest_memorized_train_offset": memo.longest_train_offset,
    }


# What the sampling half of `eval` reports (None each with --samples 0).
_SAMPLE_KEYS = (
    "sample_tokens",
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "repetition_rate",
    "memorized_8gram_rate",
    "memorized_8grams",
    "total_8grams",
    "longest_memorized_span",
    "longest_memorized_text",
    "longest_memorized_train_offset",
)


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_eval(r: dict[str, Any]) -> str:
    """The readable table `minigpt eval` prints."""
    span = r["longest_memorized_text"] or ""
    span = span if len(span) <= 60 else span[:57] + "..."
    scope = "all" if r["val_exact"] else "first tokens only: an estimate"
    rows = [
        ("checkpoint", f"{r['checkpoint']} ({r['model_type']})"),
        ("data", r["data"]),
        (
            "validation",
            f"{r['val_tokens']:,} tokens, {r['val_bytes']:,} bytes "
            f"({scope}; window {r['window']}, stride {r['stride']})",
        ),
        ("  loss", f"{_num(r['val_loss'], '.4f')} nats/token"),
        ("  perplexity", _num(r["perplexity"], ".2f")),
        ("  bits per byte", _num(r["bits_per_byte"], ".4f")),
    ]
    if r.get("bits_per_byte_half_stride") is not None:
        rows.append(
            (
                "  ... stride half",
                f"{_num(r['bits_per_byte_half_stride'], '.4f')} (windows overlapping by half: compare with n-grams)",
            )
        )
    if not r["samples"]:
        rows.append(("samples", "none (--samples 0)"))
    else:
        rows += [
            ("samples", f"{r['samples']} ({r['sample_tokens']:,} tokens generated)"),
            (
                "  distinct-1/2/3",
                " / ".join(_num(r[f"distinct_{n}"], ".3f") for n in (1, 2, 3)) + "  (unique word n-grams / all)",
            ),
            (
                "  repetition",
                f"{_num(r['repetition_rate'], '.3f')}  (word {REP_N}-grams repeating earlier in their sample)",
            ),
            (
                "  memorised",
                f"{_num(r['memorized_8gram_rate'], '.3f')}  ({r['memorized_8grams']:,} of {r['total_8grams']:,} "
                f"generated {MEMO_N}-token n-grams are in the training split)",
            ),
            (
                "  longest copy",
                f"{r['longest_memorized_span']} tokens" + (f": {json.dumps(span, ensure_ascii=False)}" if span else ""),
            ),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


json_safe = files.json_safe  # what `eval --json` and `compare --json` print through


# ---- `minigpt compare` -----------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One row of `minigpt compare`: what a run directory says about itself.

    From the last checkpoint's run.json (else the best's): model kind, the prepared dataset
    it was trained and validated on (as run.json records it), parameters, steps, training
    time, tokens seen. From metrics.jsonl: the best and the final validation bits per byte,
    and the curve (time_s, val_bpb) for the plot."""
    p = Path(run_dir)
    if not p.is_dir():
        raise MiniGPTError(f"{p}: no such run directory")
    rd = RunDirectory(p)
    ckpt = rd.last() or rd.best()
    if ckpt is None and not rd.metrics_path.is_file():
        raise MiniGPTError(
            f"{p}: not a training run (no metrics.jsonl and no last/ or best/ checkpoint); "
            f"train with `minigpt train --out {p}`"
        )
    info = read_run(ckpt) if ckpt is not None and (ckpt / "run.json").is_file() else {}
    evals = [m for m in rd.read_metrics() if m.get("val_bpb") is not None]
    curve = [(float(m.get("time_s") or 0.0), float(m["val_bpb"])) for m in evals]
    bpbs = [b for _, b in curve if math.isfinite(b)]
    kind = info.get("model_type")
    if kind is None and isinstance(info.get("config", {}).get("model"), dict):
        kind = info["config"]["model"].get("model")
    data = info.get("config", {}).get("data")
    data = data.get("data") if isinstance(data, dict) else None
    return {
        "run": str(run_dir),
        "model_type": kind if isinstance(kind, str) else None,
        "data": data if isinstance(data, str) else None,
        "num_params": info.get("num_params"),
        "step": info.get("step", evals[-1]["step"] if evals else None),
        "train_time_s": info.get("train_time_s", curve[-1][0] if curve else None),
        "tokens_seen": info.get("tokens_seen", evals[-1].get("tokens") if evals else None),
        "best_val_bpb": min(bpbs) if bpbs else info.get("val_bpb"),
        "final_val_bpb": bpbs[-1] if bpbs else info.get("val_bpb"),
        "curve": curve,
    }


def _human(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_compare(rows: list[dict[str, Any]]) -> str:
    """An aligned table, one line per run, and a note when the runs were validated on
    different datasets (their bits per byte then measure different text)."""
    head = ["run", "model", "data", "params", "steps", "train time", "tokens seen", "best val bpb", "final val bpb"]
    body = [
        [
            r["run"],
            r["model_type"] or "?",
            r["data"] or "?",
            _human(r["num_params"]),
            "-" if r["step"] is None else str(r["step"]),
            "-" if r["train_time_s"] is None else f"{r['train_time_s']:.1f} s",
            _human(r["tokens_seen"]),
            _num(r["best_val_bpb"], ".4f"),
            _num(r["final_val_bpb"], ".4f"),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    left = {0, 1, 2}  # text columns left-aligned, numbers right-aligned

    def line(cells):
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    datasets = list(dict.fromkeys(r["data"] for r in rows if r["data"]))  # known ones, in order
    if len(datasets) > 1:
        lines.append(
            f"note: these runs were validated on {len(datasets)} different datasets ({', '.join(datasets)}): "
            f"compare bits per byte only between runs on the same data"
        )
    return "\n".join(lines)


def plot_runs(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Validation bits per byte against training time, one line per run, to a PNG."""
    try:  # matplotlib is the optional viz extra, imported only when a plot is asked for
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MiniGPTError(f"--png needs matplotlib: pip install '{DIST_NAME}[viz]'") from None
    # A bare Figure (no pyplot): no global state, no display backend needed.
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in rows:
        if r["curve"]:
            t, b = zip(*r["curve"])
            ax.plot(t, b, marker="o", markersize=3, label=f"{r['run']} ({r['model_type'] or '?'})")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("minigpt compare")
    ax.grid(alpha=0.3)
    if any(r["curve"] for r in rows):
        ax.legend()
    files.save_png(fig, path, dpi=120, bbox_inches="tight")
