"""Look inside a GPT: attention maps, per-head statistics, a terminal view, an HTML viewer.

What a head attends to is the softmax row a[t, :] of query position t over key positions
s <= t (TransformerLens calls it `hook_pattern`, [batch, head, query_pos, key_pos]). We
get it from the model's explicit attention path, `model(idx, return_attention=True)`, as
a return value: no hooks are registered, and the model is left as it was found.

    maps = attention_maps(model, tokenizer, "The cat sat on the mat.")
    maps.weights.shape          # (n_layer, n_head, T, T), float32, rows sum to 1
    maps.tokens                 # ['The', ' cat', ' sat', ...]: readable token pieces
    maps.head_stats()           # entropy, distance, previous-token and sink scores
    induction_scores(model)     # [n_layer, n_head], on a repeated random sequence
    write_html(maps, "att.html")   # one self-contained interactive viewer
    maps                        # in a notebook cell: the same viewer, inline (`_repr_html_`)
    report = head_report(model, tokenizer, text)   # `minigpt heads`: statistics (+ ablation, see ablation.py)

A prompt longer than the model's block_size is cropped to its *last* block_size tokens
(what the model would see when continuing it); `maps.dropped` says how many went.

Per-head statistics (all averaged over query rows t >= 1; row 0 is skipped because the
first token can only attend to itself, so its row is a[0, 0] = 1 whatever the head does):

    entropy        -sum_s a[t,s] ln a[t,s]   nats; 0 = one key, ln(t+1) = uniform
    mean distance   sum_s a[t,s] (t - s)     tokens back; 1 for a previous-token head
    previous-token  a[t, t-1]                1 for a head that always looks one back
    first-token     a[t, 0]                  the "attention sink" (Xiao et al. 2023)
    induction       see `induction_scores`: [A][B] ... [A] -> attends to [B]

What a head *changes* (ablation) and what each layer would predict (the logit lens) live
in ablation.py and lens.py; the page that shows all of it is viewer.html (viewer.py).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import DIST_NAME, files
from .errors import MiniGPTError, NoAttention
from .viewer import display_width, notebook_html, visible_token, write_page

if TYPE_CHECKING:  # for annotations only: the ablation is computed by the caller and handed in
    from .ablation import HeadAblation
    from .lens import LogitLens

__all__ = [
    "AttentionMaps",
    "HeadStats",
    "attention_maps",
    "head_statistics",
    "attention_entropy",
    "mean_attention_distance",
    "previous_token_score",
    "first_token_score",
    "induction_scores",
    "select_map",
    "format_attention",
    "format_head_stats",
    "write_html",
    "write_png",
    "check_index",
    "viewer_data",
    "HeadReport",
    "head_report",
]

# A head is named a previous-token head if, on average, more than half of each token's
# attention goes to the token right before it (a random head gives ~1/t), and an
# induction head if it puts more than 0.3 on the token after the earlier occurrence
# (a random head gives ~ln(2)/seq_len, i.e. ~0.02 at seq_len 32).
PREV_TOKEN_THRESHOLD = 0.5
INDUCTION_THRESHOLD = 0.3
INDUCTION_SEQ_LEN = 32  # random tokens per half of the repeated sequence (capped by block_size / 2)
INDUCTION_BATCH = 8  # sequences averaged, so one unlucky draw does not decide

DEFAULT_PASSAGE = (
    "The cat sat on the mat, and the dog sat on the log. When the cat saw the dog,\n"
    "the cat ran up the tree and the dog sat down again on the mat. The cat sat on the mat."
)


# ---- the maps -------------------------------------------------------------------------------


@dataclass
class AttentionMaps:
    """Attention weights of every head for one text.

    tokens:  the T tokens as readable strings (byte-level pieces decoded, e.g. ' the')
    ids:     their token ids
    weights: float32 [n_layer, n_head, T, T]; weights[l, h, t, s] is how much query
             token t attends to key token s in head h of layer l (0 where s > t)
    dropped: tokens cut from the front because the text was longer than block_size
    """

    tokens: list[str]
    ids: list[int]
    weights: np.ndarray
    dropped: int = 0

    @property
    def cropped(self) -> bool:
        return self.dropped > 0

    @property
    def n_layer(self) -> int:
        return self.weights.shape[0]

    @property
    def n_head(self) -> int:
        return self.weights.shape[1]

    def __len__(self) -> int:
        return len(self.tokens)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz holding `weights` [n_layer, n_head, T, T] float32, `tokens` (a
        unicode array), `ids` (int64) and `dropped`. It loads with allow_pickle=False.

        `tokens_json` repeats the tokens as one JSON string: numpy's unicode arrays drop
        trailing NUL characters, so a token like '\\x00' would not survive on its own.
        """
        buf = io.BytesIO()  # np.savez appends ".npz" to a path without it; a buffer keeps the name exact
        np.savez(
            buf,
            weights=self.weights.astype(np.float32),
            tokens=np.array(self.tokens, dtype=np.str_),
            tokens_json=np.array(json.dumps(self.tokens)),
            ids=np.array(self.ids, dtype=np.int64),
            dropped=np.array(self.dropped, dtype=np.int64),
        )
        return files.atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttentionMaps:
        """Read an .npz written by `save` (no pickles are loaded)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                weights = z["weights"].astype(np.float32)
                tokens = json.loads(str(z["tokens_json"])) if "tokens_json" in z else [str(t) for t in z["tokens"]]
                ids = [int(i) for i in z["ids"]] if "ids" in z else []
                dropped = int(z["dropped"]) if "dropped" in z else 0
        except (OSError, ValueError, KeyError) as e:
            raise MiniGPTError(f"{path}: not an attention .npz ({e})") from None
        return cls(tokens=tokens, ids=ids, weights=weights, dropped=dropped)

    def head_stats(self) -> HeadStats:
        """Entropy, mean distance, previous-token and first-token scores of every head on
        this text (no induction score: that needs the model, see `induction_scores`)."""
        return head_statistics(self.weights)

    def _repr_html_(self) -> str:  # a notebook cell shows the attention viewer
        return notebook_html(viewer_data(self))


def _require_attention(model) -> None:
    """Only models that declare `has_attention` (the GPT) can be inspected; the baselines
    (lstm, gru, ngram) cannot."""
    if not model.has_attention:
        raise NoAttention(model.model_type)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _forward_attention(model, idx: torch.Tensor) -> np.ndarray:
    """Every layer's weights for idx [B, T], as float32 numpy [B, n_layer, n_head, T, T].

    The model runs in eval mode (no dropout) and is put back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        out = model(idx, return_attention=True)
    finally:
        model.train(was_training)
    att = torch.stack(out.attentions, dim=1)  # [B, L, H, T, T]
    # Softmax ran in float32 even for bf16 weights, but was then cast back: widen again.
    return att.float().cpu().numpy()


def attention_maps(model, tokenizer, text: str, *, device: str | torch.device | None = None) -> AttentionMaps:
    """The attention weights of every head of `model` reading `text`.

    Text longer than block_size tokens is cropped to its last block_size tokens
    (`result.dropped` counts the tokens cut). `device` is where the model already lives
    (default: wherever its parameters are); the weights always come back as CPU numpy.

    >>> maps = attention_maps(model, tok, "to be or not to be")   # doctest: +SKIP
    >>> maps.weights[0, 0].sum(axis=-1)                             # doctest: +SKIP
    array([1., 1., 1., 1., 1., 1.], dtype=float32)
    """
    _require_attention(model)
    if tokenizer is None:
        raise MiniGPTError("no tokenizer: text cannot be turned into token ids")
    if not text:
        raise MiniGPTError("the prompt is empty: give at least one token of text to look at")
    dev = _model_device(model)
    want = None if device is None else torch.device(device)
    if want is not None and (want.type != dev.type or (want.index is not None and want.index != dev.index)):
        # Quietly moving the model would change the caller's object; say what to do instead.
        raise MiniGPTError(f"the model is on {dev}, not {device}: move it first with model.to({str(device)!r})")
    ids = tokenizer.encode(text)
    block = model.config.block_size
    dropped = max(0, len(ids) - block)
    ids = ids[dropped:]
    idx = torch.tensor(ids, dtype=torch.long, device=dev)[None]  # [1, T]
    weights = _forward_attention(model, idx)[0]
    return AttentionMaps(tokens=[tokenizer.token_str(i) for i in ids], ids=ids, weights=weights, dropped=dropped)


# ---- per-head statistics ------------------------------------------------------------------
#
# Each takes weights [..., T, T] (any leading dims, e.g. [n_layer, n_head]) and returns
# [...]: one number per head, the mean over query rows t = 1 .. T-1.


def _rows(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"expected attention weights [..., T, T], got shape {w.shape}")
    if w.shape[-1] < 2:
        raise MiniGPTError("head statistics need at least 2 tokens (the first token can only attend to itself)")
    return w


def attention_entropy(weights: np.ndarray) -> np.ndarray:
    """Mean over t >= 1 of -sum_s a[t,s] ln a[t,s], in nats (0 ln 0 = 0).

    0 for a head that always picks one key; ln(t+1) in row t for a uniform head.
    >>> round(float(attention_entropy(np.array([[1, 0], [0.5, 0.5]]))), 4)   # row 1: ln 2
    0.6931
    """
    w = _rows(weights)[..., 1:, :]
    plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
    return -plogp.sum(-1).mean(-1)


def mean_attention_distance(weights: np.ndarray) -> np.ndarray:
    """Mean over t >= 1 of sum_s a[t,s] (t - s): how many tokens back a head looks.

    >>> float(mean_attention_distance(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])))  # (1 + 1) / 2
    1.0
    """
    w = _rows(weights)
    T = w.shape[-1]
    back = np.arange(T)[:, None] - np.arange(T)[None, :]  # [T, T]: t - s
    return (w * back)[..., 1:, :].sum(-1).mean(-1)


def previous_token_score(weights: np.ndarray) -> np.ndarray:
    """Mean over t >= 1 of a[t, t-1]: 1 for a head that always attends to the token before.

    >>> float(previous_token_score(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])))
    1.0
    """
    w = _rows(weights)
    return np.diagonal(w, offset=-1, axis1=-2, axis2=-1).mean(-1)


def first_token_score(weights: np.ndarray) -> np.ndarray:
    """Mean over t >= 1 of a[t, 0]: attention parked on the first token (the "sink").

    >>> float(first_token_score(np.array([[1, 0, 0], [1, 0, 0], [0.5, 0, 0.5]])))  # (1 + 0.5) / 2
    0.75
    """
    return _rows(weights)[..., 1:, 0].mean(-1)


def induction_scores(
    model,
    *,
    seq_len: int | None = None,
    seed: int = 0,
    batch_size: int = INDUCTION_BATCH,
    exclude_ids: tuple[int, ...] | list[int] = (),
) -> np.ndarray:
    """Induction score of every head, float64 [n_layer, n_head] in [0, 1].

    The model reads `batch_size` sequences r_0 .. r_{n-1} r_0 .. r_{n-1}: n random
    distinct token ids, then the same n again (n = seq_len, default min(32, block_size/2)).
    An induction head completes patterns [A][B] ... [A] -> [B]: at the second r_i (position
    n + i) it attends to the token right after the first r_i, at position i + 1. The score
    is the mean of a[n+i, i+1] over i = 0 .. n-1 and over the batch (TransformerLens's
    definition: the stripe at offset n - 1 below the diagonal, second half only).

    A head that spreads attention evenly scores ~ln(2)/n; a perfect induction head 1.
    `exclude_ids` (e.g. <|endoftext|>) are never drawn. Same seed, same sequences.
    """
    _require_attention(model)
    vocab, block = model.config.vocab_size, model.config.block_size
    n = min(INDUCTION_SEQ_LEN, block // 2) if seq_len is None else seq_len
    if n < 2 or 2 * n > block:
        raise MiniGPTError(f"induction score: need 2 <= seq_len <= block_size / 2 = {block // 2}, got {n}")
    allowed = torch.tensor(sorted(set(range(vocab)) - {int(i) for i in exclude_ids}), dtype=torch.long)
    if len(allowed) < 2:
        raise MiniGPTError(f"induction score: the vocabulary has {len(allowed)} usable tokens, need at least 2")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch_size):
        if len(allowed) >= n:  # distinct tokens, so each has exactly one earlier occurrence
            first = allowed[torch.randperm(len(allowed), generator=g)[:n]]
        else:
            first = allowed[torch.randint(len(allowed), (n,), generator=g)]
        rows.append(torch.cat([first, first]))
    idx = torch.stack(rows).to(_model_device(model))  # [B, 2n]
    att = _forward_attention(model, idx).astype(np.float64)  # [B, L, H, 2n, 2n]
    i = np.arange(n)
    stripe = att[..., n + i, i + 1]  # [B, L, H, n]
    return stripe.mean(axis=(0, -1))


@dataclass
class HeadStats:
    """Per-head statistics, each a float64 array [n_layer, n_head] (see the module
    docstring for the definitions). `induction` is None until measured."""

    entropy: np.ndarray
    distance: np.ndarray
    prev_token: np.ndarray
    first_token: np.ndarray
    induction: np.ndarray | None = None

    def previous_token_heads(self, threshold: float = PREV_TOKEN_THRESHOLD) -> list[tuple[int, int]]:
        """(layer, head) of every head with previous-token score > threshold, best first."""
        return _above(self.prev_token, threshold)

    def induction_heads(self, threshold: float = INDUCTION_THRESHOLD) -> list[tuple[int, int]]:
        """(layer, head) of every head with induction score > threshold, best first."""
        return [] if self.induction is None else _above(self.induction, threshold)

    def rows(self) -> list[dict]:
        """One dict per head: layer, head, entropy, mean_distance, prev_token, first_token, induction."""
        out = []
        L, H = self.entropy.shape
        for l in range(L):
            for h in range(H):
                out.append(
                    {
                        "layer": l,
                        "head": h,
                        "entropy": float(self.entropy[l, h]),
                        "mean_distance": float(self.distance[l, h]),
                        "prev_token": float(self.prev_token[l, h]),
                        "first_token": float(self.first_token[l, h]),
                        "induction": None if self.induction is None else float(self.induction[l, h]),
                    }
                )
        return out


def _above(score: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    hits = [(float(score[l, h]), l, h) for l, h in zip(*np.nonzero(score > threshold))]
    return [(int(l), int(h)) for _, l, h in sorted(hits, key=lambda x: -x[0])]


def head_statistics(weights: np.ndarray, induction: np.ndarray | None = None) -> HeadStats:
    """All text-based statistics of weights [n_layer, n_head, T, T] at once."""
    return HeadStats(
        entropy=attention_entropy(weights),
        distance=mean_attention_distance(weights),
        prev_token=previous_token_score(weights),
        first_token=first_token_score(weights),
        induction=induction,
    )


# ---- terminal rendering ---------------------------------------------------------------------


def check_index(value: int | None, n: int, what: str) -> None:
    # Negative indices are refused rather than counted from the end: "--layer -1" is
    # more likely a typo than a wish for the last layer, and the message lists the range.
    if value is not None and not 0 <= value < n:
        raise MiniGPTError(f"--{what} {value} is out of range: this model has {n} {what}s (0..{n - 1})")


def select_map(maps: AttentionMaps, layer: int | None = None, head: int | None = None) -> tuple[np.ndarray, str]:
    """The [T, T] map of one layer/head, or the mean over the layers/heads not given,
    with a description of which. A mean of attention rows is still a distribution."""
    check_index(layer, maps.n_layer, "layer")
    check_index(head, maps.n_head, "head")
    w = maps.weights
    w = w[[layer]] if layer is not None else w  # keep dims: [L', H, T, T]
    w = w[:, [head]] if head is not None else w  # [L', H', T, T]
    if layer is not None and head is not None:
        what = f"layer {layer}, head {head}"
    elif layer is not None:
        what = f"layer {layer}, mean over its {maps.n_head} heads"
    elif head is not None:
        what = f"head {head}, mean over {maps.n_layer} layers"
    else:
        what = f"mean over all {maps.n_layer} layers x {maps.n_head} heads"
    return w.mean(axis=(0, 1)), what


_SHADES = " .:-=+*#%@"  # 10 levels, light to dark
_MAX_STRIP = 48  # above this many tokens the per-row shade strip would wrap; leave it out


def _shade(x: float) -> str:
    # sqrt: a row spread over 30 keys (~0.03 each) should still show, not look empty.
    return _SHADES[min(len(_SHADES) - 1, int(math.sqrt(max(x, 0.0)) * len(_SHADES)))]


def format_attention(maps: AttentionMaps, layer: int | None = None, head: int | None = None, top: int = 3) -> str:
    """A compact text heatmap: one line per query token with a shade strip of its row
    (' ' = 0 ... '@' = 1 on a square-root scale, when T <= 48) and the `top` keys it
    attends to most.

        layer 0, head 1 (6 tokens)
          5 ·be  |.@:.. | -> '·be'@1 0.91 | '·or'@2 0.05 | 'to'@0 0.02

    Tokens are shown with `viewer.visible_token` (a space is '·', a newline '⏎'), so a
    token of whitespace keeps the columns; `'·be'@1` is the key token and its position.
    """
    if top < 1:
        raise MiniGPTError(f"--top must be >= 1, got {top}")
    m, what = select_map(maps, layer, head)
    T = len(maps.tokens)
    shown = [visible_token(t) for t in maps.tokens]
    width = min(max(display_width(s) for s in shown), 16)
    pos_w = len(str(T - 1))
    lines = [f"{what} ({T} tokens{f'; the first {maps.dropped} were cropped' if maps.dropped else ''})"]
    for t in range(T):
        row = m[t, : t + 1]
        # Rounded for ordering, so equal weights (a uniform row) list in position order.
        order = sorted(range(t + 1), key=lambda s: (-round(float(row[s]), 6), s))[:top]
        best = " | ".join(f"'{shown[s]}'@{s} {row[s]:.2f}" for s in order)
        strip = f" |{''.join(_shade(x) for x in m[t])}|" if T <= _MAX_STRIP else ""
        lines.append(f"  {t:>{pos_w}} {visible_token(maps.tokens[t], width)}{strip} -> {best}")
    return "\n".join(lines)


def format_head_stats(stats: HeadStats, ablation: HeadAblation | None = None) -> str:
    """The `minigpt heads` table plus the lines naming likely previous-token and induction
    heads; with `ablation`, a column per method of the rise in validation bits per byte
    without the head (and of the prompt's KL, when measured), and the heads it needs most."""
    cols = (
        f"{'layer':>5} {'head':>4} {'entropy':>8} {'distance':>9} {'prev-token':>10} {'first-token':>11} "
        f"{'induction':>9}"
    )
    methods = ablation.methods if ablation is not None else ()
    with_kl = ablation is not None and ablation.prompt_kl is not None
    for m in methods:
        cols += f" {m + ' Δbpb':>10}" + (f" {m + ' KL':>8}" if with_kl else "")
    lines = [cols]
    for r in stats.rows():
        ind = "-" if r["induction"] is None else f"{r['induction']:.3f}"
        line = (
            f"{r['layer']:>5} {r['head']:>4} {r['entropy']:>8.3f} {r['mean_distance']:>9.2f} "
            f"{r['prev_token']:>10.3f} {r['first_token']:>11.3f} {ind:>9}"
        )
        for m in methods:
            line += f" {ablation.delta(m)[r['layer'], r['head']]:>+10.4f}"
            if with_kl:
                line += f" {ablation.prompt_kl[m][r['layer'], r['head']]:>8.3f}"
        lines.append(line)

    def named(heads, score, threshold, kind):
        if not heads:
            return f"likely {kind} heads (score > {threshold}): none"
        listed = ", ".join(f"L{l}H{h} ({score[l, h]:.2f})" for l, h in heads)
        return f"likely {kind} heads (score > {threshold}): {listed}"

    lines.append(named(stats.previous_token_heads(), stats.prev_token, PREV_TOKEN_THRESHOLD, "previous-token"))
    if stats.induction is not None:
        lines.append(named(stats.induction_heads(), stats.induction, INDUCTION_THRESHOLD, "induction"))
    for m in methods:
        d = ablation.delta(m)
        order = np.argsort(-d, axis=None, kind="stable")[:3]
        worst = ", ".join(f"L{l}H{h} ({d[l, h]:+.4f})" for l, h in (np.unravel_index(i, d.shape) for i in order))
        lines.append(f"heads the model needs most ({m}-ablation, rise in bits/byte): {worst}")
    return "\n".join(lines)


# ---- the per-head report -----------------------------------------------------------------------


@dataclass
class HeadReport:
    """What `minigpt heads` reports, as one object: the statistics of every head on a text
    (whose attention maps are kept for the viewer), the induction scores and, when
    measured, what ablating each head costs (`ablation.head_ablation`).

    In a notebook it shows itself as the viewer page with its "Heads" tab open.
    """

    maps: AttentionMaps
    stats: HeadStats
    seed: int = 0
    induction_seq_len: int = INDUCTION_SEQ_LEN
    ablation: HeadAblation | None = None
    title: str = ""

    def rows(self) -> list[dict]:
        """One dict per head: HeadStats.rows() plus, when measured, "ablation": {method: {...}}."""
        rows = self.stats.rows()
        if self.ablation is not None:
            for r in rows:
                r["ablation"] = self.ablation.head(r["layer"], r["head"])
        return rows

    def to_json(self) -> dict:
        """`minigpt heads --json` (less the checkpoint path), and the viewer's `heads` part."""
        out = {
            "tokens": len(self.maps),
            "dropped": self.maps.dropped,
            "induction": {"seq_len": self.induction_seq_len, "batch": INDUCTION_BATCH, "seed": self.seed},
            "thresholds": {"prev_token": PREV_TOKEN_THRESHOLD, "induction": INDUCTION_THRESHOLD},
            "heads": self.rows(),
            "previous_token_heads": [list(x) for x in self.stats.previous_token_heads()],
            "induction_heads": [list(x) for x in self.stats.induction_heads()],
        }
        if self.ablation is not None:
            out["ablation"] = self.ablation.to_json()
        return out

    def format(self) -> str:
        """The terminal table (see `format_head_stats`), after a line describing the ablation."""
        table = format_head_stats(self.stats, self.ablation)
        return table if self.ablation is None else self.ablation.describe() + "\n" + table

    def page_data(self, lens: LogitLens | None = None) -> dict:
        return viewer_data(self.maps, self.title, heads=self, lens=lens, tab="heads")

    def write_html(self, path: str | os.PathLike, lens: LogitLens | None = None) -> Path:
        return write_page(self.page_data(lens), path)

    def _repr_html_(self) -> str:
        return notebook_html(self.page_data())


def head_report(
    model,
    tokenizer,
    text: str = DEFAULT_PASSAGE,
    *,
    seed: int = 0,
    ablation: HeadAblation | None = None,
    title: str = "",
) -> HeadReport:
    """Every head's statistics on `text` and its induction score (`seed`: the repeated
    random sequences); `ablation` (from `ablation.head_ablation`) is attached as given."""
    maps = attention_maps(model, tokenizer, text)
    if len(maps) < 2:
        raise MiniGPTError("the text is a single token: head statistics need at least 2")
    special = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    stats = maps.head_stats()
    stats.induction = induction_scores(model, seed=seed, exclude_ids=special)
    n = min(INDUCTION_SEQ_LEN, model.config.block_size // 2)
    return HeadReport(maps=maps, stats=stats, seed=seed, induction_seq_len=n, ablation=ablation, title=title)


# ---- the HTML viewer and the PNG ---------------------------------------------------------------


def viewer_data(
    maps: AttentionMaps,
    title: str = "",
    layer: int | None = None,
    head: int | None = None,
    *,
    lens: LogitLens | None = None,
    heads: HeadReport | None = None,
    tab: str | None = None,
) -> dict:
    """What the viewer reads (see viewer.html's header): tokens, each head's rows cut at
    the diagonal (row t keeps its t+1 possible keys), rounded to 6 decimals, the
    layer/head to open on (head None: the mean over heads) and, when given, the per-head
    report and the logit lens of the same text; `tab` names the tab to open on ("attention", "heads", "lens")."""
    check_index(layer, maps.n_layer, "layer")
    check_index(head, maps.n_head, "head")
    L, H, T, _ = maps.weights.shape
    w = np.round(maps.weights.astype(np.float64), 6)
    if lens is not None and list(lens.ids) != list(maps.ids):
        raise ValueError("the lens must read the same tokens as the attention maps")
    return {
        "title": title,
        "open": tab or "attention",
        "layer": 0 if layer is None else layer,
        # --layer alone opens on the mean of its heads (as the terminal view shows it);
        # nothing given opens on layer 0, head 0.
        "head": head if head is not None else (None if layer is not None else 0),
        "tokens": list(maps.tokens),
        "dropped": maps.dropped,
        "n_layer": L,
        "n_head": H,
        "weights": [[[w[l, h, t, : t + 1].tolist() for t in range(T)] for h in range(H)] for l in range(L)],
        "heads": None if heads is None else files.json_safe(heads.to_json()),
        "lens": None if lens is None else lens.to_json(),
    }


def write_html(
    maps: AttentionMaps,
    path: str | os.PathLike,
    *,
    title: str = "",
    layer: int | None = None,
    head: int | None = None,
    lens: LogitLens | None = None,
    heads: HeadReport | None = None,
    tab: str | None = None,
) -> Path:
    """Write the interactive viewer: one HTML file with the data inside, no network needed.

    Layer and head selectors, the chosen head's heatmap (token labels on its axes and a
    colour scale), an overview of every head in the layer (click one to select it), and
    the text where hovering or clicking a token shows what it attends to. With `heads`
    (a HeadReport) a "Heads" tab with every head's statistics and ablation costs; with
    `lens` (a LogitLens of the same text) a "Logit lens" tab with the attribution.
    The template is `viewer.html` next to this module.
    """
    return write_page(viewer_data(maps, title, layer, head, lens=lens, heads=heads, tab=tab), path)


def _matplotlib_figure():
    """matplotlib's Figure class, imported only when a PNG is wanted (an optional extra).

    The object-oriented API needs no pyplot, so no global backend is chosen or changed."""
    try:  # the optional viz extra
        from matplotlib.figure import Figure
    except ImportError:
        raise MiniGPTError(f"--png needs matplotlib, which is not installed: pip install '{DIST_NAME}[viz]'") from None
    return Figure


def write_png(maps: AttentionMaps, path: str | os.PathLike, layer: int | None = None, head: int | None = None) -> Path:
    """Draw one head's map (or a mean, see `select_map`) as a heatmap, query rows down,
    key columns across. Needs matplotlib (the `viz` extra)."""
    Figure = _matplotlib_figure()
    m, what = select_map(maps, layer, head)
    T = len(maps.tokens)
    size = min(12.0, 3.0 + 0.25 * T)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    im = ax.imshow(np.where(np.tril(np.ones((T, T), bool)), m, np.nan), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="attention weight")
    if T <= 64:  # beyond that the labels overlap into a grey smear
        labels = [visible_token(t) for t in maps.tokens]
        ax.set_xticks(range(T), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(what)
    fig.tight_layout()
    files.save_png(fig, path, dpi=100)
    return Path(path)
