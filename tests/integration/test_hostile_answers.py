"""Red team, upstream side: a hostile upstream answers the client's tools/list (and tools/call) in
shapes a lenient client might still read, with the proxy (bundled policy, a read-only server) in
front. Whatever the client receives is parsed LENIENTLY (BOM stripped, arrays opened, duplicate
keys first-wins *and* last-wins, gzip decoded, SSE lines with any event type, a body read as JSON
whatever its Content-Type): no hidden tool name may show up, and the client must get a JSON-RPC
error or the filtered page, never a hang.

The hostile upstream is a raw asyncio HTTP/1.1 server on 127.0.0.1 (in a thread of the test
process). The proxy's own tool listing (user-agent `mcp-policy-proxy/… (tool listing)`) is
answered sanely; a relayed client request is answered in the shape named by its `x-hostile`
header (the proxy forwards such headers unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.clients import sdk_client
from tests.peers.harness import NODE_PEERS
from tests.peers.raw_server import ThreadedServer

VISIBLE = ["list_all_missive_conversations", "get_single_missive_conversation_by_id"]
HIDDEN = ["create_a_missive_post", "create_a_missive_draft", "delete_a_missive_post_by_id"]


def _tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"{name} (hostile upstream)",
            "inputSchema": {"type": "object", "properties": {"conversation": {"type": "string"}}}}


ALL_TOOLS = [_tool(n) for n in (*VISIBLE, *HIDDEN)]
HIDDEN_TOOLS = [_tool(n) for n in HIDDEN]
VISIBLE_TOOLS = [_tool(n) for n in VISIBLE]
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-11-25"}
CLIENT_TIMEOUT = 8.0


def _j(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _page(rid: Any, tools: list[dict[str, Any]] = ALL_TOOLS) -> str:
    return _j({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools}})


def _text_result(rid: Any) -> str:
    return _j({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "c-1"}],
                                                        "isError": False}})


# --- the hostile upstream ---------------------------------------------------------------------

class Reply:
    """One HTTP answer: status, headers, body chunks (with optional pauses), then close."""

    def __init__(self, status: int = 200, headers: list[tuple[str, str]] | None = None,
                 chunks: list[bytes | float] | None = None) -> None:
        self.status, self.headers, self.chunks = status, headers or [], chunks or []


def json_reply(body: str | bytes, status: int = 200, ctype: str = "application/json",
               extra: list[tuple[str, str]] | None = None) -> Reply:
    data = body.encode() if isinstance(body, str) else body
    return Reply(status, [("content-type", ctype), ("content-length", str(len(data))), *(extra or [])], [data])


def sse_reply(*chunks: bytes | float, ctype: str = "text/event-stream") -> Reply:
    return Reply(200, [("content-type", ctype), ("cache-control", "no-cache")], list(chunks))


def ev(data: str, event: str | None = None) -> bytes:
    return ((f"event: {event}\n" if event is not None else "") + f"data: {data}\n\n").encode()


def hostile_tools_list(scenario: str, rid: Any) -> Reply | None:
    """The answer to a client's tools/list in the named hostile shape."""
    page = _page(rid)
    dup_result = f'{{"jsonrpc":"2.0","id":{_j(rid)},"result":{{"tools":{_j(ALL_TOOLS)}}},' \
                 f'"result":{{"tools":{_j(VISIBLE_TOOLS)}}}}}'
    dup_tools = f'{{"jsonrpc":"2.0","id":{_j(rid)},"result":{{"tools":{_j(ALL_TOOLS)},"tools":{_j(VISIBLE_TOOLS)}}}}}'
    other = rid + 1000 if isinstance(rid, int) else f"{rid}-other"
    shapes: dict[str, Reply] = {
        "json_array": json_reply(f"[{page}]"),
        "json_bom": json_reply(b"\xef\xbb\xbf" + page.encode()),
        "json_error_null": json_reply(page[:-1] + ',"error":null}'),
        "json_no_jsonrpc": json_reply(_j({"id": rid, "result": {"tools": ALL_TOOLS}})),
        "json_dup_result": json_reply(dup_result),
        "json_dup_tools": json_reply(dup_tools),
        "json_gzip": json_reply(gzip.compress(page.encode()), extra=[("content-encoding", "gzip")]),
        "json_concatenated": json_reply(_page(rid, VISIBLE_TOOLS) + page),
        "json_other_id": json_reply(_page(other)),
        "text_plain_200": json_reply(page, ctype="text/plain"),
        "sse_Message": sse_reply(ev(page, "Message")),
        "sse_endpoint": sse_reply(ev(page, "endpoint")),
        "sse_dup_result": sse_reply(ev(dup_result)),
        "sse_other_id": sse_reply(ev(_page(other))),
        "sse_gzip": sse_reply(gzip.compress(ev(page))),
        "sse_bom": sse_reply(b"\xef\xbb\xbf" + ev(page)),
        # The same dropped answer, with the upstream holding the stream open afterwards.
        "sse_Message_held": sse_reply(ev(page, "Message"), 20.0),
        # Error statuses carry bodies too (SDK clients read them).
        "text_plain_400": json_reply(page, status=400, ctype="text/plain"),
        # Case-variant keys: Go's encoding/json (the go-sdk before CVE-2026-27896, and any client
        # built on it) matches keys case-insensitively, U+017F (long s) folding to s; the last match wins.
        "json_case_envelope": json_reply(_j({"JSONRPC": "2.0", "ID": rid, "RESULT": {"tools": ALL_TOOLS}})),
        "json_case_tools": json_reply(_j({"jsonrpc": "2.0", "id": rid,
                                          "result": {"tools": VISIBLE_TOOLS, "Tools": ALL_TOOLS}})),
        "json_case_tool_long_s": json_reply(_j({"jsonrpc": "2.0", "id": rid,
                                          "result": {"tools": VISIBLE_TOOLS, "tool\u017f": ALL_TOOLS}})),
        "json_case_name": json_reply(_j({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
            {**_tool("list_all_missive_conversations"), "Name": "create_a_missive_post"}]}})),
    }
    if scenario == "sse_gzip":
        reply = shapes[scenario]
        reply.headers.append(("content-encoding", "gzip"))
        return reply
    return shapes.get(scenario)


def hostile_tools_call(scenario: str, rid: Any) -> Reply | None:
    """The answer to a client's tools/call (of a visible tool) in the named hostile shape."""
    other = rid + 1000 if isinstance(rid, int) else f"{rid}-other"
    dup_result = f'{{"jsonrpc":"2.0","id":{_j(rid)},"result":{{"tools":{_j(ALL_TOOLS)}}},' \
                 '"result":{"content":[{"type":"text","text":"c-1"}]}}'
    shapes: dict[str, Reply] = {
        "call_json_other_id_tools": json_reply(_page(other)),
        "call_sse_other_id_tools": sse_reply(ev(_page(other)), ev(_text_result(rid))),
        "call_json_tools_same_id": json_reply(_page(rid)),
        "call_json_dup_result": json_reply(dup_result),
        "call_sse_dup_result": sse_reply(ev(dup_result)),
        "call_json_case_tools": json_reply(_j({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": "c-1"}], "Tools": ALL_TOOLS}})),
    }
    return shapes.get(scenario)


class HostileUpstream(ThreadedServer):
    """A raw HTTP/1.1 server in a thread: answers sanely to the proxy's own listing, hostilely to
    relayed client requests (by their `x-hostile` header). Records every request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def relayed(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r["headers"].get("user-agent", "").startswith("mcp-policy-proxy/")]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            record = {"method": method, "path": target, "headers": headers, "body": body.decode("utf-8", "replace")}
            self.requests.append(record)
            reply = self._answer(method, headers, body)
            await self._write(writer, reply)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} X", *(f"{n}: {v}" for n, v in reply.headers), "connection: close"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        for chunk in reply.chunks:
            if isinstance(chunk, float):
                await asyncio.sleep(chunk)
                continue
            writer.write(chunk)
            await writer.drain()

    def _answer(self, method: str, headers: dict[str, str], body: bytes) -> Reply:
        if method == "DELETE":
            return json_reply(b"", status=200)
        if method == "GET":
            return self._get(headers.get("x-hostile", ""))
        try:
            msg = json.loads(body)
        except ValueError:
            return json_reply(_j({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}), 400)
        rid, rpc = msg.get("id"), msg.get("method")
        if rid is None:  # notifications
            return Reply(202, [("content-length", "0")], [])
        if rpc == "initialize":
            version = msg.get("params", {}).get("protocolVersion", "2025-11-25")
            return json_reply(_j({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": version, "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "hostile", "version": "1"}}}))
        listing = headers.get("user-agent", "").startswith("mcp-policy-proxy/")
        scenario = "" if listing else headers.get("x-hostile", "")
        if rpc == "tools/list":
            if scenario.startswith("get_"):  # the POST answer comes late: the GET stream's comes first
                data = _page(rid).encode()
                return Reply(200, [("content-type", "application/json"), ("content-length", str(len(data)))],
                             [3.0, data])
            return hostile_tools_list(scenario, rid) or json_reply(_page(rid))
        if rpc == "tools/call":
            return hostile_tools_call(scenario, rid) or json_reply(_text_result(rid))
        return json_reply(_j({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}))

    def _get(self, scenario: str) -> Reply:
        """The server→client stream: a tools/list answer (hidden tools) for request id 1, which is
        the id the TypeScript SDK gives its first tools/list."""
        stream = ev(_page(1)) + ev(_j({"jsonrpc": "2.0", "id": "s-1", "method": "sampling/createMessage",
                                        "params": {"messages": [], "maxTokens": 1}}))
        if scenario == "get_text_plain":
            return Reply(200, [("content-type", "text/plain")], [1.0, stream, 5.0])
        if scenario == "get_no_content_type":
            return Reply(200, [], [1.0, stream, 5.0])
        if scenario == "get_sse_bom":
            return sse_reply(1.0, b"\xef\xbb\xbf" + stream, 5.0)
        if scenario == "get_sse":
            return sse_reply(1.0, stream, 5.0)
        return Reply(405, [("allow", "POST"), ("content-length", "0")], [])


# --- lenient reading of what the client got ----------------------------------------------------

def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _json_values(text: str) -> list[Any]:
    """Every JSON value a lenient parser finds in `text` (BOM stripped, concatenated documents
    split, arrays opened), read with first-wins and with last-wins duplicate keys."""
    values: list[Any] = []
    text = text.strip().lstrip("\ufeff").strip()
    for hook in (_first_wins, None):
        decoder = json.JSONDecoder(object_pairs_hook=hook)
        pos = 0
        while pos < len(text):
            try:
                value, end = decoder.raw_decode(text, pos)
            except ValueError:
                break
            values.append(value)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
    opened: list[Any] = []
    for value in values:
        opened.append(value)
        if isinstance(value, list):
            opened.extend(value)
    return opened


def _sse_data(text: str) -> list[str]:
    """SSE data of every event, read leniently: BOM stripped, any event type, field names
    case-insensitive and trimmed, a final unterminated event included."""
    out, data = [], []
    for line in re.split(r"\r\n|\r|\n", text.lstrip("\ufeff")):
        if not line:
            if data:
                out.append("\n".join(data))
            data = []
            continue
        name, _, value = line.partition(":")
        if name.strip().lstrip("\ufeff").lower() == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        out.append("\n".join(data))
    return out


def _fold(key: str) -> str:
    """A key as a case-insensitive decoder matches it (Go's encoding/json also folds U+017F and U+212A)."""
    return key.replace("\u017f", "s").replace("\u212a", "k").lower()


def _get_all(obj: dict[str, Any], key: str) -> list[Any]:
    """Every value whose key matches `key`, exactly or case-insensitively."""
    return [v for k, v in obj.items() if _fold(k) == key]


def _tool_names(value: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(value, dict):
        for tools in _get_all(value, "tools"):
            for tool in tools if isinstance(tools, list) else []:
                if isinstance(tool, dict):
                    names |= {n for n in _get_all(tool, "name") if isinstance(n, str)}
        for v in value.values():
            names |= _tool_names(v)
    elif isinstance(value, list):
        for v in value:
            names |= _tool_names(v)
    return names


def lenient_messages(body: bytes) -> list[Any]:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    text = body.decode("utf-8", "replace")
    values = _json_values(text)
    for data in _sse_data(text):
        values += _json_values(data)
    return values


def leaked(body: bytes) -> set[str]:
    """Hidden tool names a lenient client could read in `body` (in a tools list, or anywhere)."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    names: set[str] = set()
    for value in lenient_messages(body):
        names |= _tool_names(value)
    text = body.decode("utf-8", "replace")
    return (names | {n for n in HIDDEN if n in text}) & set(HIDDEN)


def answer_for(body: bytes, rid: Any) -> dict[str, Any] | None:
    """The JSON-RPC response (or error) for `rid` a lenient client would take, if any."""
    for value in lenient_messages(body):
        if not isinstance(value, dict):
            continue
        folded = {_fold(k): v for k, v in value.items()}
        if folded.get("id") == rid and ("result" in folded or "error" in folded):
            return folded
    return None


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    upstream = HostileUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    workdir = tmp_path_factory.mktemp("hostile")
    started = start_proxy(workdir, hostile.base, {
        "servers": [{"name": "readonly", "methods": ["read"]}],
        "upstream": {"timeout_s": 5},
        "decision_log": {"sink": f"file:{workdir / 'decisions.jsonl'}"},
    })
    yield started
    started.stop()


async def post(proxy: Proxy, message: dict[str, Any], scenario: str, *, timeout: float = CLIENT_TIMEOUT
               ) -> tuple[int, dict[str, str], bytes, bool]:
    """POST one message with raw httpx; (status, headers, body as received, whether it timed out).
    The body is read raw (no decoding), so compressed bytes stay compressed."""
    chunks: list[bytes] = []
    status, headers, timed_out = 0, {}, False
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as http:
        try:
            async with asyncio.timeout(timeout):
                async with http.stream("POST", proxy.url, json=message,
                                       headers={**HEADERS, "x-hostile": scenario}) as resp:
                    status, headers = resp.status_code, dict(resp.headers)
                    async for chunk in resp.aiter_raw():
                        chunks.append(chunk)
                        if answer_for(b"".join(chunks), message["id"]) is not None:
                            break
        except (TimeoutError, httpx.ReadTimeout):
            timed_out = True
    return status, headers, b"".join(chunks), timed_out


TOOLS_LIST_SCENARIOS = [
    "json_array", "json_bom", "json_error_null", "json_no_jsonrpc", "json_dup_result", "json_dup_tools",
    "json_gzip", "json_concatenated", "json_other_id", "text_plain_200", "sse_Message", "sse_endpoint",
    "sse_dup_result", "sse_other_id", "sse_gzip", "sse_bom", "sse_Message_held", "text_plain_400",
    "json_case_envelope", "json_case_tools", "json_case_tool_long_s", "json_case_name",
]


def _answered(status: int, body: bytes, rid: Any, visible_ok: bool = True) -> bool:
    """A JSON-RPC error for `rid`, or (when allowed) a result whose tools are all visible."""
    answer = answer_for(body, rid)
    if answer is None:
        return False
    if "error" in answer:
        return isinstance(answer["error"], dict) and isinstance(answer["error"].get("code"), int)
    return visible_ok and _tool_names(answer) <= set(VISIBLE)


@pytest.mark.parametrize("scenario", TOOLS_LIST_SCENARIOS)
async def test_hostile_tools_list_answer_never_shows_a_hidden_tool(proxy, hostile, scenario):
    rid = 7
    status, headers, body, timed_out = await post(proxy, {"jsonrpc": "2.0", "id": rid, "method": "tools/list"},
                                                  scenario)
    assert any(r["headers"].get("x-hostile") == scenario for r in hostile.relayed())  # it did reach the upstream
    leaks = leaked(body)
    assert not leaks, f"{scenario}: HTTP {status} {headers.get('content-type')}: hidden tools {sorted(leaks)} " \
                      f"reach the client: {body[:300]!r}"
    # The proxy relays a page answered under another id filtered, under that id (it does not
    # rewrite ids); what is asserted there is that the filtered page arrives.
    expected = rid + 1000 if "other_id" in scenario else rid
    assert not timed_out and _answered(status, body, expected), \
        f"{scenario}: no JSON-RPC error nor filtered page for id {expected}: HTTP {status} " \
        f"{headers.get('content-type')} {body[:300]!r}" + (" (timed out)" if timed_out else "")


CALL_SCENARIOS = ["call_json_other_id_tools", "call_sse_other_id_tools", "call_json_tools_same_id",
                  "call_json_dup_result", "call_sse_dup_result", "call_json_case_tools"]


@pytest.mark.parametrize("scenario", CALL_SCENARIOS)
async def test_hostile_tools_call_answer_never_shows_a_hidden_tool(proxy, hostile, scenario):
    rid = 11
    call = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": "list_all_missive_conversations", "arguments": {}}}
    status, headers, body, timed_out = await post(proxy, call, scenario)
    assert any(r["headers"].get("x-hostile") == scenario for r in hostile.relayed())
    leaks = leaked(body)
    assert not leaks, f"{scenario}: HTTP {status} {headers.get('content-type')}: hidden tools {sorted(leaks)} " \
                      f"reach the client: {body[:300]!r}"
    expected = rid + 1000 if "other_id" in scenario else rid
    assert not timed_out and answer_for(body, expected) is not None, \
        f"{scenario}: no answer for id {expected}: {body[:300]!r}"


async def test_hidden_tool_call_never_reaches_the_hostile_upstream(proxy, hostile):
    for name in HIDDEN:
        call = {"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": name, "arguments": {}}}
        status, _, body, _ = await post(proxy, call, "call_json_tools_same_id")
        assert status == 200 and json.loads(body)["error"] == {"code": -32602, "message": f"Unknown tool: {name}"}
    assert not [r for r in hostile.relayed() if any(f'"{n}"' in r["body"] for n in HIDDEN)]


GET_SCENARIOS = ["get_sse", "get_sse_bom", "get_text_plain", "get_no_content_type"]


@pytest.mark.parametrize("scenario", GET_SCENARIOS)
async def test_hostile_get_stream_never_shows_a_hidden_tool(proxy, scenario):
    """The server→client stream (GET /mcp) carrying a tools/list answer with hidden tools."""
    chunks: list[bytes] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(CLIENT_TIMEOUT)) as http:
        with contextlib.suppress(TimeoutError, httpx.ReadTimeout):
            async with asyncio.timeout(2.5):
                async with http.stream("GET", proxy.url, headers={
                        "accept": "text/event-stream", "mcp-protocol-version": "2025-11-25",
                        "x-hostile": scenario}) as resp:
                    status, ctype = resp.status_code, resp.headers.get("content-type")
                    async for chunk in resp.aiter_raw():
                        chunks.append(chunk)
    body = b"".join(chunks)
    leaks = leaked(body)
    assert not leaks, f"{scenario}: GET answered HTTP {status} {ctype}: hidden tools {sorted(leaks)} reach " \
                      f"the client: {body[:300]!r}"


# --- the official SDK clients, bounded -----------------------------------------------------------

SDK_SCENARIOS = ["json_dup_result", "json_other_id", "sse_other_id", "sse_Message", "sse_bom", "text_plain_200",
                 "json_gzip"]


@pytest.mark.parametrize("scenario", SDK_SCENARIOS)
async def test_python_sdk_client_sees_no_hidden_tool(proxy, scenario):
    async with asyncio.timeout(20):
        async with sdk_client(proxy.url, mode="legacy", headers={"x-hostile": scenario},
                              read_timeout=CLIENT_TIMEOUT) as client:
            try:
                names = set(await client.tool_names())
            except MCPError as exc:  # a clear JSON-RPC error is fine
                assert isinstance(exc.error.code, int)
                return
    assert names <= set(VISIBLE), f"{scenario}: the Python SDK lists hidden tools {sorted(names - set(VISIBLE))}"


_TS_LIST_TOOLS = r"""
const [sdk, transportMod, url, scenario] = process.argv.slice(1);
const { Client } = await import(sdk);
const { StreamableHTTPClientTransport } = await import(transportMod);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { "x-hostile": scenario } },
  reconnectionOptions: { maxRetries: 0, initialReconnectionDelay: 100000, maxReconnectionDelay: 100000,
                         reconnectionDelayGrowFactor: 1 },
});
const client = new Client({ name: "red-team", version: "1" });
client.onerror = () => {};
const out = {};
try {
  await client.connect(transport);
  const result = await client.listTools(undefined, { timeout: 6000 });
  out.names = result.tools.map(t => t.name);
} catch (e) { out.error = String(e && e.message || e); }
console.log(JSON.stringify(out));
await transport.close().catch(() => {});
process.exit(0);
"""


def _ts_list_tools(url: str, scenario: str) -> dict[str, Any]:
    node = shutil.which("node")
    sdk = NODE_PEERS / "node_modules" / "@modelcontextprotocol" / "sdk" / "dist" / "esm" / "client"
    if node is None or not (sdk / "index.js").exists():
        pytest.skip("node or the TypeScript SDK (tests/peers/node) is missing")
    done = subprocess.run([node, "--input-type=module", "-e", _TS_LIST_TOOLS, (sdk / "index.js").as_uri(),
                           (sdk / "streamableHttp.js").as_uri(), url, scenario],
                          capture_output=True, text=True, timeout=30, cwd=NODE_PEERS)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"node client failed: {done.stdout}\n{done.stderr}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("scenario", ["sse_bom", "sse_dup_result", "text_plain_400", "get_text_plain", "get_sse_bom",
                                      "get_sse"])
async def test_typescript_sdk_client_sees_no_hidden_tool(proxy, scenario):
    """The TypeScript SDK (1.x, `@modelcontextprotocol/sdk` from tests/peers/node): it decodes SSE
    with TextDecoderStream (which drops a leading BOM) and reads the GET stream whatever its
    Content-Type. Its first tools/list has id 1 (initialize is 0)."""
    started = time.monotonic()
    out = await asyncio.to_thread(_ts_list_tools, proxy.url, scenario)
    assert time.monotonic() - started < 30
    names = set(out.get("names", []))
    assert names <= set(VISIBLE), f"{scenario}: the TypeScript SDK lists hidden tools {sorted(names - set(VISIBLE))}"
    error = out.get("error", "")
    assert not [n for n in HIDDEN if n in error], \
        f"{scenario}: the TypeScript SDK's error names hidden tools: {error[:300]}"
