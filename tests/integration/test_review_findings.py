"""Findings of a hostile review of the enforcement change: each test was written against the
problem its docstring describes (it failed then) and now guards the fix. In-process where possible
(the real Enforcer with the bundled policies, the real intake, relay, SSE codec, inventory and tool
lister), so each stays fast and exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from proxy.auth.sessions import SessionBinder
from proxy.config import Policy, Server
from proxy.config import Upstream as UpstreamConfig
from proxy.enforce.enforcer import Enforcer
from proxy.enforce.inventory import InventoryUnavailable, ToolInventory
from proxy.enforce.pipeline import Channel
from proxy.observe.decision_log import DecisionLog
from proxy.policy.manager import build_policy_set
from proxy.protocol.headers import check_routing_headers
from proxy.protocol.jsonrpc import Message, ProtocolError, to_message
from proxy.protocol.sse import SSEDecoder
from proxy.transport.relay import StreamResponse, relay, relay_event
from proxy.transport.tool_listing import UpstreamToolLister
from proxy.transport.upstream import UpstreamClient

POLICY = build_policy_set(Policy())
READ = Server(name="ro", methods=("read",))
VISIBLE = "list_all_missive_conversations"
HIDDEN = "create_a_missive_post"


def _j(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _inventory(tools: list[dict[str, Any]]) -> ToolInventory:
    async def listing() -> list[dict[str, Any]]:
        return tools

    inventory = ToolInventory(listing)
    inventory.learn(tools)
    return inventory


def _enforcer(tools: list[dict[str, Any]] | None = None) -> Enforcer:
    declared = tools if tools is not None else [
        {"name": n, "inputSchema": {"type": "object"}} for n in POLICY.catalog.known_names]
    return Enforcer(POLICY, (READ,), DecisionLog("off"), clock=lambda: 1_800_000_000.0,
                    inventory=_inventory(declared))


def _call(name: str, arguments: dict[str, Any], id: int = 1, meta: dict[str, Any] | None = None) -> Message:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return to_message({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})


class FakeUpstreamResponse:
    """What relay() reads of an UpstreamResponse: status, headers, content type, body chunks, whether
    the body has arrived whole."""

    def __init__(self, status: int, headers: list[tuple[str, str]], chunks: list[bytes]) -> None:
        self.status, self.headers, self._chunks = status, headers, chunks
        self.content_type = next((v for n, v in headers if n == "content-type"), "").lower()

    def finished(self) -> bool:
        return True  # every chunk is here already, as when an answer arrives whole

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def read(self, limit: int, timeout_s: float) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> None:
        pass


async def _relayed(response: Any) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of what the client gets: a stream read to its end, or a whole body."""
    if isinstance(response, StreamResponse):
        body = b"".join([chunk async for chunk in response.chunks])
    else:
        body = response.body
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers], body


def _python_sdk_events(headers: list[tuple[str, str]], body: bytes) -> list[Any]:
    """The events the official Python SDK client reads from this answer (httpx2's EventSource,
    which decodes the body with the charset of the Content-Type)."""
    resp = httpx2.Response(200, headers=headers, content=body, request=httpx2.Request("POST", "http://proxy/mcp"))
    return list(httpx2.EventSource(resp))


# --- 1. the SSE Content-Type charset is relayed, the proxy parses UTF-8 anyway ------------------

@pytest.mark.parametrize("content_type", [
    "text/event-stream; charset=utf-7",
    # Spellings Python's email parser (httpx2's charset reader) takes as charset=utf-7, but a
    # split on ";" looking for a `charset` name does not: RFC 2231 form, and a quoted ";".
    "text/event-stream; charset*=utf-7",
    'text/event-stream; x="a;charset=utf-8"; charset=utf-7',
])
async def test_an_sse_charset_cannot_make_a_python_client_read_an_undecided_page(content_type):
    """The upstream says `charset=utf-7`; the proxy parses the bytes as UTF-8 and sees one SSE
    comment (relayed byte for byte), the Python SDK decodes them as UTF-7 and reads a message
    event: a tools/list answer carrying a tool the policy hides. The upstream's Content-Type
    (with its parameters) is relayed as it is."""
    page = _j({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": HIDDEN, "inputSchema": {"type": "object"}}]}})
    hostile = b":x+AAo-data: " + page.encode() + b"+AAoACg-\n\n"  # +AAo- is "\n" in UTF-7
    resp = FakeUpstreamResponse(200, [("content-type", content_type)], [hostile])
    channel = Channel("streamable_http", READ, protocol_version="2025-11-25", request_id=1)
    channel.watched[1] = "tools/list"
    headers, body = await _relayed(await relay(channel, _enforcer(), resp, max_event_bytes=1 << 20, timeout_s=5))
    events = _python_sdk_events(headers, body) if "text/event-stream" in dict(headers).get("content-type", "") else []
    names = {t.get("name") for e in events if e.event == "message" and e.data
             for t in json.loads(e.data).get("result", {}).get("tools", [])}
    assert HIDDEN not in names, f"a hidden tool reached the client undecided: {headers} {body!r}"



async def test_a_legacy_sse_charset_cannot_make_a_python_client_read_an_undecided_page():
    """The same on the legacy transport: GET /sse relays the upstream's stream (and its
    Content-Type) through relay_sse directly, not through relay(), so no check made in relay()
    applies to it."""
    import asyncio as _asyncio
    from types import SimpleNamespace

    from proxy.auth.authenticator import Access
    from proxy.auth.principal import ANONYMOUS
    from proxy.config import Limits
    from proxy.transport import legacy_sse
    from proxy.transport.admission import Admission

    page = _j({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": HIDDEN, "inputSchema": {"type": "object"}}]}})
    stream = b"event: endpoint\ndata: /messages/?session_id=up-1\n\n:x+AAo-data: " + page.encode() + b"+AAoACg-\n\n"
    upstream = SimpleNamespace(headers={}, send=None)

    async def send(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> Any:
        return FakeUpstreamResponse(200, [("content-type", "text/event-stream; charset=utf-7")], [stream])

    upstream.send = send
    config = SimpleNamespace(upstream=SimpleNamespace(sse_url="http://upstream/sse", timeout_s=5), limits=Limits())
    route = SimpleNamespace(config=config.upstream, client=upstream)  # what Upstreams.route gives (upstreams.py)
    ctx = SimpleNamespace(config=config, upstreams=SimpleNamespace(route=lambda server: route),
                          pipeline=_enforcer(), legacy_sessions={},
                          revocation=lambda name: _asyncio.Event(), admission=Admission(Limits()),
                          draining=_asyncio.Event(), sessions=SessionBinder(b"k" * 32))
    request = _post_request(b"")
    request.scope["method"], request.scope["path"] = "GET", "/sse"
    response = await legacy_sse.open_stream(ctx, request, Access(READ, ANONYMOUS))
    headers, body = await _relayed(response)
    events = _python_sdk_events(headers, body) if "text/event-stream" in dict(headers).get("content-type", "") else []
    names = {t.get("name") for e in events if e.event == "message" and e.data
             for t in json.loads(e.data).get("result", {}).get("tools", [])}
    assert HIDDEN not in names, f"a hidden tool reached the legacy client undecided: {headers} {body!r}"


# --- 2. the SSE decoder rescans a partial line on every chunk (quadratic, on the event loop) ----

def test_sse_decoder_is_linear_in_a_long_line_arriving_in_small_chunks():
    """A 192 KiB data line arriving in 32-byte reads (a slow link, or an upstream dribbling) is
    rescanned from its start on every read: ~0.6 GB of regex scanning, seconds of a blocked event
    loop for every client of the worker; a 16 MiB event (the default limit) takes hours."""
    decoder = SSEDecoder(16 * 1024 * 1024)
    chunk = b"x" * 32
    start = time.perf_counter()
    decoder.feed(b"data: ")
    for _ in range(192 * 1024 // 32):
        decoder.feed(chunk)
    events = decoder.feed(b"\n\n")
    elapsed = time.perf_counter() - start
    assert len(events) == 1 and len(events[0].data) == 192 * 1024
    assert elapsed < 1.0, f"{elapsed:.1f} s to decode one 192 KiB event"


# --- 3./4. Mcp-Param-* checks: demanded of every revision, and decided before visibility ---------

TOOL_WITH_HEADER = {"type": "object", "properties": {"id": {"type": "string", "x-mcp-header": "Conversation"}}}


async def test_mcp_param_headers_are_not_demanded_of_clients_before_2026_07_28():
    """Mcp-Param-* exist from revision 2026-07-28; SDK clients of 2025-11-25 (and every legacy SSE
    client) never send them, and SDK servers check them only on 2026-07-28 requests. The proxy
    refuses such a client's call of any tool whose schema has an x-mcp-header: 400, -32020."""
    name = "get_single_missive_conversation_by_id"
    plain = _enforcer([{"name": name, "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}}}])
    classic = Channel("streamable_http", READ, protocol_version="2025-11-25")
    assert (await plain.client_message(classic, _call(name, {"id": "c-1"}))).allow  # the same call, no x-mcp-header
    annotated = _enforcer([{"name": name, "inputSchema": TOOL_WITH_HEADER}])
    for channel in (Channel("streamable_http", READ, protocol_version="2025-11-25"), Channel("legacy_sse", READ)):
        verdict = await annotated.client_message(channel, _call(name, {"id": "c-1"}))
        assert verdict.allow, f"{channel.transport}: {verdict.status} {verdict.reply}"


async def test_a_header_mismatch_on_a_hidden_tool_does_not_reveal_it():
    """A hidden tool is answered `Unknown tool` whatever its arguments (docs/policy-input.md), but
    the Mcp-Param check runs before the policy: a call without the header gets 400 -32020 naming
    the tool's header and argument, which a tool that does not exist never gets."""
    tools = [{"name": HIDDEN, "inputSchema": TOOL_WITH_HEADER}, {"name": VISIBLE, "inputSchema": {"type": "object"}}]
    e = _enforcer(tools)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    channel = Channel("streamable_http", READ, protocol_version="2026-07-28")
    missing = await e.client_message(channel, _call("no_such_tool", {"id": "c-1"}, meta=meta))
    assert missing.reply["error"] == {"code": -32602, "message": "Unknown tool: no_such_tool"}
    hidden = await e.client_message(channel, _call(HIDDEN, {"id": "c-1"}, meta=meta))
    assert (hidden.status, hidden.reply["error"]) == (200, {"code": -32602, "message": f"Unknown tool: {HIDDEN}"})


# --- 5./6./12. the inventory's single-flight listing and freshness ------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gated_listing() -> tuple[Clock, asyncio.Event, list[float], Any]:
    """A listing of VISIBLE whose first call waits for the gate; (clock, gate, call times, fetch)."""
    clock, gate, calls = Clock(), asyncio.Event(), []
    tools = [{"name": VISIBLE, "inputSchema": {"type": "object"}}]

    async def fetch() -> list[dict[str, Any]]:
        calls.append(clock.now)
        if len(calls) == 1:
            await gate.wait()
        return tools

    return clock, gate, calls, fetch


async def test_a_cancelled_waiter_does_not_stop_later_listings():
    """The first caller of a listing goes away (its client disconnected): `refresh` does not clear
    `_fetching` because the listing is not done yet. Much later (the definitions stale), the next
    lookup awaits that long-finished future instead of listing, and a declared tool is refused as
    unknown."""
    clock, gate, calls, fetch = gated_listing()
    inventory = ToolInventory(fetch, ttl_s=60, clock=clock)
    first = asyncio.ensure_future(inventory.lookup(VISIBLE))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    await asyncio.sleep(0.01)  # the shielded listing completes on its own
    clock.now = 1000.0  # long after: every definition is past its time to live
    definition = await inventory.lookup(VISIBLE)
    assert len(calls) == 2, f"listed {len(calls)} time(s)"
    assert definition is not None and definition.name == VISIBLE


async def test_list_changed_during_a_listing_does_not_make_the_older_listing_fresh():
    """notifications/tools/list_changed arrives while a listing is under way: the listing may
    predate the change, yet its definitions are stamped with the time it *ended*, after the
    invalidation, and used as fresh."""
    clock, gate, calls, fetch = gated_listing()
    inventory = ToolInventory(fetch, ttl_s=300, clock=clock)
    listing = asyncio.ensure_future(inventory.lookup(VISIBLE))
    await asyncio.sleep(0.01)
    clock.now = 1.0
    inventory.invalidate()  # the upstream's tools changed while it was being listed
    clock.now = 2.0
    gate.set()
    await listing
    clock.now = 3.0
    await inventory.lookup(VISIBLE)
    assert len(calls) == 2, "a listing begun before list_changed was taken as current"


async def test_a_failing_listing_is_not_repeated_on_every_call():
    """Misses list the upstream at most once per 5 s (docs), but a definition past its time to live
    is relisted on every call while listing fails: each call of a known tool costs a full listing
    attempt (Streamable 2026, classic handshake, legacy SSE)."""
    clock, calls = Clock(), []

    async def fetch() -> list[dict[str, Any]]:
        calls.append(clock.now)
        raise RuntimeError("upstream tools/list is failing")

    inventory = ToolInventory(fetch, ttl_s=60, clock=clock)
    inventory.learn([{"name": VISIBLE, "inputSchema": {"type": "object"}}])
    clock.now = 120.0
    for _ in range(5):
        with pytest.raises(InventoryUnavailable):
            await inventory.lookup(VISIBLE)
        clock.now += 0.1
    assert len(calls) == 1, f"{len(calls)} listings in 0.5 s"


# --- 7. legacy SSE drops what it cannot decide for any request but tools/list --------------------

def _post_request(body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    from starlette.requests import Request

    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/messages/", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), *(headers or [])], "scheme": "http",
             "server": ("127.0.0.1", 80), "http_version": "1.1"}
    return Request(scope, receive)


async def test_legacy_sse_answers_an_undecidable_tools_call_answer_like_streamable_http():
    """The upstream answers a tools/call with data the proxy cannot decide (`"error": null` beside
    `result`). On Streamable HTTP the waiting client gets -32603; on legacy SSE, where the same
    request waits on the session's stream, the event is dropped and the client waits forever."""
    from proxy.transport.intake import admit

    e = _enforcer()
    bad = SSEDecoder().feed(b'data: {"jsonrpc":"2.0","id":7,"result":{"content":[]},"error":null}\n\n')[0]
    call = _j({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "get_single_missive_conversation_by_id", "arguments": {"id": "c-1"}}}).encode()

    streamable = Channel("streamable_http", READ, protocol_version="2025-11-25")
    msg, verdict = await admit(_post_request(call), streamable, e, 1 << 20)
    assert verdict.allow
    streamable.request_id = msg.id
    on_post = await relay_event(streamable, e, bad, None)
    assert b'"id":7' in on_post and b"-32603" in on_post

    legacy = Channel("legacy_sse", READ, "GET")
    msg, verdict = await admit(_post_request(call), legacy, e, 1 << 20)
    assert verdict.allow
    on_stream = await relay_event(legacy, e, bad, None)
    assert b'"id":7' in on_stream and b"-32603" in on_stream, f"legacy SSE client got {on_stream!r}"


# --- 11. server→client request ids kept forever on Streamable HTTP channels ---------------------

async def test_server_requests_on_a_get_stream_are_not_kept_forever():
    """Every server→client request relayed on a Streamable HTTP GET stream (pings, sampling, roots)
    is remembered in `channel.server_requests`, but the client's answers arrive in other POSTs
    (other channels): nothing ever removes them. A long-lived stream grows without bound.
    (Bounded here at 1024, the bound an uncommitted fix in the working tree chose.)"""
    e = _enforcer()
    channel = Channel("streamable_http", READ, "GET", protocol_version="2025-11-25")
    for i in range(3000):
        ping = to_message({"jsonrpc": "2.0", "id": f"ping-{i}", "method": "ping"})
        assert await e.server_message(channel, ping) is None  # relayed
    assert len(channel.server_requests) <= 1024, f"{len(channel.server_requests)} ids kept on one GET stream"


# --- 15. Mcp-Name: the proxy's own sentinel decoding differs from the SDK's ----------------------

def test_malformed_base64_mcp_name_is_not_taken_literally():
    """A `=?base64?…?=` value that does not decode (no padding) is compared as the literal string by
    the proxy; the SDK's decode_header_value (mcp.shared.inbound) gives None, so it never matches.
    A header-routing layer decoding leniently (Node's Buffer.from) routes `=?base64?Zm9vYg?=` to
    `foob`, a name the policy never saw."""
    sentinel = "=?base64?Zm9vYg?="
    msg = to_message({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": sentinel}})
    with pytest.raises(ProtocolError):
        check_routing_headers([("mcp-name", sentinel)], msg)


# --- 8./9./10. the proxy's own tool listing -------------------------------------------------------

class FakeResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, body
        self.content_type = next((v for n, v in headers if n == "content-type"), "").lower()
        self.done = False  # read to the end, or closed: the connection is released either way

    async def read(self, limit: int, timeout_s: float) -> bytes:
        self.done = True
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body
        self.done = True

    def close(self) -> None:
        self.done = True


class FakeClient:
    """An UpstreamClient stand-in: `handler(method, headers, message)` → (status, headers, body)."""

    def __init__(self, handler: Any) -> None:
        self.headers = {"authorization": "Bearer upstream-credential"}
        self.handler = handler
        self.sent: list[tuple[str, dict[str, str], Any]] = []
        self.responses: list[FakeResponse] = []

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> FakeResponse:
        message = json.loads(body) if body else None
        self.sent.append((method, dict(headers), message))
        response = FakeResponse(*self.handler(method, headers, message))
        self.responses.append(response)
        return response


JSON = ("content-type", "application/json")


def classic_upstream(protocol_version: str = "2025-11-25", tools: list[dict[str, Any]] | None = None) -> Any:
    """A 2025-11-25 server: no sessionless tools/list, a session from initialize."""
    listed = tools or [{"name": VISIBLE, "inputSchema": {"type": "object"}}]

    def handler(method: str, headers: dict[str, str], message: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        if method == "DELETE":
            return 200, [], b""
        rpc, params = message.get("method"), message.get("params") or {}
        if "id" not in message:
            return 202, [], b""
        if rpc == "tools/list" and "_meta" in params:
            return 400, [JSON], _j({"jsonrpc": "2.0", "id": message["id"],
                                    "error": {"code": -32600, "message": "Bad Request: No valid session ID"}}).encode()
        if rpc == "initialize":
            result = {"protocolVersion": protocol_version, "capabilities": {"tools": {}},
                      "serverInfo": {"name": "classic", "version": "1"}}
            return 200, [JSON, ("mcp-session-id", "s-1")], _j({"jsonrpc": "2.0", "id": message["id"],
                                                                "result": result}).encode()
        return 200, [JSON], _j({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": listed}}).encode()

    return handler


def _lister(client: Any, timeout_s: float = 5.0) -> UpstreamToolLister:
    return UpstreamToolLister(client, "http://upstream/mcp", max_bytes=1 << 20, timeout_s=timeout_s)


async def test_tool_listing_reads_or_closes_every_upstream_answer():
    """The classic handshake sends notifications/initialized and drops its answer unread: the
    connection is neither returned to the pool nor closed (one socket held per listing until the
    upstream closes it; forever if it answers with a stream)."""
    client = FakeClient(classic_upstream())
    assert [t["name"] for t in await _lister(client)()] == [VISIBLE]
    unread = [sent[2] for sent, resp in zip(client.sent, client.responses, strict=True) if not resp.done]
    assert not unread, f"answers never read nor closed: {unread}"


async def test_tool_listing_does_not_put_upstream_text_into_request_headers_unchecked():
    """The upstream's initialize result names the protocolVersion the proxy then sends as the
    MCP-Protocol-Version header, unchecked; UpstreamClient.send writes header values as they are,
    so CR LF in it splits the proxy's own (credentialed) request."""
    client = FakeClient(classic_upstream("2025-11-25\r\nx-injected: by-upstream"))
    with contextlib.suppress(Exception):  # whatever the lister makes of it, no CR LF may be sent
        await _lister(client)()
    bad = [(method, n, v) for method, headers, _ in client.sent for n, v in headers.items() if "\r" in v or "\n" in v]
    assert not bad, f"header values with CR/LF sent upstream: {bad}"


async def test_tool_listing_is_bounded_by_max_tools_not_only_by_pages():
    """ToolInventory keeps MAX_TOOLS (10,000) definitions, but the lister collects every page first:
    100 pages of up to limits.max_sse_event_bytes (16 MiB) each, all parsed and held at once."""
    from proxy.enforce.inventory import MAX_TOOLS

    def handler(method: str, headers: dict[str, str], message: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        page = int((message.get("params") or {}).get("cursor") or 0)
        tools = [{"name": f"t{page}_{i}", "inputSchema": {"type": "object"}} for i in range(200)]
        result: dict[str, Any] = {"tools": tools}
        if page < 99:
            result["nextCursor"] = str(page + 1)
        return 200, [JSON], _j({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()

    client = FakeClient(handler)
    tools = await _lister(client)()
    assert len(tools) <= MAX_TOOLS, f"{len(tools)} tools over {len(client.sent)} pages held by one listing"


# --- 14. a stuck listing outlives upstream.timeout_s -------------------------------------------

async def test_stuck_listing_is_bounded_by_the_upstream_timeout():
    """The lister's `asyncio.timeout(timeout_s)` cancels a stuck tools/list, then the `finally` of
    the classic handshake sends DELETE *after* the cancellation, unbounded by it: a stuck upstream
    holds every call that waits for the listing for 2x upstream.timeout_s (3x with a slow body)."""
    handler = classic_upstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                fields = (line.partition(":") for line in lines[1:] if line)
                headers = {n.strip().lower(): v.strip() for n, _, v in fields}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                message = json.loads(body) if body else None
                if method == "DELETE" or (message and message.get("method") == "tools/list"
                                          and "_meta" not in (message.get("params") or {})):
                    await asyncio.sleep(3600)  # stuck
                status, out, data = handler(method, headers, message)
                head_lines = [f"HTTP/1.1 {status} X", *(f"{n}: {v}" for n, v in out), f"content-length: {len(data)}"]
                writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    client = UpstreamClient(UpstreamConfig(url=url, timeout_s=0.5))
    lister = UpstreamToolLister(client, url, max_bytes=1 << 20, timeout_s=0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(TimeoutError):
            await lister()
    finally:
        elapsed = time.perf_counter() - start
        await client.close()
        server.close()
    assert elapsed < 0.8, f"a listing bounded by 0.5 s took {elapsed:.2f} s"


# --- 16. legacy SSE: a refusal with an error status kills the Python SDK client's writer -------

async def test_legacy_sse_refusal_with_an_error_status_leaves_the_session_usable(sdk_upstream, tmp_path):
    """On legacy SSE the proxy puts its refusal on the stream *and* answers the POST with the error
    status (503 here: the policy gives no valid decision for `logging/setLevel`). The official Python client raises on
    the status inside its single POST writer task, which ends: every later message of the session
    is lost. The answer already travels on the stream; the POST should get 202."""
    from mcp.shared.exceptions import MCPError

    from tests.integration.proxy_harness import start_proxy
    from tests.peers.clients import sse_client

    site = tmp_path / "site"
    site.mkdir()
    # A decision that is not an object: the engine's answer is refused (503), for logging/setLevel only.
    (site / "broken.rego").write_text('package mcp.authz\nimport rego.v1\n'
                                      'decision := "broken" if input.message.method == "logging/setLevel"\n')
    upstream = sdk_upstream("legacy-sse")
    proxy = start_proxy(tmp_path, upstream.base, {"policy": {"paths": ["@bundled", str(site)]},
                                                  "servers": [{"name": "ro", "methods": ["read"]}]})
    refused: Any = None
    after: Any = None
    try:
        with contextlib.suppress(BaseExceptionGroup), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # logging/setLevel is deprecated in the 2026-07-28 SDK
            async with sse_client(proxy.sse_url, read_timeout=5) as peer:
                assert await peer.tool_names()
                try:
                    await peer.client.set_logging_level("info")
                except MCPError as exc:
                    refused = exc
                try:
                    async with asyncio.timeout(8):
                        after = await peer.tool_names()
                except Exception as exc:  # what the client got is the finding
                    after = exc
    finally:
        proxy.stop()
    assert isinstance(refused, MCPError) and refused.error.code == -32603, refused
    assert isinstance(after, list) and after, f"the next request of the session failed: {after!r}"


# --- 17. (before this change) a config reload orphans every open legacy SSE session -------------

async def test_config_reload_keeps_legacy_sessions_of_unchanged_servers(sdk_upstream, tmp_path):
    """post_message binds a session to `access.server` by identity (`is not`); a reload builds new
    Server objects even for servers it does not change (only changed ones are revoked), so after
    any reload — here one that adds a server — every open legacy session's POSTs get 404 while
    its stream stays open."""
    import signal

    import httpx
    import yaml
    from mcp.shared.exceptions import MCPError

    from proxy.auth.tokens import url_token_hmac
    from tests.integration.proxy_harness import start_proxy
    from tests.peers.clients import sse_client
    from tests.peers.harness import eventually

    key = "url-token-key-for-review-0123456789"
    keep, added = "keep-token-review-0001", "added-token-review-0002"
    upstream = sdk_upstream("legacy-sse")
    servers = [{"name": "keep", "token_hmac": url_token_hmac(key, keep), "methods": ["read"]}]
    proxy = start_proxy(tmp_path, upstream.base, {"auth": {"url_token_key": key}, "policy": {"reload_interval_s": 0},
                                                  "servers": servers})
    after: Any = None
    reloaded = False
    try:
        with contextlib.suppress(BaseExceptionGroup):
            async with sse_client(f"{proxy.base}/{keep}/sse", read_timeout=5) as peer:
                assert await peer.tool_names()
                config = yaml.safe_load(proxy.config_path.read_text())
                config["servers"].append({"name": "added", "token_hmac": url_token_hmac(key, added),
                                          "methods": ["read"]})
                proxy.config_path.write_text(yaml.safe_dump(config))
                proxy.handle.proc.send_signal(signal.SIGHUP)
                async with httpx.AsyncClient() as http:
                    async def added_served() -> bool:
                        async with http.stream("GET", f"{proxy.base}/{added}/sse") as r:
                            return r.status_code == 200

                    reloaded = await eventually(added_served)
                try:
                    async with asyncio.timeout(8):
                        after = await peer.tool_names()
                except (MCPError, TimeoutError) as exc:
                    after = exc
    finally:
        proxy.stop()
    assert reloaded, "the reload did not take effect"
    assert isinstance(after, list) and after, f"the unchanged server's legacy session broke: {after!r}"


async def test_concurrent_first_calls_wait_for_the_listing_under_way():
    """Two calls of a tool the inventory does not hold yet (an empty inventory after a restart, a
    client calling from its cached tool list): the first starts the listing; the second, arriving
    while it runs, sees `_last_fetch` a moment ago and is answered `Unknown tool` at once instead
    of waiting for the listing that is about to declare the tool."""
    gate, calls = asyncio.Event(), []
    tools = [{"name": VISIBLE, "inputSchema": {"type": "object"}}]

    async def fetch() -> list[dict[str, Any]]:
        calls.append(1)
        await gate.wait()
        return tools

    inventory = ToolInventory(fetch)
    first = asyncio.ensure_future(inventory.lookup(VISIBLE))
    await asyncio.sleep(0.01)  # the listing is under way
    second = asyncio.ensure_future(inventory.lookup(VISIBLE))
    await asyncio.sleep(0.01)
    gate.set()
    found = await asyncio.gather(first, second)
    assert len(calls) == 1
    assert [d is not None for d in found] == [True, True], "the second call was refused as an unknown tool"


# --- 13. definitions learnt from answers that are not tools/list answers -------------------------

async def test_a_tools_call_result_carrying_tools_does_not_redefine_a_tool():
    """Any result with a `tools` key is filtered as a page (right: a client might read it), but it
    is also *learnt*: a tools/call answer (data, not a declaration) replaces the declared schema,
    and the next call is checked against the schema the answer carried."""
    name = "get_single_missive_conversation_by_id"
    strict = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
              "additionalProperties": False}
    e = _enforcer([{"name": name, "inputSchema": strict}])
    channel = Channel("streamable_http", READ, protocol_version="2025-11-25", request_id=9)
    bad = {"id": 5, "extra": True}
    assert not (await e.client_message(channel, _call(name, bad, id=8))).allow  # checked against the declaration
    answer = to_message({"jsonrpc": "2.0", "id": 9, "result": {
        "content": [{"type": "text", "text": "ok"}], "tools": [{"name": name, "inputSchema": {"type": "object"}}]}})
    await e.server_message(channel, answer)  # the answer to a tools/call, on its POST's stream
    verdict = await e.client_message(Channel("streamable_http", READ, protocol_version="2025-11-25"),
                                     _call(name, bad, id=10))
    assert not verdict.allow, "arguments the declared schema refuses passed after a tools/call answer"
