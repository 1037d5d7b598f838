"""`minigpt serve`: an OpenAI-compatible completions API and a live playground, over one checkpoint.

    minigpt serve --checkpoint out/shakespeare            # http://127.0.0.1:8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
    client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=40, seed=1).choices[0].text

Three layers, from the wire inwards:

    HTTP (Starlette on uvicorn)   a request is read (size-capped), checked field by field and
                                  turned into choices; every refusal is OpenAI's error shape
    _Choice (text at the edge)    one completion: its prompt ids, die, seed and caps, and its
                                  text built token by token (UTF-8 and stop strings, as
                                  `completion.complete` does), handed to the waiting handler
    Engine (ids only)             one thread and one `sampling.Batch`: every step draws a
                                  token for every running row; between steps, finished and
                                  abandoned rows leave and waiting ones join

So requests in flight at the same time are decoded together, one forward pass per step for
all of them, and a request arriving mid-way joins at the next step instead of waiting for
the others to finish (continuous batching). Rows wait in a bounded queue: when it is full
a request is answered 503 with Retry-After rather than queued without limit. A client
that disconnects stops its rows at the next step.

What is deterministic: each choice rolls with its own generator, seeded `seed + j` for
the j-th choice of a request (choices are numbered prompt by prompt, n per prompt). A
request with one prompt, n = 1 and seed s therefore gets the text
`complete(model, tokenizer, prompt, seed=s, ...)` gives with the same settings, alone or
batched with any other requests (up to float rounding in batched matrix products, which
can only matter where two faces of the die are tied to ~1e-6).

Log-probabilities: a generated token's are under its die (after temperature, top-k,
top-p, min-p and repetition penalty: what was rolled); an echoed prompt's are under the
model's own distribution (nothing was rolled for them), the first token's being null.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .completion import RowText, encode_prompt
from .errors import ConfigError, MiniGPTError
from .sampling import Batch, Draw, SamplingParams

__all__ = ["ServeConfig", "run_server", "create_app", "Engine", "ApiError", "parse_completion_request"]

MAX_LOGPROBS = 20  # top candidates per token a request may ask for (OpenAI allows 5, vLLM 20)
MAX_STOPS = 4  # stop strings per request, as OpenAI
PLAYGROUND = Path(__file__).with_name("playground.html")
_DATA_MARKER = "/*MINIGPT_DATA*/"


@dataclass
class ServeConfig:
    """What `minigpt serve` runs with (the command's flags, see `minigpt serve --help`)."""

    checkpoint: str = "out/shakespeare"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # require "Authorization: Bearer <key>" on the API
    max_tokens_cap: int = 1024  # largest max_tokens a request may ask for
    max_n: int = 16  # largest n
    max_prompt_tokens: int = 4096  # longest prompt, in tokens (the model reads the last block_size)
    max_batch: int = 32  # rows decoded together; also the most completions one request may ask for
    queue_size: int = 64  # requests waiting beyond the running batch before 503
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None  # "int8": weight-only int8 Linear layers (quantize.py)

    def check(self) -> None:
        for name in ("max_tokens_cap", "max_n", "max_prompt_tokens", "max_batch", "queue_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v}")
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"--port must be in 0..65535 (0 = any free port), got {self.port}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: room for max_batch prompts of max_prompt_tokens as ids."""
        return 64 * 1024 + 16 * self.max_prompt_tokens * self.max_batch


# ---- errors: OpenAI's shape ------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as OpenAI answers them:
    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}} with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}
        self.type = type or {401: "authentication_error", 404: "not_found_error", 503: "server_error"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---- the request ---------------------------------------------------------------------------

# Fields OpenAI's completions endpoint takes that minigpt accepts only at their neutral value.
_NEUTRAL = {
    "frequency_penalty": (0, "use repetition_penalty"),
    "presence_penalty": (0, "use repetition_penalty"),
    "logit_bias": ({}, None),
    "suffix": (None, None),
}
_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "echo", "logprobs", "stream",
    "stream_options", "user", "best_of", *_NEUTRAL,
    "top_k", "min_p", "repetition_penalty", "die",  # minigpt's own
}


@dataclass
class CompletionRequest:
    """A checked request: prompts as ids, the die, and what to send back."""

    prompts: list[list[int]]  # one list of ids per prompt
    prompt_texts: list[str]  # the text of each (what echo sends back)
    params: SamplingParams
    max_tokens: int = 16
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    echo: bool = False
    logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False
    die: bool = False

    @property
    def top(self) -> int:
        """Candidates per token to report: `logprobs`, or 5 for the die alone."""
        return self.logprobs if self.logprobs is not None else (5 if self.die else 0)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _get(body: dict, name: str, check, what: str, default):
    v = body.get(name)
    if v is None:
        return default
    if not check(v):
        raise _bad(f"{name} must be {what}, got {json.dumps(v)[:60]}", name)
    return v


# SamplingParams names its fields as sample.py's flags; the API's names have underscores.
_PARAM_OF_MESSAGE = {"temperature": "temperature", "top-k": "top_k", "top-p": "top_p", "min-p": "min_p",
                     "repetition-penalty": "repetition_penalty"}


def parse_completion_request(body: Any, *, model_id: str, tokenizer, cfg: ServeConfig) -> CompletionRequest:
    """Check a decoded JSON body field by field; any problem is an `ApiError` naming the field.

    >>> parse_completion_request({"model": "m", "prompt": "hi", "n": 0}, model_id="m", tokenizer=tok, cfg=ServeConfig())
    Traceback (most recent call last):
    ApiError: n must be a whole number in 1..16, got 0
    """
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    for name, (neutral, hint) in _NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise _bad(f"{name} is not supported by minigpt" + (f" ({hint})" if hint else ""), name, "unsupported_parameter")

    model = body.get("model")
    if not isinstance(model, str):
        raise _bad("model is required: the id /v1/models lists", "model")
    if model != model_id:
        raise ApiError(404, f"The model '{model[:100]}' does not exist; this server serves '{model_id}'", param="model",
                       code="model_not_found")

    prompts, texts = _parse_prompts(body.get("prompt", ...), tokenizer, cfg)
    n = _get(body, "n", lambda v: _is_int(v) and 1 <= v <= cfg.max_n, f"a whole number in 1..{cfg.max_n}", 1)
    if body.get("best_of") not in (None, n):
        raise _bad("best_of is not supported by minigpt (leave it out, or equal to n)", "best_of", "unsupported_parameter")
    if len(prompts) * n > cfg.max_batch:
        raise _bad(f"this request asks for {len(prompts) * n} completions ({len(prompts)} prompts x n={n}); "
                   f"the server takes at most {cfg.max_batch} per request", "n")
    max_tokens = _get(body, "max_tokens", lambda v: _is_int(v) and 0 <= v <= cfg.max_tokens_cap,
                      f"a whole number in 0..{cfg.max_tokens_cap} (the server's cap)", 16)

    values = {}
    for name, check, what, default in (
        ("temperature", _is_number, "a number", 1.0),
        ("top_p", _is_number, "a number", 1.0),
        ("top_k", _is_int, "a whole number", 0),
        ("min_p", _is_number, "a number", 0.0),
        ("repetition_penalty", _is_number, "a number", 1.0),
    ):
        values[name] = _get(body, name, check, what, default)
    try:
        params = SamplingParams(**values)
    except ConfigError as e:
        msg = str(e)
        flag = next((f for f in _PARAM_OF_MESSAGE if msg.startswith(f + " ")), None)
        param = _PARAM_OF_MESSAGE.get(flag)
        raise _bad(msg.replace(flag, param, 1) if flag else msg, param) from None

    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOPS:
        stops = tuple(stop)
    else:
        raise _bad(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    if any(s == "" for s in stops):
        raise _bad("stop strings must not be empty", "stop")

    seed = _get(body, "seed", lambda v: _is_int(v) and 0 <= v < 2**63, "a whole number in 0..2^63-1", None)
    echo = _get(body, "echo", lambda v: isinstance(v, bool), "true or false", False)
    stream = _get(body, "stream", lambda v: isinstance(v, bool), "true or false", False)
    die = _get(body, "die", lambda v: isinstance(v, bool), "true or false", False)
    logprobs = _get(body, "logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_LOGPROBS,
                    f"a whole number in 0..{MAX_LOGPROBS}", None)
    options = _get(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise _bad('stream_options takes only {"include_usage": true|false}', "stream_options")
    if options and not stream:
        raise _bad("stream_options is only allowed with stream: true", "stream_options")
    _get(body, "user", lambda v: isinstance(v, str), "a string", None)
    return CompletionRequest(
        prompts=prompts, prompt_texts=texts, params=params, max_tokens=max_tokens, n=n, stop=stops, seed=seed,
        echo=echo, logprobs=logprobs, stream=stream, include_usage=bool(options.get("include_usage")), die=die,
    )


def _parse_prompts(prompt, tokenizer, cfg: ServeConfig) -> tuple[list[list[int]], list[str]]:
    """OpenAI's four forms: a string, a list of strings, a list of token ids, a list of
    lists of token ids. An empty string starts a fresh document (<|endoftext|>)."""
    if prompt is ...:
        raise _bad("prompt is required (a string, a list of strings, or token ids)", "prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list):
        raise _bad("prompt must be a string, a list of strings, a list of token ids or a list of lists of ids", "prompt")
    if not prompt:
        raise _bad("prompt is an empty list: give at least one prompt", "prompt")
    V = tokenizer.vocab_size
    ids_list, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            if len(p) > 64 * cfg.max_prompt_tokens:  # too long to be within the cap: don't tokenize it
                raise _bad(f"a prompt is longer than the server's cap of {cfg.max_prompt_tokens} tokens", "prompt",
                           "context_length_exceeded")
            ids, text = encode_prompt(tokenizer, p), p
        elif isinstance(p, list) and p and all(_is_int(t) for t in p):
            bad = next((t for t in p if not 0 <= t < V), None)
            if bad is not None:
                raise _bad(f"token id {bad} is out of range for this model's vocabulary of {V}", "prompt")
            ids, text = list(p), tokenizer.decode(p)
        else:
            raise _bad("each prompt must be a string or a non-empty list of token ids", "prompt")
        if len(ids) > cfg.max_prompt_tokens:
            raise _bad(f"a prompt has {len(ids)} tokens; the server's cap is {cfg.max_prompt_tokens}", "prompt",
                       "context_length_exceeded")
        ids_list.append(ids)
        texts.append(text)
    return ids_list, texts


# ---- one completion: text at the edge --------------------------------------------------------


class _Job:
    """One request in the engine: its choices, and the queue its handler reads events from."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.id = "cmpl-" + uuid.uuid4().hex[:24]
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.choices: list[_Choice] = []
        self.admitted = 0  # choices that have joined the batch
        self.cancelled = False

    def send(self, event: tuple) -> None:
        """From the engine thread to the handler (on the event loop)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is stopping and nobody listens
            pass


class _Choice:
    """One completion: what its row needs (ids, die, seed, caps) and its text, built token
    by token in the engine thread (so a stop string ends the row at once)."""

    def __init__(self, job: _Job, index: int, prompt_ids: list[int], req: CompletionRequest, tokenizer, base: int):
        self.job, self.index, self.prompt_ids, self.req = job, index, prompt_ids, req
        self.params, self.max_tokens, self.top, self.die = req.params, req.max_tokens, req.top, req.die
        self.seed = (req.seed + index) % 2**64 if req.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self._pieces: list[str] = []
        self.text = RowText(tokenizer, req.stop, self._pieces.append)
        self.base = base  # characters before the completion in the returned text (the echoed prompt)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.offsets: list[int] = []
        self.top_ids: list[list[int]] = []
        self.top_probs: list[list[float]] = []
        self.entropy: list[float] = []
        self.finish_reason: str | None = None
        self.row = None  # the engine's Batch row, once admitted

    def accept(self, d: Draw) -> bool:
        """A new token (engine thread). Returns True when the completion is finished."""
        self.offsets.append(self.base + len(self.text.text))
        self.tokens.append(d.token)
        self.logprobs.append(d.logprob)
        if d.top_ids is not None:
            self.top_ids.append(d.top_ids[: self.top])
            self.top_probs.append(d.top_probs[: self.top])
        if d.entropy is not None:
            self.entropy.append(d.entropy)
        done = self.text.feed(d.token)
        if not done and len(self.tokens) >= self.max_tokens:
            self.text.finish("length")
            done = True
        if done:
            self.finish_reason = "length" if self.text.finish_reason == "length" else "stop"
        piece = "".join(self._pieces)
        self._pieces.clear()
        self.job.send(("token", self, len(self.tokens) - 1, piece, done))
        return done


# ---- the engine: ids only -----------------------------------------------------------------


class Overloaded(Exception):
    pass


class Engine:
    """One thread decoding every running row in one `sampling.Batch`.

    Between steps it drops the rows of finished or abandoned requests and lets waiting
    ones join, up to `max_batch` rows; at most `queue_size` requests wait beyond that
    (`submit` raises `Overloaded` past it). `trace` keeps, for each recent step, the ids
    of the requests it decoded: two requests in one step shared one forward pass.
    """

    def __init__(self, model, *, vocab_limit: int | None, max_batch: int = 32, queue_size: int = 64):
        self.model, self.vocab_limit = model, vocab_limit
        self.max_batch, self.queue_size = max_batch, queue_size
        self.batch = self._new_batch()
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._active: set[_Choice] = set()
        self._closed = self._paused = False
        self._thread: threading.Thread | None = None
        self.trace: collections.deque[tuple[str, ...]] = collections.deque(maxlen=1024)
        self.counts = collections.Counter()

    def _new_batch(self) -> Batch:
        # No CUDA graph: rows join and leave all the time, and each change would be a recapture.
        return Batch(self.model, cuda_graph=False, vocab_limit=self.vocab_limit)

    @property
    def device(self) -> torch.device:
        return self.batch.device

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="minigpt-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; every request still running or waiting gets an error event."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        jobs = {c.job for c in self._active} | set(self._waiting)
        for job in jobs:
            job.send(("error", ApiError(503, "the server is shutting down", code="shutting_down")))

    def submit(self, job: _Job) -> None:
        with self._cv:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.queue_size:
                self.counts["rejected"] += 1
                raise Overloaded
            self._waiting.append(job)
            self.counts["requests"] += 1
            self._cv.notify_all()

    def cancel(self, job: _Job) -> None:
        """The client went away: its rows leave at the next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify_all()

    def pause(self) -> None:
        """Hold every step (requests queue up meanwhile); for tests and maintenance."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {
                "running_rows": len(self._active), "waiting_requests": len(self._waiting),
                "max_batch": self.max_batch, "queue_size": self.queue_size,
                "steps": self.batch.steps + self.counts["steps_before"], "prefills": self.batch.prefills,
                "max_rows_in_step": self.counts["max_rows_in_step"], "tokens": self.counts["tokens"],
                "requests": self.counts["requests"], "rejected": self.counts["rejected"],
                "finished_rows": self.counts["finished"], "cancelled_rows": self.counts["cancelled"],
                "errors": self.counts["errors"],
            }

    def _admit(self) -> None:
        """(Under the lock.) Drop abandoned rows; let waiting rows join, first come first served."""
        for c in [c for c in self._active if c.job.cancelled]:
            self.batch.remove(c.row)
            self._active.discard(c)
            self.counts["cancelled"] += 1
        while self._waiting and len(self._active) < self.max_batch:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            c = job.choices[job.admitted]
            job.admitted += 1
            if job.admitted == len(job.choices):
                self._waiting.popleft()
            g = torch.Generator(device=self.device)
            g.manual_seed(c.seed)
            c.row = self.batch.add(c.prompt_ids, c.params, g, tag=c)
            self._active.add(c)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (self._paused or not (self._active or self._waiting)):
                    self._cv.wait()
                if self._closed:
                    return
                self._admit()
                active = list(self._active)
            if not active:
                continue
            try:
                draws = self.batch.step(top=max(c.top for c in active), entropy=any(c.die for c in active))
                finished = [d.row.tag for d in draws if d.row.tag.accept(d)]
            except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                traceback.print_exc(file=sys.stderr)
                with self._cv:
                    self.counts["errors"] += 1
                    self.counts["steps_before"] += self.batch.steps
                    for job in {c.job for c in self._active}:
                        job.send(("error", ApiError(500, f"generation failed: {type(e).__name__}", code="engine_error")))
                        job.cancelled = True
                    self._active.clear()
                    self.batch = self._new_batch()
                continue
            self.trace.append(tuple(sorted({d.row.tag.job.id for d in draws})))
            with self._cv:
                self.counts["tokens"] += len(draws)
                self.counts["max_rows_in_step"] = max(self.counts["max_rows_in_step"], len(draws))
                for c in finished:
                    self.batch.remove(c.row)
                    self._active.discard(c)
                    self.counts["finished"] += 1


# ---- scores and attention, outside the engine ------------------------------------------------


@torch.no_grad()
def prompt_logprobs(model, ids: list[int], top: int) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each prompt token's log-probability under the model (no die: nothing was rolled),
    and the `top` most likely ids at its position; the first token has none. A prompt
    longer than block_size is read in consecutive windows of block_size tokens."""
    block = model.config.block_size
    device = next(model.parameters()).device
    lps: list[float | None] = [None]
    tops: list[dict[int, float] | None] = [None]
    for lo in range(0, len(ids) - 1, block):
        window = ids[lo : lo + block]
        logp = torch.log_softmax(model(torch.tensor([window], device=device)).logits[0].float(), dim=-1)
        targets = ids[lo + 1 : lo + 1 + len(window)]
        logp = logp[: len(targets)]
        lps += logp.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1).tolist()
        if top:
            v, i = logp.topk(min(top, logp.shape[-1]), dim=-1)
            tops += [dict(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
        else:
            tops += [None] * len(targets)
    return lps, tops


@torch.no_grad()
def attention_rows(model, ids: list[int], layer: int) -> dict:
    """Every head's attention in `layer` over the last block_size of `ids`: weights[h][t]
    is query token t's row over keys 0..t (the viewer's format), rounded to 4 decimals."""
    block = model.config.block_size
    dropped = max(0, len(ids) - block)
    ids = ids[dropped:]
    device = next(model.parameters()).device
    att = model(torch.tensor([ids], device=device), return_attention=True).attentions[layer][0]  # [H, T, T]
    w = att.double().cpu().numpy().round(4)  # float64, so 0.5046 prints as 0.5046
    return {"ids": ids, "dropped": dropped, "layer": layer, "n_head": int(w.shape[0]),
            "weights": [[w[h, t, : t + 1].tolist() for t in range(len(ids))] for h in range(w.shape[0])]}


# ---- the HTTP layer --------------------------------------------------------------------------


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' as \\u escapes."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")  # Python's json would otherwise accept NaN and Infinity


async def _read_json(request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _bad("bad Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"We could not parse the JSON body of your request ({e})", code="invalid_json") from None


async def _wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _EventStream:
    """A server-sent-events response that notices a client going away: its events stop
    being pulled (so nothing more is asked of the engine) and `on_close` runs."""

    def __init__(self, events, on_close):
        self.events, self.on_close = events, on_close

    async def __call__(self, scope, receive, send) -> None:
        import anyio  # comes with the serve extra (Starlette runs on it)

        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    try:
                        async for chunk in self.events:
                            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:  # the client went away mid-send
                        pass
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await _wait_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(pump)
                tg.start_soon(watch)
        finally:
            self.on_close()
            await self.events.aclose()


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n\n"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to say when the server listens beyond this machine (None on loopback)."""
    if _is_loopback(host):
        return None
    return f"listening on {host or 'every address'}: other machines can reach this server" + (
        "" if api_key else "; anyone who can reach it can use it (set --api-key or MINIGPT_API_KEY)")


def create_app(model, tokenizer, cfg: ServeConfig | None = None, *, model_id: str = "minigpt",
               model_type: str | None = None):
    """The Starlette app: the API and the playground over `model` (already loaded). The
    engine starts and stops with the app (its lifespan); `app.state.engine` is it.

    >>> app = create_app(model, tokenizer, ServeConfig(), model_id="shakespeare")   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                                # doctest: +SKIP
    """
    # The serve extra (Starlette) is imported only here, so `minigpt --help` and the
    # other commands never need it.
    from starlette.applications import Starlette  # the serve extra
    from starlette.concurrency import run_in_threadpool  # the serve extra
    from starlette.exceptions import HTTPException  # the serve extra
    from starlette.responses import HTMLResponse, JSONResponse, Response  # the serve extra
    from starlette.routing import Route  # the serve extra

    cfg = cfg or ServeConfig()
    cfg.check()
    model.eval()  # dropout off: a seed must give the same text every time
    model_type = model_type or getattr(model, "model_type", type(model).__name__)
    has_attention = bool(getattr(model, "has_attention", False))  # models.LanguageModel declares it
    engine = Engine(model, vocab_limit=tokenizer.vocab_size, max_batch=cfg.max_batch, queue_size=cfg.queue_size)
    created = int(time.time())
    key = cfg.api_key.encode() if cfg.api_key else None
    mcfg = model.config
    info = {
        "model": model_id, "model_type": model_type, "has_attention": has_attention,
        "n_layer": getattr(mcfg, "n_layer", 0) if has_attention else 0,
        "n_head": getattr(mcfg, "n_head", 0) if has_attention else 0,
        "block_size": mcfg.block_size, "vocab_size": tokenizer.vocab_size, "max_tokens_cap": cfg.max_tokens_cap,
        "max_n": cfg.max_n, "max_logprobs": MAX_LOGPROBS, "auth": key is not None,
    }

    def error_response(e: ApiError) -> Response:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def check_auth(request) -> None:
        if key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ApiError(401, ("Incorrect API key provided" if got else "You didn't provide an API key")
                           + ": send 'Authorization: Bearer <key>'", code="invalid_api_key")

    # ---- endpoints ----

    async def playground(request):
        page = PLAYGROUND.read_text(encoding="utf-8").replace(_DATA_MARKER, _json_for_script(info), 1)
        return HTMLResponse(page)

    async def health(request):
        return JSONResponse({"status": "ok", "model": model_id, "engine": engine.stats()})

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "minigpt",
                "model_type": model_type, "context_length": mcfg.block_size}

    async def models(request):
        check_auth(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request):
        check_auth(request)
        if request.path_params["model"] != model_id:
            raise ApiError(404, f"The model '{request.path_params['model'][:100]}' does not exist", param="model",
                           code="model_not_found")
        return JSONResponse(model_card())

    async def attention(request):
        check_auth(request)
        body = await _read_json(request, cfg.max_body_bytes)
        if not isinstance(body, dict) or set(body) - {"model", "ids", "layer"}:
            raise _bad('the body is {"ids": [token ids], "layer": n} (and optionally "model")')
        if body.get("model", model_id) != model_id:
            raise ApiError(404, f"The model '{str(body.get('model'))[:100]}' does not exist", param="model",
                           code="model_not_found")
        if not has_attention:
            raise ApiError(422, f"this model ({model_type}) has no attention to show: attention maps need a GPT checkpoint",
                           code="no_attention")
        ids, layer = body.get("ids"), body.get("layer", 0)
        if not (isinstance(ids, list) and ids and all(_is_int(t) and 0 <= t < tokenizer.vocab_size for t in ids)):
            raise _bad(f"ids must be a non-empty list of token ids in 0..{tokenizer.vocab_size - 1}", "ids")
        if len(ids) > cfg.max_prompt_tokens + cfg.max_tokens_cap:
            raise _bad("ids is longer than a prompt and its completion can be", "ids")
        if not (_is_int(layer) and 0 <= layer < info["n_layer"]):
            raise _bad(f"layer must be a whole number in 0..{info['n_layer'] - 1}", "layer")
        out = await run_in_threadpool(attention_rows, model, ids, layer)
        out["tokens"] = [tokenizer.token_str(i) for i in out["ids"]]
        out["n_layer"] = info["n_layer"]
        return JSONResponse(out)

    async def completions(request):
        check_auth(request)
        body = await _read_json(request, cfg.max_body_bytes)
        req = parse_completion_request(body, model_id=model_id, tokenizer=tokenizer, cfg=cfg)
        job = _Job(asyncio.get_running_loop())
        scores = {}
        if req.echo and req.logprobs is not None:
            for p in {tuple(p) for p in req.prompts}:
                scores[p] = await run_in_threadpool(prompt_logprobs, model, list(p), req.logprobs)
        for i, (ids, text) in enumerate(zip(req.prompts, req.prompt_texts)):
            for _ in range(req.n):
                job.choices.append(_Choice(job, len(job.choices), ids, req, tokenizer, len(text) if req.echo else 0))
        if req.max_tokens > 0:
            try:
                engine.submit(job)
            except Overloaded:
                raise ApiError(503, "The server is busy: its queue is full. Retry shortly.", code="overloaded",
                               headers={"Retry-After": "1"}) from None
        else:
            for c in job.choices:
                c.text.finish("length")
                c.finish_reason = "length"
        n_prompt = sum(len(p) for p in req.prompts)
        if req.stream:
            return _EventStream(_stream(req, job, scores, n_prompt), on_close=lambda: engine.cancel(job))
        return await _whole(request, req, job, scores, n_prompt)

    # ---- building responses ----

    def logprobs_of(c: _Choice, lo: int, hi: int) -> dict:
        """OpenAI's logprobs object for tokens lo..hi-1 of a choice (candidates the die
        could not pick, probability 0, are left out of top_logprobs)."""
        tops = c.top_ids[lo:hi] or [[]] * (hi - lo)
        probs = c.top_probs[lo:hi] or [[]] * (hi - lo)
        return {
            "tokens": [tokenizer.token_str(t) for t in c.tokens[lo:hi]],
            "token_logprobs": [round(x, 6) for x in c.logprobs[lo:hi]],
            "top_logprobs": [{tokenizer.token_str(i): round(math.log(p), 6) for i, p in zip(ti, tp) if p > 0}
                             for ti, tp in zip(tops, probs)],
            "text_offset": c.offsets[lo:hi],
        }

    def prompt_part(c: _Choice, scores) -> dict:
        """The echoed prompt's logprobs (under the model) for a choice."""
        ids, text = c.prompt_ids, c.req.prompt_texts[c.index // c.req.n]
        lps, tops = scores[tuple(ids)]
        offsets, pos = [], 0
        for t in ids:  # where each prompt token starts in the prompt's text
            offsets.append(min(pos, len(text)))
            pos += len(tokenizer.token_bytes(t).decode("utf-8", errors="replace"))
        return {"tokens": [tokenizer.token_str(t) for t in ids], "token_logprobs": [None if x is None else round(x, 6) for x in lps],
                "top_logprobs": [None if d is None else {tokenizer.token_str(i): round(v, 6) for i, v in d.items()} for d in tops]
                if c.req.logprobs else None, "text_offset": offsets}

    def die_of(c: _Choice, lo: int, hi: int, first: bool) -> dict:
        """minigpt's "die" extension: ids, readable tokens, each die's top faces and entropy."""
        d = {"token_ids": c.tokens[lo:hi], "tokens": [tokenizer.token_str(t) for t in c.tokens[lo:hi]],
             "top_ids": c.top_ids[lo:hi], "top_tokens": [[tokenizer.token_str(t) for t in ti] for ti in c.top_ids[lo:hi]],
             "top_probs": [[round(p, 7) for p in ps] for ps in c.top_probs[lo:hi]],
             "entropy": [round(h, 6) for h in c.entropy[lo:hi]]}
        if first:
            d["prompt_ids"] = c.prompt_ids
            d["prompt_tokens"] = [tokenizer.token_str(t) for t in c.prompt_ids]
        return d

    def usage(job: _Job, n_prompt: int) -> dict:
        done = sum(len(c.tokens) for c in job.choices)
        return {"prompt_tokens": n_prompt, "completion_tokens": done, "total_tokens": n_prompt + done}

    def envelope(job: _Job, choices: list, **extra) -> dict:
        return {"id": job.id, "object": "text_completion", "created": int(time.time()), "model": model_id,
                "choices": choices, **extra}

    async def _whole(request, req: CompletionRequest, job: _Job, scores, n_prompt: int):
        pending = {c.index for c in job.choices if c.finish_reason is None}
        watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
        try:
            while pending:
                getter = asyncio.ensure_future(job.events.get())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    engine.cancel(job)  # the client went away: nobody will read the answer
                    return Response(status_code=499)
                event = getter.result()
                if event[0] == "error":
                    raise event[1]
                _, c, _, _, done = event
                if done:
                    pending.discard(c.index)
        finally:
            watcher.cancel()
        choices = []
        for c in job.choices:
            text = (c.req.prompt_texts[c.index // req.n] if req.echo else "") + c.text.text
            lp = None
            if req.logprobs is not None:
                lp = logprobs_of(c, 0, len(c.tokens))
                if req.echo:
                    pp = prompt_part(c, scores)
                    lp = {k: pp[k] + lp[k] if lp[k] is not None else None for k in lp}
            choice = {"text": text, "index": c.index, "logprobs": lp, "finish_reason": c.finish_reason}
            if req.die:
                choice["die"] = die_of(c, 0, len(c.tokens), True)
            choices.append(choice)
        return JSONResponse(envelope(job, choices, usage=usage(job, n_prompt)))

    async def _stream(req: CompletionRequest, job: _Job, scores, n_prompt: int):
        pending = {c.index for c in job.choices if c.finish_reason is None}
        for c in job.choices:  # the echoed prompt, and the die's prompt ids, come first
            if req.echo or req.die or c.finish_reason is not None:
                choice = {"text": c.req.prompt_texts[c.index // req.n] if req.echo else "", "index": c.index,
                          "logprobs": prompt_part(c, scores) if req.echo and req.logprobs is not None else None,
                          "finish_reason": c.finish_reason}
                if req.die:
                    choice["die"] = die_of(c, 0, 0, True)
                yield _sse(envelope(job, [choice]))
        while pending:
            event = await job.events.get()
            if event[0] == "error":
                yield _sse(event[1].body())
                break
            _, c, i, piece, done = event
            choice = {"text": piece, "index": c.index,
                      "logprobs": logprobs_of(c, i, i + 1) if req.logprobs is not None else None,
                      "finish_reason": c.finish_reason if done else None}
            if req.die:
                choice["die"] = die_of(c, i, i + 1, False)
            yield _sse(envelope(job, [choice]))
            if done:
                pending.discard(c.index)
        else:
            if req.include_usage:
                yield _sse(envelope(job, [], usage=usage(job, n_prompt)))
        yield "data: [DONE]\n\n"

    # ---- errors ----

    async def on_api_error(request, e: ApiError):
        return error_response(e)

    async def on_http_error(request, e: HTTPException):
        if e.status_code == 404:
            return error_response(ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"))
        if e.status_code == 405:
            return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                           code="method_not_allowed", type="invalid_request_error"))
        return error_response(ApiError(e.status_code, str(e.detail)))

    async def on_crash(request, e: Exception):  # a bug: say so, keep the traceback in the server's log only
        traceback.print_exception(e, file=sys.stderr)
        return error_response(ApiError(500, "internal server error", code="internal_error"))

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = Starlette(
        routes=[
            Route("/", playground), Route("/health", health), Route("/v1/models", models),
            Route("/v1/models/{model:path}", one_model), Route("/v1/completions", completions, methods=["POST"]),
            Route("/minigpt/attention", attention, methods=["POST"]),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash},
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.info = info
    return app


# ---- start-up ----------------------------------------------------------------------------


def _need_extra():
    try:  # the optional serve extra
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise MiniGPTError("minigpt serve needs Starlette and uvicorn: pip install 'minigpt[serve]'") from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) (port 0: any free one); uvicorn listens on it. A port
    in use or an address this machine does not have is a one-line MiniGPTError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MiniGPTError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "the port is in use" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
        raise MiniGPTError(f"cannot listen on {host}:{port}: {why} (choose another with --port)") from None
    sock.set_inheritable(True)
    return sock


def run_server(cfg: ServeConfig) -> int:
    """`minigpt serve`: load the checkpoint once, serve until Ctrl-C, return the exit code."""
    uvicorn = _need_extra()
    cfg.check()
    from .inference import load_for_inference  # lazily: torch's model loading only once the extra is there

    sock = bind(cfg.host, cfg.port)
    try:
        ckpt, device = load_for_inference(cfg.checkpoint, cfg.device, cfg.dtype, quantize=cfg.quantize)
        if ckpt.tokenizer is None:
            raise MiniGPTError(f"{ckpt.path}: no tokenizer.json, so text cannot be turned into ids")
        model_id = Path(os.path.abspath(cfg.checkpoint)).name or "minigpt"
        app = create_app(ckpt.model, ckpt.tokenizer, cfg, model_id=model_id, model_type=ckpt.model_type)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    warning = exposure_warning(cfg.host, cfg.api_key)
    if warning:
        print(f"minigpt serve: warning: {warning}", file=sys.stderr)
    print(f"minigpt serve: {model_id} ({ckpt.model_type}, {device}) on http://{shown}:{port}/ "
          f"(playground at /, API at /v1; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                           lifespan="on"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for
        pass
    finally:
        sock.close()
    print("minigpt serve: stopped", file=sys.stderr, flush=True)
    return 0
