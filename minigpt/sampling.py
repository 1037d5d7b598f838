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

Every row of a batch may shape its die differently (its own `SamplingParams`) and roll
with its own random generator, and rows may join and leave a running `Batch` between
steps (continuous batching, as `minigpt serve` uses it): a joining row's prompt is
prefilled on its own and slotted into the shared cache, so nobody else's text is
recomputed. With its own generator a row draws exactly the tokens it would draw alone,
whoever else is in the batch. `generate` is the simple case: a fixed set of rows.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import torch

from .errors import ConfigError
from .models import DecodeCache

# ---- the transforms (pure functions over [B, V] logits) ---------------------------------
#
# Each parameter is a number (every row alike) or a tensor with one value per row
# ([B, 1] for the float ones, [B] for top-k), which is how a batch of requests with
# different settings is shaped in one go. A row whose value means "off" is left as is.


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as in Hugging Face: for each token
    already in the text (`seen` [B, V] bool), a positive logit is divided by `penalty`
    and a negative one multiplied by it, so either way the token gets less likely.
    penalty 1.0 changes nothing."""
    if not isinstance(penalty, torch.Tensor) and penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """Divide by T: T < 1 sharpens the distribution, T > 1 flattens it (T > 0)."""
    if not isinstance(temperature, torch.Tensor) and temperature == 1.0:
        return logits
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k) -> torch.Tensor:
    """Keep the k largest logits, set the rest to -inf. k = 0 keeps everything.
    Ties at the k-th value are all kept.

    >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0]]), 2)
    tensor([[-inf, 3., 2.]])
    """
    V = logits.size(-1)
    if isinstance(k, torch.Tensor):  # one k per row
        off = (k <= 0) | (k >= V)
        if bool(off.all()):
            return logits
        k = torch.where(off, 1, k)
        kth = torch.topk(logits, int(k.max()), dim=-1).values.gather(-1, (k - 1)[:, None])
        kth = torch.where(off[:, None], float("-inf"), kth)  # nothing is below -inf: the row keeps all
        return logits.masked_fill(logits < kth, float("-inf"))
    if k <= 0 or k >= V:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely
    tokens whose probabilities sum to at least p. p = 1 keeps everything.

    Example: probs [0.5, 0.3, 0.15, 0.05], p = 0.8 -> keeps the first two (0.5 + 0.3 >= 0.8).
    The most likely token is always kept, however small p is.
    """
    if not isinstance(p, torch.Tensor) and p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # already reached p without this token
    # ... but never the top token: a p below float32's smallest number (1e-46) rounds to 0,
    # and 0 >= 0 would otherwise drop every token and leave nothing to roll.
    drop_sorted[..., 0] = False
    if isinstance(p, torch.Tensor):
        drop_sorted &= p < 1.0  # p = 1 is "off": float rounding in the cumsum must not cut the tail
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens whose probability is below
    min_p times the most likely token's. min_p = 0 keeps everything."""
    if not isinstance(min_p, torch.Tensor) and min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


# ---- the settings, declared once ----------------------------------------------------------
#
# Each field of `SamplingParams` carries everything about itself: its type, its neutral
# default (the dataclass's: it leaves the model's distribution as it is, the API's default
# too), the default `minigpt sample` and the playground start from, its bounds and its
# help. The command-line flags (`cli._add_sampling`), the API's request model
# (`serve/protocol.py`) and the checks below all read these fields, so a new setting is
# one field here plus its transform.

MAX_TOP_K = 2**31 - 1  # larger than any vocabulary; beyond it a top-k would not fit a tensor


def _setting(
    neutral,
    *,
    suggested=None,
    lo: float,
    hi: float = math.inf,
    lo_open: bool = False,
    off: str,
    metavar: str,
    help: str,
):
    """A `SamplingParams` field: `neutral` is its default, `suggested` what the CLI and the
    playground start from (default: neutral); values must lie in [lo, hi] ((lo, hi] with
    lo_open), finite; `off` says what the neutral value means."""
    return field(
        default=neutral,
        metadata=dict(
            suggested=neutral if suggested is None else suggested,
            lo=lo,
            hi=hi,
            lo_open=lo_open,
            off=off,
            metavar=metavar,
            help=help,
        ),
    )


@dataclass(frozen=True)
class Setting:
    """One sampling setting as the outside sees it (read from `SamplingParams`' fields)."""

    name: str  # snake_case: the dataclass field and the API's JSON key
    type: type  # int or float
    neutral: float  # the dataclass's (and the API's) default: the die is left as the model made it
    suggested: float  # `minigpt sample`'s and the playground's default
    lo: float
    hi: float
    lo_open: bool
    off: str  # what the neutral value means, e.g. "0 = off"
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value) -> str | None:
        """What is wrong with `value` (None: nothing), worded to follow the setting's name:
        "must be in (0, 1], got 1.5". Bools are not numbers here, and ints only where whole."""
        whole = self.type is int
        if isinstance(value, bool) or not isinstance(value, (int, float) if not whole else int):
            return f"must be {'a whole number' if whole else 'a number'} {self.range()}, got {value!r}"[:200]
        if not whole:
            try:
                value = float(value)  # an int too large for a float raises here
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                return f"must be a finite number {self.range()}, got {value}"
        if not ((self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi):
            if abs(value) < 10**20:
                shown = f"{value}"
            elif isinstance(value, int):  # too large for a float's "%.3g" (and for str past 4300 digits)
                shown = f"an integer of {value.bit_length()} bits"
            else:
                shown = f"{value:.3g}"
            return f"must be {self.range()} ({self.off}), got {shown}"
        return None

    def range(self) -> str:
        """The allowed values, e.g. "in (0, 1]" or ">= 0"."""
        lo, hi = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.lo, self.hi))
        if self.hi == math.inf:
            return f"> {lo}" if self.lo_open else f">= {lo}"
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}]"


@dataclass
class SamplingParams:
    """How the die is shaped. Defaults leave the model's distribution untouched.

    >>> SamplingParams(top_p=1.5)
    Traceback (most recent call last):
    ConfigError: top_p must be in (0, 1] (1 = off), got 1.5
    """

    temperature: float = _setting(
        1.0, suggested=0.8, lo=0.0, off="0 = greedy argmax", metavar="T", help="divide logits by T; 0 = greedy argmax"
    )
    top_k: int = _setting(
        0,
        suggested=200,
        lo=0,
        hi=MAX_TOP_K,
        off="0 = off",
        metavar="K",
        help="keep only the K most likely tokens; 0 = off",
    )
    top_p: float = _setting(
        1.0,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        off="1 = off",
        metavar="P",
        help="keep the smallest set of tokens with total probability >= P; 1 = off",
    )
    min_p: float = _setting(
        0.0, lo=0.0, hi=1.0, off="0 = off", metavar="P", help="drop tokens below P x the top probability; 0 = off"
    )
    repetition_penalty: float = _setting(
        1.0,
        lo=0.0,
        lo_open=True,
        off="1 = off",
        metavar="R",
        help="make tokens already in the text less likely (CTRL); 1 = off",
    )

    def __post_init__(self) -> None:
        for s in settings():
            problem = s.problem(getattr(self, s.name))
            if problem:
                raise ConfigError(f"{s.name} {problem}", field=s.name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_flags(cls, args) -> SamplingParams:
        """From parsed command-line flags (`--temperature`, `--top-k`, ...); errors name
        the flag, e.g. "--top-p must be in (0, 1] (1 = off), got 1.5"."""
        values = {s.name: getattr(args, s.name) for s in settings()}
        for s in settings():
            problem = s.problem(values[s.name])
            if problem:
                raise ConfigError(f"{s.flag} {problem}", field=s.name)
        return cls(**values)


def settings() -> tuple[Setting, ...]:
    """Every sampling setting, in the order the die applies them (after the penalty)."""
    return _SETTINGS


_SETTINGS = tuple(
    Setting(name=f.name, type=get_type_hints(SamplingParams)[f.name], neutral=f.default, **f.metadata)
    for f in fields(SamplingParams)
)


_F32 = torch.finfo(torch.float32)


def _f32(x: float) -> float:
    """A positive divisor held inside float32's normal range (see `Dice`)."""
    return min(max(float(x), _F32.tiny), _F32.max)


class Dice:
    """The `SamplingParams` of every row of a batch, as tensors (one value per row), plus
    which transforms any row uses at all, so the others cost nothing.

    >>> d = Dice([SamplingParams(temperature=0), SamplingParams(top_k=5)], torch.device("cpu"))
    >>> d.greedy, d.top_k
    ([True, False], tensor([5, 0]))
    """

    def __init__(self, params: Sequence[SamplingParams], device: torch.device):
        def column(values, default, dtype=torch.float32):
            if all(v == default for v in values):
                return None  # no row uses this transform
            t = torch.tensor(values, dtype=dtype, device=device)
            return t if dtype == torch.long else t[:, None]

        self.params = list(params)
        self.greedy = [p.greedy for p in self.params]
        self.greedy_mask = torch.tensor(self.greedy, device=device)
        # A greedy row skips the temperature step (its die is the untempered one). The
        # divisors are held inside float32's normal range: a temperature of 1e-46 would
        # round to 0 in a float32 tensor (0 / 0 = NaN for the top logit) and 1e39 to inf;
        # held at 1.2e-38 it is the greedy die 1e-40 gives (every other logit falls to
        # -inf), held at 3.4e38 it is the flat die. A penalty likewise (0 * inf = NaN).
        self.temperature = column([1.0 if p.greedy else _f32(p.temperature) for p in self.params], 1.0)
        self.top_k = column([min(p.top_k, MAX_TOP_K) for p in self.params], 0, torch.long)
        self.top_p = column([float(p.top_p) for p in self.params], 1.0)
        self.min_p = column([float(p.min_p) for p in self.params], 0.0)
        self.penalty = column([_f32(p.repetition_penalty) for p in self.params], 1.0)

    def __len__(self) -> int:
        return len(self.params)


_BIG = torch.finfo(torch.float32).max / 2  # finite, and far enough from the edge that x - max stays finite


def shape_logits(logits: torch.Tensor, params: SamplingParams | Dice, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply every transform, in Hugging Face's order; returns float32 logits whose
    softmax is the die. (For greedy decoding the temperature step is skipped.)

    `params`: one `SamplingParams` for every row, or a `Dice` (one per row). Extreme
    settings never give NaN: a logit that a tiny repetition penalty pushes past float32's
    range is held at a large finite value, and the temperature divides logits *minus
    their maximum* (the same softmax), so a temperature whose quotient would overflow
    (1e-38) gives the greedy die instead of inf - inf.
    """
    dice = params if isinstance(params, Dice) else Dice([params] * logits.shape[0], logits.device)
    x = logits.float()
    if seen is not None and dice.penalty is not None:
        x = apply_repetition_penalty(x, seen, dice.penalty)
        x = torch.where(x > _BIG, _BIG, x)
    if dice.temperature is not None:
        top = x.amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)  # a row of -inf stays -inf, not NaN
        x = apply_temperature(x - top, dice.temperature)
    if dice.top_k is not None:
        x = top_k_filter(x, dice.top_k)
    if dice.top_p is not None:
        x = top_p_filter(x, dice.top_p)
    if dice.min_p is not None:
        x = min_p_filter(x, dice.min_p)
    return x


def roll(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from probs [B, V]: index i with probability probs[i].

    The exponential race: argmax(probs / E) with E_i ~ Exp(1) independent. E_i / probs_i
    is exponential with rate probs_i, and the smallest of independent exponentials is
    number i with probability rate_i / sum(rates). Unlike torch.multinomial it needs no
    host synchronisation, so it can run inside a CUDA graph (gpt-fast does the same).
    """
    return _race(probs, exponential_noise(probs.shape, generator, probs.device))


def exponential_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Independent Exp(1) draws, float32: -log(1 - U) with U uniform in [0, 1).

    Why not Tensor.exponential_: on the CPU it is ~4x slower than uniform draws and a log
    (1.08 ms vs 0.25 ms for GPT-2's 50,257 faces, measured 2026-12-05) - a tenth of an
    int8 decode step. 1 - U is in (0, 1], so every draw is finite."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32, device=device)
    return u.neg_().add_(1.0).log_().neg_()


def _race(probs: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    # A face of probability 0 never wins, not even against a noise of exactly 0 (0 / 0 is
    # NaN, which argmax would take for the largest value).
    return torch.argmax(torch.where(probs > 0, probs.float() / e, -1.0), dim=-1)


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
    """Runs the model over one cache: a prefill of every row's window, then one-token
    steps. Over a static cache on CUDA (`DecodeCache.static`: the KV cache) the step is
    captured once in a CUDA graph (optionally after torch.compile) and replayed: one
    launch per token. (gpt-fast's `prefill` / `decode_one_token`.)"""

    def __init__(self, model, cache: DecodeCache, *, cuda_graph: bool, compile: bool):
        self.model, self.cache = model, cache
        self.graph = None
        step = self._eager_step
        if compile:
            try:
                step = torch.compile(self._eager_step, fullgraph=True, dynamic=False)
            except Exception as e:  # pragma: no cover - depends on the platform's compiler
                warnings.warn(f"torch.compile of the decode step failed ({e}); decoding eagerly", stacklevel=2)
        self.step_fn = step
        # Only a static cache can be captured (a recurrent state is a new tensor each step).
        self.use_graph = cuda_graph and cache.static
        self.static_tok = None

    def _eager_step(self, tok: torch.Tensor) -> torch.Tensor:
        return self.model(tok, kv_cache=self.cache).logits[:, -1, :]

    def prefill(self, idx: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
        """idx [B, P], left-padded by pads[b] -> logits [B, V] of each row's next token."""
        self.cache.reset(pads)
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
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm up (and compile) outside the capture
                self.step_fn(self.static_tok)
                self.cache.rewind(1)  # undo the warm-up's advance; its cache writes get overwritten
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self.step_fn(self.static_tok)
        # (capture records the kernels without running them: the cache has not advanced)


@dataclass(eq=False)
class Row:
    """One text that a `Batch` continues."""

    ids: list[int]  # the prompt, then every token drawn (the model reads the last block_size)
    params: SamplingParams
    generator: torch.Generator | None = None
    tag: Any = None  # the caller's: e.g. which request and which choice this is
    done: bool = False  # a done row rides along repeating its last token (`generate` keeps its rows)
    n_prompt: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_prompt = len(self.ids)

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]


@dataclass
class Draw:
    """One row's token from one step of a `Batch`."""

    row: Row
    token: int
    logprob: float  # log-probability of the token under the row's die (always finite)
    top_ids: list[int] | None = None  # the die's most likely faces ...
    top_probs: list[float] | None = None  # ... and their probabilities
    entropy: float | None = None  # of the whole die, in nats


class Batch:
    """Rows decoded together, one token per row per step. Rows may join (`add`) and
    leave (`remove`) between steps, and the cache is kept rather than recomputed. Each
    step is a straight recipe:

        retire the rows that left    cache.select(the others)
        run the model                one decode step over the cache, or a prefill of every
                                     window (the first step; and when the cache is full
                                     and `make_room` finds none: the sliding window)
        admit the joiners            their windows prefilled on their own, cache.append(theirs)
        shape the logits, roll       one token per row

    The cache (`models.DecodeCache`: the GPT's KV cache, an RNN's state) does every edit
    of its tensors itself; this class never sees their layout. A model without a cache
    (the n-gram, or `use_cache=False`) re-reads every row's window each step instead.

    Each row rolls with its own generator (so it draws what it would draw alone), or with
    the batch's shared one; rows sharing a generator draw the whole batch's noise in
    one call, which is `generate`'s behaviour with one seed.

    >>> batch = Batch(model)                                  # doctest: +SKIP
    >>> a = batch.add([1, 2, 3], SamplingParams(temperature=0))
    >>> [d.token for d in batch.step()]                      # a's first token
    >>> b = batch.add([4, 5], SamplingParams(), torch.Generator().manual_seed(0))
    >>> [d.row is b for d in batch.step()]                   # a and b in one forward pass
    [False, True]
    """

    def __init__(
        self,
        model,
        *,
        use_cache: bool = True,
        cuda_graph: bool = True,
        compile: bool = False,
        vocab_limit: int | None = None,
        generator: torch.Generator | None = None,
    ):
        self.model = model
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.vocab_limit = vocab_limit if vocab_limit is not None and vocab_limit < self.vocab else None
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.compile = compile
        self.generator = generator  # for rows added without their own
        self.rows: list[Row] = []  # the running rows, in the cache's row order
        self._joining: list[Row] = []  # added, not yet run
        self._leaving: set[int] = set()  # id() of rows to drop before the next step
        self._recompute_only = not use_cache  # also set once the model turns out to have no cache
        self._decoder: _Decoder | None = None  # the running rows' cache and how to run it
        self._last: torch.Tensor | None = None  # [B] each row's last token: the next decode input
        self._dice: Dice | None = None
        self._seen: torch.Tensor | None = None
        self.steps = self.prefills = self.joins = 0  # counters, for tests and `minigpt serve`'s /health

    @property
    def cache(self) -> DecodeCache | None:
        """The running rows' cache (None before the first step, or with no cache)."""
        return None if self._decoder is None else self._decoder.cache

    def __len__(self) -> int:
        return len(self.rows) - len(self._leaving) + len(self._joining)

    def add(
        self,
        prompt: Sequence[int],
        params: SamplingParams | None = None,
        generator: torch.Generator | None = None,
        tag: Any = None,
    ) -> Row:
        """A new row; it gets its first token at the next `step`."""
        if len(prompt) == 0:
            raise ConfigError("every prompt needs at least one token (start from <|endoftext|> for an empty prompt)")
        if generator is None:
            if self.generator is None:
                self.generator = torch.Generator(device=self.device)
                self.generator.manual_seed(torch.seed() % (1 << 63))
            generator = self.generator
        row = Row([int(t) for t in prompt], params or SamplingParams(), generator, tag)
        self._joining.append(row)
        return row

    def remove(self, row: Row) -> None:
        """Take a row out; from the next step on it costs nothing."""
        if any(r is row for r in self._joining):
            self._joining = [r for r in self._joining if r is not row]
        elif any(r is row for r in self.rows):
            self._leaving.add(id(row))

    # ---- one step ---------------------------------------------------------------------

    @torch.no_grad()
    def step(self, top: int = 0, entropy: bool = False) -> list[Draw]:
        """Draw one token for every row (in `self.rows` order, joiners last). `top` > 0
        adds each die's `top` most likely faces, `entropy` its entropy."""
        self._retire()
        if not self.rows and not self._joining:
            return []
        logits = self._forward()  # [B, V], the joiners admitted
        rows, dice, B = self.rows, self._dice, len(self.rows)
        if self.vocab_limit is not None:
            logits = logits.clone()
            logits[:, self.vocab_limit :] = float("-inf")
        shaped = shape_logits(logits, dice, self._seen)
        probs = torch.softmax(shaped, dim=-1)
        tok = self._roll(shaped, probs)
        lse = torch.logsumexp(shaped, dim=-1)
        # The picked face always has a probability > 0, so this is finite; the clamp keeps
        # a repeated token of a finished row (which may have none) finite too.
        logprob = (shaped.gather(1, tok[:, None]).squeeze(1) - lse).clamp_min(torch.finfo(torch.float32).min)
        tops = probs.topk(min(top, probs.shape[-1]), dim=-1) if top else None
        ent = None
        if entropy:
            ent = -torch.where(probs > 0, probs * (shaped - lse[:, None]), 0.0).sum(dim=-1)

        # The one host synchronisation per step: hand the tokens to the caller.
        tokens, logprobs = tok.tolist(), logprob.tolist()
        top_ids, top_probs = (tops.indices.tolist(), tops.values.tolist()) if top else ([None] * B, [None] * B)
        ents = ent.tolist() if entropy else [None] * B
        for r, t in zip(rows, tokens):
            r.ids.append(t)
        if self._seen is not None:
            self._seen.scatter_(1, tok[:, None], True)
        self._last = tok
        self.steps += 1
        per_row = zip(rows, tokens, logprobs, top_ids, top_probs, ents)
        return [Draw(r, t, lp, ti, tp, h) for r, t, lp, ti, tp, h in per_row]

    def _roll(self, shaped: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """[B] the token of every row: argmax for greedy rows, a roll of the die for the
        others; a finished row repeats its last token."""
        rows, dice, B = self.rows, self._dice, len(self.rows)
        tok = torch.argmax(shaped, dim=-1) if any(dice.greedy) else None
        if not all(dice.greedy):
            first = rows[0].generator
            if all(r.generator is first for r in rows):
                rolled = roll(probs, first)  # one draw for the batch: `generate` with one seed
            else:
                # One generator per row: each row draws a [1, V] noise of its own, exactly as
                # it would alone, so its tokens do not depend on who else is in the batch.
                e = torch.ones(B, probs.shape[-1], dtype=torch.float32, device=probs.device)
                for b, r in enumerate(rows):
                    if not dice.greedy[b] and not r.done:
                        e[b : b + 1] = exponential_noise((1, probs.shape[-1]), r.generator, probs.device)
                rolled = _race(probs, e)
            tok = rolled if tok is None else torch.where(dice.greedy_mask, tok, rolled)
        if self._last is not None and len(self._last) == B and any(r.done for r in rows):
            done = torch.tensor([r.done for r in rows], device=tok.device)
            tok = torch.where(done, self._last, tok)  # finished rows just repeat
        return tok

    # ---- the model's side -------------------------------------------------------------

    def _forward(self) -> torch.Tensor:
        """[B, V] logits of the next token of every row; the joiners join `self.rows`."""
        joiners, self._joining = self._joining, []
        if self._recompute_only:
            self._admit(joiners)
            return self._recompute()
        cache = self.cache
        if cache is None or not self.rows or (cache.full and not cache.make_room()):
            # The first step, or a row's window fills block_size: every window afresh.
            self._admit(joiners)
            return self._prefill()
        logits = self._decoder.decode(self._last[:, None])
        if joiners:
            theirs, their_logits = self._prefill_alone(joiners)
            self._use(cache.append(theirs))  # nobody else is recomputed
            self._admit(joiners)
            logits = torch.cat([logits, their_logits])
        return logits

    def _windows(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's last block_size ids, left-padded to one length: (idx [B, P], pads [B])."""
        windows = [r.ids[-self.block :] for r in rows]
        P = max(len(w) for w in windows)
        idx = torch.tensor([[0] * (P - len(w)) + w for w in windows], dtype=torch.long, device=self.device)
        return idx, torch.tensor([P - len(w) for w in windows], device=self.device)

    def _use(self, cache: DecodeCache) -> None:
        self._decoder = _Decoder(self.model, cache, cuda_graph=self.cuda_graph, compile=self.compile)

    def _prefill(self) -> torch.Tensor:
        """Every row's window through the cache, from empty. A cache of the right size is
        reused (and with it a captured CUDA graph: the sliding window re-prefills each step)."""
        if self.cache is None or self.cache.batch_size != len(self.rows):
            cache = self.model.make_cache(len(self.rows), self.block)
            if cache is None:  # a model without one (the n-gram): recompute every step
                self._recompute_only = True
                return self._recompute()
            self._use(cache)
        self.prefills += 1
        return self._decoder.prefill(*self._windows(self.rows))

    def _prefill_alone(self, rows: list[Row]) -> tuple[DecodeCache, torch.Tensor]:
        """Joiners' windows through a cache of their own: (that cache, their logits [n, V])."""
        idx, pads = self._windows(rows)
        cache = self.model.make_cache(len(rows), self.block)
        cache.reset(pads)
        return cache, self.model(idx, kv_cache=cache).logits[:, -1, :]

    def _recompute(self) -> torch.Tensor:
        """Without a cache: a full pass over each row's window. There is no padding mask
        then, so rows whose windows differ in length run in separate passes."""
        windows = [r.ids[-self.block :] for r in self.rows]
        lengths = sorted({len(w) for w in windows})
        if len(lengths) == 1:
            return self.model(torch.tensor(windows, device=self.device)).logits[:, -1, :]
        out = None
        for n in lengths:
            which = [b for b, w in enumerate(windows) if len(w) == n]
            logits = self.model(torch.tensor([windows[b] for b in which], device=self.device)).logits[:, -1, :]
            if out is None:
                out = logits.new_empty(len(windows), logits.shape[-1])
            out[torch.tensor(which, device=self.device)] = logits
        return out

    # ---- rows joining and leaving -----------------------------------------------------

    def _admit(self, joiners: list[Row]) -> None:
        if joiners or self._dice is None:
            self.rows += joiners
            self.joins += len(joiners)
            self._changed()

    def _retire(self) -> None:
        """Drop the rows that left, and their part of the cache."""
        if not self._leaving:
            return
        keep = [b for b, r in enumerate(self.rows) if id(r) not in self._leaving]
        self._leaving.clear()
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[b] for b in keep]
        if not self.rows:  # the next rows start with a prefill (into this cache, if their number fits)
            self._last = None
            return
        if self.cache is not None:
            self._use(self.cache.select(keep))
        self._last = self._last[torch.tensor(keep, device=self.device)]
        self._changed()

    def _changed(self) -> None:
        """The rows changed: rebuild their dice and the tokens each has seen."""
        self._dice = Dice([r.params for r in self.rows], self.device)
        self._seen = None
        if self._dice.penalty is not None:
            self._seen = torch.zeros(len(self.rows), self.vocab, dtype=torch.bool, device=self.device)
            for b, r in enumerate(self.rows):
                self._seen[b, torch.tensor(r.ids, device=self.device)] = True


def _per_row(value, B: int, what: str) -> list | None:
    """A sequence with one value per row, checked; None for a single value."""
    if value is None or isinstance(value, (SamplingParams, torch.Generator, numbers.Integral)):
        return None
    value = list(value)
    if len(value) != B:
        raise ConfigError(f"{what}: got {len(value)} values for {B} prompts (give one, or one per prompt)")
    return value


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    seed: int | Sequence[int] | None = None,
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
    are left-padded and the padding is masked). `params`: one `SamplingParams` for every
    row, or one per row. `generator` (or `seed`) makes the draws reproducible: one for
    the batch (the rows share its draws), or one per row (each row then draws exactly
    what it would draw alone). A row finishes when it draws one of `stop_ids` or when
    `stop(row, token)` returns True; generation ends when every row has finished.
    `top` > 0 adds each step's `top` most likely candidates and their probabilities.
    `use_cache=False` recomputes the whole (cropped) context every step: slow, and the
    oracle the cached path is tested against. `vocab_limit` forbids ids >= it (a model
    whose embedding table is padded past the tokenizer's vocabulary).

    Memory grows with the tokens actually generated, never with `max_new_tokens` up front.

    >>> steps = generate(model, [[1, 2, 3]], 5, SamplingParams(temperature=0))  # doctest: +SKIP
    >>> [s.tokens[0] for s in steps]                                             # five greedy ids
    """
    if max_new_tokens < 0:
        raise ConfigError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (start from <|endoftext|> for an empty prompt)")
    B = len(prompts)
    device = next(model.parameters()).device
    row_params = _per_row(params, B, "params") or [params or SamplingParams()] * B
    generators = _per_row(generator, B, "generator")
    seeds = _per_row(seed, B, "seed")
    if seeds is not None and generators is None:
        generators = [torch.Generator(device=device) for _ in seeds]
        for g, s in zip(generators, seeds):
            g.manual_seed(s)
    if generators is None:
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed() % (1 << 63))
        generators = [generator] * B

    batch = Batch(model, use_cache=use_cache, cuda_graph=cuda_graph, compile=compile, vocab_limit=vocab_limit)
    rows = [batch.add(p, prm, g) for p, prm, g in zip(prompts, row_params, generators)]
    stop_set = set(stop_ids)
    for _ in range(max_new_tokens):
        draws = batch.step(top=top)
        was = [r.done for r in rows]
        for b, (r, d) in enumerate(zip(rows, draws)):
            if not r.done and (d.token in stop_set or (stop is not None and stop(b, d.token))):
                r.done = True
        finished = [r.done for r in rows]
        step = Step([d.token for d in draws], [d.logprob for d in draws], finished, [not w for w in was])
        if top:
            step.top_ids, step.top_probs = [d.top_ids for d in draws], [d.top_probs for d in draws]
        yield step
        if all(finished):
            return
