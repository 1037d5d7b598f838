"""Starting the server: the listening socket, and uvicorn (with a deadline
for a request's headers, which uvicorn itself does not have)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

from .. import DIST_NAME
from ..errors import MiniGPTError
from .config import ServeConfig


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
        "" if api_key else "; anyone who can reach it can use it (set --api-key or MINIGPT_API_KEY)"
    )


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) (port 0: any free one); uvicorn listens on it. A port
    in use or an address this machine does not have is a one-line MiniGPTError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise MiniGPTError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
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


def _need_extra():
    try:  # the optional serve extra
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # the serve extra, like the two above
    except ImportError:
        raise MiniGPTError(
            f"minigpt serve needs Starlette, pydantic and uvicorn: pip install '{DIST_NAME}[serve]'"
        ) from None
    return uvicorn


def uvicorn_config(app, cfg: ServeConfig, **kw):
    """uvicorn's settings for `app`: h11 with a deadline for each request's headers (a client
    that sends them byte by byte is closed), idle keep-alive connections closed after 5 s."""
    uvicorn = _need_extra()
    from uvicorn.protocols.http.h11_impl import H11Protocol  # the serve extra

    class Protocol(H11Protocol):
        """h11, plus: a request's headers must be complete within `header_timeout` seconds of
        the connection opening (or of the previous response), however slowly they trickle."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._headers_due = self.loop.call_later(cfg.header_timeout, self._too_slow)

        def handle_events(self) -> None:
            before = self.scope
            super().handle_events()
            if self.scope is not before and self._headers_due is not None:  # a request's headers arrived
                self._headers_due.cancel()
                self._headers_due = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._headers_due is None:
                self._headers_due = self.loop.call_later(cfg.header_timeout, self._too_slow)

        def connection_lost(self, exc) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
                self._headers_due = None
            super().connection_lost(exc)

        def _too_slow(self) -> None:
            self._headers_due = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    settings = dict(
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
        http=Protocol,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
    )
    return uvicorn.Config(app, **{**settings, **kw})


def run_server(cfg: ServeConfig) -> int:
    """`minigpt serve`: load the checkpoint once, serve until Ctrl-C, return the exit code."""
    uvicorn = _need_extra()
    cfg.check()
    from ..inference import load_for_inference  # lazily: torch's model loading only once the extra is there
    from .app import create_app  # the serve extra (starlette, pydantic), checked above

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
    print(
        f"minigpt serve: {model_id} ({ckpt.model_type}, {device}) on http://{shown}:{port}/ "
        f"(playground at /, API at /v1; Ctrl-C stops)",
        flush=True,
    )
    server = uvicorn.Server(uvicorn_config(app, cfg))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for
        pass
    finally:
        sock.close()
    print("minigpt serve: stopped", file=sys.stderr, flush=True)
    return 0
