"""The one enforcement point every transport calls, once per message, in both directions.

Transports know how to read messages from their client channel and write messages back; what
happens to a message is decided here. `AllowAll` is the transparent proxy's
pipeline; the Enforcer (enforcer.py) decides with the policies behind the same two calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth.principal import ANONYMOUS, Principal
from ..config import Server
from ..protocol.headers import META_PROTOCOL_VERSION
from ..protocol.jsonrpc import Kind, Message

MAX_PENDING = 1024  # unanswered requests remembered per channel


@dataclass(slots=True)
class Channel:
    """Who is talking, through what: the context every decision on a channel shares.

    A Streamable HTTP POST or GET is a channel of its own; a legacy SSE session is one channel for
    its whole life, so requests posted to it and responses arriving on its stream correlate here.
    """

    transport: str  # "streamable_http" | "legacy_sse"
    server: Server
    http_method: str = "POST"
    protocol_version: str | None = None
    origin: str | None = None
    principal: Principal = ANONYMOUS
    # The JSON-RPC id of the request this channel's answer belongs to (a Streamable HTTP POST).
    request_id: Any = None
    # Client requests forwarded on this channel and not answered yet, by JSON-RPC id, with their
    # method: their answers are named (a tools/list answer is a page to filter), and one the
    # proxy cannot relay is answered with an error instead of left waiting.
    watched: dict[Any, str] = field(default_factory=dict)
    # Server→client requests relayed on this channel, so the client's answers can be named.
    server_requests: dict[Any, str] = field(default_factory=dict)

    def revision(self, msg: Message) -> str | None:
        """The protocol revision `msg` travels in: the one it names itself (a 2026-07-28 request's
        `params._meta`), else the channel's (the MCP-Protocol-Version header on Streamable HTTP; on
        legacy SSE, what its initialize negotiated)."""
        meta = msg.params.get("_meta")
        version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
        return version if isinstance(version, str) else self.protocol_version

    def answered(self, msg: Message) -> None:
        """A response on its way to the client: its request waits no more, and an initialize
        result names the revision in force on this channel from now on (legacy SSE has no header
        saying it)."""
        if self.watched.pop(msg.id, None) == "initialize":
            result = msg.data.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str):
                self.protocol_version = version

    def remember(self, table: dict[Any, str], id: Any, method: str) -> None:
        """Note a request in `table` (watched or server_requests), bounded: on a long-lived stream
        whose answers travel elsewhere, the oldest are forgotten."""
        if len(table) >= MAX_PENDING:
            del table[next(iter(table))]
        table[id] = method


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    # What the client gets instead of an upstream answer when the message is not forwarded.
    reply: dict[str, Any] | None = None
    # The HTTP status of a reply on a request/response transport (503: the policy engine failed).
    status: int = 200
    # A scope the decision says the client lacks: answered 403 with an insufficient_scope challenge.
    scope: str | None = None
    # Request headers checked against the message (Mcp-Param-*), to forward with it.
    headers: tuple[tuple[str, str], ...] = ()


ALLOW = Verdict(allow=True)
# What `server_message` returns for a server→client message that must not reach the client.
DROP = Message({}, Kind.NOTIFICATION)


class Pipeline(Protocol):
    async def client_message(self, channel: Channel, msg: Message, headers: Iterable[tuple[str, str]] = ()
                             ) -> Verdict:
        """Decide a client→server message (with its request headers) before anything of it reaches the upstream."""
        ...

    async def server_message(self, channel: Channel, msg: Message) -> Message | None:
        """A server→client message on its way out: a replacement, DROP, or None to relay it as parsed."""
        ...


class AllowAll:
    """The pass-through pipeline of the transparent proxy."""

    async def client_message(self, channel: Channel, msg: Message, headers: Iterable[tuple[str, str]] = ()
                             ) -> Verdict:
        return ALLOW

    async def server_message(self, channel: Channel, msg: Message) -> Message | None:
        return None
