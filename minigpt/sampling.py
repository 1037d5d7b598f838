"""Sampling: roll a weighted die over the vocabulary, one token at a time.

Ids in, ids out: this module knows nothing about text (see `completion.py` for that).
Each step, the model's logits for the next token pass through small pure functions:

    logits --repetition_penalty--> --temperature--> --top_k--> --top_p--> --min_p--> softmax
           = the die's weights ("probs"), then one roll picks a token.

`temperature == 0` means greedy: always the most likely token (argmax), no roll.

Decoding uses the model's static KV cache: the prompt goes through the model once
(prefill), then each new token is one cheap step over the cache. When the text outgrows
`block_size`, the context slides: every further step recomputes the last `block_size`
tokens (exactly what cropping the input to the last block_size tokens would give), so
long generations stay correct at the cost of a full pass per step past that point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError

# ---- the transforms (pure functions over [B, V] logits) ---------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as in Hugging Face: for each token
    already in the text (`seen` [B, V] bool), a positive logit is divided by `penalty`
    and a negative one multiplied by it, so either way the token gets less likely.
    penalty 1.0 changes nothing."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by T: T < 1 sharpens the distribution, T > 1 flattens it (T > 0)."""
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits, set the rest to -inf. k = 0 keeps everything.
    Ties at the k-th value are all kept."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely
    tokens whose probabilities sum to at least p. p = 1 keeps everything.

    Example: probs [0.5, 0.3, 0.15, 0.05], p = 0.8 -> keeps the first two (0.5 + 0.3 >= 0.8).
    """
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # already reached p without this token (the top token is always kept)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens whose probability is below
    min_p times the most likely token's. min_p = 0 keeps everything."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


@dataclass
class SamplingParams:
    """How the die is shaped. Defaults leave the model's distribution untouched."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ConfigError(f"top-k must be a whole number >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p <= 1.0):
            raise ConfigError(f"min-p must be in (0, 1] (0 = off), got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ConfigError(f"repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_flags(cls, args) -> "SamplingParams":
        """From parsed command-line flags (`--temperature`, `--top-k`, ...); errors name
        the flag, e.g. "--top-p must be in (0, 1], got 1.5"."""
        try:
            return cls(
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty,
            )
        except ConfigError as e:
            raise ConfigError(f"--{e}") from None


def shape_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply every transform, in Hugging Face's order; returns float32 logits whose
    softmax is the die. (For greedy decoding the temperature step is skipped.)"""
    x = logits.float()
    if seen is not None:
        x = apply_repetition_penalty(x, seen, params.repetition_penalty)
    if not params.greedy:
        x = apply_temperature(x, params.temperature)
    x = top_k_filter(x, params.top_k)
    x = top_p_filter(x, params.top_p)
    return min_p_filter(x, params.min_p)


def roll(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from probs [B, V]: index i with probability probs[i].

    The exponential race: argmax(probs / E) with E_i ~ Exp(1) independent. E_i / probs_i
    is exponential with rate probs_i, and the smallest of independent exponentials is
    number i with probability rate_i / sum(rates). Unlike torch.multinomial it needs no
    host synchronisation, so it can run inside a CUDA graph (gpt-fast does the same).
    """
    e = torch.empty_like(probs, dtype=torch.float32).exponential_(1.0, generator=generator)
    return torch.argmax(probs.float() / e, dim=-1)


# ---- the loop ----------------------------------------------------------------------------


@dataclass
class Step:
    """One generated token per row, as plain Python values."""

    tokens: list[int]  # [B] the token each row picked (rows already finished repeat their last)
    logprobs: list[float]  # [B] log-probability of that token under the die
    finished: list[bool]  # [B] True once a row has stopped (stop token or `stop` callback)
    new: list[bool]  # [B] True where tokens[b] is a new token (the row had not finished before)
    top_ids: list[list[int]] | None = None  # [B, K] the K most likely candidates under the die
    top_probs: list[list[float]] | None = None  # [B, K] their probabilities


class _Decoder:
    """Runs the model over the cache. On CUDA the one-token step is captured once in a
    CUDA graph (optionally after torch.compile) and replayed: one launch per token."""

    def __init__(self, model, cache, *, cuda_graph: bool, compile: bool):
        self.model, self.cache = model, cache
        self.graph = None
        step = self._eager_step
        if compile:
            try:
                step = torch.compile(self._eager_step, fullgraph=True, dynamic=False)
            except Exception as e:  # pragma: no cover - depends on the platform's compiler
                warnings.warn(f"torch.compile of the decode step failed ({e}); decoding eagerly")
        self.step_fn = step
        # Only a static KV cache can be captured (a baseline's recurrent state is not one).
        self.use_graph = cuda_graph and isinstance(getattr(cache, "k", None), torch.Tensor) and cache.k.is_cuda
        self.static_tok = None

    def _eager_step(self, tok: torch.Tensor) -> torch.Tensor:
        return self.model(tok, kv_cache=self.cache).logits[:, -1, :]

    def prefill(self, idx: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        self.cache.reset(start)
        return self.model(idx, kv_cache=self.cache).logits[:, -1, :]

    def decode(self, tok: torch.Tensor) -> torch.Tensor:
        """tok [B, 1] -> logits [B, V] of the next token; the cache advances by one."""
        if not self.use_graph:
            return self.step_fn(tok)
        if self.graph is None:
            self._capture(tok)
        self.static_tok.copy_(tok)
        self.graph.replay()
        return self.static_out

    def _capture(self, tok: torch.Tensor) -> None:  # pragma: no cover - needs CUDA
        self.static_tok = tok.clone()
        pos = self.cache.pos.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm up (and compile) outside the capture
                self.step_fn(self.static_tok)
                self.cache.pos.copy_(pos)  # undo the warm-up's advance; its cache writes get overwritten
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self.step_fn(self.static_tok)
        self.cache.pos.copy_(pos)  # capture does not run the kernels; pos is as before


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    params: SamplingParams | None = None,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    stop: Callable[[int, int], bool] | None = None,
    use_cache: bool = True,
    top: int = 0,
    cuda_graph: bool = True,
    compile: bool = False,
    vocab_limit: int | None = None,
) -> Iterator[Step]:
    """Generate up to `max_new_tokens` tokens after each prompt, yielding a `Step` per token.

    prompts: one list of ids per row (non-empty; they may differ in length: shorter ones
    are left-padded and the padding is masked). `generator` (or `seed`) makes the draws
    reproducible. A row finishes when it draws one of `stop_ids` or when
    `stop(row, token)` returns True; generation ends when every row has finished.
    `top` > 0 adds each step's `top` most likely candidates and their probabilities.
    `use_cache=False` recomputes the whole (cropped) context every step: slow, and the
    oracle the cached path is tested against. `vocab_limit` forbids ids >= it (a model
    whose embedding table is padded past the tokenizer's vocabulary).
    """
    params = params or SamplingParams()
    if max_new_tokens < 0:
        raise ConfigError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (start from <|endoftext|> for an empty prompt)")
    cfg = model.config
    block = cfg.block_size
    device = next(model.parameters()).device
    V = cfg.vocab_size
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed() % (1 << 63))

    B = len(prompts)
    lengths = [len(p) for p in prompts]
    P = max(lengths)
    # The whole text of every row, right-aligned: [B, P + max_new_tokens].
    seq = torch.zeros(B, P + max_new_tokens, dtype=torch.long, device=device)
    pad = torch.tensor([P - n for n in lengths], device=device)
    for b, p in enumerate(prompts):
        seq[b, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long, device=device)
    seen = torch.zeros(B, V, dtype=torch.bool, device=device)
    if params.repetition_penalty != 1.0:
        for b, p in enumerate(prompts):
            seen[b, torch.as_tensor(list(p), device=device)] = True
    stop_tensor = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    # A model without decoding state (the n-gram) returns no cache: it re-reads the last
    # block_size tokens every step.
    cache = model.make_cache(B, block) if use_cache else None
    has_cache = cache is not None
    if not has_cache and len(set(lengths)) > 1:
        # Without a cache there is no padding mask: run the rows one at a time.
        yield from _generate_rows_separately(
            model, prompts, max_new_tokens, params, generator, stop_ids, stop, use_cache, top, vocab_limit
        )
        return

    decoder = None
    if has_cache:
        cache_is_bounded = getattr(cache, "max_len", None) is not None
        decoder = _Decoder(model, cache, cuda_graph=cuda_graph and device.type == "cuda", compile=compile)

    length = P  # columns of seq filled so far
    in_cache = 0  # tokens currently in the cache
    for _ in range(max_new_tokens):
        if decoder is None:
            lo = max(0, length - block)
            logits = model(seq[:, lo:length]).logits[:, -1, :]
        elif in_cache == 0 or (cache_is_bounded and in_cache >= cache.max_len):
            # Prefill the (last block_size tokens of the) text: at the start, and on every
            # step once the context has outgrown the cache (the sliding window).
            lo = max(0, length - block)
            start = (pad - lo).clamp_min(0)
            logits = decoder.prefill(seq[:, lo:length], start)
            in_cache = length - lo
        else:
            logits = decoder.decode(seq[:, length - 1 : length])
            in_cache += 1

        if vocab_limit is not None and vocab_limit < V:
            logits = logits.clone()
            logits[:, vocab_limit:] = float("-inf")
        shaped = shape_logits(logits, params, seen if params.repetition_penalty != 1.0 else None)
        probs = torch.softmax(shaped, dim=-1)
        if params.greedy:
            tok = torch.argmax(shaped, dim=-1)
        else:
            tok = roll(probs, generator)
        tok = torch.where(finished, seq[:, length - 1], tok)  # finished rows just repeat
        seq[:, length] = tok
        length += 1
        if params.repetition_penalty != 1.0:
            seen.scatter_(1, tok[:, None], True)
        logprob = torch.log(probs.gather(1, tok[:, None]).squeeze(1).clamp_min(1e-45))
        newly = torch.isin(tok, stop_tensor) & ~finished if len(stop_ids) else torch.zeros_like(finished)

        # The one host synchronisation per step: hand the tokens to the caller.
        packed = [tok, logprob, finished, newly]
        if top:
            tp, ti = probs.topk(min(top, V), dim=-1)
        tokens, logprobs, was_finished, hit_stop = (t.tolist() for t in packed)
        done_now = [bool(f) or bool(h) for f, h in zip(was_finished, hit_stop)]
        if stop is not None:
            for b in range(B):
                if not was_finished[b] and not done_now[b] and stop(b, tokens[b]):
                    done_now[b] = True
        finished = torch.tensor(done_now, device=device)
        step = Step(tokens, logprobs, done_now, [not f for f in was_finished])
        if top:
            step.top_ids, step.top_probs = ti.tolist(), tp.tolist()
        yield step
        if all(done_now):
            return


def _generate_rows_separately(model, prompts, max_new_tokens, params, generator, stop_ids, stop, use_cache, top, vocab_limit):
    """Rows of different lengths without a KV cache: one row at a time, merged per step."""
    streams = [
        generate(
            model, [p], max_new_tokens, params, generator=generator, stop_ids=stop_ids,
            stop=(lambda _r, t, b=b: stop(b, t)) if stop else None, use_cache=use_cache, top=top,
            vocab_limit=vocab_limit,
        )
        for b, p in enumerate(prompts)
    ]
    last: list[Step | None] = [None] * len(prompts)
    for _ in range(max_new_tokens):
        before = list(last)
        for b, s in enumerate(streams):
            if last[b] is None or not last[b].finished[0]:
                last[b] = next(s, last[b])
        steps = [s for s in last if s is not None]
        merged = Step(
            [s.tokens[0] for s in steps], [s.logprobs[0] for s in steps], [s.finished[0] for s in steps],
            [s.new[0] and not (prev is not None and prev.finished[0]) for s, prev in zip(steps, before)],
            [s.top_ids[0] for s in steps] if top else None, [s.top_probs[0] for s in steps] if top else None,
        )
        yield merged
        if all(merged.finished):
            return
