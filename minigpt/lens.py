"""What each layer would predict, and what each head and MLP adds to a logit.

A GPT's residual stream is a sum. After block l (of L) it holds

    x_l = embed + Σ_{i <= l} (attn_i + mlp_i)        [T, C]
    attn_i = Σ_h head_{i,h} + b_O                     head h: its slice of the output projection

and the model's logits are head(norm_f(x_{L-1})) (`ln_f`, then `lm_head`).

**Logit lens** (nostalgebraist 2020; TransformerLens's `accumulated_resid(apply_ln=True)`):
put the stream after *every* layer through that same final norm and head, as if the model
stopped there. Row "embed" reads the embeddings alone, row "L0" the stream after block 0,
..., and the last row is the model's own output. Each row gives, per position, the top-k
next tokens and the rank and probability of the token that really comes next.

    lens = logit_lens(model, tok, "The cat sat on the")
    lens.top_ids.shape            # (n_layer + 1, T, k)
    lens.next_rank[:, -1]         # how each layer ranks the last real next token (1 = top)
    print(lens.format())          # the terminal table; lens.write_html("lens.html"); lens in a notebook

**Direct logit attribution**: hold the final norm's scale fixed at its value for this
position (σ_t, computed from x_{L-1}, as is standard); then the norm is linear and the logit
of token v at position t splits exactly into one term per part of the sum above:

    logit[t, v] = Σ_c  u · (g ⊙ (c_t − mean(c_t)) / σ_t)  +  u · b        u = W_U[v]

(RMSNorm: no mean is taken and there is no b.) The parts c are the token embedding, the
position embedding (learned or sinusoidal; rotary models have none), every head, each
attention's output bias, every MLP; the final norm's bias is one more term. They sum to
the logit the model computes before any soft cap (`logit_softcap`, which is not linear).

    attr = direct_logit_attribution(model, tok, "The cat sat on the", token=" mat")
    attr.values.sum() == attr.logit   # to float rounding; attr.rows() name each term

The stream is read with forward hooks registered for one forward pass and always removed
(`recording`): the model is left as it was found.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import MiniGPTError, NoAttention
from .viewer import display_width, notebook_html, visible_token, write_page

__all__ = [
    "Stream",
    "recording",
    "run_stream",
    "lens_logits",
    "LogitLens",
    "logit_lens",
    "Attribution",
    "direct_logit_attribution",
    "lens_json",
    "LENS_TOP_K",
]

LENS_TOP_K = 5  # predictions kept per layer and position
_CHUNK = 256  # positions whose [P, vocab] logits are held at once (GPT-2: 256 x 50257 floats, 51 MB)


def require_gpt(model, feature: str) -> None:
    """Only a GPT has layers of a residual stream and heads; a baseline says so plainly."""
    if not model.has_attention:
        raise NoAttention(model.model_type, feature)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A weight as a plain tensor: CPU inference prepacks Linear weights for oneDNN
    (`onednn.prepack_for_cpu`), whose tensors cannot be indexed or multiplied directly."""
    return t.to_dense() if t.is_mkldnn else t


# ---- reading the stream ------------------------------------------------------------------


@dataclass
class Stream:
    """One forward pass of a GPT taken apart (row 0 of the batch, as the model computed it).

    embed:   [T, C] the embeddings (token, plus learned/sinusoidal positions): the stream
             before block 0
    z[l]:    [T, C] layer l's heads' outputs side by side, before the output projection:
             head h owns columns h*D .. (h+1)*D - 1 (D = C / n_head)
    attn[l]: [T, C] layer l's attention output, c_proj(z[l])
    mlp[l]:  [T, C] layer l's MLP output
    resid[l]:[T, C] the stream after block l: resid[l] = resid[l-1] + attn[l] + mlp[l]
    """

    embed: torch.Tensor | None = None
    z: list = field(default_factory=list)
    attn: list = field(default_factory=list)
    mlp: list = field(default_factory=list)
    resid: list = field(default_factory=list)


@contextmanager
def recording(model) -> Iterator[Stream]:
    """Within the block, every forward pass of `model` made by this thread fills the yielded
    Stream (the last pass wins; other threads' passes are ignored). The hooks are removed on
    leaving, whatever happens inside.

    >>> with recording(model) as s:                       # doctest: +SKIP
    ...     model(idx)
    >>> s.resid[-1].shape                                   # doctest: +SKIP
    torch.Size([T, C])
    """
    require_gpt(model, "reading the residual stream")
    blocks = model.transformer.h
    s = Stream(z=[None] * len(blocks), attn=[None] * len(blocks), mlp=[None] * len(blocks), resid=[None] * len(blocks))
    # subtle: hooks belong to the modules, so every thread's passes would fire them; a server
    # decodes other requests on the same model meanwhile. Only this thread's passes are kept.
    owner = threading.get_ident()

    def keep(where: list, i: int, pick):
        def hook(_module, _inputs, output):
            if threading.get_ident() == owner:
                where[i] = pick(output)[0].detach()

        return hook

    def keep_z(i: int):
        def hook(_module, inputs):
            if threading.get_ident() == owner:
                s.z[i] = inputs[0][0].detach()

        return hook

    def keep_embed(_module, _inputs, output):
        if threading.get_ident() == owner:
            s.embed = output[0].detach()

    handles = [model.transformer.drop.register_forward_hook(keep_embed)]  # the sum wte (+ wpe) enters here
    try:
        for i, block in enumerate(blocks):
            handles += [
                block.attn.c_proj.register_forward_pre_hook(keep_z(i)),
                block.attn.register_forward_hook(keep(s.attn, i, lambda out: out[0])),  # (output, weights)
                block.mlp.register_forward_hook(keep(s.mlp, i, lambda out: out)),
                block.register_forward_hook(keep(s.resid, i, lambda out: out[0])),  # (x, weights)
            ]
        yield s
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_stream(model, ids: Sequence[int] | torch.Tensor) -> tuple[Stream, torch.Tensor]:
    """One forward pass of `ids` (at most block_size tokens) in eval mode, taken apart;
    returns the Stream and the model's logits [T, V]. The model's mode is restored."""
    device = next(model.parameters()).device
    idx = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)  # [1, T]
    was_training = model.training
    model.eval()
    try:
        with recording(model) as s:
            logits = model(idx).logits[0]
    finally:
        model.train(was_training)
    return s, logits


def _head(model, x: torch.Tensor) -> torch.Tensor:
    """The model's own final norm and unembedding (and soft cap) on stream rows x [P, C] -> [P, V]."""
    logits = model.lm_head(model.transformer.ln_f(x))
    cap = model.config.logit_softcap
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def _rows(stream: Stream) -> list[torch.Tensor]:
    """What the lens reads, in order: the embeddings, then the stream after each block."""
    return [stream.embed, *stream.resid]


def layer_names(n_layer: int) -> list[str]:
    return ["embed"] + [f"L{i}" for i in range(n_layer)]


@torch.no_grad()
def lens_logits(model, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The logit lens in full: float32 [n_layer + 1, T, V]; row l + 1 is the stream after
    block l through the final norm and head, row 0 the embeddings, and the last row equals
    the model's logits. Memory grows as layers x T x V: `logit_lens` keeps only the top-k."""
    require_gpt(model, "the logit lens")
    s, _ = run_stream(model, ids)
    return torch.stack([_head(model, x).float() for x in _rows(s)]).cpu()


# ---- direct logit attribution --------------------------------------------------------------


def component_names(model) -> list[str]:
    """The parts the logit of a token splits into, in the order of `_attribute`'s columns."""
    c = model.config
    names = ["embed"] + (["pos"] if c.pos_encoding != "rope" else [])
    for l, block in enumerate(model.transformer.h):
        names += [f"L{l}H{h}" for h in range(c.n_head)]
        if block.attn.c_proj.bias is not None and c.bias:
            names.append(f"L{l} attn bias")
        names.append(f"L{l} MLP")
    if getattr(model.transformer.ln_f, "bias", None) is not None:
        names.append("final norm bias")
    return names


@torch.no_grad()
def _attribute(model, s: Stream, ids: Sequence[int], t: int, tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Direct contributions to the logits of `tokens` at position t: float64 [K, N] (one
    column per `component_names` entry) and the logits the model computes there, before
    any soft cap [K]. Worked in float64 from the float32 stream."""
    c = model.config
    H, D = c.n_head, c.head_dim
    ln_f = model.transformer.ln_f
    x = s.resid[-1][t].double()  # [C] the stream the final norm reads
    eps = ln_f.eps if ln_f.eps is not None else torch.finfo(s.resid[-1].dtype).eps
    centred = isinstance(ln_f, torch.nn.LayerNorm)
    if centred:
        sigma = torch.sqrt(x.var(unbiased=False) + eps)
    else:  # RMSNorm
        sigma = torch.sqrt((x * x).mean() + eps)
    g = ln_f.weight.double() if ln_f.weight is not None else torch.ones_like(x)
    W_U = _dense(model.lm_head.weight)
    u = W_U[torch.as_tensor(list(tokens), device=W_U.device)].double()  # [K, C]
    d = u * g / sigma  # [K, C]: the direction each part is read along
    if centred:  # (c - mean c) . d == c . (d - mean d)
        d = d - d.mean(-1, keepdim=True)
    cols = []
    tok_emb = model.transformer.wte.weight[ids[t]].double()
    if c.pos_encoding == "sinusoidal":
        tok_emb = tok_emb * math.sqrt(c.n_embd)  # as GPT.forward scales it
    cols.append(d @ tok_emb)
    if c.pos_encoding != "rope":
        cols.append(d @ (s.embed[t].double() - tok_emb))  # what the positions added
    for l, block in enumerate(model.transformer.h):
        W_O = _dense(block.attn.c_proj.weight).double()  # [C, C] (out, in)
        v = d @ W_O  # [K, C]: d read back through the projection, per input column
        cols.append((v * s.z[l][t].double()).view(-1, H, D).sum(-1).T)  # [H, K]: one row per head
        if block.attn.c_proj.bias is not None and c.bias:
            cols.append(d @ _dense(block.attn.c_proj.bias).double())
        cols.append(d @ s.mlp[l][t].double())
    if getattr(ln_f, "bias", None) is not None:
        cols.append(u @ ln_f.bias.double())
    values = torch.cat([col.reshape(-1, len(tokens)) for col in cols]).T  # [K, N]
    logits = model.lm_head(ln_f(s.resid[-1][t : t + 1]))[0]  # the model's own, uncapped
    return values.cpu().numpy(), logits[torch.as_tensor(list(tokens), device=logits.device)].double().cpu().numpy()


@dataclass
class Attribution:
    """The direct contribution of every part of the model to one logit.

    position: the position read (its logits predict the token after it)
    token_id, token: the token whose logit is split
    names:    one per part: "embed", "pos", "L0H0", ..., "L0 attn bias", "L0 MLP", ..., "final norm bias"
    values:   float64 [len(names)]; values.sum() == logit up to float rounding
    logit:    the logit the model computes (before any soft cap)
    """

    position: int
    token_id: int
    token: str
    names: list[str]
    values: np.ndarray
    logit: float

    @property
    def total(self) -> float:
        return float(self.values.sum())

    def rows(self) -> list[dict]:
        return [{"part": n, "contribution": float(v)} for n, v in zip(self.names, self.values)]

    def to_json(self) -> dict:
        return {
            "position": self.position,
            "token_id": self.token_id,
            "token": self.token,
            "logit": self.logit,
            "sum": self.total,
            "parts": self.rows(),
        }

    def format(self, top: int | None = None) -> str:
        """The parts in model order with a bar each; `top`: only that many largest |values|."""
        order = range(len(self.names))
        if top is not None and top < len(self.names):
            keep = set(np.argsort(-np.abs(self.values), kind="stable")[:top].tolist())
            order = [i for i in order if i in keep]
        scale = max(1e-12, float(np.abs(self.values).max()))
        lines = [
            f"direct logit attribution of '{visible_token(self.token)}' at position {self.position}: "
            f"logit {self.logit:.4f} = sum of {len(self.names)} parts ({self.total:.4f})"
            + ("" if top is None or top >= len(self.names) else f"; the {top} largest shown")
        ]
        for i in order:
            v = float(self.values[i])
            bar = "#" * round(20 * abs(v) / scale)
            lines.append(f"  {self.names[i]:<16} {v:>+9.4f} {'-' if v < 0 else '+'}{bar}")
        return "\n".join(lines)


def _encode(model, tokenizer, text: str | Sequence[int]) -> tuple[list[int], int]:
    """Token ids of `text` (or ids given as they are), cropped to the last block_size;
    returns (ids, dropped)."""
    if isinstance(text, str):
        if tokenizer is None:
            raise MiniGPTError("no tokenizer: text cannot be turned into token ids")
        if not text:
            raise MiniGPTError("the prompt is empty: give at least one token of text to look at")
        ids = tokenizer.encode(text)
    else:
        ids = [int(i) for i in text]
        if not ids:
            raise MiniGPTError("no token ids: give at least one")
        bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
        if bad:
            raise MiniGPTError(f"token id {bad[0]} is out of range for vocab_size {model.config.vocab_size}")
    dropped = max(0, len(ids) - model.config.block_size)
    return ids[dropped:], dropped


def _token_id(tokenizer, token: int | str | None, vocab_size: int) -> int | None:
    """A token given as an id or as its text (which must be exactly one token)."""
    if token is None or isinstance(token, int):
        if token is not None and not 0 <= token < vocab_size:
            raise MiniGPTError(f"token id {token} is out of range for vocab_size {vocab_size}")
        return token
    if tokenizer is None:
        raise MiniGPTError("no tokenizer: a token given as text cannot be looked up")
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        raise MiniGPTError(
            f"--token {token!r} is {len(ids)} tokens ({[tokenizer.token_str(i) for i in ids]}); "
            f"give text that is exactly one token"
        )
    return ids[0]


def _position(position: int | None, T: int) -> int:
    if position is None:
        return T - 1
    p = position + T if position < 0 else position
    if not 0 <= p < T:
        raise MiniGPTError(f"position {position} is out of range: the text has {T} tokens (0..{T - 1})")
    return p


def direct_logit_attribution(
    model, tokenizer, text: str | Sequence[int], *, position: int | None = None, token: int | str | None = None
) -> Attribution:
    """Split the logit of `token` at `position` (default: the last) into the direct
    contributions of every part of the model (see the module docstring).

    `token`: an id or a one-token text; default the token that comes next in the text, or
    at the last position the model's top prediction.
    """
    require_gpt(model, "logit attribution")
    ids, _ = _encode(model, tokenizer, text)
    t = _position(position, len(ids))
    v = _token_id(tokenizer, token, model.config.vocab_size)
    s, logits = run_stream(model, ids)
    if v is None:
        v = ids[t + 1] if t + 1 < len(ids) else int(logits[t].argmax())
    values, logit = _attribute(model, s, ids, t, [v])
    return Attribution(
        position=t,
        token_id=v,
        token=_token_str(tokenizer, v),
        names=component_names(model),
        values=values[0],
        logit=float(logit[0]),
    )


def _token_str(tokenizer, i: int) -> str:
    return tokenizer.token_str(i) if tokenizer is not None else f"<id {i}>"


# ---- the lens ----------------------------------------------------------------------------------


@torch.no_grad()
def _read(model, s: Stream, ids: list[int], positions: list[int], k: int):
    """For each lens row and each of `positions`: top-k ids and probabilities, and the rank
    (1 = top) and probability of the real next token (rank 0 and probability nan where
    there is none: the last position). Returns numpy arrays [n_layer + 1, P, ...]."""
    device = s.embed.device
    pos = torch.as_tensor(positions, dtype=torch.long, device=device)
    nxt = torch.as_tensor([ids[t + 1] if t + 1 < len(ids) else 0 for t in positions], device=device)
    has_next = torch.as_tensor([t + 1 < len(ids) for t in positions], device=device)
    top_ids, top_p, rank, prob = [], [], [], []
    for x in _rows(s):
        parts = [[], [], [], []]
        for a in range(0, len(positions), _CHUNK):
            p, n, h = pos[a : a + _CHUNK], nxt[a : a + _CHUNK], has_next[a : a + _CHUNK]
            logits = _head(model, x[p]).float()  # [P, V]
            logp = torch.log_softmax(logits, dim=-1)
            tp, ti = logp.topk(min(k, logits.shape[-1]), dim=-1)
            own = logits.gather(-1, n[:, None])  # [P, 1]
            parts[0].append(ti)
            parts[1].append(tp.exp())
            parts[2].append(torch.where(h, (logits > own).sum(-1) + 1, 0))
            parts[3].append(torch.where(h, logp.gather(-1, n[:, None])[:, 0].exp(), float("nan")))
        for out, part in zip((top_ids, top_p, rank, prob), parts):
            out.append(torch.cat(part).cpu())
    return (
        torch.stack(top_ids).numpy(),
        torch.stack(top_p).numpy().astype(np.float64),
        torch.stack(rank).numpy(),
        torch.stack(prob).numpy().astype(np.float64),
    )


def _r6(x) -> float | None:
    """A number for JSON: 6 decimals, None for nan (there is no next token)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


@dataclass
class LogitLens:
    """What every layer would predict at every position of one text.

    tokens, ids: the T tokens read (the text's last block_size; `dropped` were cut)
    layers:      row names: "embed", "L0", ..., "L{n-1}" (the last is the model's output)
    top_ids:     int64 [n_layer + 1, T, k]   each row's top-k next tokens, most likely first
    top_probs:   float64 [n_layer + 1, T, k] their probabilities
    next_rank:   int64 [n_layer + 1, T]      rank of the token that really comes next (1 = top;
                                             0 at the last position, which has no next token)
    next_prob:   float64 [n_layer + 1, T]    its probability (nan at the last position)
    strings:     {id: token text} for every id above
    attributions: per position, the direct logit attribution of the candidate tokens (the
                 real next token, then the output's top-k); see `attribution(t)`
    """

    tokens: list[str]
    ids: list[int]
    layers: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    next_rank: np.ndarray
    next_prob: np.ndarray
    strings: dict[int, str]
    components: list[str]
    attributions: list[dict]
    softcap: float = 0.0
    dropped: int = 0
    title: str = ""

    def __len__(self) -> int:
        return len(self.tokens)

    def attribution(self, position: int, token: int | None = None) -> Attribution:
        """The stored attribution at `position` of `token` (default: its first candidate,
        the real next token where there is one)."""
        t = _position(position, len(self))
        a = self.attributions[t]
        i = 0 if token is None else a["tokens"].index(token)
        v = a["tokens"][i]
        return Attribution(
            position=t,
            token_id=v,
            token=self.strings[v],
            names=self.components,
            values=np.asarray(a["values"][i], dtype=np.float64),
            logit=a["logits"][i],
        )

    def to_json(self) -> dict:
        """The `lens` part of the viewer's data, and `minigpt lens --json` (numbers to 6 decimals)."""
        T = len(self)
        return {
            "title": self.title,
            "tokens": list(self.tokens),
            "ids": list(self.ids),
            "dropped": self.dropped,
            "layers": list(self.layers),
            "k": int(self.top_ids.shape[-1]),
            "softcap": self.softcap,
            "strings": {str(i): s for i, s in sorted(self.strings.items())},
            # top[l][t] = [[id, prob], ...]; next[l][t] = [rank, prob] (null at the last position)
            "top": [
                [[[int(i), _r6(p)] for i, p in zip(self.top_ids[l, t], self.top_probs[l, t])] for t in range(T)]
                for l in range(len(self.layers))
            ],
            "next": [
                [[int(self.next_rank[l, t]), _r6(self.next_prob[l, t])] if t + 1 < T else None for t in range(T)]
                for l in range(len(self.layers))
            ],
            "components": list(self.components),
            "attributions": [
                {
                    "tokens": a["tokens"],
                    "logits": [_r6(x) for x in a["logits"]],
                    "values": [[_r6(x) for x in row] for row in a["values"]],
                }
                for a in self.attributions
            ],
        }

    def format(
        self, position: int | None = None, top: int | None = None, attribution: Attribution | None = None
    ) -> str:
        """The terminal view: a table of each layer's top guess per position (with its
        probability), one of the rank of the real next token, then the top-k of every layer
        at `position` (default: the last) and `attribution` (default: the stored one of the
        real next token there, else of the top guess; `top`: only its largest parts)."""
        T, k = len(self), self.top_ids.shape[-1]
        tw = min(10, max(display_width(visible_token(t)) for t in self.tokens) + 1)
        cw = 12
        head = f"{'pos':>4} {'token':<{tw}} {'next':<{tw}}"
        cols = " ".join(f"{name:<{cw}}" for name in self.layers)
        cropped = f"; the first {self.dropped} were cropped" if self.dropped else ""
        lines = [
            (
                f"logit lens{': ' + self.title if self.title else ''} ({T} tokens{cropped}): each layer's top "
                f"guess for the next token and its probability ('*' where it is the real next token)"
            ),
            f"{head} | {cols}",
        ]
        for t in range(T):
            nxt = visible_token(self.tokens[t + 1] if t + 1 < T else "", tw)
            cells = []
            for l in range(len(self.layers)):
                i = int(self.top_ids[l, t, 0])
                mark = "*" if t + 1 < T and i == self.ids[t + 1] else " "
                cells.append(f"{mark}{visible_token(self.strings[i], cw - 5)}{self.top_probs[l, t, 0]:.2f}")
            lines.append(f"{t:>4} {visible_token(self.tokens[t], tw)} {nxt} | " + " ".join(cells))
        if T > 1:
            lines.append("")
            lines.append("rank of the real next token (its probability) at each layer:")
            lines.append(f"{head} | {cols}")
            for t in range(T - 1):
                cells = [
                    f"{f'#{int(self.next_rank[l, t])} ({self.next_prob[l, t]:.2f})':<{cw}}"
                    for l in range(len(self.layers))
                ]
                lines.append(
                    f"{t:>4} {visible_token(self.tokens[t], tw)} {visible_token(self.tokens[t + 1], tw)} | "
                    + " ".join(cells)
                )
        p = _position(position, T)
        lines.append("")
        what = f"the real next token '{visible_token(self.tokens[p + 1])}'" if p + 1 < T else "the text ends here"
        lines.append(f"position {p} '{visible_token(self.tokens[p])}' ({what}): top {k} of each layer")
        for l, name in enumerate(self.layers):
            guesses = "  ".join(
                f"{visible_token(self.strings[int(i)], 8)} {pr:.3f}"
                for i, pr in zip(self.top_ids[l, p], self.top_probs[l, p])
            )
            lines.append(f"  {name:<6} {guesses}")
        lines.append("")
        lines.append((attribution or self.attribution(p)).format(top))
        return "\n".join(lines)

    def page_data(self) -> dict:
        """The viewer's data for a page that shows only the lens."""
        return {
            "title": self.title,
            "open": "lens",
            "tokens": list(self.tokens),
            "dropped": self.dropped,
            "n_layer": len(self.layers) - 1,
            "n_head": None,
            "weights": None,
            "heads": None,
            "lens": self.to_json(),
        }

    def write_html(self, path: str | os.PathLike) -> Path:
        """The lens page: one self-contained HTML file (see viewer.html)."""
        return write_page(self.page_data(), path)

    def _repr_html_(self) -> str:  # a notebook cell shows the lens page
        return notebook_html(self.page_data())


@torch.no_grad()
def logit_lens(
    model, tokenizer, text: str | Sequence[int], *, top_k: int = LENS_TOP_K, attribute: bool = True, title: str = ""
) -> LogitLens:
    """The logit lens of `model` reading `text` (or a list of token ids): see `LogitLens`.

    With `attribute`, each position also carries the direct logit attribution of the
    real next token and of the output's top-k (what the lens page shows when a column is
    clicked). Text longer than block_size is cropped to its last block_size tokens.
    """
    require_gpt(model, "the logit lens")
    if not 1 <= top_k <= model.config.vocab_size:
        raise MiniGPTError(f"--top must be between 1 and the vocabulary size {model.config.vocab_size}, got {top_k}")
    ids, dropped = _encode(model, tokenizer, text)
    T = len(ids)
    s, _ = run_stream(model, ids)
    top_ids, top_p, rank, prob = _read(model, s, ids, list(range(T)), top_k)
    attributions = []
    if attribute:
        for t in range(T):
            real = [ids[t + 1]] if t + 1 < T else []
            cands = real + [int(i) for i in top_ids[-1, t] if int(i) not in real]
            values, logits = _attribute(model, s, ids, t, cands)
            attributions.append({"tokens": cands, "logits": logits.tolist(), "values": values.tolist()})
    used = set(top_ids.reshape(-1).tolist()) | set(ids)
    return LogitLens(
        tokens=[_token_str(tokenizer, i) for i in ids],
        ids=ids,
        layers=layer_names(model.config.n_layer),
        top_ids=top_ids,
        top_probs=top_p,
        next_rank=rank,
        next_prob=prob,
        strings={int(i): _token_str(tokenizer, int(i)) for i in sorted(used)},
        components=component_names(model),
        attributions=attributions,
        softcap=float(model.config.logit_softcap),
        dropped=dropped,
        title=title,
    )


@torch.no_grad()
def lens_json(model, tokenizer, ids: Sequence[int], *, position: int | None = None, top_k: int = LENS_TOP_K) -> dict:
    """What each layer would have predicted at one position: a JSON-ready dict, for a server
    route (the playground's pinned token) in one line:

        lens_json(model, tok, ids[: i + 1], position=i - 1)   # the die that drew token i

    `ids` is the text so far (cropped to its last block_size; `position` counts in the
    ids given, default the last). Returns {"position", "token", "next" (the token that
    follows, or null), "layers": [{"layer", "top": [{"id", "token", "prob"}], "next_rank",
    "next_prob"}], "attribution" (of the next token, else of the output's top guess)}.
    """
    require_gpt(model, "the logit lens")
    given = len(ids)
    ids, dropped = _encode(model, tokenizer, ids)
    p = _position(position, given) - dropped
    if p < 0:
        raise MiniGPTError(f"position {position} lies in the {dropped} tokens cut to fit block_size")
    s, logits = run_stream(model, ids)
    top_ids, top_p, rank, prob = _read(model, s, ids, [p], top_k)
    nxt = ids[p + 1] if p + 1 < len(ids) else None
    layers = []
    for l, name in enumerate(layer_names(model.config.n_layer)):
        layers.append(
            {
                "layer": name,
                "top": [
                    {"id": int(i), "token": _token_str(tokenizer, int(i)), "prob": round(float(q), 6)}
                    for i, q in zip(top_ids[l, 0], top_p[l, 0])
                ],
                "next_rank": int(rank[l, 0]) if nxt is not None else None,
                "next_prob": round(float(prob[l, 0]), 6) if nxt is not None else None,
            }
        )
    v = nxt if nxt is not None else int(logits[p].argmax())
    values, logit = _attribute(model, s, ids, p, [v])
    attr = Attribution(
        position=p + dropped,
        token_id=v,
        token=_token_str(tokenizer, v),
        names=component_names(model),
        values=values[0],
        logit=float(logit[0]),
    )
    return {
        "position": p + dropped,
        "token": _token_str(tokenizer, ids[p]),
        "next": None if nxt is None else {"id": nxt, "token": _token_str(tokenizer, nxt)},
        "layers": layers,
        "attribution": attr.to_json(),
    }
