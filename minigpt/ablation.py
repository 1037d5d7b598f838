"""Does the model need this head? Remove it and measure what is lost.

A head's output is its slice of the attention's concatenated heads, z[..., h*D:(h+1)*D],
which the output projection c_proj maps into the residual stream. To *ablate* a head is
to replace that slice, for every position, before c_proj:

    zero-ablation   by 0: the head writes nothing (c_proj's bias, if any, stays: it is no head's)
    mean-ablation   by the head's mean output over a sample of text: the head still adds
                    what it adds on average, but nothing that depends on this text. A head
                    whose output is nearly constant (an attention sink) costs ~0 this way,
                    while zero-ablation would count its constant as information.

What is lost is measured twice:
- on the validation split (a bounded sample: its first `max_tokens` tokens): the rise in
  bits per byte, scored exactly as `minigpt eval` scores (`evaluate.evaluate_tokens`);
- on one prompt: how the next-token distribution after it changes, as KL(before || after)
  in bits, and the top tokens after.

    with ablated(model, [(1, 3)]):                  # zero-ablate layer 1, head 3
        logits = model(idx).logits
    report = head_ablation(model, val_tokens, tok.byte_lengths, tokenizer=tok, prompt="ROMEO:")
    report.delta("zero")                            # [n_layer, n_head] rise in bits/byte

The replacement is a forward pre-hook on each layer's c_proj, registered for the `with`
block only: the model is left as it was found.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import windows
from .errors import MiniGPTError
from .evaluate import LN2, evaluate_tokens, window_plan
from .lens import require_gpt

__all__ = ["METHODS", "ABLATION_TOKENS", "ablated", "head_means", "head_ablation", "HeadAblation"]

METHODS = ("zero", "mean")
ABLATION_TOKENS = 8192  # validation tokens scored per ablation by default: the default model's 18 heads x 2
# methods are 37 passes over them, seconds on a CPU; the spread between heads is far above this sample's noise
ABLATION_TOP = 3  # top tokens listed after each ablation of the prompt


@contextmanager
def ablated(model, heads: Iterable[tuple[int, int]], means: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, the outputs of `heads` ((layer, head) pairs) are replaced before
    each layer's output projection: by zeros, or with `means` ([n_layer, n_embd], from
    `head_means`) by each head's mean output."""
    require_gpt(model, "head ablation")
    c = model.config
    D = c.head_dim
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        if not (0 <= l < c.n_layer and 0 <= h < c.n_head):
            raise MiniGPTError(f"head L{l}H{h} does not exist: this model has {c.n_layer} layers of {c.n_head} heads")
        by_layer.setdefault(l, []).append(h)

    def replace(l: int, hs: list[int]):
        def hook(_module, inputs):
            z = inputs[0].clone()  # [B, T, C]: the heads side by side
            for h in hs:
                z[..., h * D : (h + 1) * D] = 0 if means is None else means[l, h * D : (h + 1) * D].to(z.dtype)
            return (z,)

        return hook

    handles = []
    try:
        for l, hs in by_layer.items():
            handles.append(model.transformer.h[l].attn.c_proj.register_forward_pre_hook(replace(l, hs)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _summing_heads(model) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Within the block, the sum over every position of every layer's head outputs
    ([n_layer, n_embd], float64) and the number of positions summed."""
    c = model.config
    sums = torch.zeros(c.n_layer, c.n_embd, dtype=torch.float64, device=next(model.parameters()).device)
    count = [0]

    def add(l: int):
        def hook(_module, inputs):
            z = inputs[0]
            sums[l] += z.double().sum(dim=(0, 1))
            if l == 0:
                count[0] += z.shape[0] * z.shape[1]

        return hook

    handles = [block.attn.c_proj.register_forward_pre_hook(add(l)) for l, block in enumerate(model.transformer.h)]
    try:
        yield sums, count
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def head_means(model, tokens: np.ndarray, *, max_tokens: int = ABLATION_TOKENS, batch_size: int = 16) -> torch.Tensor:
    """Every head's mean output over the windows `evaluate_tokens` reads from the first
    `max_tokens` of `tokens`: [n_layer, n_embd] (head h of layer l: columns h*D .. (h+1)*D - 1)."""
    require_gpt(model, "head ablation")
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens)
    window, stride = model.score_window()
    starts, _, W, _ = window_plan(n, window, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _summing_heads(model) as (sums, count):
            for i in range(0, len(starts), batch_size):
                x, _ = windows(tokens, starts[i : i + batch_size], W, device)
                model(x)
    finally:
        model.train(was_training)
    return (sums / max(1, count[0])).float()


@dataclass
class HeadAblation:
    """What removing each head costs (see the module docstring).

    base_bpb:      validation bits per byte of the intact model on the sample
    bpb[method]:   float64 [n_layer, n_head]: the same with that one head ablated
    sample_tokens, sample_bytes: the sample scored (the first sample_tokens of the split)
    split_tokens:  the split's length, so a report can say "the first N of M"
    prompt_tokens: tokens of the prompt (0: no prompt was given)
    prompt_kl[method]:  float64 [n_layer, n_head]: KL(intact || ablated) of the next-token
                   distribution after the prompt, in bits
    prompt_top[method][l][h]: [(id, prob), ...] the top tokens after that ablation
    base_top:      the intact model's top tokens after the prompt
    strings:       {id: token text} for the ids above (when a tokenizer was given)
    """

    methods: tuple[str, ...]
    base_bpb: float
    bpb: dict[str, np.ndarray]
    sample_tokens: int
    sample_bytes: int
    split_tokens: int
    prompt_tokens: int = 0
    prompt_kl: dict[str, np.ndarray] | None = None
    prompt_top: dict[str, list] | None = None
    base_top: list[tuple[int, float]] | None = None
    strings: dict[int, str] | None = None
    source: str = ""  # where the tokens came from (a dataset directory), for the reports

    def delta(self, method: str) -> np.ndarray:
        """[n_layer, n_head]: how much bits per byte rise without each head (> 0: it helped)."""
        return self.bpb[method] - self.base_bpb

    def head(self, layer: int, head: int) -> dict:
        """One head's numbers, as in the JSON: {method: {val_bpb, delta_bpb, prompt_kl_bits, prompt_top}}."""
        out = {}
        for m in self.methods:
            row = {"val_bpb": float(self.bpb[m][layer, head]), "delta_bpb": float(self.delta(m)[layer, head])}
            if self.prompt_kl is not None:
                row["prompt_kl_bits"] = float(self.prompt_kl[m][layer, head])
                row["prompt_top"] = [self._tok(i, p) for i, p in self.prompt_top[m][layer][head]]
            out[m] = row
        return out

    def _tok(self, i: int, p: float) -> dict:
        d = {"id": int(i), "prob": round(float(p), 6)}
        if self.strings is not None:
            d["token"] = self.strings[int(i)]
        return d

    def to_json(self) -> dict:
        """The sample and the intact model's numbers (the per-head ones are in each head's row)."""
        out = {
            "methods": list(self.methods),
            "sample": {
                "data": self.source,
                "split": "val",
                "tokens": self.sample_tokens,
                "bytes": self.sample_bytes,
                "of_tokens": self.split_tokens,
                "first": True,
            },
            "base_val_bpb": self.base_bpb,
        }
        if self.prompt_kl is not None:
            out["prompt"] = {"tokens": self.prompt_tokens, "base_top": [self._tok(i, p) for i, p in self.base_top]}
        return out

    def describe(self) -> str:
        """One line saying what was measured on what."""
        whole = self.sample_tokens >= self.split_tokens
        split = f"{self.source}'s validation split" if self.source else "the validation split"
        sample = (
            f"the whole of {split}"
            if whole
            else f"the first {self.sample_tokens:,} of {self.split_tokens:,} tokens of {split}"
        )
        kl = "" if self.prompt_kl is None else "; KL: how the next-token distribution after the text changes, in bits"
        return (
            f"ablation ({' and '.join(self.methods)}) on {sample} ({self.sample_bytes:,} bytes): the intact model "
            f"scores {self.base_bpb:.4f} bits/byte; Δbpb: the rise without the head{kl}"
        )


def _distribution(model, idx: torch.Tensor) -> torch.Tensor:
    """log-probabilities (float64) of the next token after idx [1, T]."""
    return torch.log_softmax(model(idx).logits[0, -1].double(), dim=-1)


@torch.no_grad()
def head_ablation(
    model,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    *,
    max_tokens: int = ABLATION_TOKENS,
    methods: Iterable[str] = METHODS,
    tokenizer=None,
    prompt: str | None = None,
    batch_size: int = 16,
    top: int = ABLATION_TOP,
    progress: bool | None = False,
    source: str = "",
) -> HeadAblation:
    """Ablate every head in turn (each method), scoring the first `max_tokens` of
    `tokens` (e.g. the validation split; 0 = all) and, with `prompt` (and `tokenizer`), the
    next-token distribution after it. `progress`: a tqdm bar over the ablations (None: when
    stderr is a terminal); `source` names where the tokens came from, for the reports.
    The model is left as it was found."""
    require_gpt(model, "head ablation")
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise MiniGPTError(f"ablation method {bad[0] if bad else '(none)'!r}: choose from {', '.join(METHODS)}")
    if len(tokens) < 2:
        raise MiniGPTError(f"the validation split has {len(tokens)} token(s): ablation needs at least 2 to score")
    if max_tokens < 0:
        raise MiniGPTError(f"--ablate-tokens must be >= 0 (0 = the whole split), got {max_tokens}")
    c = model.config
    device = next(model.parameters()).device
    window, stride = model.score_window()

    def score() -> dict:
        return evaluate_tokens(
            model, tokens, byte_lengths, window=window, stride=stride, batch_size=batch_size, max_tokens=max_tokens
        )

    idx = None
    if prompt is not None:
        if tokenizer is None:
            raise MiniGPTError("a prompt needs the tokenizer to be read")
        ids = tokenizer.encode(prompt)[-c.block_size :]
        if not ids:
            raise MiniGPTError("the prompt is empty: give at least one token of text")
        idx = torch.tensor([ids], dtype=torch.long, device=device)

    was_training = model.training
    model.eval()
    try:
        base = score()
        means = head_means(model, tokens, max_tokens=max_tokens, batch_size=batch_size) if "mean" in methods else None
        base_lp = _distribution(model, idx) if idx is not None else None
        bpb = {m: np.zeros((c.n_layer, c.n_head)) for m in methods}
        kl = {m: np.zeros((c.n_layer, c.n_head)) for m in methods} if idx is not None else None
        tops = {m: [[None] * c.n_head for _ in range(c.n_layer)] for m in methods} if idx is not None else None
        jobs = [(m, l, h) for m in methods for l in range(c.n_layer) for h in range(c.n_head)]
        for m, l, h in tqdm(jobs, desc="ablate", unit="head", disable=progress is False, leave=False, file=sys.stderr):
            with ablated(model, [(l, h)], means if m == "mean" else None):
                bpb[m][l, h] = score()["bpb"]
                if idx is not None:
                    lp = _distribution(model, idx)
                    kl[m][l, h] = float((base_lp.exp() * (base_lp - lp)).sum()) / LN2
                    p, i = lp.exp().topk(min(top, lp.numel()))
                    tops[m][l][h] = list(zip(i.tolist(), p.tolist()))
    finally:
        model.train(was_training)
    base_top = None
    strings = None
    if idx is not None:
        p, i = base_lp.exp().topk(min(top, base_lp.numel()))
        base_top = list(zip(i.tolist(), p.tolist()))
        used = {t for t, _ in base_top} | {t for m in methods for row in tops[m] for cell in row for t, _ in cell}
        strings = {t: tokenizer.token_str(t) for t in sorted(used)}
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens)
    if not math.isfinite(base["bpb"]):
        raise MiniGPTError("the validation sample holds no bytes of text (only special tokens?): nothing to score")
    return HeadAblation(
        methods=methods,
        base_bpb=base["bpb"],
        bpb=bpb,
        sample_tokens=n,
        sample_bytes=base["bytes"],
        split_tokens=len(tokens),
        prompt_tokens=0 if idx is None else idx.shape[1],
        prompt_kl=kl,
        prompt_top=tops,
        base_top=base_top,
        strings=strings,
        source=source,
    )
