"""Baselines: the older text generators, trained on the same data as the GPT.

    NGramLM  ("ngram")        counts of n-grams, smoothed with interpolated Kneser-Ney
    RNNLM    ("lstm", "gru")  embedding -> torch.nn.LSTM/GRU -> output head tied to the embedding

They speak the GPT's interface, so the trainer, checkpoints, the sampler, `minigpt eval`
and `minigpt compare` treat every kind alike:

    model(idx [B, T], targets=None) -> GPTOutput(logits [B, T, V], loss, attentions=None)

`model.config.to_dict()` and `model.model_type` go into the checkpoint's config.json;
everything a model knows is a tensor in its state_dict (the n-gram's counts too), so it is
saved with safetensors and never pickled. Neither has attention: `return_attention=True`
raises a MiniGPTError that says so.

`python train.py --model lstm|gru` trains an RNN with the GPT's own loop (AdamW, the same
windows of block_size tokens); `--model ngram` is fitted by counting the train split once
(`NGramLM.fit`, called by the same trainer). The kinds are registered in `models.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_field as _check
from .errors import MiniGPTError, NoAttention
from .model import GPTOutput, check_token_ids

CELLS = ("lstm", "gru")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    if targets is None:
        return None
    return F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1).long(), ignore_index=-1)


# ---- the n-gram model ------------------------------------------------------------------------


@dataclass
class NGramConfig:
    """An n-gram model over `vocab_size` tokens. `sizes[k-1]` is the number of distinct
    k-grams stored (filled in by `fit`; a checkpoint needs them to allocate its tensors)."""

    vocab_size: int
    order: int = 3
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(_positive_int(self.vocab_size), "vocab_size", f"must be a positive integer, got {self.vocab_size!r}")
        _check(_positive_int(self.order), "ngram_order", f"must be a positive integer, got {self.order!r}")
        _check(
            isinstance(self.sizes, list)
            and len(self.sizes) in (0, self.order)
            and all(isinstance(s, int) and s >= 0 for s in self.sizes),
            "sizes",
            f"must list {self.order} non-negative counts (one per order), got {self.sizes!r}",
        )

    @property
    def block_size(self) -> int:
        """The context the model reads: the last order - 1 tokens. The sampler crops its
        input to this, so generating from an n-gram (which has no cache) costs one tiny
        forward pass per token. (The forward pass itself accepts any length.)"""
        return max(1, self.order - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _KNIndex:
    """What `NGramLM.probs` looks up, derived from the stored counts (on their device).

    For order k >= 2, contexts are (k-1)-grams named by their rank r in the order-(k-1)
    table: total[r] = sum of the counts that follow r, types[r] = how many distinct tokens
    follow it, and table entries start[r] .. start[r + 1] - 1 are those followers.
    """

    def __init__(self, model: NGramLM):
        V, n = model.config.vocab_size, model.config.order
        self.keys = [getattr(model, f"keys_{k}") for k in range(1, n + 1)]
        self.counts = [getattr(model, f"counts_{k}").double() for k in range(1, n + 1)]
        self.D = model.discount.detach()
        self.total, self.types, self.start = [None], [None], [None]  # order 1 has no context table
        for k in range(2, n + 1):
            m_prev = len(self.keys[k - 2])  # contexts of order k = the (k-1)-grams
            ctx = torch.div(self.keys[k - 1], V, rounding_mode="floor")
            c = self.counts[k - 1]
            self.total.append(torch.bincount(ctx, weights=c, minlength=m_prev))
            self.types.append(torch.bincount(ctx, weights=(c > 0).double(), minlength=m_prev))
            per = torch.bincount(ctx, minlength=m_prev)
            self.start.append(torch.cat([per.new_zeros(1), per.cumsum(0)]))
        # Order 1 (the empty context) is the same for every position: compute it once.
        p = torch.full((V,), 1.0 / V, dtype=torch.float64, device=self.D.device)
        self.p1 = _kn_level(p, self.keys[0], self.counts[0], self.D[0])


def _kn_level(p_lower: torch.Tensor, tokens: torch.Tensor, counts: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """One interpolation step for a single context: max(c - D, 0) / C + D * types / C * p_lower."""
    total = counts.sum()
    if total <= 0:
        return p_lower.clone()
    gamma = D * (counts > 0).sum() / total
    p = p_lower * gamma
    return p.index_add(0, tokens, (counts - D).clamp_min(0) / total)


def _lookup(keys: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Index of each q in the sorted `keys`, or -1 where it is absent (or q is -1)."""
    if len(keys) == 0:
        return torch.full_like(q, -1)
    pos = torch.searchsorted(keys, q.clamp_min(0))
    hit = (q >= 0) & (pos < len(keys)) & (keys[pos.clamp_max(len(keys) - 1)] == q)
    return torch.where(hit, pos, torch.full_like(pos, -1))


def kn_discount(counts: np.ndarray) -> float:
    """Chen & Goodman's estimate D = n1 / (n1 + 2 n2), n1 and n2 the number of n-grams seen
    exactly once and twice; 0.5 when either is zero. It lies strictly between 0 and 1,
    which keeps every token's probability positive and every distribution summing to 1.

    >>> kn_discount(np.array([1, 1, 1, 2, 5]))   # n1 = 3, n2 = 1: 3 / (3 + 2)
    0.6
    """
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5


class NGramLM(nn.Module):
    """An n-gram language model with interpolated Kneser-Ney smoothing.

    Chen & Goodman (1998), "An empirical study of smoothing techniques", interpolated KN
    with one discount D_k per order k. For a context h (the last k-1 tokens) and token w:

        P_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .)  +  D_k * N1+(h .) / c_k(h .) * P_{k-1}(w | h')

    where h' is h without its oldest token, c_k(h .) = sum over w of c_k(h w), and
    N1+(h .) = the number of distinct w with c_k(h w) > 0. The counts are:

    - at the highest order n, raw counts: c_n(h w) = how often h w occurs;
    - at lower orders, continuation counts: c_k(g) = the number of distinct tokens that
      precede g (Kneser & Ney's insight: "Francisco" is frequent but follows only "San",
      so as a guess for a new context it deserves little mass).

    The recursion ends at P_0(w) = 1 / V (uniform), so every token keeps a nonzero
    probability. A context never seen (c_k(h .) = 0) passes P_{k-1} through unchanged.
    Each level gives away exactly D_k * N1+(h .) / c_k(h .) of its mass and spreads it by
    P_{k-1}, so if P_{k-1} sums to 1 so does P_k: every distribution sums to 1 (the
    tests check this in float64 for every context).

    Tiny worked example, bigrams (n = 2) over "a b a c", V = 3 tokens {a, b, c}:
        bigram counts: ab 1, ba 1, ac 1; contexts: a -> {b: 1, c: 1}, b -> {a: 1}
        continuation counts (distinct left neighbours): a 1 (b.), b 1 (a.), c 1 (a.);
        D_1 = D_2 = 0.5 (no n-gram seen twice)
        P_1(w) = (1 - 0.5) / 3 + 0.5 * 3/3 * 1/3 = 1/3 for each w
        P_2(b | a) = (1 - 0.5) / 2 + 0.5 * 2/2 * 1/3 = 5/12,  P_2(c | a) = 5/12,  P_2(a | a) = 2/12
        (5 + 5 + 2) / 12 = 1.

    Storage: for each order k, `keys_k` (sorted) and `counts_k`, one entry per distinct
    k-gram. A k-gram is named by key = rank of its first k-1 tokens in the order-(k-1)
    table * V + its last token, so keys stay far below 2^63 for any order, and all the
    followers of a context form one contiguous run of the sorted keys. Contexts at the
    start of a sequence (fewer than n - 1 tokens) use the lower orders only.
    n-grams that span an <|endoftext|> are counted like any other: they teach the model
    how documents end and begin.
    """

    model_type = "ngram"
    has_attention = False
    learns_by = "counting"  # fitted in one pass by `fit`, not trained by gradient descent

    def __init__(self, cfg: NGramConfig):
        super().__init__()
        self.config = cfg
        n = cfg.order
        sizes = cfg.sizes or [0] * n
        # The smoothing's only parameters (not learned by gradient descent). Being an
        # nn.Parameter also tells the sampler which device the model lives on.
        self.discount = nn.Parameter(torch.full((n,), 0.5, dtype=torch.float64), requires_grad=False)
        for k in range(1, n + 1):
            self.register_buffer(f"keys_{k}", torch.zeros(sizes[k - 1], dtype=torch.long))
            self.register_buffer(f"counts_{k}", torch.zeros(sizes[k - 1], dtype=torch.long))
        self.check_inputs = True
        self._index: _KNIndex | None = None

    # ---- counting ------------------------------------------------------------------------

    def fit(self, tokens: np.ndarray) -> NGramLM:
        """Count every k-gram (k = 1..order) of `tokens` (e.g. the train split) and set the
        discounts. Replaces whatever was counted before. Seconds for millions of tokens:
        one np.unique per order."""
        V, n = self.config.vocab_size, self.config.order
        toks = np.asarray(tokens, dtype=np.int64)
        if len(toks) and (toks.min() < 0 or toks.max() >= V):
            raise MiniGPTError(f"token ids must be in [0, {V}); got {toks.min()}..{toks.max()}")
        keys, counts = [], []
        rank = None  # rank[t] = rank of the (k-1)-gram that starts at t
        first = None  # first position of each distinct k-gram
        for k in range(1, n + 1):
            m = len(toks) - k + 1  # k-grams in the text
            if m <= 0:
                keys.append(np.zeros(0, np.int64))
                counts.append(np.zeros(0, np.int64))
                rank = np.zeros(0, np.int64)
                continue
            key = toks.copy() if k == 1 else rank[:m] * V + toks[k - 1 :]
            uniq, first_k, rank_k, raw = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
            if k > 1:
                # The order k-1 table was waiting for its continuation counts: for each
                # distinct k-gram x g, its suffix g (a (k-1)-gram, starting one later) gains
                # one distinct left neighbour.
                suffix = rank[first_k + 1]
                counts[k - 2] = np.bincount(suffix, minlength=len(keys[k - 2])).astype(np.int64)
            keys.append(uniq.astype(np.int64))
            counts.append(raw.astype(np.int64))  # raw counts; replaced above for orders < n
            rank, first = rank_k.reshape(-1).astype(np.int64), first_k
        del first
        dev = self.discount.device
        for k in range(1, n + 1):
            setattr(self, f"keys_{k}", torch.from_numpy(keys[k - 1]).to(dev))
            setattr(self, f"counts_{k}", torch.from_numpy(counts[k - 1]).to(dev))
        with torch.no_grad():
            self.discount.copy_(torch.tensor([kn_discount(c) for c in counts], dtype=torch.float64))
        self.config.sizes = [len(k) for k in keys]
        self._index = None
        return self

    # ---- scoring -------------------------------------------------------------------------

    def _get_index(self) -> _KNIndex:
        if self._index is None:
            self._index = _KNIndex(self)
        return self._index

    @torch.no_grad()
    def probs(self, idx: torch.Tensor) -> torch.Tensor:
        """The next-token distribution after every position of idx [B, T]: float64
        [B, T, V]. Position t conditions on idx[:, max(0, t - order + 2) : t + 1].

        The recursion P_k = s_k + g_k * P_{k-1} (s_k: the discounted counts, sparse; g_k:
        the mass handed down, one number per position) is unrolled to

            P_n = s_n + g_n s_{n-1} + g_n g_{n-1} s_{n-2} + ... + (g_n ... g_2) P_1

        so the dense [positions, V] array is written once, plus one scatter per order.
        """
        V, n = self.config.vocab_size, self.config.order
        ix = self._get_index()
        dev = self.discount.device
        idx = idx.to(dev).long()
        B, T = idx.shape
        P = B * T
        flat = torch.arange(P, device=dev).view(B, T)
        gammas = torch.ones(n + 1, P, dtype=torch.float64, device=dev)  # gammas[k]: g_k per position
        sparse = []  # per order: (k, position of each entry, its token, its discounted count / total)
        ranks = None  # [B, T - j + 1]: rank of the j-gram starting at each position (-1: unseen)
        for k in range(2, n + 1):
            j = k - 1  # context length
            if j > T:
                break
            if j == 1:
                ranks = _lookup(ix.keys[0], idx)
            else:
                q = ranks[:, : T - j + 1] * V + idx[:, j - 1 :]
                ranks = _lookup(ix.keys[j - 1], torch.where(ranks[:, : T - j + 1] >= 0, q, torch.full_like(q, -1)))
            # The context of the token after position t is the j-gram starting at t - j + 1.
            rows = flat[:, j - 1 :].reshape(-1)
            r = ranks.reshape(-1)
            keep = r >= 0
            rows, r = rows[keep], r[keep]
            total = ix.total[k - 1][r]
            keep = total > 0  # a context seen only at the very end has no followers
            rows, r, total = rows[keep], r[keep], total[keep]
            if len(rows) == 0:
                continue
            D = ix.D[k - 1]
            gammas[k, rows] = D * ix.types[k - 1][r] / total
            # Each context's followers are one contiguous run of table entries lo .. hi - 1.
            lo, hi = ix.start[k - 1][r], ix.start[k - 1][r + 1]
            n_e = hi - lo
            which = torch.repeat_interleave(torch.arange(len(r), device=dev), n_e)  # entry -> its row in rows
            run_start = n_e.cumsum(0) - n_e
            entry = lo[which] + torch.arange(len(which), device=dev) - run_start[which]
            val = (ix.counts[k - 1][entry] - D).clamp_min(0) / total[which]
            sparse.append((k, rows[which], ix.keys[k - 1][entry] % V, val))
        # scale[k] = g_{k+1} * ... * g_n: what order k's contribution is multiplied by.
        scale = torch.ones_like(gammas)
        for k in range(n - 1, 0, -1):
            scale[k] = scale[k + 1] * gammas[k + 1]
        p = scale[1][:, None] * ix.p1[None, :]  # [P, V]
        for k, rows_e, tok_e, val in sparse:
            p.index_put_((rows_e, tok_e), val * scale[k][rows_e], accumulate=True)
        return p.view(B, T, V)

    def forward(self, idx, targets=None, *, kv_cache=None, return_attention: bool = False) -> GPTOutput:
        """Logits = log-probabilities (so softmax gives the model's distribution back) for
        every position of idx [B, T]; the mean cross-entropy if targets are given."""
        if return_attention:
            raise NoAttention("ngram")
        if kv_cache is not None:
            raise ValueError("the n-gram model keeps no cache; call it on the last order - 1 tokens")
        check_token_ids(idx, targets, self.config.vocab_size, check_values=self.check_inputs)
        logits = self.probs(idx).log_().float().to(idx.device)
        return GPTOutput(logits, _loss(logits, targets), None)

    def num_params(self) -> int:
        """The n-grams stored: what plays the role of parameters in a count-based model."""
        return int(sum(getattr(self, f"keys_{k}").numel() for k in range(1, self.config.order + 1)))

    def flops_per_token(self, seq_len: int | None = None) -> float | None:
        """None: counting does no floating-point training work to measure MFU by."""
        return None

    def make_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> None:
        """None: an n-gram keeps no state between calls; the sampler gives it the last
        order - 1 tokens each step (its `block_size`), which costs one tiny forward pass."""
        return None

    def score_window(self) -> tuple[int, int]:
        """(window, stride) that scores every token with its full context: an n-gram reads
        only the last order - 1 tokens but accepts any length, so long windows overlapping
        by order - 2 tokens give its exact probability of a text at little cost."""
        return 128, 128 - max(0, self.config.order - 2)

    # ---- keeping the derived index in step with the tensors ----------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Counts have data-dependent shapes: take the incoming ones (a freshly built model
        # is empty, e.g. when the trainer resumes an n-gram run).
        for k in range(1, self.config.order + 1):
            for name in (f"keys_{k}", f"counts_{k}"):
                t = state_dict.get(prefix + name)
                if t is not None and t.shape != getattr(self, name).shape:
                    setattr(self, name, torch.zeros(t.shape, dtype=torch.long, device=self.discount.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.config.sizes = [getattr(self, f"keys_{k}").numel() for k in range(1, self.config.order + 1)]
        self._index = None

    def _apply(self, fn, *args, **kwargs):
        self._index = None  # .to(device) moves the counts; rebuild the index there
        return super()._apply(fn, *args, **kwargs)


# ---- the recurrent models -----------------------------------------------------------------------


@dataclass
class RNNConfig:
    """An LSTM or GRU language model. Like `GPTConfig`, it round-trips through JSON."""

    vocab_size: int
    block_size: int = 64  # training window; generation may run past it (the state carries on)
    n_layer: int = 2
    n_embd: int = 128  # embedding size = hidden size (the head is tied to the embedding)
    dropout: float = 0.0
    cell: str = "lstm"  # lstm | gru
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_embd"):
            v = getattr(self, name)
            _check(_positive_int(v), name, f"must be a positive integer, got {v!r}")
        _check(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            "dropout",
            f"must be in [0, 1), got {self.dropout!r}",
        )
        _check(self.cell in CELLS, "cell", f"must be one of {', '.join(CELLS)}; got {self.cell!r}")
        _check(isinstance(self.tie_weights, bool), "tie_weights", f"must be true or false, got {self.tie_weights!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RecurrentState:
    """The sampler's cache for an RNN: its hidden state between calls.

    An LSTM's state is (h, c), a GRU's is h, each [n_layer, B, n_embd]: one column per
    row, which is all a row's history comes to. So it offers the KV cache's row operations
    (see `models.DecodeCache`) without any slots: `select` and `append` pick and join
    columns, and it is never `full` (an RNN has no context window; each new token costs one
    step of the recurrence whatever the length of the text).
    `start[b]`: left-padding tokens of row b, which the prefill skips.
    """

    static = False  # `state` is a new tensor every step: no CUDA graph over it
    full = False  # no slots to run out of

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.state = None
        self.start: torch.Tensor | None = None

    def reset(self, start: torch.Tensor | None = None) -> None:
        self.state = None
        self.start = start

    def _map(self, fn: Callable[..., torch.Tensor], *others: RecurrentState):
        """fn over the state's tensors: h (GRU), or h and c (LSTM), each [n_layer, B, C]."""
        states = (self.state, *(o.state for o in others))
        if any(s is None for s in states):
            raise ValueError("a recurrent state with no text yet has no rows to select or append: prefill it first")
        if isinstance(self.state, tuple):
            return tuple(fn(*parts) for parts in zip(*states))
        return fn(*states)

    def select(self, rows: Sequence[int] | torch.Tensor) -> RecurrentState:
        """A new state holding only `rows` (indices into this one), in that order."""
        out = RecurrentState(len(rows))
        out.state = self._map(lambda t: t.index_select(1, torch.as_tensor(rows, dtype=torch.long, device=t.device)))
        return out

    def append(self, other: RecurrentState) -> RecurrentState:
        """A new state with this one's rows, then `other`'s."""
        if not isinstance(other, RecurrentState):
            raise TypeError(f"append: a recurrent state takes another one's rows, not a {type(other).__name__}")
        out = RecurrentState(self.batch_size + other.batch_size)
        out.state = self._map(lambda a, b: torch.cat([a, b], dim=1), other)
        return out

    def make_room(self) -> bool:
        return True  # never full: there is always room


class RNNLM(nn.Module):
    """tokens -> embedding -> n_layer x LSTM/GRU -> output head tied to the embedding.

        idx [B, T] --wte--> x [B, T, C] --rnn--> h [B, T, C] --lm_head (= wte^T)--> logits [B, T, V]

    The classic recipe of Zaremba et al. (2014) with the tied input/output embedding of
    Press & Wolf (2017) and Inan et al. (2017): dropout on the embeddings, between layers
    and before the head. Trained on the same windows as the GPT, it starts every window
    from a zero state, so it learns to predict from at most block_size tokens of history.
    """

    has_attention = False
    learns_by = "gradient"

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.config = cfg
        self.model_type = cfg.cell  # "lstm" or "gru": two registered kinds, one class
        C = cfg.n_embd
        self.wte = nn.Embedding(cfg.vocab_size, C)
        self.drop = nn.Dropout(cfg.dropout)
        cell = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = cell(C, C, num_layers=cfg.n_layer, batch_first=True, dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self._refresh_weights()
        # NOTE: the embedding keeps PyTorch's N(0, 1) init on purpose. The gates need inputs
        # of order 1 to be driven by them at all: with the small +-0.1 init of PyTorch's
        # word-language-model example (tuned for SGD at lr 20), AdamW at the GPT's learning
        # rates sat at the unigram loss for hundreds of steps in our runs.
        self.check_inputs = True

    def num_params(self) -> int:
        """Parameters, each counted once (the tied head shares the embedding)."""
        return sum(p.numel() for p in self.parameters())

    def _refresh_weights(self) -> None:
        # [w_ih, w_hh, b_ih, b_hh] per layer, for `explicit_rnn`: the same Parameter objects
        # as inside self.rnn (loading and .to() update them in place; _apply refreshes anyway).
        names = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")
        self._rnn_weights = [[getattr(self.rnn, n.format(i)) for n in names] for i in range(self.config.n_layer)]

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_weights()
        return out

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight that multiplies (the embedding lookup does
        not multiply, but the tied head does, so each parameter counts once)."""
        return 6 * self.num_params()

    def make_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> RecurrentState:
        return RecurrentState(batch_size)

    def score_window(self) -> tuple[int, int]:
        """(window, stride) for scoring a text: non-overlapping windows of block_size, as trained."""
        return self.config.block_size, self.config.block_size

    def explicit_rnn(self, x: torch.Tensor, state=None):
        """The recurrence written out, step by step, with nn.LSTM/GRU's own weights and
        equations (torch.nn.LSTM / torch.nn.GRU docs; gate order i, f, g, o and r, z, n).
        Same inputs and outputs as `self.rnn(x, state)` (batch_first).

        Why a second path: torch.compile cannot trace nn.LSTM/GRU ("Dynamo does not
        support RNN, GRU, or LSTM"), not even to read their weights, and the sampler
        compiles its decode step on CUDA. Compiled decoding takes this path, reading the
        weights from a plain list (`_rnn_weights`); the tests hold the two equal.
        """
        B, T, _ = x.shape
        lstm = self.config.cell == "lstm"
        L, C = self.config.n_layer, self.config.n_embd
        if state is None:
            zeros = x.new_zeros(L, B, C)
            state = (zeros, zeros) if lstm else zeros
        hs = list(state[0].unbind(0)) if lstm else list(state.unbind(0))
        cs = list(state[1].unbind(0)) if lstm else []
        inp = x
        for layer in range(L):
            w_ih, w_hh, b_ih, b_hh = self._rnn_weights[layer]
            xw = inp @ w_ih.T + b_ih  # [B, T, gates * C]: the input's part of every step at once
            h = hs[layer]
            c = cs[layer] if lstm else None
            outs = []
            for t in range(T):
                hw = h @ w_hh.T + b_hh  # [B, gates * C]
                if lstm:
                    i, f, g, o = (xw[:, t] + hw).chunk(4, dim=-1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    xr, xz, xn = xw[:, t].chunk(3, dim=-1)
                    hr, hz, hn = hw.chunk(3, dim=-1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    h = (1 - z) * torch.tanh(xn + r * hn) + z * h
                outs.append(h)
            hs[layer] = h
            if lstm:
                cs[layer] = c
            inp = torch.stack(outs, dim=1)  # [B, T, C]
            if layer < L - 1 and self.training and self.config.dropout > 0:
                inp = F.dropout(inp, self.config.dropout)
        new_state = (torch.stack(hs), torch.stack(cs)) if lstm else torch.stack(hs)
        return inp, new_state

    def _run(self, x: torch.Tensor, cache: RecurrentState | None) -> torch.Tensor:
        # Compiled decode steps (the sampler's, on CUDA) cannot trace nn.LSTM/GRU: take the
        # explicit path. A compiled *training* step (no cache) keeps the fused cuDNN kernel:
        # torch.compile runs nn.LSTM/GRU eagerly behind a graph break.
        rnn = self.explicit_rnn if cache is not None and torch.compiler.is_compiling() else self.rnn
        if cache is None:
            return rnn(x)[0]
        if cache.state is None and cache.start is not None and bool((cache.start > 0).any()):
            # A left-padded prefill: run each row from its first real token, so padding
            # never enters the state. Padded positions get zero outputs (never read).
            outs, states = torch.zeros_like(x), []
            for b, s in enumerate(cache.start.tolist()):
                y, st = rnn(x[b : b + 1, s:])
                outs[b, s:] = y[0]
                states.append(st)
            if isinstance(states[0], tuple):
                cache.state = tuple(torch.cat([st[i] for st in states], dim=1) for i in range(2))
            else:
                cache.state = torch.cat(states, dim=1)
            return outs
        y, cache.state = rnn(x, cache.state)
        return y

    def forward(
        self, idx, targets=None, *, kv_cache: RecurrentState | None = None, return_attention: bool = False
    ) -> GPTOutput:
        """Logits for every position of idx [B, T]; loss if targets are given (-1 ignored).
        With `kv_cache`, idx continues the text whose state the cache holds (and the state
        advances past it); without, the text starts from a zero state."""
        if return_attention:
            raise NoAttention(self.config.cell)
        check_token_ids(
            idx, targets, self.config.vocab_size, check_values=self.check_inputs and not torch.compiler.is_compiling()
        )
        x = self.drop(self.wte(idx))  # [B, T, C]
        h = self._run(x, kv_cache)  # [B, T, C]
        logits = self.lm_head(self.drop(h))  # [B, T, V]
        return GPTOutput(logits, _loss(logits, targets), None)
