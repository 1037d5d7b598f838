"""`minigpt serve` against a hostile client: every request that fails to parse or validate
is a 4xx in OpenAI's shape (property-based: arbitrary JSON never gets a 5xx), one poisoned
request fails alone while the others complete with exactly their text, and a web page
cannot drive the server (Host allow-list, JSON content type, relative redirects, slow
clients cut off).

The oracles: `complete()` for every text that must be unharmed, greedy decoding for a
temperature below float32's smallest number, and the HTTP status and error shape the
README promises.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("pydantic")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minigpt.sampling import SamplingParams  # noqa: E402
from minigpt.serve import ServeConfig, bind, create_app  # noqa: E402
from minigpt.serve import app as serve_app  # noqa: E402
from minigpt.serve.server import uvicorn_config  # noqa: E402
from minigpt.serve.wire import host_allowed  # noqa: E402

from .conftest import tiny_gpt  # noqa: E402
from .test_serve import MODEL, alone, wait_until  # noqa: E402

CFG = dict(max_tokens_cap=32, max_n=4, max_prompt_tokens=100, max_batch=8, queue_size=8)


class _Live:
    """uvicorn with `minigpt serve`'s own settings (header deadline included) in a thread."""

    def __init__(self, app, cfg: ServeConfig):
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, cfg, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "the server starts")
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_gpt(vocab_size=tokenizer.vocab_size)


@pytest.fixture(scope="module")
def live(model, tokenizer):
    cfg = ServeConfig(**CFG, header_timeout=0.5, body_timeout=0.5, allowed_hosts=("minigpt.test",))
    app = create_app(model, tokenizer, cfg, model_id=MODEL)
    with _Live(app, cfg) as server:
        server.engine = app.state.engine
        yield server


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def raw(client, body: bytes, path: str = "/v1/completions", **headers):
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def assert_openai_error(r, status: int, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json") and "Traceback" not in r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "\n" not in error["message"]
    if param is not ...:
        assert error["param"] == param, error
    return error


def still_serving(client, model, tokenizer):
    out = client.post("/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4, "seed": 11})
    assert out.status_code == 200 and out.json()["choices"][0]["text"] == alone(model, tokenizer, "ROMEO:", 11, 4).text


# ---- the reproducers, one by one --------------------------------------------------------


@pytest.mark.parametrize(
    "what, body, param",
    [
        ("a list 50,000 deep", b"[" * 50_000, None),
        ("a prompt 3,000 deep", b'{"model": "tiny", "prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}", None),
        (
            "top_k of 10^20",
            b'{"model": "tiny", "prompt": "x", "max_tokens": 5, "top_k": 100000000000000000000}',
            "top_k",
        ),
        (
            "temperature of 10^400",
            b'{"model": "tiny", "prompt": "x", "temperature": 1' + b"0" * 400 + b"}",
            "temperature",
        ),
        ("n of 10^400", b'{"model": "tiny", "prompt": "x", "n": 1' + b"0" * 400 + b"}", "n"),
        ("a lone surrogate in the prompt", b'{"model": "tiny", "prompt": "ab\\ud800"}', "prompt"),
        ("a lone surrogate in a prompt list", b'{"model": "tiny", "prompt": ["ok", "\\udfff"]}', "prompt"),
        ("a lone surrogate in the model", b'{"model": "\\ud800", "prompt": "x"}', "model"),
        ("a lone surrogate in stop", b'{"model": "tiny", "prompt": "x", "stop": "\\ud800"}', "stop"),
        ("a bool for an int", b'{"model": "tiny", "prompt": "x", "top_k": true}', "top_k"),
        ("a string for a float", b'{"model": "tiny", "prompt": "x", "min_p": "0.1"}', "min_p"),
    ],
)
def test_each_reproducer_is_a_400_naming_its_field(client, model, tokenizer, what, body, param):
    assert_openai_error(raw(client, body), 400, param)
    still_serving(client, model, tokenizer)


def test_the_attention_endpoint_refuses_deep_json_too(client):
    assert_openai_error(raw(client, b'{"ids": ' + b"[" * 5000 + b"]" * 5000 + b"}", "/minigpt/attention"), 400, None)
    assert_openai_error(
        raw(client, b'{"ids": [1, 2], "layer": 100000000000000000000}', "/minigpt/attention"), 400, "layer"
    )


def test_echo_with_logprobs_zero_scores_the_prompt(client, model, tokenizer):
    """OpenAI's logprobs=0: each token's own log-probability and no candidates."""
    for stream in (False, True):
        body = {
            "model": MODEL,
            "prompt": "ROMEO: O",
            "max_tokens": 3,
            "seed": 1,
            "echo": True,
            "logprobs": 0,
            "stream": stream,
        }
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        if stream:
            chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            lp = chunks[0]["choices"][0]["logprobs"]
        else:
            lp = r.json()["choices"][0]["logprobs"]
        n_prompt = len(tokenizer.encode("ROMEO: O"))
        assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == n_prompt + (0 if stream else 3)
        assert all(d is None or d == {} for d in lp["top_logprobs"])


@pytest.mark.parametrize("temperature", [1e-40, 1e-46, 5e-324])
def test_a_temperature_below_float32s_smallest_is_greedy_never_nan(client, model, tokenizer, temperature):
    want = alone(model, tokenizer, "ROMEO:", 0, 12, SamplingParams(temperature=0)).text
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 12, "temperature": temperature, "logprobs": 3}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    [c] = r.json()["choices"]  # strict JSON: NaN would not parse
    assert c["text"] == want
    assert all(math.isfinite(x) for x in c["logprobs"]["token_logprobs"])
    streamed = client.post("/v1/completions", json={**body, "stream": True}).text
    assert streamed.endswith("data: [DONE]\n\n")
    assert (
        "".join(
            json.loads(line[6:])["choices"][0]["text"] for line in streamed.splitlines() if line.startswith("data: {")
        )
        == want
    )


def test_an_empty_prompt_without_endoftext_is_a_400(model, tokenizer):
    class NoEot:  # the same tokenizer, but with no <|endoftext|> to start a document from
        eot_id = None

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    app = create_app(model, NoEot(), ServeConfig(**CFG), model_id=MODEL)
    with _Live(app, ServeConfig()) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        error = assert_openai_error(c.post("/v1/completions", json={"model": MODEL, "prompt": ""}), 400, "prompt")
        assert "endoftext" in error["message"] and "--prompt" not in error["message"]
        assert c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2}).status_code == 200


# ---- one request cannot harm another -----------------------------------------------------------


def test_a_poisoned_request_fails_alone_and_the_others_complete_unharmed(live, model, tokenizer, monkeypatch, capfd):
    """A request whose die breaks the step (a validation gap, simulated: its temperature is
    set to a string after the checks) runs beside two others in one batch: it fails with a
    500 of its own; they get exactly the text they get alone."""
    real = serve_app.parse_completion_request

    def poisoning(body, **kw):
        req = real(body, **kw)
        if req.prompt_texts == ["POISON"]:
            req.params.temperature = "poison"  # Dice cannot make a tensor of it: the step raises
        return req

    monkeypatch.setattr(serve_app, "parse_completion_request", poisoning)
    engine = live.engine
    bodies = [
        dict(prompt="ROMEO:", max_tokens=10, seed=1, temperature=0.9),
        dict(prompt="POISON", max_tokens=10, seed=2),
        dict(prompt="JULIET: my love", max_tokens=12, seed=3, temperature=1.2, top_k=30, stream=True),
    ]
    errors_before = engine.stats()["errors"]
    engine.pause()  # all three wait, so they join the batch at the same step
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool, httpx.Client(base_url=live.url, timeout=60) as c:
            futures = [pool.submit(c.post, "/v1/completions", json={"model": MODEL, **b}) for b in bodies]
            wait_until(lambda: engine.stats()["waiting_requests"] == 3, "all three requests wait")
            engine.resume()
            results = [f.result() for f in futures]
    finally:
        engine.resume()
    ok, poisoned, streamed = results
    assert (
        ok.status_code == 200
        and ok.json()["choices"][0]["text"]
        == alone(model, tokenizer, "ROMEO:", 1, 10, SamplingParams(temperature=0.9)).text
    )
    error = assert_openai_error(poisoned, 500, None)
    assert error["code"] == "engine_error"
    text = "".join(
        json.loads(line[6:])["choices"][0]["text"] for line in streamed.text.splitlines() if line.startswith("data: {")
    )
    assert (
        streamed.text.endswith("data: [DONE]\n\n")
        and text == alone(model, tokenizer, "JULIET: my love", 3, 12, SamplingParams(temperature=1.2, top_k=30)).text
    )
    assert engine.stats()["errors"] == errors_before + 1
    assert "Traceback" in capfd.readouterr().err  # the server's log keeps the details


# ---- a web page cannot drive the server ----------------------------------------------------------


def test_host_must_name_the_server(client, live):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    for host in ("evil.example", f"evil.example:{live.port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        error = assert_openai_error(client.post("/v1/completions", json=body, headers={"Host": host}), 403, None)
        assert error["code"] == "host_not_allowed"
        assert client.get("/", headers={"Host": host}).status_code == 403  # the playground too
    for host in (
        f"127.0.0.1:{live.port}",
        f"localhost:{live.port}",
        "[::1]:8000",
        "app.localhost",
        "minigpt.test",
        f"MINIGPT.TEST:{live.port}",
        "10.1.2.3",
    ):
        assert client.post("/v1/completions", json=body, headers={"Host": host}).status_code == 200, host


def test_host_allowed_rules():
    assert host_allowed(None, frozenset())  # HTTP/1.0 without Host: not a browser
    assert host_allowed("anything.example", frozenset({"*"}))
    assert not host_allowed("[::1", frozenset()) and not host_allowed("", frozenset())
    assert ServeConfig(host="gpu-box.lan").allowed_host_names() == {"gpu-box.lan"}
    assert ServeConfig(host="0.0.0.0").allowed_host_names() == frozenset()
    from minigpt.errors import ConfigError

    for bad_name in ("", "a b", "evil.example/x", "x\r\nSet-Cookie: y"):
        with pytest.raises(ConfigError) as e:
            ServeConfig(allowed_hosts=(bad_name,)).check()
        assert e.value.field == "allowed_hosts" and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonp"],
)
def test_json_endpoints_need_a_json_content_type(client, content_type):
    """A page may POST text/plain, forms and multipart cross-site without a preflight."""
    body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 1}).encode()
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/completions", "/minigpt/attention"):
        r = client.post(path, content=body, headers=headers)
        assert assert_openai_error(r, 415, None)["code"] == "unsupported_media_type"
    ok = client.post("/v1/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_redirects_are_relative_whatever_the_host(client):
    r = client.get("/v1/models/", headers={"Host": "minigpt.test"}, follow_redirects=False)
    if r.status_code == 404:  # "/v1/models/{model:path}" took it: try a path that only redirects
        r = client.post("/v1/completions/", headers={"Host": "minigpt.test"}, follow_redirects=False)
    assert 300 <= r.status_code < 400, r.status_code
    assert r.headers["location"].startswith("/") and "minigpt.test" not in r.headers["location"]


def _connect(live) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    return s


def test_slow_headers_are_cut_off(live):
    """Half the headers, then a byte now and then: the server closes the connection soon
    after its header deadline (0.5 s here) however the bytes trickle."""
    s = _connect(live)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 8:
            try:
                s.sendall(b"X")
                time.sleep(0.1)
                s.settimeout(0.01)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - start < 5
    finally:
        s.close()


def test_a_stalled_body_gets_408_and_a_hang_up_is_not_logged(live, client, model, tokenizer, capfd):
    s = _connect(live)
    try:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        s.settimeout(10)
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head
    finally:
        s.close()
    for _ in range(5):  # clients that hang up mid-body
        s = _connect(live)
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model":'
        )
        s.close()
    time.sleep(0.3)
    still_serving(client, model, tokenizer)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI" not in err


# ---- property-based: arbitrary JSON never gets a 5xx -------------------------------------------------

_FIELDS = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "n",
    "stop",
    "seed",
    "echo",
    "logprobs",
    "stream",
    "stream_options",
    "user",
    "best_of",
    "die",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "suffix",
]
_text = st.one_of(st.text(max_size=20), st.sampled_from(["\ud800", "a\udfffb", "", "<|endoftext|>", "tiny"]))
_number = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, 0, 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([5e-324, 1e-46, 1e-40, 1e308, -0.0]),
)
_scalar = st.one_of(st.none(), st.booleans(), _number, _text)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=12,
)
_deep = st.integers(min_value=1, max_value=20_000).map(lambda d: {"model": MODEL, "prompt": "[" * d + "]" * d})


@st.composite
def _bodies(draw):
    body = {"model": draw(st.sampled_from([MODEL, MODEL, None, "gpt-4"]) | _json), "prompt": draw(_text | _json)}
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=5, unique=True)):
        body[name] = draw(_json)
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(min_value=0, max_value=3))  # a valid body must stay quick
    return body


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_bodies(), _json, _deep))
def test_arbitrary_json_never_gets_a_5xx(live, body):
    if isinstance(body, dict) and isinstance(body.get("prompt"), str) and body["prompt"].startswith("["):
        data = ('{"model": "tiny", "prompt": ' + body["prompt"] + "}").encode()  # nesting as JSON, not a string
    else:
        data = json.dumps(body, ensure_ascii=True).encode()  # lone surrogates as \\ud800 escapes
    with httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/completions", content=data, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:300], data[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    elif not (isinstance(body, dict) and body.get("stream") is True):
        json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer"))


# ---- the schema the server publishes is the one it enforces ------------------------------------------


def test_openapi_schema_is_what_the_server_accepts(client):
    from minigpt.sampling import settings as sampling_settings

    r = client.get("/openapi.json")
    assert r.status_code == 200
    body_schema = r.json()["components"]["schemas"]["CompletionBody"]
    props, required = body_schema["properties"], set(body_schema["required"])
    assert required == {"model", "prompt"} and body_schema.get("additionalProperties") is False
    for s in sampling_settings():  # the sampling fields: SamplingParams' names, defaults and bounds
        p = props[s.name]
        assert p["default"] == s.neutral and p["description"] == s.help
        assert p.get("exclusiveMinimum" if s.lo_open else "minimum") == s.lo
        assert p.get("maximum", math.inf) == s.hi
    # every field it lists is accepted at its default; a field it does not list is refused by name
    for name, p in props.items():
        if name in required or "default" not in p:
            continue
        body = {"model": MODEL, "prompt": "a", "max_tokens": 1, name: p["default"]}
        assert client.post("/v1/completions", json=body).status_code == 200, name
    error = assert_openai_error(
        client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "top_a": 1}), 400, "top_a"
    )
    assert error["code"] == "unknown_parameter"
