"""Policy input v1 (docs/policy-input.md): what Rego sees as `input`, built from one message."""

from __future__ import annotations

import time
from typing import Any

from ..config import Server
from ..protocol.headers import NAME_PARAMS
from ..protocol.jsonrpc import Message
from .pipeline import Channel

CLIENT_TO_SERVER = "client_to_server"
SERVER_TO_CLIENT = "server_to_client"


def rfc3339(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def server_input(server: Server) -> dict[str, Any]:
    return {
        "name": server.name, "methods": list(server.methods), "tags": list(server.tags),
        "require_api_token_auth": server.require_api_token_auth,
        "expires_at": rfc3339(server.expires_at.timestamp()) if server.expires_at else None,
        "params": server.params,
    }


def message_name(msg: Message) -> str | None:
    key = NAME_PARAMS.get(msg.method or "")
    value = msg.params.get(key) if key else None
    return value if isinstance(value, str) else None


def build_input(channel: Channel, server: dict[str, Any], now: str, *, kind: str, direction: str,
                method: str | None, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The input document; `extra` adds `tool` (tools/call) or `tools` (a tools/list page)."""
    doc = {
        "version": 1,
        "time": now,
        "server": server,
        "principal": channel.principal.to_input(),
        "transport": {"kind": channel.transport, "protocol_version": channel.protocol_version,
                      "http_method": channel.http_method, "origin": channel.origin},
        "message": {"kind": kind, "direction": direction, "method": method, "name": name},
    }
    doc.update(extra)
    return doc
