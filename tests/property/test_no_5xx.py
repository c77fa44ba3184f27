"""Property: whatever bytes a client POSTs, with whatever header fields, the proxy never answers 5xx
and never forwards anything (hypothesis).

The ASGI app itself (`proxy.app.create_app`: bundled policies, a read-only server, an API token
beside anonymous access) is driven in-process with ASGI scopes built here, so header names and
values reach it exactly as generated — obs-text, control bytes, non-UTF-8 — with nothing of an
HTTP parser in between to clean them first. The upstream client's `send` is replaced by a recorder:
the proxy's own tool listing (its user-agent says so) is answered with the declared tools, anything
else is a forward and fails the property. Bodies are arbitrary bytes, or JSON-RPC messages spoilt so
that none is one valid message (trailing bytes, a cut, a flipped byte), or valid JSON that is no
message; paths are the MCP endpoints (with and without a URL token) and arbitrary text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse
from proxy.transport.upstream import UpstreamError

TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("list_all_missive_conversations", "create_a_missive_post", "echo")]
OWN_LISTING = "mcp-policy-proxy/"


class World:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        config = parse({
            "upstream": {"url": "http://127.0.0.1:9/mcp", "sse_url": "http://127.0.0.1:9/sse", "timeout_s": 2},
            "policy": {"reload_interval_s": 0},
            "servers": [{"name": "readonly", "methods": ["read"]}],
            "auth": {"anonymous": True, "api_tokens": [{"name": "ci", "sha256": "0" * 64}]},
            "decision_log": {"sink": "off"},
        }, "<property test>")

        async def make() -> Any:  # on the loop's thread: the embedded engine stays on one thread
            return create_app(config)

        self.app = self.loop.run_until_complete(make())
        self.app.ctx.pipeline.inventory.learn(TOOLS)
        self.forwarded: list[tuple[str, str, bytes | None]] = []
        self.app.ctx.upstream.send = self._send

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> Any:
        if headers.get("user-agent", "").startswith(OWN_LISTING):
            raise UpstreamError(502, "no listing here: the inventory holds every tool")
        self.forwarded.append((method, url, body))
        raise UpstreamError(502, "recorded")

    def request(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
                ) -> tuple[int, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogateescape"),
                 "query_string": query, "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(asyncio.wait_for(self.app(scope, receive, send), 10))
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    def close(self) -> None:
        self.app = None
        self.loop.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


MESSAGES = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
     "params": {"name": "list_all_missive_conversations", "arguments": {"inbox": True}}},
    {"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {}},
    {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
                                                                  "capabilities": {}, "clientInfo": {"name": "c"}}},
]


@st.composite
def spoilt(draw: st.DrawFn) -> bytes:
    """A valid message made into no message at all."""
    text = json.dumps(draw(st.sampled_from(MESSAGES))).encode()
    how = draw(st.sampled_from(["trailing", "cut", "flip", "bom", "twice"]))
    if how == "trailing":
        return text + draw(st.binary(min_size=1, max_size=8).filter(lambda b: b.strip()))
    if how == "cut":
        return text[:draw(st.integers(0, len(text) - 1))]
    if how == "flip":  # one byte beyond ASCII in ASCII text: never UTF-8
        i = draw(st.integers(0, len(text) - 1))
        return text[:i] + bytes([text[i] ^ 0x80]) + text[i + 1:]
    return (b"\xef\xbb\xbf" + text) if how == "bom" else text + text


no_message = st.sampled_from([b"[]", b"{}", b"null", b"1", b'"x"', b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
                              b'{"jsonrpc":"2.0"}', b'{"jsonrpc":"2.0","id":1}', b'{"id":1,"method":"ping"}',
                              b'{"jsonrpc":"2.0","id":[1],"method":"ping"}'])
bodies = st.one_of(st.binary(max_size=300), spoilt(), no_message)

HEADER_NAMES = [b"content-type", b"content-length", b"accept", b"mcp-session-id", b"authorization", b"mcp-name",
                b"mcp-method", b"mcp-protocol-version", b"origin", b"host", b"mcp-param-region", b"last-event-id",
                b"connection", b"transfer-encoding", b"x_forwarded_user", b"cookie"]
header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"application/json", b"text/plain", b"Bearer x", b"Bearer \xff", b"2026-07-28", b"latest",
                     b"http://[", b"http://127.0.0.1", b"=?base64?!!?=", b"\xe9", b"tools/call", b"-1", b"99999999999",
                     b"abc.def", b"\x00\r\n", b"close, mcp-session-id"]),
)
headers = st.lists(st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.binary(min_size=1, max_size=10)),
                             header_values), max_size=8)
paths = st.one_of(st.sampled_from(["/mcp", "/messages/", "/tok/mcp", "/mcp/tok", "/tok/messages/", "/x/y/z"]),
                  st.text(max_size=20).map(lambda t: "/" + t))
queries = st.one_of(st.just(b""), st.sampled_from([b"session_id=", b"session_id=%zz", b"session_id=\xff"]),
                    st.binary(max_size=20))


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, fields=headers, path=paths, query=queries)
def test_no_post_gets_a_5xx_or_reaches_the_upstream(world: World, body: bytes, fields: list[tuple[bytes, bytes]],
                                                    path: str, query: bytes) -> None:
    status, answer = world.request("POST", path, query, fields, body)
    assert status < 500, (status, answer)
    assert world.forwarded == [], world.forwarded
