"""No 500s: every malformed client request, one curl each, gets the documented answer and reaches
nothing upstream.

The real proxy (a subprocess; bundled policy, one read-only server, an API token configured beside
anonymous access) in front of a raw asyncio HTTP/1.1 upstream that records every request it
receives. Each case is sent as raw bytes on its own connection (so header bytes, paths and framing
are exactly as written), and must get its status, a JSON-RPC error where a message was expected,
and leave the upstream's record of relayed requests unchanged (the proxy's own tool listing, marked
by its user-agent, may run: it is no client request). The proxy's stderr must show no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.raw_server import ThreadedServer

TOKEN = "no500s-api-token-0123456789abcdef"
TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("list_all_missive_conversations", "create_a_missive_post", "echo")]
OWN_LISTING = "mcp-policy-proxy/"


class RecordingUpstream(ThreadedServer):
    """A raw HTTP/1.1 server in a thread: records every request (method, target, headers, body),
    answers tool listings with TOOLS, `GET /sse` with a held legacy stream, anything else plainly."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def relayed(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r["headers"].get("user-agent", "").startswith(OWN_LISTING)]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {n.strip().lower(): v.strip()
                           for n, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                self.requests.append({"method": method, "target": target, "headers": headers, "body": body})
                if method == "GET" and target.startswith("/sse"):
                    event = b"event: endpoint\ndata: /messages/?session_id=up-1\n\n"
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(3600)
                writer.write(self._answer(method, target, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def _answer(method: str, target: str, body: bytes) -> bytes:
        if method != "POST" or target.startswith("/messages/"):
            return b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
        msg = json.loads(body)
        if "id" not in msg:
            return b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
        result: dict[str, Any] = {"content": [{"type": "text", "text": "ok"}], "isError": False}
        if msg["method"] == "tools/list":
            result = {"tools": TOOLS}
        elif msg["method"] == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "rec", "version": "1"}}
        data = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def message(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/json"), (self.headers, self.body)
        doc = json.loads(self.body)
        assert doc.get("jsonrpc") == "2.0" and isinstance(doc["error"]["code"], int), doc
        assert isinstance(doc["error"]["message"], str)
        return doc


async def raw(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send `data` on a new connection; the first response on it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        else:  # chunked answers are not expected here; read what comes until the close
            body = await asyncio.wait_for(reader.read(), timeout)
        return Reply(status, headers, body)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def post(body: bytes, path: bytes = b"/mcp", headers: list[tuple[bytes, bytes]] | None = None,
         length: int | None = None) -> bytes:
    fields = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
              (b"accept", b"application/json, text/event-stream"), (b"connection", b"close")]
    names = {n for n, _ in headers or []}
    fields = [f for f in fields if f[0] not in names] + list(headers or [])
    fields.append((b"content-length", str(len(body) if length is None else length).encode()))
    return b"POST " + path + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + body


def call(name: str = "list_all_missive_conversations", arguments: str = "{}", rid: str = "1") -> bytes:
    return ('{"jsonrpc":"2.0","id":' + rid + ',"method":"tools/call","params":{"name":"' + name
            + '","arguments":' + arguments + "}}").encode()


GOOD = call()

# (case, request bytes, status, JSON-RPC error code or None when the answer is no message)
CASES: list[tuple[str, bytes, int, int | None]] = [
    ("lone surrogate in a value", post(call(arguments='{"x":"\\ud800"}')), 400, -32700),
    ("lone surrogate in the id", post(call(rid='"\\udfff"')), 400, -32700),
    ("integer beyond 64 bits", post(call(arguments='{"x":123456789012345678901234567890}')), 400, -32700),
    ("integer beyond 64 bits as the id", post(call(rid="123456789012345678901234567890")), 400, -32700),
    ("a number beyond a double", post(call(arguments='{"x":1e400}')), 400, -32700),
    ("300 levels of nesting", post(call(arguments='{"x":' + "[" * 300 + "]" * 300 + "}")), 400, -32700),
    # (100,000 arrays are 100,000 values: the body checker refuses them before anything parses them)
    ("100k levels of nesting", post(call(arguments='{"x":' + "[" * 100_000 + "]" * 100_000 + "}")), 413, -32600),
    ("lone surrogate in a tool name", post(call(name="\\ud800")), 400, -32700),
    ("lone surrogate in an argument key", post(call(arguments='{"\\ud800":1}')), 400, -32700),
    ("invalid UTF-8", post(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff\xfe"}}'), 400, -32700),
    ("overlong UTF-8", post(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xc0\xaf"}}'), 400, -32700),
    ("UTF-8 surrogate bytes", post(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xed\xa0\x80"}}'),
     400, -32700),
    ("empty body", post(b""), 400, -32700),
    ("JSON array batch", post(b'[' + GOOD + b']'), 400, -32600),
    ("params of the wrong type", post(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}'), 400, -32602),
    ("arguments of the wrong type", post(call(arguments="[1]")), 400, -32602),
    ("case-twin keys", post(call(arguments='{"send":false,"Send":true}')), 400, -32700),
    ("duplicate keys", post(call(arguments='{"a":1,"a":2}')), 400, -32700),
    ("a body declared UTF-16", post(GOOD, headers=[(b"content-type", b"application/json; charset=utf-16")]),
     415, -32600),
    ("a body declared Latin-1", post(GOOD, headers=[(b"content-type", b'text/plain; Charset="ISO-8859-1"')]),
     415, -32600),
    ("Content-Length shorter than the body", post(GOOD, length=10), 400, -32700),
    ("more values than a message may hold", post(call(arguments='{"x":[' + ",".join(["0"] * 20_000) + "]}")),
     413, -32600),
    ("a tool name of 2 MiB", post(call(name="x_" * 10**6)), 200, -32602),
    ("a prompt name of 1 MiB", post(b'{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"'
                                   + b"p" * 2**20 + b'"}}'), 200, -32602),
    ("a resource URI of 1 MiB", post(b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///'
                                    + b"u" * 2**20 + b'"}}'), 200, -32602),
    ("an undeclared tool", post(call(name="list_all_missive_conversationz")), 200, -32602),
    ("an unknown method", post(b'{"jsonrpc":"2.0","id":1,"method":"frobnicate/now"}'), 200, -32001),
    ("Origin http://[", post(GOOD, headers=[(b"origin", b"http://[")]), 403, -32600),
    ("Origin with obs-text", post(GOOD, headers=[(b"origin", b"http://\xe9xample.com")]), 400, -32600),
    ("Mcp-Session-Id with obs-text", post(GOOD, headers=[(b"mcp-session-id", b"\xe9\xe9.abcdef")]), 400, -32600),
    ("an overlong Mcp-Session-Id", post(GOOD, headers=[(b"mcp-session-id", b"s" * 16_000 + b".tag")]), 404, -32600),
    ("a forged Mcp-Session-Id", post(GOOD, headers=[(b"mcp-session-id", b"up-1.AAAAAAAAAAAAAAAAAAAAAAAA")]),
     404, -32600),
    ("Authorization with obs-text", post(GOOD, headers=[(b"authorization", b"Bearer \xff\xfe")]), 400, -32600),
    ("a bearer token of nobody", post(GOOD, headers=[(b"authorization", b"Bearer nobody-0123456789abcdefghij")]),
     401, -32001),
    ("Authorization without a scheme", post(GOOD, headers=[(b"authorization", b"\x21\x7e")]), 401, -32001),
    ("Mcp-Name with obs-text", post(GOOD, headers=[(b"mcp-name", b"list_all_missive_conversation\xe9")]),
     400, -32600),
    ("Mcp-Name that disagrees", post(GOOD, headers=[(b"mcp-name", b"create_a_missive_post")]), 400, -32020),
    ("Mcp-Name of invalid base64", post(GOOD, headers=[(b"mcp-name", b"=?base64?!!?=")]), 400, -32020),
    ("MCP-Protocol-Version with obs-text", post(GOOD, headers=[(b"mcp-protocol-version", b"2025-\xe9")]),
     400, -32600),
    ("MCP-Protocol-Version that is no revision", post(GOOD, headers=[(b"mcp-protocol-version", b"latest")]),
     400, -32600),
    ("Accept with obs-text", post(GOOD, headers=[(b"accept", b"application/json\xa0")]), 400, -32600),
    ("Content-Type with obs-text", post(GOOD, headers=[(b"content-type", b"application/json\xe9")]), 400, -32600),
    ("a header name with an underscore only", post(GOOD, headers=[(b"x_evil", b"\xe9")]), 400, -32600),
    ("a path of invalid percent-encoding", post(GOOD, path=b"/%ff/mcp"), 404, None),
    ("a percent-encoded NUL in the path", post(GOOD, path=b"/mc%00p"), 404, None),
    ("percent-encoded UTF-8 surrogates in the path", post(GOOD, path=b"/%ed%a0%80/mcp"), 404, None),
    ("a raw non-ASCII byte in the path", post(GOOD, path=b"/\xff/mcp"), 400, None),
    # Good messages after all: decided, allowed and relayed (a wrong media type is the upstream's
    # to refuse, as the SDK's servers do; test_fidelity.py pins that their answer is relayed).
    ("a query of invalid percent-encoding", post(GOOD, path=b"/mcp?x=%zz&y=%ff%"), 200, None),
    ("a body of text/plain", post(GOOD, headers=[(b"content-type", b"text/plain")]), 200, None),
    ("a messages POST with a session id of invalid percent-encoding",
     post(GOOD, path=b"/messages/?session_id=%zz%ff"), 404, None),
    ("a messages POST without a session id", post(GOOD, path=b"/messages/?session_id="), 400, -32600),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordingUpstream, Proxy]]:
    workdir: Path = tmp_path_factory.mktemp("no500s")
    upstream = RecordingUpstream().start()
    proxy = start_proxy(workdir, upstream.base, {
        "servers": [{"name": "readonly", "methods": ["read"]}],
        "auth": {"anonymous": True,
                 "api_tokens": [{"name": "ci", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]},
        "upstream": {"timeout_s": 5},
        "limits": {"client_body_timeout_s": 1},
        "decision_log": {"sink": f"file:{workdir / 'decisions.jsonl'}"},
    })
    try:
        yield upstream, proxy
    finally:
        proxy.stop()
        upstream.stop()


@pytest.mark.parametrize(("request_bytes", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_malformed_request_gets_its_documented_answer_and_reaches_nothing(stack, request_bytes, status, code):
    upstream, proxy = stack
    before = len(upstream.relayed())
    reply = await raw(proxy.port, request_bytes)
    assert reply.status == status, reply
    if code is not None:
        assert reply.message()["error"]["code"] == code, reply
    if status == 200 and code is None:  # a good message after all: relayed
        assert len(upstream.relayed()) == before + 1
    else:
        await asyncio.sleep(0.05)
        assert len(upstream.relayed()) == before, upstream.relayed()[before:]
    assert "Traceback" not in proxy.handle.stderr(), proxy.handle.stderr()[-3000:]


async def test_a_content_length_longer_than_the_body_times_out_as_408(stack):
    """The client stops sending: limits.client_body_timeout_s (1 s here), not a worker waiting forever."""
    upstream, proxy = stack
    before = len(upstream.relayed())
    reply = await raw(proxy.port, post(GOOD, length=len(GOOD) + 100))
    assert reply.status == 408 and reply.message()["error"]["code"] == -32600
    assert len(upstream.relayed()) == before


async def test_a_decision_on_unencodable_text_is_still_logged(stack):
    """A name the proxy cannot re-encode is refused at intake (above); a decision whose log entry
    holds such text is logged escaped (unit test: test_decision_log_escapes_unencodable_text).
    Here: every refusal that is a decision left its entry, and the log is one JSON document per line."""
    _, proxy = stack
    await raw(proxy.port, post(call(name="list_all_missive_conversationz")))
    await asyncio.sleep(0.8)  # the decision log flushes every 0.5 s
    log = Path(proxy.config_path).parent / "decisions.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(e["input"]["message"]["name"] == "list_all_missive_conversationz" for e in entries)


async def test_legacy_sse_posts_get_their_documented_answers(stack):
    """The same intake on the legacy transport: a body that answers no request gets its error
    status on the POST; nothing reaches the upstream's messages endpoint."""
    upstream, proxy = stack
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
    await writer.drain()
    buffer = b""
    while b"session_id=" not in buffer or b"\n" not in buffer.split(b"session_id=", 1)[1]:
        buffer += await asyncio.wait_for(reader.read(4096), 10)  # (chunked: the event is inside a chunk)
    endpoint = buffer.split(b"data: ", 1)[1].split(b"\n", 1)[0].strip()
    try:
        before = len(upstream.relayed())
        for body, status, code in [
            (b'{"jsonrpc":"2.0","method":"ping","params":{"x":"\\ud800"}}', 400, -32700),
            (b"\xff", 400, -32700), (b"", 400, -32700), (b"[]", 400, -32600),
            (b'{"jsonrpc":"2.0","method":"x","params":{"x":' + b"[" * 300 + b"]" * 300 + b"}}", 400, -32700),
        ]:
            reply = await raw(proxy.port, post(body, path=endpoint))
            assert (reply.status, reply.message()["error"]["code"]) == (status, code), reply
        reply = await raw(proxy.port, post(GOOD, path=endpoint, headers=[(b"mcp-session-id", b"\xe9")]))
        assert (reply.status, reply.message()["error"]["code"]) == (400, -32600)
        assert len(upstream.relayed()) == before
    finally:
        writer.close()
    assert "Traceback" not in proxy.handle.stderr()
