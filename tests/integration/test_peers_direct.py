"""The test peers talking to each other directly (no proxy), plus the raw wire facts they show.

Official SDK ``mcp`` 2.3.0 server (``tests/peers/sdk_server.py``), DNS-rebinding protection off.
Observed with raw httpx (``test_raw_*`` below pin these down):

Streamable HTTP (``/mcp``)              stateful-sse    stateful-json   stateless-json
- POST request, no session id           400 ¹           400 ¹           200 (served)
- POST, unknown session id              404             404             200 (ignored)
- POST notification, no session         400             400             202
- DELETE, no session id                 400             400             405
- DELETE, unknown session id            404             404             405
- DELETE, live session                  200 (then 404)  200             n/a
- GET, no session id                    400             400             200 text/event-stream (held open)
- GET, live session                     200 SSE         200 SSE         n/a
- GET with Accept: application/json     406             406             n/a
- POST Accept: text/html                406             406             406
- POST Accept: application/json only   406             200             200
- POST Content-Type: text/plain         400 (plain text "Invalid Content-Type header", no JSON-RPC body)
- POST invalid JSON                     400, JSON-RPC -32700
- POST batch (JSON array)               400, JSON-RPC -32602
- PUT                                   405 (Allow: GET, POST, DELETE); 404 if it carries an unknown session
- POST /mcp/ (trailing slash)           307 → /mcp
- initialize answer                     SSE ²           JSON            JSON, no Mcp-Session-Id
- ``server/discover`` + ``MCP-Protocol-Version: 2026-07-28`` + ``Mcp-Method: server/discover``
                                        200 JSON in every mode, no session id; ``supportedVersions``
                                        ["2026-07-28"], ``cacheScope: "private"``, ``ttlMs: 0``
- ``server/discover`` without the version header
                                        400 "Missing session ID"   |   200 + JSON-RPC -32601
- modern POST, ``Mcp-Method``/``Mcp-Name`` missing or not matching the body
                                        400 + JSON-RPC -32020 (HeaderMismatch), every mode
- modern POST, ``_meta`` envelope incomplete   400 + JSON-RPC -32602
- modern notification                   202
- GET or DELETE with ``MCP-Protocol-Version: 2026-07-28``   405, ``Allow: POST``, empty body
- modern ``discover`` with Accept: application/json only  406 stateful-sse, 200 in the JSON modes

¹ Stateful servers put a fresh ``Mcp-Session-Id`` header even on these 4xx answers (the session is
  created, then discarded because the opening request failed); don't treat it as a session.
² ``text/event-stream`` with CRLF line endings, ``event: message``, no ``id:``.

Legacy HTTP+SSE (``/sse``): GET → 200 ``text/event-stream; charset=utf-8`` (any Accept), first
event ``endpoint`` with data ``/messages/?session_id=<32 hex>``; POST /messages/ → 202 "Accepted"
(reply on the stream); no session_id → 400 ``session_id is required``; malformed id → 400
``Invalid session ID``; unknown id → 404 ``Could not find session``; text/plain → 400; invalid
JSON → 400 ``Could not parse message``; POST /sse → 405. A ``server/discover`` sent as the first
message locks that SSE connection to 2026-07-28 (so ``mode="auto"`` over SSE negotiates modern);
after ``initialize`` it is answered with JSON-RPC -32600 on the stream.

SDK client (``mode="auto"``) against every streamable mode: discover succeeds, the connection is
2026-07-28, never initialize/session/GET/DELETE; headers ``MCP-Protocol-Version: 2026-07-28``,
``Mcp-Method: <method>``, ``Mcp-Name: <tool>`` on tools/call. ``mode="legacy"``: initialize
(protocolVersion 2025-11-25), then ``notifications/initialized``, a GET stream (stateful only),
``Mcp-Session-Id`` + ``MCP-Protocol-Version: 2025-11-25`` on every later request, DELETE on exit
(stateful only). ``json_response=True`` servers drop progress notifications in both eras.
A ``call_tool`` before any ``list_tools`` is followed by a ``tools/list`` (the client fetches the
tool's output schema to validate ``structuredContent``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mcp import MCPError

from tests.peers.clients import PeerClient, sdk_client, sse_client
from tests.peers.harness import STREAMABLE_MODES, Upstream

pytestmark = pytest.mark.asyncio

UpstreamFactory = Callable[[str], Upstream]
TOOLS = {"echo", "add", "slow_progress", "sleep", "create_a_missive_post", "list_all_missive_conversations",
         "get_single_missive_conversation_by_id", "regional_echo"}
MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
DISCOVER = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "server/discover",
    "params": {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
        }
    },
}
MODERN_HEADERS = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "server/discover"}


@pytest.fixture
def upstream(request: pytest.FixtureRequest, sdk_upstream_module: UpstreamFactory) -> Upstream:
    """The module-shared SDK server for the mode given by indirect parametrization."""
    return sdk_upstream_module(request.param)


async def _exercise(pc: PeerClient) -> None:
    assert set(await pc.tool_names()) == TOOLS
    assert await pc.call_text("echo", {"text": "héllo"}) == "héllo"
    assert await pc.call_text("add", {"a": 2, "b": 40}) == "42"
    assert (await pc.call_text("create_a_missive_post", {"conversation": "c1", "text": "t"})).startswith("post-")


@pytest.mark.parametrize("upstream", STREAMABLE_MODES, indirect=True)
async def test_auto_mode_negotiates_2026(upstream: Upstream) -> None:
    async with sdk_client(upstream.url) as pc:
        assert pc.modern and pc.protocol_version == MODERN
        assert pc.session_id is None
        await _exercise(pc)


@pytest.mark.parametrize("upstream", STREAMABLE_MODES, indirect=True)
async def test_legacy_mode_initializes(upstream: Upstream) -> None:
    async with sdk_client(upstream.url, mode="legacy") as pc:
        assert not pc.modern and pc.protocol_version == "2025-11-25"
        stateful = upstream.mode.startswith("stateful")
        assert (pc.session_id is not None) == stateful
        await _exercise(pc)


@pytest.mark.parametrize("upstream", ["legacy-sse"], indirect=True)
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sse_client(upstream: Upstream, mode: str) -> None:
    async with sse_client(upstream.url, mode=mode) as pc:
        assert pc.protocol_version == ("2025-11-25" if mode == "legacy" else MODERN)
        assert pc.session_id is not None and len(pc.session_id) == 32
        await _exercise(pc)


@pytest.mark.parametrize(
    ("upstream", "mode"),
    [("stateful-sse", "auto"), ("stateful-sse", "legacy"), ("legacy-sse", "legacy")],
    indirect=["upstream"],
)
async def test_progress_arrives_incrementally(upstream: Upstream, mode: str) -> None:
    events: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((time.monotonic(), progress))

    connect = sse_client if upstream.mode == "legacy-sse" else sdk_client
    async with connect(upstream.url, mode=mode) as pc:
        result = await pc.call_tool("slow_progress", {"steps": 4, "delay": 0.45}, progress=on_progress)
        finished = time.monotonic()
    assert not result.is_error
    assert [p for _, p in events] == [1, 2, 3, 4]
    assert finished - events[0][0] > 1.0, "progress was buffered until the end"


@pytest.mark.parametrize("upstream", ["stateful-json", "stateless-json"], indirect=True)
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_json_response_drops_progress(upstream: Upstream, mode: str) -> None:
    events: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append(progress)

    async with sdk_client(upstream.url, mode=mode) as pc:
        result = await pc.call_tool("slow_progress", {"steps": 2, "delay": 0.01}, progress=on_progress)
    assert not result.is_error and events == []


@pytest.mark.parametrize("upstream", ["stateful-sse"], indirect=True)
async def test_recording_legacy_session(upstream: Upstream) -> None:
    upstream.clear_requests()
    token = uuid.uuid4().hex
    async with sdk_client(upstream.url, mode="legacy", headers={"Authorization": f"Bearer {token}"}) as pc:
        await pc.call_text("echo", {"text": "recorded"})
        sid = pc.session_id
    reqs = upstream.requests()
    posts = [_rpc_method(r) for r in reqs if r["method"] == "POST"]
    # call_tool before any list_tools makes the SDK fetch tools/list afterwards (output-schema check).
    assert posts == ["initialize", "notifications/initialized", "tools/call", "tools/list"]
    assert [r["method"] for r in reqs].count("GET") == 1  # the standalone GET stream
    assert reqs[-1]["method"] == "DELETE"
    assert all(r["headers"]["authorization"] == f"Bearer {token}" for r in reqs)
    assert all(r["path"] == "/mcp" for r in reqs)
    assert "mcp-session-id" not in reqs[0]["headers"]
    assert all(r["headers"]["mcp-session-id"] == sid for r in reqs[1:])
    call = next(r for r in reqs if _rpc_method(r) == "tools/call")
    assert json.loads(call["body"])["params"]["arguments"] == {"text": "recorded"}
    assert call["headers"]["mcp-protocol-version"] == "2025-11-25"
    assert "mcp-method" not in call["headers"]


@pytest.mark.parametrize("upstream", ["stateless-json"], indirect=True)
async def test_recording_modern_headers(upstream: Upstream) -> None:
    upstream.clear_requests()
    async with sdk_client(upstream.url) as pc:
        await pc.call_text("add", {"a": 1, "b": 2})
    reqs = upstream.requests()
    assert [r["headers"].get("mcp-method") for r in reqs] == ["server/discover", "tools/call", "tools/list"]
    assert reqs[1]["headers"]["mcp-name"] == "add"
    assert all(r["headers"]["mcp-protocol-version"] == MODERN for r in reqs)
    assert all("mcp-session-id" not in r["headers"] for r in reqs)
    meta = json.loads(reqs[1]["body"])["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == MODERN


@pytest.mark.parametrize("upstream", ["legacy-sse"], indirect=True)
async def test_recording_sse(upstream: Upstream) -> None:
    upstream.clear_requests()
    async with sse_client(upstream.url) as pc:
        await pc.call_text("echo", {"text": "x"})
        sid = pc.session_id
    reqs = upstream.requests()
    assert (reqs[0]["method"], reqs[0]["path"]) == ("GET", "/sse")
    posts = reqs[1:]
    assert [_rpc_method(r) for r in posts] == ["initialize", "notifications/initialized", "tools/call", "tools/list"]
    assert all(r["path"] == "/messages/" and r["query"] == f"session_id={sid}" for r in posts)


@pytest.mark.parametrize("upstream", ["stateful-sse"], indirect=True)
async def test_terminate_session(upstream: Upstream) -> None:
    async with sdk_client(upstream.url, mode="legacy", terminate_on_close=False) as pc:
        await pc.call_text("echo", {"text": "before"})
        assert await pc.terminate() == 200
        with pytest.raises(MCPError):
            await pc.call_tool("echo", {"text": "after"})


def _rpc_method(record: dict[str, Any]) -> str | None:
    return json.loads(record["body"]).get("method") if record["body"] else None


# --- raw wire facts -------------------------------------------------------------------------


def _status(stateful: int, stateless: int) -> dict[str, int]:
    return {"stateful-sse": stateful, "stateful-json": stateful, "stateless-json": stateless}


RAW_CASES: list[tuple[str, str, dict[str, str], Any, dict[str, int]]] = [
    ("post-no-session", "POST", {"accept": ACCEPT}, TOOLS_LIST, _status(400, 200)),
    ("post-unknown-session", "POST", {"accept": ACCEPT, "mcp-session-id": "nope"}, TOOLS_LIST, _status(404, 200)),
    ("delete-no-session", "DELETE", {}, None, _status(400, 405)),
    ("delete-unknown-session", "DELETE", {"mcp-session-id": "nope"}, None, _status(404, 405)),
    ("get-no-session-stateful", "GET", {"accept": "text/event-stream"}, None, _status(400, 200)),
    ("bad-accept", "POST", {"accept": "text/html"}, INIT, _status(406, 406)),
    ("text-plain", "POST", {"accept": ACCEPT, "content-type": "text/plain"}, json.dumps(INIT), _status(400, 400)),
    ("invalid-json", "POST", {"accept": ACCEPT, "content-type": "application/json"}, "{nope", _status(400, 400)),
    ("batch", "POST", {"accept": ACCEPT}, [TOOLS_LIST], _status(400, 400)),
    ("put", "PUT", {"accept": ACCEPT}, INIT, _status(405, 405)),
    ("discover-modern", "POST", MODERN_HEADERS, DISCOVER, _status(200, 200)),
    ("discover-no-version-header", "POST", {"accept": ACCEPT}, DISCOVER, _status(400, 200)),
    ("discover-wrong-mcp-method", "POST", {**MODERN_HEADERS, "mcp-method": "tools/list"}, DISCOVER, _status(400, 400)),
    ("get-modern", "GET", {"accept": "text/event-stream", "mcp-protocol-version": MODERN}, None, _status(405, 405)),
    ("delete-modern", "DELETE", {"mcp-protocol-version": MODERN}, None, _status(405, 405)),
]


@pytest.mark.parametrize("upstream", STREAMABLE_MODES, indirect=True)
@pytest.mark.parametrize(("case", "method", "headers", "body", "expected"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
async def test_raw_streamable(
    upstream: Upstream, case: str, method: str, headers: dict[str, str], body: Any, expected: dict[str, int]
) -> None:
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, str):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    async with httpx.AsyncClient(timeout=5) as http, http.stream(method, upstream.url, **kwargs) as response:
        # Stream so a held-open SSE answer (stateless GET) does not block the test.
        assert response.status_code == expected[upstream.mode], case
        if case == "discover-modern":
            result = json.loads(await response.aread())["result"]
            assert result["supportedVersions"] == [MODERN] and "mcp-session-id" not in response.headers
        elif case == "discover-wrong-mcp-method":
            assert json.loads(await response.aread())["error"]["code"] == -32020
        elif case in ("get-modern", "delete-modern"):
            assert response.headers["allow"] == "POST"
        elif case == "get-no-session-stateful" and upstream.mode == "stateless-json":
            assert response.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("upstream", ["stateful-sse", "stateful-json"], indirect=True)
async def test_raw_stateful_lifecycle(upstream: Upstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.base, timeout=5) as http:
        init = await http.post("/mcp", json=INIT, headers={"accept": ACCEPT})
        assert init.status_code == 200
        expected_type = "text/event-stream" if upstream.mode == "stateful-sse" else "application/json"
        assert init.headers["content-type"].startswith(expected_type)
        sid = init.headers["mcp-session-id"]
        h = {"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        notified = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
        assert notified.status_code == 202
        async with http.stream("GET", "/mcp", headers={**h, "accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        bad_get = await http.get("/mcp", headers={**h, "accept": "application/json"})
        assert bad_get.status_code == 406
        assert (await http.post("/mcp", json=TOOLS_LIST, headers=h)).status_code == 200
        assert (await http.delete("/mcp", headers=h)).status_code == 200
        gone = await http.post("/mcp", json=TOOLS_LIST, headers=h)
        assert gone.status_code == 404
        assert gone.json()["error"]["message"] == "Session not found"
        # A rejected opening request still carries a (discarded) session id.
        rejected = await http.post("/mcp", json=TOOLS_LIST, headers={"accept": ACCEPT})
        assert rejected.status_code == 400 and "mcp-session-id" in rejected.headers


@pytest.mark.parametrize("upstream", ["legacy-sse"], indirect=True)
async def test_raw_legacy_sse(upstream: Upstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.base, timeout=5) as http:
        assert (await http.post("/messages/", json=INIT)).status_code == 400
        assert (await http.post("/messages/?session_id=zz", json=INIT)).status_code == 400
        assert (await http.post(f"/messages/?session_id={uuid.uuid4().hex}", json=INIT)).status_code == 404
        assert (await http.post("/sse", json=INIT)).status_code == 405
        async with http.stream("GET", "/sse") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: endpoint"
            endpoint = (await anext(lines)).removeprefix("data: ")
            assert endpoint.startswith("/messages/?session_id=")
            accepted = await http.post(endpoint, json=INIT)
            assert (accepted.status_code, accepted.text) == (202, "Accepted")
            garbage = await http.post(endpoint, content="{nope", headers={"content-type": "application/json"})
            assert garbage.status_code == 400
            async for line in lines:
                if line.startswith("data: "):
                    assert json.loads(line.removeprefix("data: "))["id"] == 1
                    break
