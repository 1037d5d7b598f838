"""The wire: what arrives before a route sees a request, and how a stream leaves.

`Guard` (ASGI middleware in front of every route) refuses a `Host` that does not name
this server (DNS rebinding: a web page whose name resolves to 127.0.0.1 must not drive
it) and makes redirects relative. `read_json` takes a body only as
`Content-Type: application/json` (a page can send text/plain cross-site without asking,
but not JSON), size-capped and within a deadline. `EventStream` sends server-sent events
and notices a client going away.
"""

from __future__ import annotations

import asyncio
import ipaddress

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from .protocol import ApiError, bad, decode_json


def _json_content_type(request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == "application/json"


async def read_json(request, limit: int, timeout: float):
    """The body of a JSON request: `Content-Type: application/json`, at most `limit` bytes,
    all of it within `timeout` seconds; else an ApiError (415, 413, 408, 400)."""
    if not _json_content_type(request):
        raise ApiError(
            415, "send the body as JSON, with 'Content-Type: application/json'", code="unsupported_media_type"
        )
    too_large = ApiError(413, f"the request body is over the server's limit of {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad("bad Content-Length header")
        if int(declared) > limit:
            raise too_large

    async def collect() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    try:
        body = await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:  # the client hung up mid-body: nobody to answer, nothing to log
        raise ApiError(499, "client closed the request", code="client_closed") from None
    return decode_json(body)


async def wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """A server-sent-events response that notices a client going away: its events stop
    being pulled (so nothing more is asked of the engine) and `on_close` runs."""

    def __init__(self, events, on_close):
        self.events, self.on_close = events, on_close

    async def __call__(self, scope, receive, send) -> None:
        import anyio  # comes with the serve extra (Starlette runs on it)

        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
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
                    await wait_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(pump)
                tg.start_soon(watch)
        finally:
            self.on_close()
            await self.events.aclose()


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a `Host` header names this server: an IP address (a web page cannot make a
    browser send one of ours for its own origin), `localhost` (and `*.localhost`), or a
    name in `allowed` ("*" allows any). No header at all (HTTP/1.0, not a browser) passes.

    >>> host_allowed("127.0.0.1:8000", frozenset()), host_allowed("evil.example", frozenset())
    (True, False)
    """
    if host_header is None or "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host == "localhost" or host.endswith(".localhost") or host in allowed


class Guard:
    """ASGI middleware in front of every route: the Host allow-list, and redirects made
    relative (Starlette's trailing-slash redirect would build its Location from Host)."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if not host_allowed(host, self.allowed):
            shown = host.encode("ascii", "backslashreplace").decode()[:100]
            e = ApiError(
                403,
                f"Host '{shown}' is not a name of this server; start it with --allowed-host NAME "
                "to serve under another name",
                code="host_not_allowed",
                type="invalid_request_error",
            )
            return await JSONResponse(e.body(), status_code=403)(scope, receive, send)

        async def relative(message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                headers = []
                for k, v in message.get("headers", []):
                    if k.lower() == b"location" and b"://" in v:  # http://HOST/path?q -> /path?q
                        rest = v.split(b"://", 1)[1]
                        headers.append((k, b"/" + rest.split(b"/", 1)[1] if b"/" in rest else b"/"))
                    else:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, relative)
