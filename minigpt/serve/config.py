"""`ServeConfig`: the settings `minigpt serve` runs with (no dependency beyond the package)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import DEFAULT_RUN
from ..errors import ConfigError


@dataclass
class ServeConfig:
    """What `minigpt serve` runs with (the command's flags, see `minigpt serve --help`)."""

    checkpoint: str = DEFAULT_RUN
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
    quantize: str | None = None  # "int8": weight-only int8 Linear layers (quantize.py), or "int8-dynamic"
    # Names (Host headers) the server answers to besides IP addresses and localhost: a web
    # page under another name that resolves to us (DNS rebinding) is refused. "*" = any.
    allowed_hosts: tuple[str, ...] = ()
    header_timeout: float = 10.0  # seconds for a request's headers to arrive (slowloris)
    body_timeout: float = 30.0  # seconds for a request's body to arrive

    def check(self) -> None:
        for name in ("max_tokens_cap", "max_n", "max_prompt_tokens", "max_batch", "queue_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v}", field=name)
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"--port must be in 0..65535 (0 = any free port), got {self.port}", field="port")
        for name in ("header_timeout", "body_timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 86400):
                raise ConfigError(f"{name} must be a number of seconds in (0, 86400), got {v}", field=name)
        for h in self.allowed_hosts:
            if not h or any(c in h for c in " /\\@\r\n\t"):
                raise ConfigError(f"--allowed-host must be a host name (or '*'), got {h!r}", field="allowed_hosts")

    def allowed_host_names(self) -> frozenset[str]:
        """The names `Host` may carry: --allowed-host's, and the name the server listens on."""
        names = {h.lower().rstrip(".") for h in self.allowed_hosts}
        if self.host and not _is_ip(self.host):
            names.add(self.host.lower().rstrip("."))
        return frozenset(names)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: room for max_batch prompts of max_prompt_tokens as ids."""
        return 64 * 1024 + 16 * self.max_prompt_tokens * self.max_batch


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
