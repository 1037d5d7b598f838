"""`minigpt serve`: an OpenAI-compatible completions API and a live playground, over one checkpoint.

    minigpt serve --checkpoint out/shakespeare            # http://127.0.0.1:8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
    client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=40, seed=1).choices[0].text

Six modules, from the socket inwards (each one place for its concept):

    config.py     ServeConfig: the server's flags and caps
    server.py     the socket, uvicorn (with a deadline for headers), run_server
    wire.py       before the routes: the Host allow-list, relative redirects, JSON bodies
                  (Content-Type, size cap, deadline); server-sent events out
    app.py        the routes (Starlette) and the plain functions that build each response
    protocol.py   the OpenAI request bodies declared once (pydantic, strict, unknown fields
                  refused) and every refusal in OpenAI's error shape, naming its field
    engine.py     continuous batching over ids: one thread, one `sampling.Batch`; one
                  row's failure fails that row's request only

What is deterministic: each choice rolls with its own generator, seeded `seed + j` for
the j-th choice of a request (choices are numbered prompt by prompt, n per prompt). A
request with one prompt, n = 1 and seed s therefore gets the text
`complete(model, tokenizer, prompt, seed=s, ...)` gives with the same settings, alone or
batched with any other requests (up to float rounding in batched matrix products, which
can only matter where two faces of the die are tied to ~1e-6).

Log-probabilities: a generated token's are under its die (after temperature, top-k,
top-p, min-p and repetition penalty: what was rolled); an echoed prompt's are under the
model's own distribution (nothing was rolled for them), the first token's being null.

Only server.py loads without the serve extra (so `minigpt serve` can say how to install
it); the other names are imported on first use.
"""

from __future__ import annotations

from ..errors import MiniGPTError
from .config import ServeConfig
from .server import bind, exposure_warning, run_server

__all__ = [
    "ApiError",
    "Engine",
    "MiniGPTError",
    "ServeConfig",
    "bind",
    "create_app",
    "exposure_warning",
    "parse_completion_request",
    "run_server",
]

# name -> module, imported lazily on first use: they need the serve extra (pydantic, Starlette).
_LAZY = {
    "create_app": "app",
    "Engine": "engine",
    "Overloaded": "engine",
    "ApiError": "protocol",
    "CompletionRequest": "protocol",
    "parse_completion_request": "protocol",
    "MAX_LOGPROBS": "protocol",
    "MAX_STOPS": "protocol",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # lazily: the serve extra loads only when one of these is asked for

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
