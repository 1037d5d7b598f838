"""The OpenAI protocol, declared once: the request bodies as pydantic models (strict types,
unknown fields refused, as vLLM's `protocol.py`), and the errors in OpenAI's shape.

A refusal names the field it is about, taken from where validation failed (pydantic's
`loc`, or `ConfigError.field`), never from the wording of a message. The sampling fields
(temperature, top_k, ...) are not written here: they are `SamplingParams`' fields, read
with their types, defaults and bounds (see sampling.py), so the API, the library and the
command line cannot disagree.

    >>> parse_completion_request({"model": "m", "prompt": "hi", "top_p": 2}, model_id="m", tokenizer=tok, cfg=cfg)
    Traceback (most recent call last):
    ApiError: top_p: must be in (0, 1] (1 = off), got 2
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from ..completion import encode_prompt
from ..errors import ConfigError
from ..lens import LENS_TOP_K
from ..sampling import SamplingParams, Setting, settings

MAX_LOGPROBS = 20  # top candidates per token a request may ask for (OpenAI allows 5, vLLM 20)
MAX_STOPS = 4  # stop strings per request, as OpenAI
MAX_SEED = 2**63 - 1  # torch takes seeds in [0, 2^63)


# ---- errors: OpenAI's shape ------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as OpenAI answers them:
    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}
        self.type = type or {401: "authentication_error", 404: "not_found_error", 503: "server_error"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400: the request is wrong."""
    return ApiError(400, message, param=param, code=code)


def model_not_found(model: str, model_id: str | None = None) -> ApiError:
    served = f"; this server serves '{model_id}'" if model_id else ""
    return ApiError(404, f"The model '{model[:100]}' does not exist{served}", param="model", code="model_not_found")


# ---- the body: bytes -> JSON -------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")  # Python's json would otherwise accept NaN and Infinity


def decode_json(body: bytes) -> Any:
    """The request body as JSON, or a 400: not UTF-8, not JSON, NaN/Infinity, or nested too
    deep for the parser (Python's json recurses; a RecursionError is bad input here, not a bug)."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"We could not parse the JSON body of your request ({str(e)[:200]})", code="invalid_json") from None
    except RecursionError:
        raise bad("We could not parse the JSON body of your request (nested too deeply)", code="invalid_json") from None


# ---- the request models --------------------------------------------------------------------------


def _unicode(s: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"), which are not text: no tokenizer or
    UTF-8 encoder takes them."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("unicode", "must be valid Unicode text (it holds a lone surrogate)") from None
    return s


Text = Annotated[str, AfterValidator(_unicode)]
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _sampling_field(s: Setting):
    """A request field from a sampling setting: its type, neutral default and bounds."""

    def check(v):
        problem = s.problem(v)
        if problem:
            raise PydanticCustomError("setting", "{problem}", {"problem": problem})
        return v

    bounds = {"exclusiveMinimum" if s.lo_open else "minimum": s.lo} | ({"maximum": s.hi} if s.hi != math.inf else {})
    return Annotated[s.type, AfterValidator(check)], Field(s.neutral, description=s.help, json_schema_extra=bounds)


# temperature, top_k, top_p, min_p, repetition_penalty: SamplingParams' fields.
SamplingFields = create_model("SamplingFields", __config__=_STRICT, **{s.name: _sampling_field(s) for s in settings()})


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class CompletionBody(SamplingFields):
    """POST /v1/completions, as OpenAI's completions endpoint takes it (plus minigpt's `die`).
    Bounds that depend on the server's flags (max_tokens, n, prompt length) are checked in
    `parse_completion_request`."""

    model: Text
    # OpenAI's four forms: a string, a list of strings, a list of token ids, a list of lists of ids.
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int = 16
    n: int = 1
    best_of: int | None = None  # accepted only equal to n
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    # Accepted only at their neutral value (minigpt has no such transform):
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: Text | None = None
    die: bool = False  # minigpt's own: each token's die (top faces, entropy) and the prompt's ids


class AttentionBody(BaseModel):
    """POST /minigpt/attention: every head's weights in one layer over `ids`."""

    model_config = _STRICT
    model: Text | None = None
    ids: list[int]
    layer: int = 0


class LensBody(BaseModel):
    """POST /minigpt/lens: what each layer would predict at one position (the logit lens),
    of token `ids` or of `prompt`'s tokens (one of the two). `position` counts in those
    tokens (negative: from the end; default the last); `lens_target` checks it."""

    model_config = _STRICT
    model: Text | None = None
    ids: list[int] | None = None
    prompt: Text | None = None
    position: int | None = None
    top_k: int = Field(LENS_TOP_K, ge=1, le=MAX_LOGPROBS, description="predictions shown per layer")


# What a refusal says, by field, where pydantic's own words would not help.
_HINTS = {
    "model": "model is required: a string, the id /v1/models lists",
    "prompt": "prompt must be a string, a list of strings, a list of token ids or a list of lists of ids",
    "stop": f"stop must be a string or a list of at most {MAX_STOPS} strings",
    "stream_options": 'stream_options takes only {"include_usage": true|false}',
}


def validation_error(e: ValidationError, hints: dict[str, str] | None = None) -> ApiError:
    """A 400 from pydantic's first complaint, naming the field where it failed."""
    err = e.errors(include_url=False, include_input=False)[0]
    loc = err["loc"]
    param = str(loc[0]) if loc else None
    if err["type"] == "extra_forbidden":
        return bad(f"Unrecognized request argument supplied: {param[:100]}", param, "unknown_parameter")
    hint = (hints or _HINTS).get(param) if err["type"] not in ("setting", "unicode") else None
    return bad(hint or (f"{param}: {err['msg']}" if param else err["msg"]), param)


def validate(model: type[BaseModel], body: Any, hints: dict[str, str] | None = None) -> BaseModel:
    """`model` from a decoded JSON body; any problem is a 400 naming its field. An explicit
    null means "the default", as it does to OpenAI."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    try:
        return model.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:
        raise validation_error(e, hints) from None


# ---- the checked request ------------------------------------------------------------------------


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


def _unsupported(name: str, hint: str = "") -> ApiError:
    return bad(f"{name} is not supported by minigpt" + (f" ({hint})" if hint else ""), name, "unsupported_parameter")


def parse_completion_request(body: Any, *, model_id: str, tokenizer, cfg) -> CompletionRequest:
    """A decoded JSON body checked against `CompletionBody` and the server's caps (`cfg`, a
    `ServeConfig`); any problem is an `ApiError` naming the field."""
    req: CompletionBody = validate(CompletionBody, body)
    if req.model != model_id:
        raise model_not_found(req.model, model_id)
    if req.frequency_penalty != 0:
        raise _unsupported("frequency_penalty", "use repetition_penalty")
    if req.presence_penalty != 0:
        raise _unsupported("presence_penalty", "use repetition_penalty")
    if req.logit_bias:
        raise _unsupported("logit_bias")
    if req.suffix is not None:
        raise _unsupported("suffix")
    if not 1 <= req.n <= cfg.max_n:
        raise bad(f"n must be a whole number in 1..{cfg.max_n}, got {req.n if abs(req.n) < 10**20 else 'more'}", "n")
    if req.best_of not in (None, req.n):
        raise _unsupported("best_of", "leave it out, or equal to n")
    if not 0 <= req.max_tokens <= cfg.max_tokens_cap:
        raise bad(f"max_tokens must be a whole number in 0..{cfg.max_tokens_cap} (the server's cap)", "max_tokens")
    prompts, texts = _prompts(req.prompt, tokenizer, cfg)
    if len(prompts) * req.n > cfg.max_batch:
        raise bad(
            f"this request asks for {len(prompts) * req.n} completions ({len(prompts)} prompts x n={req.n}); "
            f"the server takes at most {cfg.max_batch} per request",
            "n",
        )
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stops) > MAX_STOPS:
        raise bad(_HINTS["stop"], "stop")
    if any(s == "" for s in stops):
        raise bad("stop strings must not be empty", "stop")
    if req.stream_options is not None and not req.stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    params = SamplingParams(**{s.name: getattr(req, s.name) for s in settings()})  # already checked: cannot fail
    return CompletionRequest(
        prompts=prompts,
        prompt_texts=texts,
        params=params,
        max_tokens=req.max_tokens,
        n=req.n,
        stop=stops,
        seed=req.seed,
        echo=req.echo,
        logprobs=req.logprobs,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        die=req.die,
    )


def _prompts(prompt, tokenizer, cfg) -> tuple[list[list[int]], list[str]]:
    """Each prompt as ids and as text. An empty string starts a fresh document (<|endoftext|>)."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise bad("prompt is an empty list: give at least one prompt", "prompt")
    V = tokenizer.vocab_size
    ids_list, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            if len(p) > 64 * cfg.max_prompt_tokens:  # too long to be within the cap: don't tokenize it
                raise bad(
                    f"a prompt is longer than the server's cap of {cfg.max_prompt_tokens} tokens",
                    "prompt",
                    "context_length_exceeded",
                )
            try:
                ids, text = encode_prompt(tokenizer, p), p
            except ConfigError:  # the one refusal encode_prompt has: empty, and no <|endoftext|> to start from
                raise bad(
                    "prompt is empty and this model's tokenizer has no <|endoftext|> to start a document "
                    "from: give some text",
                    "prompt",
                ) from None
        elif p:
            bad_id = next((t for t in p if not 0 <= t < V), None)
            if bad_id is not None:
                shown = str(bad_id) if abs(bad_id) < 10**20 else str(bad_id)[:12] + "..."
                raise bad(f"token id {shown} is out of range for this model's vocabulary of {V}", "prompt")
            ids, text = list(p), tokenizer.decode(p)
        else:
            raise bad("each prompt must be a string or a non-empty list of token ids", "prompt")
        if len(ids) > cfg.max_prompt_tokens:
            raise bad(
                f"a prompt has {len(ids)} tokens; the server's cap is {cfg.max_prompt_tokens}",
                "prompt",
                "context_length_exceeded",
            )
        ids_list.append(ids)
        texts.append(text)
    return ids_list, texts


def lens_target(body: LensBody, tokenizer, cfg, block_size: int) -> tuple[list[int], int]:
    """The ids a lens request reads and the position in them (0..T-1), or a 400 naming the
    field: ids or prompt, not both; ids in the vocabulary; at most a prompt and its completion
    long (what the playground can hold); a position the model's context still holds."""
    if body.ids is None and body.prompt is None:
        raise bad("ids (a list of token ids) or prompt (text) is required", "ids")
    if body.ids is not None and body.prompt is not None:
        raise bad("give ids or prompt, not both", "prompt")
    cap = cfg.max_prompt_tokens + cfg.max_tokens_cap
    if body.prompt is not None:
        if len(body.prompt) > 64 * cap:  # too long to be within the cap: don't tokenize it
            raise bad(f"prompt is longer than the server's cap of {cap} tokens", "prompt", "context_length_exceeded")
        ids, field = tokenizer.encode(body.prompt), "prompt"
        if not ids:
            raise bad("prompt is empty: give at least one token of text to look at", "prompt")
    else:
        V, ids, field = tokenizer.vocab_size, body.ids, "ids"
        if not (ids and all(0 <= t < V for t in ids)):
            raise bad(f"ids must be a non-empty list of token ids in 0..{V - 1}", "ids")
    T = len(ids)
    if T > cap:
        raise bad(f"{field} has {T} tokens; the server's cap is {cap}", field, "context_length_exceeded")
    p = T - 1 if body.position is None else body.position
    if not -T <= p < T:
        raise bad(f"position must be a whole number in 0..{T - 1} (or -{T}..-1 from the end)", "position")
    p %= T
    if p < T - block_size:  # the model reads the last block_size tokens: this one is not among them
        raise bad(
            f"position {body.position} is outside the model's context: of {T} tokens it reads the last {block_size}",
            "position",
        )
    return ids, p


# ---- the schema -----------------------------------------------------------------------------------


def openapi(model_id: str) -> dict:
    """An OpenAPI 3.1 description of the JSON endpoints, generated from the models above (what
    FastAPI would serve at /openapi.json, without its /docs page, which loads from a CDN)."""
    _, schemas = models_json_schema(
        [(CompletionBody, "validation"), (AttentionBody, "validation"), (LensBody, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    error = {"description": 'an error in OpenAI\'s shape: {"error": {message, type, param, code}}'}

    def post(name: str, summary: str) -> dict:
        return {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                },
                "responses": {"200": {"description": "OK"}, "4XX": error},
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": f"minigpt serve: {model_id}", "version": "1"},
        "paths": {
            "/v1/completions": post("CompletionBody", "OpenAI's completions (streamed with stream: true)"),
            "/minigpt/attention": post("AttentionBody", "every head's attention in one layer"),
            "/minigpt/lens": post("LensBody", "what each layer would predict at one position (the logit lens)"),
            "/v1/models": {"get": {"summary": "the one model served", "responses": {"200": {"description": "OK"}}}},
            "/health": {"get": {"summary": "status and engine counters", "responses": {"200": {"description": "OK"}}}},
        },
        "components": {"schemas": schemas.get("$defs", {})},
    }
