"""What the bridge process is started with: handed over on its stdin as one JSON document, never
on its command line or in its environment (both are visible to other local users, and the
settings hold the bridge's secret and `upstream.env`, whose values may be credentials)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BridgeSettings:
    command: tuple[str, ...]  # the stdio server: program and arguments (upstream.command; no shell)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # upstream.env, over a minimal default
    cwd: str | None = None
    secret: str = field(default="", repr=False)  # what the proxy sends as `Authorization: Bearer …`
    max_children: int = 32  # server processes at once (sessions); beyond, 503
    idle_timeout_s: float = 600.0  # a session without any request in flight this long ends
    start_timeout_s: float = 60.0  # a new server must answer its first message within this
    max_message_bytes: int = 16 * 1024 * 1024  # one line of the server's stdout (one message)
    max_body_bytes: int = 8 * 1024 * 1024  # one request from the proxy
    log_format: str = "json"
    log_level: str = "info"

    @property
    def program(self) -> str:
        """How logs and errors name the command: its program only (arguments may carry secrets)."""
        return self.command[0]

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> BridgeSettings:
        raw: dict[str, Any] = json.loads(data)
        raw["command"] = tuple(raw["command"])
        return cls(**raw)
