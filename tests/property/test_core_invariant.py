"""Property tests of the core invariant (hypothesis).

    The policy decides on exactly what the upstream will act on; whatever the proxy cannot decide is
    refused, never relayed undecided.

Two real proxies (`proxy.app.create_app`, the bundled policies, one server `triage` with
`methods: [read]`, the decision log in a file with arguments unredacted), each served by uvicorn on
a real socket in front of an upstream written here: a raw asyncio HTTP/1.1 server on 127.0.0.1 that
records every request it receives (headers as sent, body bytes), answers the proxy's own tool
listing (user-agent `mcp-policy-proxy/… (tool listing)`) with TOOLS below, holds a legacy HTTP+SSE
session open, and answers client messages plainly — or, for the server-side properties, with the
answer the example generated. Proxy and upstream share one event loop in a background thread;
hypothesis drives a plain HTTP client from the test thread, one message at a time, so the
decision-log entries and upstream requests of an example are those that appeared while it ran (a
decision-log entry carries no JSON-RPC id to correlate by).

1. Client side, Streamable HTTP and legacy HTTP+SSE (`test_client_messages_*`): generated bodies
   and headers, valid, near-valid and hostile. Either nothing reached the upstream and the client
   was refused (a JSON-RPC error, a proxy-made tool error, 202 where nobody waits; on legacy SSE
   the answer on the stream), or the upstream received one request whose body is the canonical
   encoding of a valid message, whose method, name and arguments are those of the one allowed
   decision-log entry, with no underscore header names and only agreeing, allowed Mcp-* headers.
   Separately: what was relayed reads back equal to what the client sent, and refusals use the
   documented statuses.
2. Server side (`test_tool_listings_*`): generated upstream answers (pages as JSON or SSE, and
   arrays, BOMs, `"error": null`, no `jsonrpc`, repeated keys, `tools` not a list, nameless entries,
   trailing junk, wrong content types, SSE split across chunks, other event types, CRLF/LF/CR).
   Whatever the client receives, read by lenient readers (whole body as JSON whatever its type,
   SSE by the book, loose SSE; last-wins and first-wins keys), shows no tool name that a page
   decision of the example did not list as visible. One test per kind of reader, so each can pass
   on its own.
3. Known counterexamples, minimal and pinned (`test_known_counterexample_*`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from proxy.app import create_app
from proxy.config import parse
from tests.peers.harness import free_port

# --- the upstream's declared tools, and what the policy (server `triage`, methods [read]) shows ---

OPEN = {"type": "object"}
ROUTED_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string", "x-mcp-header": "Conversation"},
    "limit": {"type": "integer", "x-mcp-header": "Limit"},
    "flag": {"type": "boolean", "x-mcp-header": "Flag"},
}}
STRICT_SCHEMA = {"type": "object", "properties": {"limit": {"type": "integer"}}, "additionalProperties": False}
TOOLS: list[dict[str, Any]] = [
    {"name": "list_all_missive_conversations", "description": "read, any arguments", "inputSchema": OPEN},
    {"name": "get_single_missive_conversation_by_id", "description": "read, Mcp-Param headers",
     "inputSchema": ROUTED_SCHEMA},
    {"name": "list_all_missive_contacts", "description": "read, strict schema", "inputSchema": STRICT_SCHEMA},
    {"name": "peek", "description": "read by annotation", "annotations": {"readOnlyHint": True}, "inputSchema": OPEN},
    {"name": "create_a_missive_post", "description": "write: hidden", "inputSchema": OPEN},
    {"name": "delete_a_missive_post_by_id", "description": "write: hidden", "inputSchema": OPEN},
    {"name": "frobnicate", "description": "custom: hidden", "inputSchema": OPEN},
]
VISIBLE = ("list_all_missive_conversations", "get_single_missive_conversation_by_id", "list_all_missive_contacts",
           "peek")
HIDDEN = ("create_a_missive_post", "delete_a_missive_post_by_id", "frobnicate")
# Per tool: lowercase Mcp-Param-* header name → (argument, declared type).
PARAM_HEADERS = {"get_single_missive_conversation_by_id": {
    "mcp-param-conversation": ("id", "string"), "mcp-param-limit": ("limit", "integer"),
    "mcp-param-flag": ("flag", "boolean")}}
FORWARDED_MCP = {"mcp-protocol-version", "mcp-session-id", "mcp-method", "mcp-name"}
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
META_VERSION = "io.modelcontextprotocol/protocolVersion"
OWN_LISTING = "mcp-policy-proxy/"  # the user-agent prefix of the proxy's own tool listing

# Deterministic (derandomized, no example database) and bounded. Shrinking is off by default: a
# failing example is reported as generated (small enough to read), and a failing run stays within
# the time budget; PROPERTY_SHRINK=1 turns it on to minimise a new failure. The known
# counterexamples are pinned, minimal, in test_known_counterexample_* below.
PHASES = (Phase.explicit, Phase.generate, *((Phase.shrink,) if os.environ.get("PROPERTY_SHRINK") else ()))


def property_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    phases=PHASES, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CLIENT_SETTINGS = property_settings(600)
SERVER_SETTINGS = property_settings(400)


def _note(text: str) -> None:
    """hypothesis.note inside a property (shown with a failing example), nothing elsewhere."""
    if currently_in_test_context():
        note(text)


# --- JSON the way hostile peers write it: raw tokens and objects with duplicate keys ---

@dataclass(frozen=True)
class Raw:
    """A JSON text spliced in verbatim (numbers Python's json would not write, deep nesting)."""

    token: str


@dataclass(frozen=True)
class Obj:
    """An object as a list of pairs: keys may repeat."""

    pairs: tuple[tuple[str, Any], ...]


def dumps(value: Any, ascii: bool = True) -> str:
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, Obj | dict):
        pairs = value.pairs if isinstance(value, Obj) else tuple(value.items())
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii)}:{dumps(v, ascii)}" for k, v in pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v, ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii)


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate written raw: invalid UTF-8


def plain(value: Any) -> Any:
    """The value as a last-wins reader sees it (for building matching headers)."""
    if isinstance(value, Obj):
        return {k: plain(v) for k, v in value.pairs}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Raw):
        try:
            return json.loads(value.token)
        except (ValueError, RecursionError):
            return None
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(name)


_STRICT = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_no_constant)
_UNSET = object()


def reference_read(body: bytes) -> Any:
    """What the client sent, read by the book (RFC 8259, UTF-8, no BOM, unique keys); _UNSET if invalid."""
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            return _UNSET
        return _STRICT.decode(text)
    except (ValueError, RecursionError):
        return _UNSET


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (1, 1.0 and true differ; inf is not null)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --- the upstream ---

@dataclass
class Record:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    @property
    def own_listing(self) -> bool:
        return (self.header("user-agent") or "").startswith(OWN_LISTING)


@dataclass
class Answer:
    """An upstream answer as bytes on the wire: status, headers, body pieces, framing."""

    status: int
    headers: list[tuple[str, str]]
    pieces: list[bytes]
    framing: str = "length"  # length | chunked | close


class Upstream:
    """A raw HTTP/1.1 server: records every request, answers the proxy's own tool listing with
    TOOLS, a client message with `hostile` when set, else with something plain."""

    LEGACY_ENDPOINT = "/messages/?session_id=up-1"

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.hostile: Answer | None = None
        self.server: asyncio.Server | None = None
        self.port = 0
        self.closing = asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.closing.set()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
                length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
                body = await reader.readexactly(length) if length else b""
                record = Record(method, path, headers, body)
                self.records.append(record)
                if method == "GET" and path.startswith("/sse") and not record.own_listing:
                    await self._legacy_stream(writer)
                    return
                answer = self._answer(record)
                if not await _write(writer, answer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _legacy_stream(self, writer: asyncio.StreamWriter) -> None:
        """A legacy HTTP+SSE stream: the endpoint event, then nothing until the end (messages the
        proxy relays are answered 202; what they would answer does not matter here)."""
        event = f"event: endpoint\ndata: {self.LEGACY_ENDPOINT}\n\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await self.closing.wait()
        writer.write(b"0\r\n\r\n")

    def _answer(self, record: Record) -> Answer:
        if record.own_listing:
            return self._own_listing(record)
        if self.hostile is not None:
            return self.hostile
        if record.path.startswith("/messages/"):
            return Answer(202, [("content-type", "text/plain")], [b"Accepted"])
        if record.method != "POST":
            return Answer(405, [("allow", "POST")], [b""])
        try:
            msg = orjson.loads(record.body)
        except orjson.JSONDecodeError:
            return json_answer({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}, 400)
        if not (isinstance(msg, dict) and "method" in msg and "id" in msg):
            return Answer(202, [], [b""])
        method = msg["method"]
        if method == "tools/list":
            result: dict[str, Any] = {"tools": TOOLS}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "done"}], "isError": False}
        else:
            result = {}
        return json_answer({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    def _own_listing(self, record: Record) -> Answer:
        if record.method != "POST":
            return Answer(200, [], [b""])
        msg = orjson.loads(record.body)
        if "id" not in msg:
            return Answer(202, [], [b""])
        if msg["method"] == "tools/list":
            return json_answer({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}})
        if msg["method"] == "initialize":
            return json_answer({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "property-upstream", "version": "1"}}})
        return json_answer({"jsonrpc": "2.0", "id": msg["id"], "result": {}})


def json_answer(message: Any, status: int = 200) -> Answer:
    return Answer(status, [("content-type", "application/json")], [orjson.dumps(message)])


async def _write(writer: asyncio.StreamWriter, answer: Answer) -> bool:
    """Write one answer; False when the connection is to be closed."""
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 405: "Method Not Allowed"}.get(answer.status, "X")
    head = [f"HTTP/1.1 {answer.status} {reason}\r\n"] + [f"{n}: {v}\r\n" for n, v in answer.headers]
    body = b"".join(answer.pieces)
    if answer.framing == "length":
        writer.write(("".join([*head, f"content-length: {len(body)}\r\n\r\n"])).encode("latin-1") + body)
        await writer.drain()
        return True
    if answer.framing == "chunked":
        writer.write("".join([*head, "transfer-encoding: chunked\r\n\r\n"]).encode("latin-1"))
        for piece in answer.pieces:
            if piece:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.001)  # so the pieces arrive apart
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
    writer.write("".join([*head, "connection: close\r\n\r\n"]).encode("latin-1"))
    for piece in answer.pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.001)
    return False


# --- the proxy and the upstream on one background event loop ---

class World:
    """The proxy and the upstream on one event loop in a background thread. With `legacy`, a legacy
    HTTP+SSE session is opened through the proxy and its stream is read all along."""

    def __init__(self, workdir: Path, legacy: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="property-loop", daemon=True)
        self.thread.start()
        self.upstream = Upstream()
        self.log_path = workdir / "decisions.jsonl"
        self.log_offset = 0
        self.run(self.upstream.start())
        base = f"http://127.0.0.1:{self.upstream.port}"
        self.port = free_port()
        config = parse({
            "listen": {"host": "127.0.0.1", "port": self.port},
            "upstream": {"url": f"{base}/mcp", "sse_url": f"{base}/sse", "timeout_s": 5,
                         "headers": {"X-Proxy-Tenant": "acme"}},
            "policy": {"reload_interval_s": 0},
            "servers": [{"name": "triage", "methods": ["read"]}],
            "decision_log": {"sink": f"file:{self.log_path}", "redact_arguments": False},
        }, "<property test>")

        async def make_app() -> Any:  # on the loop's thread: the embedded engine must stay on one thread
            return create_app(config)

        self.app = self.run(make_app())
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                                    access_log=False))
        self.serving = asyncio.run_coroutine_threadsafe(self.server.serve(), self.loop)
        while not self.server.started:
            if self.serving.done():
                self.serving.result()
            threading.Event().wait(0.02)
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.http = httpx.Client(timeout=15)
        self.legacy_url: str | None = None
        self.legacy_messages: list[Any] = []  # what the proxy wrote on the legacy stream
        self._legacy_task: asyncio.Future[None] | None = None
        if legacy:
            self.run(self._open_legacy())

    async def _open_legacy(self) -> None:
        endpoint: asyncio.Future[str] = self.loop.create_future()
        client = httpx.AsyncClient(timeout=None)

        async def read() -> None:
            try:
                async with client.stream("GET", f"http://127.0.0.1:{self.port}/sse",
                                         headers={"accept": "text/event-stream"}) as resp:
                    buffer = b""
                    async for chunk in resp.aiter_bytes():
                        buffer += chunk
                        while b"\n\n" in buffer:
                            raw, buffer = buffer.split(b"\n\n", 1)
                            lines = raw.decode().split("\n")
                            data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
                            if "event: endpoint" in lines and not endpoint.done():
                                endpoint.set_result(data)
                            elif data:
                                self.legacy_messages.append(orjson.loads(data))
            finally:
                await client.aclose()

        self._legacy_task = asyncio.ensure_future(read())
        self.legacy_url = f"http://127.0.0.1:{self.port}{await asyncio.wait_for(endpoint, 10)}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.http.close()
        if self._legacy_task is not None:
            async def end_legacy() -> None:
                self._legacy_task.cancel()  # type: ignore[union-attr]
                await asyncio.gather(self._legacy_task, return_exceptions=True)

            self.run(end_legacy())
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            self.serving.result(10)
        self.run(self.upstream.stop())

        async def drop() -> None:  # the embedded engine must be dropped on the thread that made it
            self.app = self.server = None  # type: ignore[assignment]
            gc.collect()

        self.run(drop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # --- one example ---
    def begin(self) -> int:
        self.new_entries()  # anything left over belongs to no example
        return len(self.upstream.records)

    def new_entries(self) -> list[dict[str, Any]]:
        async def flush() -> None:
            self.app.decision_log.flush()

        self.run(flush())
        with self.log_path.open("rb") as fh:
            fh.seek(self.log_offset)
            data = fh.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        return [orjson.loads(line) for line in complete.splitlines() if line.strip()]

    def relayed_since(self, mark: int) -> list[Record]:
        return [r for r in self.upstream.records[mark:] if not r.own_listing]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("property"), legacy=True)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def server_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A second proxy: pages relayed here teach its tool inventory, which the client side must not see."""
    w = World(tmp_path_factory.mktemp("property-server"))
    try:
        yield w
    finally:
        w.close()


# =====================================================================================================
# 1. Client side
# =====================================================================================================

WEIRD_STRINGS = ["\ud800", "a\udfffb", "\ud83d\ude00", "\u0000", "\u2028", "\ufeff", "é", "😀",
                 "=?base64?cGVlaw==?=", "tools/call", " ", ""]
RAW_NUMBERS = ["1e400", "-1e400", "1E2", "-0", "-0.0", "1.0", "1e-400", "0.30000000000000000000001",
               "123456789012345678901234567890", "18446744073709551615", "18446744073709551616",
               "-9223372036854775808", "-9223372036854775809", "1.5e308"]
DEPTHS = [1, 50, 130, 249, 250, 251, 251, 252, 1100]  # 251: the decision log is one level deeper


def deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.integers(-(2 ** 66), 2 ** 66),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(WEIRD_STRINGS), st.sampled_from(RAW_NUMBERS).map(Raw),
)


def _dup_obj(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    return st.tuples(st.text(max_size=3), children, children, st.lists(st.tuples(st.text(max_size=3), children),
                                                                         max_size=2)).map(
        lambda t: Obj(((t[0], t[1]), *t[3], (t[0], t[2]))))


_nested = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children,
                                                                               max_size=3), _dup_obj(children)),
    max_leaves=6,
)
_deep = st.builds(deep, st.sampled_from(DEPTHS), st.sampled_from(["list", "object"]))
json_values = st.sampled_from(range(10)).flatmap(lambda i: _deep if i == 0 else _nested)
# Values of well-formed messages: no repeated keys, no lone surrogates, no deep nesting (odd numbers stay).
clean_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.integers(-(2 ** 63), 2 ** 64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
              st.sampled_from(["\ud83d\ude00", "\u0000", "\u2028", "\ufeff", "é"]),
              st.sampled_from(RAW_NUMBERS).map(Raw)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True one time in n (uniformly: hypothesis's integers lean towards their bounds)."""
    return bool(draw(st.sampled_from(range(n))) == 0)

MISSING = object()
IDS = st.one_of(st.integers(-(2 ** 65), 2 ** 65), st.text(max_size=6), st.none(), st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False), st.just([1]), st.just({"a": 1}),
                st.sampled_from(RAW_NUMBERS).map(Raw))
TOOL_NAMES = st.one_of(
    st.sampled_from([*VISIBLE, *VISIBLE, *HIDDEN]),
    st.sampled_from(["list_all_missive_users", "List_All_Missive_Conversations", "\uff50\uff45\uff45\uff4b",
                     "peek ", "p" * 129, "", "=?base64?cGVlaw==?="]),
    st.text(max_size=8), st.integers(), st.none(),
)
METHODS = ["tools/call"] * 8 + ["tools/list", "ping", "initialize", "resources/read", "prompts/get",
                                "completion/complete", "logging/setLevel", "sampling/createMessage", "tools/Call",
                                "notifications/initialized", "notifications/cancelled", ""]


@st.composite
def routed_arguments(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    """Arguments of the tool with x-mcp-header properties, mostly of the declared types."""
    args: dict[str, Any] = {}
    if draw(st.booleans()):
        args["id"] = draw(st.one_of(st.text(max_size=6), st.sampled_from(["c-1", "é", " x", "=?base64?eA==?="]),
                                    st.integers(), st.none()))
    if draw(st.booleans()):
        args["limit"] = draw(st.one_of(st.integers(-5, 2 ** 40), st.just(42.0), st.booleans(), st.text(max_size=3)))
    if draw(st.booleans()):
        args["flag"] = draw(st.one_of(st.booleans(), st.integers(0, 1), st.none()))
    if one_in(draw, 5):
        args["other"] = draw(values)
    return args


@st.composite
def arguments_for(draw: st.DrawFn, name: Any, odd: bool, values: st.SearchStrategy[Any]) -> Any:
    shape = draw(st.sampled_from(["object"] * 8 + ["missing", "null", "deep", "deep"]
                                 + (["list", "string", "number", "dup", "dup"] if odd else [])))
    if shape == "deep":  # valid, but nested around the limits of the encoder, the engine and the decision log
        depth = draw(st.sampled_from([100, 130, 250, 251, 251, 252]))
        return {"x": deep(depth, draw(st.sampled_from(["list", "object"])))}
    if shape == "missing":
        return MISSING
    if shape == "null":
        return None
    if shape == "list":
        return draw(st.lists(scalars, max_size=2))
    if shape == "string":
        return draw(st.text(max_size=4))
    if shape == "number":
        return draw(st.integers() | st.sampled_from(RAW_NUMBERS).map(Raw))
    if name == "get_single_missive_conversation_by_id" and draw(st.booleans()):
        args: Any = draw(routed_arguments(values))
    elif name == "list_all_missive_contacts" and draw(st.booleans()):
        args = {"limit": draw(st.integers(-3, 100) | st.text(max_size=2))} if draw(st.booleans()) else {}
    else:
        args = draw(st.dictionaries(st.text(max_size=5), values, max_size=4))
    if shape == "dup":
        key = draw(st.sampled_from([*args.keys(), "id", "x"]))
        first = draw(json_values)
        return Obj(((key, first), *((k, v) for k, v in args.items() if k != key), (key, args.get(key, 2))))
    return args


@dataclass
class ClientCase:
    transport: str  # streamable (POST /mcp) | legacy (POST /messages/?session_id=… of an open /sse stream)
    body: bytes
    headers: list[tuple[str, str]]
    layout: str  # what kind of message was meant (for statistics)


def _render(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def b64_header(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode() + "?="


def _header_value(draw: st.DrawFn, right: str | None, wrong: list[str]) -> list[str]:
    """Values for one routing header: absent, agreeing (plain, base64, other case), disagreeing, repeated."""
    modes = ["absent", "other", "dup"] + (["match"] * 3 + ["b64", "case"] if right is not None else [])
    mode = draw(st.sampled_from(modes))
    if right is not None and not _ascii_header(right) and mode in ("match", "case"):
        mode = "b64"
    if mode == "absent":
        return []
    if mode == "other" or right is None:
        return [draw(st.sampled_from(wrong))] + ([draw(st.sampled_from(wrong))] if mode == "dup" else [])
    if mode == "match":
        return [right]
    if mode == "b64":
        return [b64_header(right)]
    if mode == "case":
        return [right.upper()]
    return [right if _ascii_header(right) else b64_header(right), draw(st.sampled_from([right, *wrong]))
            if _ascii_header(right) else draw(st.sampled_from(wrong))]


def _ascii_header(value: str) -> bool:
    return all(" " <= c <= "~" for c in value) and value == value.strip()


@st.composite
def client_cases(draw: st.DrawFn) -> ClientCase:
    # About half the cases are well-formed messages (so that the decided-and-relayed path is walked
    # often), the others are bent in one or more places.
    odd = draw(st.booleans())
    values = json_values if odd else clean_values

    def bent(percent: int) -> bool:
        return odd and draw(st.sampled_from(range(100))) < percent

    layout = draw(st.sampled_from(["request"] * 12 + ["notification", "notification", "response", "response",
                                                      "tools/call notification"]
                                  + (["scalar", "batch"] if odd else [])))
    pairs: list[tuple[str, Any]] = []
    if bent(15):
        jsonrpc = draw(st.sampled_from(["1.0", 2.0, None, MISSING]))
        if jsonrpc is not MISSING:
            pairs.append(("jsonrpc", jsonrpc))
    else:
        pairs.append(("jsonrpc", "2.0"))
    method: Any = MISSING
    name: Any = MISSING
    arguments: Any = MISSING
    modern = False
    if layout in ("request", "notification", "tools/call notification"):
        if layout == "tools/call notification":
            method = "tools/call"
        elif bent(15):
            method = draw(st.text(max_size=6) | st.integers() | st.none())
        else:
            method = draw(st.sampled_from(METHODS))
        if layout == "request":
            pairs.append(("id", draw(IDS if bent(20) else st.integers(-(2 ** 53), 2 ** 53) | st.text(max_size=6))))
        pairs.append(("method", method))
        params_shape = draw(st.sampled_from(["missing", "list", "string", "null"])) if bent(10) else "object"
        if params_shape == "object":
            params: list[tuple[str, Any]] = []
            if method in ("tools/call", "prompts/get") or one_in(draw, 6):
                name = draw(TOOL_NAMES if bent(40) else st.sampled_from([*VISIBLE, *VISIBLE, *HIDDEN]))
                if name is not None or draw(st.booleans()):
                    params.append(("name", name))
                else:
                    name = MISSING
            if method == "resources/read":
                name = draw(st.sampled_from(["file:///a", "missive://conversations", ""]) | st.integers())
                params.append(("uri", name))
            if method == "tools/call":
                arguments = draw(arguments_for(name, odd, values))
                if arguments is not MISSING:
                    params.append(("arguments", arguments))
            if one_in(draw, 3):
                modern = True
                version = draw(st.sampled_from(["2026-07-28"] * 4 + ["2025-11-25", "junk"]) | st.integers()) \
                    if odd else "2026-07-28"
                params.append(("_meta", {META_VERSION: version, "io.modelcontextprotocol/clientCapabilities": {}}))
            if one_in(draw, 7):
                params.append(("cursor", draw(values)))
            if bent(15) and params:  # a repeated key inside params
                key, _ = draw(st.sampled_from(params))
                params.append((key, draw(st.sampled_from([*VISIBLE, *HIDDEN]) | json_values)))
            pairs.append(("params", Obj(tuple(params))))
        elif params_shape != "missing":
            pairs.append(("params", {"list": [1], "string": "p", "null": None}[params_shape]))
    elif layout == "response":
        pairs.append(("id", draw(IDS if bent(30) else st.integers(0, 99))))
        if draw(st.booleans()):
            pairs.append(("result", draw(values)))
        else:
            errors = [{"code": -1, "message": "no"}] + ([None, "x", {"code": "1"}] if odd else [])
            pairs.append(("error", draw(st.sampled_from(errors))))
    if bent(15):  # a stray or repeated top-level key
        pairs.append(draw(st.sampled_from([("result", {}), ("error", None), ("extra", 1), ("method", "tools/call"),
                                           ("id", 7), ("params", {"name": "create_a_missive_post"}),
                                           ("jsonrpc", "2.0")])))
    if layout == "scalar":
        document: Any = draw(scalars | st.just([]))
    elif layout == "batch":
        document = [Obj(tuple(pairs)), {"jsonrpc": "2.0", "method": "ping", "id": 2}]
    else:
        document = Obj(tuple(pairs))

    text = dumps(document, ascii=draw(st.booleans()))
    wrapper = draw(st.sampled_from(["bom", "trailing", "junk", "space", "newline", "second"])) if bent(25) else "none"
    text = {"none": text, "bom": "\ufeff" + text, "trailing": text + " x", "junk": text + "}",
            "space": "  " + text + " \t", "newline": text + "\n", "second": text + text}[wrapper]
    body = to_bytes(text)

    # --- headers ---
    headers: list[tuple[str, str]] = [("content-type", "application/json"),
                                      ("accept", "application/json, text/event-stream")]
    body_method = method if isinstance(method, str) else None
    body_name = name if isinstance(name, str) else None
    if not bent(50):  # headers that agree with the body
        version = _get(plain(Obj(tuple(pairs))), "params", "_meta", META_VERSION)
        if isinstance(version, str):
            headers.append(("mcp-protocol-version", version))
        elif draw(st.booleans()):
            headers.append(("mcp-protocol-version", draw(st.sampled_from(["2025-06-18", "2025-11-25"]))))
        if body_method is not None and _ascii_header(body_method) and (modern or draw(st.booleans())):
            headers.append(("mcp-method", body_method))
        if body_method in NAME_PARAMS and body_name is not None and (modern or draw(st.booleans())):
            headers.append(("mcp-name", body_name if _ascii_header(body_name) else b64_header(body_name)))
    else:
        for value in _header_value(draw, "2026-07-28" if modern else None, ["2025-06-18", "2026-07-28", "x"]):
            headers.append(("MCP-Protocol-Version", value))
        right = body_method if body_method is not None and _ascii_header(body_method) else None
        for value in _header_value(draw, right, ["tools/call", "tools/list", "ping", "Tools/Call"]):
            headers.append(("Mcp-Method", value))
        right = body_name
        for value in _header_value(draw, right, [*VISIBLE, *HIDDEN, "=?base64?!!?="]):
            headers.append(("Mcp-Name", value))

    # Mcp-Param-* for the routed tool (agreeing when the arguments allow it), and stray ones.
    args = plain(arguments) if arguments is not MISSING else None
    routed = name == "get_single_missive_conversation_by_id"
    if isinstance(args, dict) and ((routed and not bent(30)) or one_in(draw, 4)):
        for header, (arg, _) in PARAM_HEADERS["get_single_missive_conversation_by_id"].items():
            rendered = _render(args.get(arg)) if args.get(arg) is not None else None
            modes = ["match", "match", "match", "b64"] + (["absent", "wrong", "dup"] if odd else [])
            mode = draw(st.sampled_from(modes))
            if mode == "absent" or (rendered is None and mode != "wrong"):
                continue
            if mode == "wrong":
                headers.append((header, draw(st.sampled_from(["c-2", "0", "true", "=?base64?!!?="]))))
            elif rendered is not None and (mode == "b64" or not _ascii_header(rendered)):
                headers.append((header, b64_header(rendered)))
            else:
                headers.append((header, rendered))  # type: ignore[arg-type]
                if mode == "dup":
                    headers.append((header, draw(st.sampled_from([rendered, "other"]))))  # type: ignore[list-item]
    # Underscore look-alikes of the routing headers (a CGI layer reads mcp_method as Mcp-Method),
    # Mcp-* fields the proxy does not know, and (bent) a session id of nobody's.
    extras = [("mcp_method", "tools/call"), ("mcp_name", "create_a_missive_post"), ("mcp_session_id", "s-1"),
              ("mcp_protocol_version", "2026-07-28"), ("mcp_param_conversation", "c-9"), ("Mcp_Method", "ping"),
              ("x_forwarded_user", "admin"), ("mcp-other", "1"), ("mcp-param-other", "1"), ("mcp-param-limit", "3"),
              ("x-client-note", "hello")] + ([("mcp-session-id", "forged")] if odd else [])
    headers += draw(st.lists(st.sampled_from(extras), max_size=3, unique=True))
    transport = draw(st.sampled_from(["streamable", "streamable", "streamable", "legacy"]))
    return ClientCase(transport, body, headers, ("bent " if odd else "") + layout)


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _id_of(doc: Any) -> Any:
    return doc.get("id") if isinstance(doc, dict) else None


def _is_request(sent: Any) -> bool:
    return isinstance(sent, dict) and "method" in sent and "id" in sent


def _refusal_message(answer: Any, sent: Any, status: int) -> None:
    """A JSON-RPC error, or (status 200) a proxy-made tool error result, answering `sent`."""
    assert isinstance(answer, dict) and answer.get("jsonrpc") == "2.0", answer
    if "error" in answer:
        error = answer["error"]
        assert isinstance(error, dict) and isinstance(error.get("code"), int) \
            and isinstance(error.get("message"), str), answer
        assert answer.get("id") is None or same(answer["id"], _id_of(sent)), (answer, sent)
        return
    result = answer.get("result")
    assert status == 200 and isinstance(result, dict) and result.get("isError") is True, \
        f"a message that never reached the upstream was answered with something other than an error: {answer}"
    assert same(answer.get("id"), _id_of(sent)), (answer, sent)


DOCUMENTED = (200, 400, 403, 404, 413, 502, 503)  # docs/transports.md, docs/policy-input.md


@dataclass
class Exchange:
    """One client message sent through the proxy, and what came of it."""

    case: ClientCase
    resp: httpx.Response
    sent: Any  # the body read by the book (_UNSET if it is not one valid JSON text)
    relayed: list[Record]
    decided: list[dict[str, Any]]  # client→server decision-log entries
    stream: list[Any]  # messages the proxy wrote on the legacy stream meanwhile


def exchange(world: World, case: ClientCase) -> Exchange:
    mark, stream_mark = world.begin(), len(world.legacy_messages)
    url = world.url if case.transport == "streamable" else world.legacy_url
    assert url is not None
    resp = world.http.post(url, content=case.body, headers=case.headers)
    sent = reference_read(case.body)
    if case.transport == "legacy" and resp.status_code == 202 and _is_request(sent) and not world.relayed_since(mark):
        for _ in range(200):  # a refused request's answer travels on the stream
            if len(world.legacy_messages) > stream_mark:
                break
            threading.Event().wait(0.01)
    entries = world.new_entries()
    decided = [e for e in entries if e["input"]["message"]["direction"] == "client_to_server"]
    ex = Exchange(case, resp, sent, world.relayed_since(mark), decided, world.legacy_messages[stream_mark:])
    _note(f"{case.transport}: status {resp.status_code}: {resp.content[:400]!r}; on the stream: {ex.stream}")
    _note(f"upstream received: {[(r.method, r.path, r.headers, r.body[:400]) for r in ex.relayed]}")
    _note(f"decisions: {[(e['input']['message'], e['input'].get('tool'), e['result']) for e in decided]}")
    return ex


def check_refused(ex: Exchange, documented: bool) -> str:
    """Nothing reached the upstream: the client must have been told so (202 only where nobody waits
    for an answer, or, on legacy SSE, with the answer on the stream)."""
    resp, sent = ex.resp, ex.sent
    if resp.status_code == 202:
        if ex.case.transport == "legacy":
            assert resp.content == b"Accepted", resp.content
            if _is_request(sent):
                assert len(ex.stream) == 1, f"a refused request got {ex.stream} on the legacy stream"
                _refusal_message(ex.stream[0], sent, 200)
        else:
            assert resp.content == b"", f"202 with a body: {resp.content!r}"
            assert isinstance(sent, dict) and not _is_request(sent), \
                "a request was answered 202 and never reached the upstream"
        return "refused 202"
    if documented:
        assert resp.status_code in DOCUMENTED, \
            f"undocumented status {resp.status_code} for a refused message: {resp.content[:300]!r}"
    _refusal_message(orjson.loads(resp.content), sent, resp.status_code)
    why = _get(orjson.loads(resp.content), "error", "message")
    return f"refused {resp.status_code} {str(why)[:40]}"


def check_headers(record: Record, message: dict[str, Any]) -> None:
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    method = message.get("method")
    for name, value in record.headers:
        lname = name.lower()
        assert "_" not in lname, f"a header with an underscore reached the upstream: {name}: {value}"
        if not lname.startswith("mcp-"):
            continue
        if lname == "mcp-method":
            assert value == method, f"Mcp-Method {value!r} but the body's method is {method!r}"
        elif lname == "mcp-name":
            key = NAME_PARAMS.get(method or "")
            assert key is not None, f"Mcp-Name {value!r} reached the upstream with method {method!r}"
            assert _decode_mcp(value) == params.get(key), f"Mcp-Name {value!r} but params.{key} is {params.get(key)!r}"
        elif lname.startswith("mcp-param-"):
            tool = params.get("name")
            declared = PARAM_HEADERS.get(tool, {}) if method == "tools/call" and isinstance(tool, str) else {}
            assert lname in declared, f"{name} reached the upstream for a tool that does not declare it ({message})"
            arg, kind = declared[lname]
            arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
            assert _param_matches(kind, arguments.get(arg), _decode_mcp(value)), \
                f"{name}: {value!r} but argument {arg} is {arguments.get(arg)!r}"
        else:
            assert lname in FORWARDED_MCP, f"{name}: {value!r} reached the upstream"
    mcp_names = [n.lower() for n, _ in record.headers if n.lower().startswith("mcp-")]
    assert len(mcp_names) == len(set(mcp_names)), f"a repeated Mcp-* header reached the upstream: {record.headers}"


def _decode_mcp(value: str) -> str:
    if value.startswith("=?base64?") and value.endswith("?="):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    return value


def _param_matches(kind: str, value: Any, decoded: str) -> bool:
    if value is None:
        return False
    if kind == "integer" and not isinstance(value, bool) and isinstance(value, int | float) \
            and float(value).is_integer() and re.fullmatch(r"-?\d+(\.0+)?", decoded):
        return int(decoded.split(".")[0]) == int(value)
    return _render(value) == decoded


def check_decided(ex: Exchange) -> str:
    """Invariant 1: refused and not relayed, or relayed exactly as decided."""
    if not ex.relayed:
        return check_refused(ex, documented=False)
    case, sent = ex.case, ex.sent
    assert len(ex.relayed) == 1, f"one client message, {len(ex.relayed)} upstream requests"
    record = ex.relayed[0]
    path = "/mcp" if case.transport == "streamable" else Upstream.LEGACY_ENDPOINT
    assert (record.method, record.path) == ("POST", path), record
    forwarded = orjson.loads(record.body)
    assert orjson.dumps(forwarded) == record.body, "the upstream's body is not the canonical encoding"
    # Only one valid JSON text with unique keys may be relayed (else what did the policy see?).
    assert sent is not _UNSET, f"an invalid body was relayed: {case.body[:300]!r}"
    assert isinstance(forwarded, dict) and forwarded.get("jsonrpc") == "2.0", forwarded
    check_headers(record, forwarded)

    # ...and it is what the policy decided on.
    assert len(ex.decided) == 1, f"{len(ex.decided)} client decisions for one relayed message: {ex.decided}"
    entry = ex.decided[0]
    assert entry["result"].get("allow") is True, f"relayed although the decision was {entry['result']}"
    message = entry["input"]["message"]
    params = forwarded.get("params") if isinstance(forwarded.get("params"), dict) else {}
    if "method" in forwarded:
        kind = "request" if "id" in forwarded else "notification"
        assert message["kind"] == kind and message["method"] == forwarded["method"], (message, forwarded)
        key = NAME_PARAMS.get(forwarded["method"])
        name = params.get(key) if key else None
        assert message["name"] == (name if isinstance(name, str) else None), (message, forwarded)
    else:
        assert message["kind"] == "response", (message, forwarded)
    if forwarded.get("method") == "tools/call" and "id" in forwarded:
        tool = entry["input"].get("tool")
        assert tool is not None and tool["name"] == params.get("name"), (tool, forwarded)
        upstream_args = params.get("arguments")
        if upstream_args is None:  # absent or null: the tool runs without arguments (the policy sees {})
            upstream_args = {}
        assert same(tool["arguments"], upstream_args), \
            f"the policy decided on arguments {tool['arguments']!r}, the upstream got {upstream_args!r}"
        params_sent = sorted(n.lower() for n, _ in record.headers if n.lower().startswith("mcp-param-"))
        return f"relayed tools/call {params.get('name')} {' '.join(params_sent)}"
    return f"relayed {message['kind']}"


def check_faithful(ex: Exchange) -> str:
    """What is relayed is what the client sent (the re-encoding changed nothing), and what is
    refused is refused with a documented answer."""
    if not ex.relayed:
        return check_refused(ex, documented=True)
    forwarded = orjson.loads(ex.relayed[-1].body)
    assert same(forwarded, ex.sent), \
        f"the upstream received {ex.relayed[-1].body[:300]!r} for the client's {ex.case.body[:300]!r}"
    return "relayed"


@CLIENT_SETTINGS
@given(case=client_cases())
def test_client_messages_reach_the_upstream_only_as_decided(world: World, case: ClientCase) -> None:
    """Invariant 1 (client side): refused, or relayed as the canonical encoding of what was decided."""
    event(f"{case.transport} {case.layout}: {check_decided(exchange(world, case))}")


@CLIENT_SETTINGS
@given(case=client_cases())
def test_client_messages_are_relayed_unchanged_or_refused_as_documented(world: World, case: ClientCase) -> None:
    """What the upstream acts on is what the client asked for; refusals are the documented ones."""
    event(f"{case.transport} {case.layout}: {check_faithful(exchange(world, case))}")


# =====================================================================================================
# 2. Server side
# =====================================================================================================

PAGE_NAMES = st.one_of(
    st.sampled_from([*VISIBLE, *HIDDEN, *HIDDEN]),
    st.sampled_from(["list_all_missive_users", "create_a_missive_draft", "LIST_ALL_x", "peek "]),
    st.text(max_size=6),
)


@st.composite
def tool_entries(draw: st.DrawFn, odd: bool) -> Any:
    shapes = ["plain"] * 6 + ["readonly"] + (["nameless", "int name", "dup name", "not object"] if odd else [])
    shape = draw(st.sampled_from(shapes))
    if shape == "not object":
        return draw(st.sampled_from(["create_a_missive_post", 5, None, ["frobnicate"]]))
    name = draw(PAGE_NAMES)
    pairs: list[tuple[str, Any]] = []
    if shape == "int name":
        pairs.append(("name", draw(st.integers())))
    elif shape == "dup name":
        pairs += [("name", name), ("name", draw(PAGE_NAMES))]
    elif shape != "nameless":
        pairs.append(("name", name))
    else:
        pairs.append(("title", name))
    pairs.append(("inputSchema", {"type": "object"}))
    if shape == "readonly":  # a name the catalog does not know, made read (visible) by its annotation
        pairs.append(("annotations", {"readOnlyHint": True}))
    return Obj(tuple(pairs))


@st.composite
def pages(draw: st.DrawFn, odd: bool) -> Any:
    tools = draw(st.lists(tool_entries(odd), max_size=5))
    shape = draw(st.sampled_from(["list"] * 6 + ["dup tools", "dict", "string", "null", "missing"])) if odd else "list"
    pairs: list[tuple[str, Any]] = []
    if shape == "list":
        pairs.append(("tools", tools))
    elif shape == "dup tools":
        other = draw(st.lists(tool_entries(odd), max_size=3))
        pairs += [("tools", tools), ("tools", other)] if draw(st.booleans()) else [("tools", other), ("tools", tools)]
    elif shape == "dict":
        pairs.append(("tools", Obj(tuple((f"t{i}", t) for i, t in enumerate(tools)))))
    elif shape != "missing":
        pairs.append(("tools", {"string": "create_a_missive_post", "null": None}[shape]))
    if one_in(draw, 4):
        pairs.append(("nextCursor", draw(st.sampled_from(["c2", None, 3] if odd else ["c2", None]))))
    if one_in(draw, 4):
        pairs += [("ttlMs", 60000), ("cacheScope", "public")]
    return Obj(tuple(pairs))


@st.composite
def answer_messages(draw: st.DrawFn, request_id: int, odd: bool, dup: bool = False) -> Any:
    pairs: list[tuple[str, Any]] = []
    if dup:  # repeated keys wherever a reader could pick another one
        shape = draw(st.sampled_from(["dup result", "dup result", "page"]))
    elif odd:
        shape = draw(st.sampled_from(["page"] * 3 + ["no jsonrpc", "jsonrpc 1.0", "error null", "error too",
                                                      "dup result", "other id", "no id", "notification", "request",
                                                      "error only"]))
    else:
        shape = "page"
    if shape != "no jsonrpc":
        pairs.append(("jsonrpc", "1.0" if shape == "jsonrpc 1.0" else "2.0"))
    if shape == "other id":
        pairs.append(("id", draw(st.sampled_from([request_id + 1, str(request_id), None, True]))))
    elif shape not in ("no id", "notification"):
        pairs.append(("id", request_id))
    page = draw(pages(odd))
    if shape in ("notification", "request"):  # a message with a method (and a result it cannot carry)
        pairs += [("method", "roots/list" if shape == "request" else "notifications/message"), ("result", page)]
    elif shape == "error only":
        pairs.append(("error", {"code": -1, "message": "no", "data": Obj((("tools", [{"name": "frobnicate"}]),))}))
    else:
        pairs.append(("result", page))
    if shape == "error null":
        pairs.append(("error", None))
    elif shape == "error too":
        pairs.append(("error", {"code": 1, "message": "x"}))
    elif shape == "dup result":
        other = draw(st.sampled_from([{}, {"content": []}, {"tools": []}]) | pages(odd))
        pairs = [*pairs, ("result", other)] if not one_in(draw, 3) else [("result", other), *pairs]
    return Obj(tuple(pairs))


@st.composite
def answer_texts(draw: st.DrawFn, request_id: int, odd: bool, dup: bool = False) -> str:
    shape = draw(st.sampled_from(["one"] * 4 + ["array", "scalar"])) if odd and not dup else "one"
    if shape == "array":
        doc: Any = draw(st.lists(answer_messages(request_id, odd), min_size=1, max_size=2))
    elif shape == "scalar":
        doc = draw(st.sampled_from([5, "create_a_missive_post", None]))
    else:
        doc = draw(answer_messages(request_id, odd, dup))
    text = dumps(doc, ascii=draw(st.booleans()))
    wrap = draw(st.sampled_from(["none"] * 3 + ["bom", "junk", "second", "space", "newline"])) if odd else "none"
    return {"none": text, "bom": "\ufeff" + text, "junk": text + " junk", "second": text + "\n" + text,
            "space": " " + text + " ", "newline": text + "\n"}[wrap]


def _split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, max(len(data), 1)), max_size=3))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return [p for p in pieces if p] or [b""]


JSON_TYPES = ["application/json; charset=utf-8", "text/plain", "text/html", "", "application/problem+json",
              "application/octet-stream", "text/json", "application/json, text/event-stream", "text/event-stream"]
SSE_TYPES = ["text/event-stream; charset=utf-8", "application/json", "text/plain", ""]
DATA_FIELDS = ["data:", "data :", "Data: ", " data: "]


@st.composite
def sse_events(draw: st.DrawFn, request_id: int, newline: str, odd: bool, dup: bool = False) -> str:
    kinds = ["message"] * 4 + ["typed", "priming"] + (["other type", "comment"] if odd else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "priming":
        return f"id: p-1{newline}data:{newline}{newline}"
    if kind == "comment":
        return f": {draw(answer_texts(request_id, odd))}{newline}{newline}"
    text = draw(answer_texts(request_id, odd, dup))
    lines = text.split("\n")
    if len(lines) == 1 and one_in(draw, 4):  # one JSON text over several data lines
        cut = draw(st.integers(0, len(text)))
        lines = [text[:cut], text[cut:]]
    field = draw(st.sampled_from(DATA_FIELDS)) if odd and one_in(draw, 3) else "data: "
    out = []
    if kind == "typed":
        out.append("event: message")
    elif kind == "other type":
        out.append("event: " + draw(st.sampled_from(["foo", "Message", "", " message", "endpoint", "error"])))
    if one_in(draw, 4):
        out.append(f"id: {draw(st.integers(0, 99))}")
    out += [field + line for line in lines]
    return newline.join(out) + newline + newline


@st.composite
def hostile_answers(draw: st.DrawFn, request_id: int, statuses: tuple[int, ...], dup: bool = False) -> Answer:
    """An upstream answer: half the time well-formed (a page as JSON or SSE), else bent (with `dup`:
    always with repeated keys)."""
    odd = dup or draw(st.booleans())
    status = draw(st.sampled_from(statuses))
    if draw(st.booleans()):
        newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        events = draw(st.lists(sse_events(request_id, newline, odd, dup), min_size=1, max_size=3))
        text = "".join(events)
        if odd and one_in(draw, 3):
            text = "\ufeff" + text  # a BOM at the start of the stream (SSE clients skip it)
        if odd and one_in(draw, 6):
            text = text[:-len(newline)]  # the last event unterminated
        ctype = draw(st.sampled_from(SSE_TYPES)) if odd and one_in(draw, 3) else "text/event-stream"
    else:
        text = draw(answer_texts(request_id, odd, dup))
        ctype = draw(st.sampled_from(JSON_TYPES)) if odd and one_in(draw, 3) else "application/json"
    data = to_bytes(text)
    framing = draw(st.sampled_from(["length", "chunked", "chunked", "close"]))
    headers = [("content-type", ctype)] if ctype else []
    return Answer(status, headers, _split(draw, data) if framing != "length" else [data], framing)


@dataclass
class ServerCase:
    via: str  # post (a client request answered with the answer) | get (the answer is the GET stream's)
    client_method: str
    request_id: int
    answer: Answer = field(repr=False)

    def __repr__(self) -> str:
        return (f"ServerCase(via={self.via!r}, client_method={self.client_method!r}, id={self.request_id}, "
                f"status={self.answer.status}, headers={self.answer.headers}, framing={self.answer.framing!r}, "
                f"body={b''.join(self.answer.pieces)!r}, pieces={[len(p) for p in self.answer.pieces]})")


@st.composite
def server_cases(draw: st.DrawFn, statuses: tuple[int, ...], dup: bool = False) -> ServerCase:
    via = draw(st.sampled_from(["post", "post", "get"]))
    method = draw(st.sampled_from(["tools/list"] * 3 + ["ping", "tools/call", "initialize"]))
    request_id = draw(st.integers(1, 1000))
    return ServerCase(via, method, request_id, draw(hostile_answers(request_id, statuses, dup)))


# --- what a lenient client would read in what it received ---

_LINE = re.compile(r"\r\n|\r|\n")


def _lenient_documents(text: str) -> list[tuple[str, Any]]:
    """(key rule, value) of the JSON value a lenient reader finds at the start of `text`: BOM and
    whitespace stripped, trailing data ignored; duplicate keys read last-wins (as the MCP SDKs'
    parsers do) and first-wins."""
    text = text.strip().lstrip("\ufeff").strip()
    found = []
    for rule, hook in (("last-wins", None), ("first-wins", _first_wins)):
        with contextlib.suppress(ValueError, RecursionError):
            found.append((rule, json.JSONDecoder(object_pairs_hook=hook).raw_decode(text)[0]))
    return found


def candidate_texts(body: bytes) -> list[tuple[str, str]]:
    """(reader, text) pairs for the readers a client may use:

    - "json": the whole body as one JSON text (whatever the Content-Type said);
    - "sse": each event's data as an SSE client joins it (WHATWG: a BOM at the stream's start is
      skipped; lines end with CRLF, LF or CR; field name exactly `data`) — the TypeScript SDK's
      TextDecoderStream + eventsource-parser, for one;
    - "loose": every data-like line on its own, read the way hand-written SSE readers do (BOM
      anywhere, spaces around the field name, any case), and an unterminated last event.
    """
    text = body.decode("utf-8", "replace")
    out = [("json", text)]
    event_data: list[str] = []
    for line in _LINE.split(text.removeprefix("\ufeff")):
        if not line:
            if event_data:
                out.append(("sse", "\n".join(event_data)))
            event_data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            event_data.append(value[1:] if value.startswith(" ") else value)
        loose = re.match(r"\s*\ufeff?\s*data\s*:\s?(.*)", line, re.IGNORECASE | re.DOTALL)
        if loose:
            out.append(("loose", loose.group(1)))
    if event_data:
        out.append(("loose", "\n".join(event_data)))
    return out


def tool_names_in(doc: Any) -> set[str]:
    """Names inside anything that looks like a tools/list result: `result.tools` of a message, or of
    a message inside an array; `tools` as a list, or as an object of entries."""
    names: set[str] = set()
    for msg in doc if isinstance(doc, list) else [doc]:
        result = msg.get("result") if isinstance(msg, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        entries = tools if isinstance(tools, list) else list(tools.values()) if isinstance(tools, dict) else []
        for entry in entries:
            if isinstance(entry, dict) and "name" in entry:
                names.add(entry["name"] if isinstance(entry["name"], str) else json.dumps(entry["name"]))
    return names


def seen_by_client(body: bytes) -> dict[tuple[str, str], set[str]]:
    """(reader, key rule) → the tool names that reader finds in what the client received."""
    seen: dict[tuple[str, str], set[str]] = {}
    for reader, text in candidate_texts(body):
        for rule, doc in _lenient_documents(text):
            if names := tool_names_in(doc):
                seen.setdefault((reader, rule), set()).update(names)
    return seen


@dataclass
class Listing:
    case: ServerCase
    resp: httpx.Response
    visible: set[str]  # every name a page decision of this example made visible
    seen: dict[tuple[str, str], set[str]]

    def leaked(self, readers: set[tuple[str, str]]) -> set[str]:
        return set().union(*(names for key, names in self.seen.items() if key in readers)) - self.visible

    def describe(self, leaked: set[str]) -> str:
        return (f"the client may read tool names the policy did not make visible: {sorted(leaked)} (visible: "
                f"{sorted(self.visible)}); it received {self.resp.status_code} "
                f"{self.resp.headers.get('content-type')!r}: {self.resp.content[:600]!r}")


def listing(world: World, case: ServerCase) -> Listing:
    world.begin()
    world.upstream.hostile = case.answer
    try:
        if case.via == "get":
            resp = world.http.get(world.url, headers={"accept": "text/event-stream"})
        else:
            params: dict[str, Any] = {}
            if case.client_method == "tools/call":
                params = {"name": "list_all_missive_conversations", "arguments": {}}
            message = {"jsonrpc": "2.0", "id": case.request_id, "method": case.client_method, "params": params}
            resp = world.http.post(world.url, json=message, headers={"accept": "application/json, text/event-stream"})
    finally:
        world.upstream.hostile = None
    pages_decided = [e for e in world.new_entries() if e["input"]["message"]["kind"] == "response"
                     and e["input"]["message"]["method"] == "tools/list"]
    visible: set[str] = set()
    for entry in pages_decided:
        if entry["result"].get("allow"):
            visible.update(entry["result"].get("visible_tools") or [])
    _note(f"client got {resp.status_code} {resp.headers.get('content-type')!r}: {resp.content[:600]!r}")
    _note(f"page decisions: {[(e['input'].get('tools'), e['result']) for e in pages_decided]}")
    return Listing(case, resp, visible, seen_by_client(resp.content))


SPEC = {("json", "last-wins"), ("sse", "last-wins")}
JSON_BODY = {("json", "last-wins")}
FIRST_WINS = {("json", "first-wins"), ("sse", "first-wins")}
LOOSE = {("loose", "last-wins"), ("loose", "first-wins")}
READ_BODIES = (200,)  # answers whose body a client reads as messages
OTHER_BODIES = (202, 400, 404, 500)  # answers whose body a client shows, at most, as an error's text


def _stats(result: Listing) -> str:
    shown = set().union(*result.seen.values()) if result.seen else set()
    return f"{result.case.via} {result.case.answer.status}: {'names shown' if shown else 'no names shown'}"


@SERVER_SETTINGS
@given(case=server_cases(READ_BODIES))
def test_tool_listings_show_sdk_clients_only_visible_tools(server_world: World, case: ServerCase) -> None:
    """Invariant 2: a 200 answer, read as JSON or as SSE by the book (last key wins), never shows a
    tool name the policy did not make visible."""
    result = listing(server_world, case)
    leaked = result.leaked(SPEC)
    assert not leaked, result.describe(leaked)
    event(_stats(result))


@SERVER_SETTINGS
@given(case=server_cases(READ_BODIES, dup=True))
def test_tool_listings_show_first_wins_readers_only_visible_tools(server_world: World, case: ServerCase) -> None:
    """The same for a reader that keeps the first of repeated keys (only what such a reader alone sees)."""
    result = listing(server_world, case)
    leaked = result.leaked(FIRST_WINS) - result.leaked(SPEC)
    assert not leaked, result.describe(leaked)
    event(_stats(result))


@SERVER_SETTINGS
@given(case=server_cases(READ_BODIES))
def test_tool_listings_show_loose_sse_readers_only_visible_tools(server_world: World, case: ServerCase) -> None:
    """The same for loose SSE readers (`data :`, ` data:`, `Data:`, a BOM on any line), beyond the others."""
    result = listing(server_world, case)
    leaked = result.leaked(LOOSE) - result.leaked(SPEC | FIRST_WINS)
    assert not leaked, result.describe(leaked)
    event(_stats(result))


@SERVER_SETTINGS
@given(case=server_cases(OTHER_BODIES))
def test_tool_listings_in_error_and_accepted_answers_show_only_visible_tools(server_world: World,
                                                                              case: ServerCase) -> None:
    """202 and error answers: their bodies reach the client too (an SDK puts an error body into the
    error it raises, which a model reads), so one that is JSON must not show hidden tools either.
    Free text is not inspected (docs/transports.md): an error page that merely spells out SSE lines
    is text, as a tool result naming a tool is text; only whole-body JSON is read here."""
    result = listing(server_world, case)
    leaked = result.leaked(JSON_BODY)
    assert not leaked, result.describe(leaked)
    event(_stats(result))


# =====================================================================================================
# Known counterexamples, pinned (minimal forms of what the properties found)
# =====================================================================================================

_JSON_HEADERS = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
_DEEP = "[" * 251 + "]" * 251  # the message encodes (depth 254), its decision-log entry (255) does not


@pytest.mark.parametrize("body", [
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"peek","arguments":{"x":1e400}}}',
                 id="overflowing-float-in-arguments"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":-1e400}}', id="overflowing-float-in-params"),
    pytest.param(('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"peek","arguments":{"x":'
                  + _DEEP + "}}}").encode(), id="nesting-the-decision-log-cannot-encode"),
])
@pytest.mark.parametrize("transport", ["streamable", "legacy"])
def test_known_counterexample_client(world: World, transport: str, body: bytes) -> None:
    ex = exchange(world, ClientCase(transport, body, _JSON_HEADERS, "pinned"))
    check_decided(ex)
    check_faithful(ex)


_HIDDEN_PAGE = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"create_a_missive_post","inputSchema":{}}]}}'
_DUP_RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"create_a_missive_post"}]},"result":{}}'


_BOM_SSE = b"\xef\xbb\xbfdata: " + _HIDDEN_PAGE + b"\n\n"


def _pinned(via: str, method: str, status: int, ctype: str | None, body: bytes, framing: str = "length"
            ) -> ServerCase:
    pieces = [body] if framing == "length" else [body[:20], body[20:]]
    return ServerCase(via, method, 1, Answer(status, [("content-type", ctype)] if ctype else [], pieces, framing))


@pytest.mark.parametrize(("case", "readers"), [
    pytest.param(_pinned("post", "tools/list", 200, "text/event-stream", _BOM_SSE), SPEC,
                 id="bom-before-an-sse-answer"),
    pytest.param(_pinned("get", "-", 200, "text/event-stream", _BOM_SSE), SPEC, id="bom-before-a-get-stream"),
    pytest.param(_pinned("get", "-", 200, "text/plain", b"data: " + _HIDDEN_PAGE + b"\n\n"),
                 SPEC, id="get-stream-as-text-plain"),
    pytest.param(_pinned("get", "-", 200, None, _HIDDEN_PAGE), SPEC, id="get-answer-without-content-type"),
    pytest.param(_pinned("post", "ping", 200, "application/json", _DUP_RESULT), FIRST_WINS,
                 id="repeated-result-key-first-wins"),
    pytest.param(_pinned("post", "ping", 200, "text/event-stream", b"data: " + _DUP_RESULT + b"\n\n"), FIRST_WINS,
                 id="repeated-result-key-first-wins-sse"),
    pytest.param(_pinned("post", "tools/list", 200, "text/event-stream", b"data : " + _HIDDEN_PAGE + b"\n\n"),
                 LOOSE, id="loose-sse-field-name"),
    pytest.param(_pinned("post", "tools/list", 202, "text/plain", _HIDDEN_PAGE), SPEC, id="202-with-a-body"),
    pytest.param(_pinned("post", "tools/list", 202, "text/plain", _HIDDEN_PAGE, "chunked"), SPEC,
                 id="202-with-a-chunked-body"),
    pytest.param(_pinned("post", "tools/list", 400, "text/plain", _HIDDEN_PAGE), SPEC, id="error-status-text-plain"),
    pytest.param(_pinned("post", "tools/list", 400, None, _HIDDEN_PAGE, "chunked"), SPEC,
                 id="error-status-chunked-body"),
    pytest.param(_pinned("post", "tools/list", 404, "text/plain", b"data: " + _HIDDEN_PAGE + b"\n\n"), JSON_BODY,
                 id="error-status-sse-framed-text-plain"),  # free text: not inspected, not read as JSON
    pytest.param(_pinned("post", "tools/list", 500, "text/html", _HIDDEN_PAGE, "close"), SPEC,
                 id="error-status-close-delimited-body"),
])
def test_known_counterexample_listing(server_world: World, case: ServerCase, readers: set[tuple[str, str]]) -> None:
    result = listing(server_world, case)
    leaked = result.leaked(readers)
    assert not leaked, result.describe(leaked)
