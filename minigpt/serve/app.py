"""The HTTP app: routes only. Each route checks the caller, reads the body into the
protocol's models (protocol.py), hands work to the engine (engine.py) or the model, and
answers with a response built by the plain functions below (testable without a server).
What the routes share (model, tokenizer, engine, caps) is one `Served` object on
`app.state.served`.

    GET  /                      the playground (one self-contained page)
    GET  /health                {"status": "ok", "engine": stats}
    GET  /openapi.json          the JSON endpoints' schema, generated from protocol.py's models
    GET  /v1/models[/{id}]      the one model served
    POST /v1/completions        OpenAI's completions, streamed or whole
    POST /minigpt/attention     every head's attention in one layer (the playground's)
    POST /minigpt/lens          what each layer would predict at one position (the playground's pinned token)

Before any route, `wire.Guard` checks the Host header and makes redirects relative; JSON
bodies are read by `wire.read_json` (Content-Type, size cap, deadline).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import sys
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import MiniGPTError
from ..lens import lens_json
from ..sampling import settings
from .config import ServeConfig
from .engine import Choice, Engine, Job, Overloaded, attention_rows, prompt_logprobs
from .protocol import (
    MAX_LOGPROBS,
    ApiError,
    AttentionBody,
    CompletionRequest,
    LensBody,
    bad,
    lens_target,
    model_not_found,
    openapi,
    parse_completion_request,
    validate,
)
from .wire import EventStream, Guard, read_json, wait_for_disconnect

PLAYGROUND = Path(__file__).with_name("playground.html")
_DATA_MARKER = "/*MINIGPT_DATA*/"


# ---- building responses (plain functions) -------------------------------------------------------


def logprobs_of(c: Choice, lo: int, hi: int, tokenizer) -> dict:
    """OpenAI's logprobs object for tokens lo..hi-1 of a choice (candidates the die could
    not pick, probability 0, are left out of top_logprobs)."""
    tops = c.top_ids[lo:hi] or [[]] * (hi - lo)
    probs = c.top_probs[lo:hi] or [[]] * (hi - lo)
    return {
        "tokens": [tokenizer.token_str(t) for t in c.tokens[lo:hi]],
        "token_logprobs": [round(x, 6) for x in c.logprobs[lo:hi]],
        "top_logprobs": [
            {tokenizer.token_str(i): round(math.log(p), 6) for i, p in zip(ti, tp) if p > 0}
            for ti, tp in zip(tops, probs)
        ],
        "text_offset": c.offsets[lo:hi],
    }


def prompt_part(c: Choice, scores: dict, tokenizer) -> dict:
    """The echoed prompt's logprobs (under the model) for a choice; the first token has none."""
    ids, text = c.prompt_ids, c.req.prompt_texts[c.index // c.req.n]
    lps, tops = scores[tuple(ids)]
    offsets, pos = [], 0
    for t in ids:  # where each prompt token starts in the prompt's text
        offsets.append(min(pos, len(text)))
        pos += len(tokenizer.token_bytes(t).decode("utf-8", errors="replace"))
    return {
        "tokens": [tokenizer.token_str(t) for t in ids],
        "token_logprobs": [None if x is None else round(x, 6) for x in lps],
        "top_logprobs": [
            None if d is None else {tokenizer.token_str(i): round(v, 6) for i, v in d.items()} for d in tops
        ],
        "text_offset": offsets,
    }


def die_of(c: Choice, lo: int, hi: int, first: bool, tokenizer) -> dict:
    """minigpt's "die" extension: ids, readable tokens, each die's top faces and entropy."""
    d = {
        "token_ids": c.tokens[lo:hi],
        "tokens": [tokenizer.token_str(t) for t in c.tokens[lo:hi]],
        "top_ids": c.top_ids[lo:hi],
        "top_tokens": [[tokenizer.token_str(t) for t in ti] for ti in c.top_ids[lo:hi]],
        "top_probs": [[round(p, 7) for p in ps] for ps in c.top_probs[lo:hi]],
        "entropy": [round(h, 6) for h in c.entropy[lo:hi]],
    }
    if first:
        d["prompt_ids"] = c.prompt_ids
        d["prompt_tokens"] = [tokenizer.token_str(t) for t in c.prompt_ids]
    return d


def usage(job: Job, n_prompt: int) -> dict:
    done = sum(len(c.tokens) for c in job.choices)
    return {"prompt_tokens": n_prompt, "completion_tokens": done, "total_tokens": n_prompt + done}


def envelope(job: Job, model_id: str, choices: list, **extra) -> dict:
    return {
        "id": job.id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        **extra,
    }


def whole_choice(c: Choice, req: CompletionRequest, scores: dict, tokenizer) -> dict:
    """One finished choice of a non-streamed answer."""
    lp = None
    if req.logprobs is not None:
        lp = logprobs_of(c, 0, len(c.tokens), tokenizer)
        if req.echo:
            pp = prompt_part(c, scores, tokenizer)
            lp = {k: pp[k] + lp[k] for k in lp}
    choice = {
        "text": (req.prompt_texts[c.index // req.n] if req.echo else "") + c.text.text,
        "index": c.index,
        "logprobs": lp,
        "finish_reason": c.finish_reason,
    }
    if req.die:
        choice["die"] = die_of(c, 0, len(c.tokens), True, tokenizer)
    return choice


def sse(obj) -> str:
    return "data: " + json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n\n"


def json_for_script(obj) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' as \\u escapes."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---- what the routes share ------------------------------------------------------------------------


@dataclass
class Served:
    """The model behind the routes, and everything about it they answer with."""

    model: Any
    tokenizer: Any
    cfg: ServeConfig
    model_id: str
    model_type: str
    engine: Engine
    info: dict  # what the playground is told (its page embeds it)
    card: dict  # /v1/models' entry
    schema: dict = field(default_factory=dict)

    def check_auth(self, request) -> None:
        key = self.cfg.api_key
        if not key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                ("Incorrect API key provided" if got else "You didn't provide an API key")
                + ": send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    async def body_of(self, request):
        """The caller checked, then its JSON body."""
        self.check_auth(request)
        return await read_json(request, self.cfg.max_body_bytes, self.cfg.body_timeout)


def _served(request) -> Served:
    return request.app.state.served


# ---- routes ----------------------------------------------------------------------------------------


async def playground(request):
    page = PLAYGROUND.read_text(encoding="utf-8")
    return HTMLResponse(page.replace(_DATA_MARKER, json_for_script(_served(request).info), 1))


async def openapi_json(request):
    return JSONResponse(_served(request).schema)


async def health(request):
    s = _served(request)
    return JSONResponse({"status": "ok", "model": s.model_id, "engine": s.engine.stats()})


async def models(request):
    s = _served(request)
    s.check_auth(request)
    return JSONResponse({"object": "list", "data": [s.card]})


async def one_model(request):
    s = _served(request)
    s.check_auth(request)
    if request.path_params["model"] != s.model_id:
        raise model_not_found(request.path_params["model"].encode("utf-8", "replace").decode())
    return JSONResponse(s.card)


async def attention(request):
    s = _served(request)
    body: AttentionBody = validate(
        AttentionBody, await s.body_of(request), {"ids": "ids must be a non-empty list of token ids"}
    )
    if body.model not in (None, s.model_id):
        raise model_not_found(body.model)
    if not s.info["has_attention"]:
        raise ApiError(
            422,
            f"this model ({s.model_type}) has no attention to show: attention maps need a GPT checkpoint",
            code="no_attention",
        )
    V, n_layer = s.tokenizer.vocab_size, s.info["n_layer"]
    if not (body.ids and all(0 <= t < V for t in body.ids)):
        raise bad(f"ids must be a non-empty list of token ids in 0..{V - 1}", "ids")
    if len(body.ids) > s.cfg.max_prompt_tokens + s.cfg.max_tokens_cap:
        raise bad("ids is longer than a prompt and its completion can be", "ids")
    if not 0 <= body.layer < n_layer:
        raise bad(f"layer must be a whole number in 0..{n_layer - 1}", "layer")
    out = await run_in_threadpool(attention_rows, s.model, body.ids, body.layer)
    out["tokens"] = [s.tokenizer.token_str(i) for i in out["ids"]]
    out["n_layer"] = n_layer
    return JSONResponse(out)


async def lens(request):
    s = _served(request)
    body: LensBody = validate(LensBody, await s.body_of(request), {"ids": "ids must be a list of token ids"})
    if body.model not in (None, s.model_id):
        raise model_not_found(body.model)
    if not s.info["has_attention"]:
        raise ApiError(
            422,
            f"this model ({s.model_type}) has no layers to read: the logit lens needs a GPT checkpoint",
            code="no_layers",
        )
    ids, position = lens_target(body, s.tokenizer, s.cfg, s.info["block_size"])
    try:
        out = await run_in_threadpool(lens_json, s.model, s.tokenizer, ids, position=position, top_k=body.top_k)
    except MiniGPTError as e:  # lens_target checks what lens_json refuses; should one slip by, it is still bad input
        raise bad(str(e)) from None
    return JSONResponse(out)


async def completions(request):
    s = _served(request)
    req = parse_completion_request(await s.body_of(request), model_id=s.model_id, tokenizer=s.tokenizer, cfg=s.cfg)
    job = Job(asyncio.get_running_loop())
    scores = {}
    if req.echo and req.logprobs is not None:
        for p in {tuple(p) for p in req.prompts}:
            scores[p] = await run_in_threadpool(prompt_logprobs, s.model, list(p), req.logprobs)
    for ids, text in zip(req.prompts, req.prompt_texts):
        for _ in range(req.n):
            job.choices.append(Choice(job, len(job.choices), ids, req, s.tokenizer, len(text) if req.echo else 0))
    # Which choices the engine will stream, taken before it starts: it may finish them all
    # before a streamed response's first event is pulled (a short request, a busy machine).
    pending = {c.index for c in job.choices} if req.max_tokens > 0 else set()
    if pending:
        try:
            s.engine.submit(job)
        except Overloaded:
            raise ApiError(
                503,
                "The server is busy: its queue is full. Retry shortly.",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
    else:
        for c in job.choices:
            c.finish_now()
    n_prompt = sum(len(p) for p in req.prompts)
    if req.stream:
        return EventStream(_stream(s, req, job, pending, scores, n_prompt), on_close=lambda: s.engine.cancel(job))
    return await _whole(s, request, req, job, pending, scores, n_prompt)


async def _whole(s: Served, request, req: CompletionRequest, job: Job, pending: set[int], scores, n_prompt: int):
    """Wait for every choice in `pending` (or for the client to go away), then answer in one piece."""
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        while pending:
            getter = asyncio.ensure_future(job.events.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                s.engine.cancel(job)  # the client went away: nobody will read the answer
                return Response(status_code=499)
            event = getter.result()
            if event[0] == "error":
                raise event[1]
            if event[4]:  # done
                pending.discard(event[1].index)
    finally:
        watcher.cancel()
    choices = [whole_choice(c, req, scores, s.tokenizer) for c in job.choices]
    return JSONResponse(envelope(job, s.model_id, choices, usage=usage(job, n_prompt)))


async def _stream(s: Served, req: CompletionRequest, job: Job, pending: set[int], scores, n_prompt: int):
    """Server-sent events: the echoed prompt (and the die's prompt ids) first, then one
    event per token of each choice in `pending`, an error event if the engine fails the
    request, then [DONE]."""
    tok = s.tokenizer
    for c in job.choices:
        if req.echo or req.die or c.index not in pending:
            choice = {
                "text": req.prompt_texts[c.index // req.n] if req.echo else "",
                "index": c.index,
                "logprobs": prompt_part(c, scores, tok) if req.echo and req.logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            if req.die:
                choice["die"] = die_of(c, 0, 0, True, tok)
            yield sse(envelope(job, s.model_id, [choice]))
    while pending:
        event = await job.events.get()
        if event[0] == "error":
            yield sse(event[1].body())
            break
        _, c, i, piece, done = event
        choice = {
            "text": piece,
            "index": c.index,
            "logprobs": logprobs_of(c, i, i + 1, tok) if req.logprobs is not None else None,
            "finish_reason": c.finish_reason if done else None,
        }
        if req.die:
            choice["die"] = die_of(c, i, i + 1, False, tok)
        yield sse(envelope(job, s.model_id, [choice]))
        if done:
            pending.discard(c.index)
    else:
        if req.include_usage:
            yield sse(envelope(job, s.model_id, [], usage=usage(job, n_prompt)))
    yield "data: [DONE]\n\n"


ROUTES = [
    Route("/", playground),
    Route("/health", health),
    Route("/openapi.json", openapi_json),
    Route("/v1/models", models),
    Route("/v1/models/{model:path}", one_model),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/minigpt/attention", attention, methods=["POST"]),
    Route("/minigpt/lens", lens, methods=["POST"]),
]


# ---- the app ---------------------------------------------------------------------------------------


def create_app(
    model, tokenizer, cfg: ServeConfig | None = None, *, model_id: str = "minigpt", model_type: str | None = None
):
    """The Starlette app: the API and the playground over `model` (already loaded). The
    engine starts and stops with the app (its lifespan); `app.state.engine` is it.

    >>> app = create_app(model, tokenizer, ServeConfig(), model_id="shakespeare")   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                                # doctest: +SKIP
    """
    cfg = cfg or ServeConfig()
    cfg.check()
    model.eval()  # dropout off: a seed must give the same text every time
    model_type = model_type or getattr(model, "model_type", type(model).__name__)
    has_attention = bool(getattr(model, "has_attention", False))  # models.LanguageModel declares it
    engine = Engine(model, vocab_limit=tokenizer.vocab_size, max_batch=cfg.max_batch, queue_size=cfg.queue_size)
    mcfg = model.config
    info = {
        "model": model_id,
        "model_type": model_type,
        "has_attention": has_attention,
        "n_layer": getattr(mcfg, "n_layer", 0) if has_attention else 0,
        "n_head": getattr(mcfg, "n_head", 0) if has_attention else 0,
        "block_size": mcfg.block_size,
        "vocab_size": tokenizer.vocab_size,
        "max_tokens_cap": cfg.max_tokens_cap,
        "max_n": cfg.max_n,
        "max_logprobs": MAX_LOGPROBS,
        "auth": bool(cfg.api_key),
        # The playground starts from `minigpt sample`'s settings, and from an empty prompt
        # (a fresh document), whatever text the model was trained on.
        "sampling": {s.name: s.suggested for s in settings()},
    }
    card = {
        "id": model_id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "minigpt",
        "model_type": model_type,
        "context_length": mcfg.block_size,
    }
    served = Served(model, tokenizer, cfg, model_id, model_type, engine, info, card, openapi(model_id))

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash},
    )
    app.add_middleware(Guard, allowed=cfg.allowed_host_names())
    app.state.served = served
    app.state.engine = engine
    app.state.info = info
    return app


# ---- errors: every one in OpenAI's shape ------------------------------------------------------------


def error_response(e: ApiError) -> Response:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def on_api_error(request, e: ApiError):
    return error_response(e)


async def on_http_error(request, e: HTTPException):
    path = request.url.path.encode("utf-8", "backslashreplace").decode()[:200]
    if e.status_code == 404:
        return error_response(ApiError(404, f"no such endpoint: {request.method} {path}", code="not_found"))
    if e.status_code == 405:
        return error_response(
            ApiError(
                405,
                f"{request.method} is not allowed on {path}",
                code="method_not_allowed",
                type="invalid_request_error",
            )
        )
    return error_response(ApiError(e.status_code, str(e.detail)))


async def on_crash(request, e: Exception):  # a bug: say so, keep the traceback in the server's log only
    traceback.print_exception(e, file=sys.stderr)
    return error_response(ApiError(500, "internal server error", code="internal_error"))
