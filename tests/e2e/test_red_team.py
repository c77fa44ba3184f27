"""Red team, client side, on the demo stack: the demo Missive upstream (proxy/demo, the official
SDK server with pydantic lax coercion) behind the proxy configured as `mcp-policy-proxy demo`
configures it (demo_config: triage, support, admin, URL tokens), plus one server `limited`
(params.max_limit: 25) and a decision log file.

What must hold: the policy decides on exactly what the upstream will act on; whatever the proxy
cannot decide is refused, never relayed undecided. Every attack is driven with raw HTTP (httpx),
most also with the official SDK client, and over legacy SSE where it applies. The demo upstream
runs here wrapped in a recorder (`python -m tests.e2e.test_red_team --port P --record FILE`: the
same app as `python -m proxy.demo.upstream`, rate-limit windows off), so the tests see every HTTP
request it received, headers as they arrived on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from proxy.auth.tokens import mint_token, url_token_hmac
from proxy.demo_launcher import demo_config
from tests.integration.proxy_harness import start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import free_port, start_server

TIMEOUT = 10.0
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT_PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "red-team", "version": "1"}}

SEND_REFUSED: list[Any] = [1, "yes", "on", "True", "t", "y", "1", 1.0, "true", True, "false", 0, "", [], {},
                           # more spellings a lax upstream reads as true, or that no one should guess about
                           "TRUE", "YES", "no", "off", "null", "[true]", 1e400, 2, -1, {"send": True}]
SEND_AT_REFUSED: list[Any] = [1800000000, "2030-01-01T00:00:00Z", "0", 0, "null", 1e400, -1, [], {}]
LIMIT_REFUSED: list[Any] = ["+200", " 200", "0200", "200_000", "25", 200.0, 25.5, True, 0, -1,
                            # above the cap, or shapes that are not a plain number
                            26, 50, 50.0, "50", "10", 1e400, 2.5e1 + 0.5, [10], {"v": 10}, False, "null", 1e2]
LIMIT_ACCEPTED: list[Any] = [25, 25.0, 10]


def on_the_wire(values: list[Any]) -> list[Any]:
    """The values an SDK client can put on the wire as they are (its serializer writes inf as null)."""
    return [v for v in values if not (isinstance(v, float) and v in (float("inf"), float("-inf")))]


# --- the recording demo upstream (run as a module) ---------------------------------------------

class Recorder:
    """Pure ASGI: append one JSON line per HTTP request (method, path, raw header pairs, body)."""

    def __init__(self, app: Any, path: str) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        record = {"ts": time.time(), "method": scope["method"], "path": scope["path"],
                  "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
                  "body": body.decode("utf-8", "replace")}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _serve_demo(argv: list[str] | None = None) -> None:
    import uvicorn

    from proxy.demo.data import build_org
    from proxy.demo.upstream import build_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    app = build_app(build_org(7), per_minute=0, per_15min=0)
    uvicorn.run(Recorder(app, args.record), host="127.0.0.1", port=args.port, log_level="warning",
                timeout_graceful_shutdown=1)


# --- the stack ------------------------------------------------------------------------------------

class Stack:
    def __init__(self, base: str, tokens: dict[str, str], record: Path, decisions: Path) -> None:
        self.base, self.tokens, self.record, self.decisions = base, tokens, record, decisions

    def url(self, server: str, transport: str = "mcp") -> str:
        return f"{self.base}/{self.tokens[server]}/{transport}"

    def received(self) -> list[dict[str, Any]]:
        """What the demo upstream received from clients (not the proxy's own tool listings)."""
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [r for r in rows if not dict(r["headers"]).get("user-agent", "").startswith("mcp-policy-proxy/")]

    def received_with(self, marker: str) -> list[dict[str, Any]]:
        return [r for r in self.received() if marker in r["body"]]

    async def decisions_for(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Decision-log entries matching `predicate` (the log is flushed every 0.5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            found = []
            if self.decisions.exists():
                for line in self.decisions.read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if predicate(entry):
                            found.append(entry)
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("red-team")
    upstream_port, port = free_port(), free_port()
    record = workdir / "upstream-received.jsonl"
    upstream = start_server(["tests.e2e.test_red_team", "--port", str(upstream_port), "--record", str(record)],
                            upstream_port, log_dir=workdir)
    config, tokens = demo_config(upstream_port, port, "127.0.0.1")
    tokens["limited"] = mint_token()
    config["servers"].append({"name": "limited", "methods": ["read"], "tags": ["support"],
                              "params": {"missive": True, "max_limit": 25},
                              "token_hmac": url_token_hmac(config["auth"]["url_token_key"], tokens["limited"])})
    for token in tokens.values():
        secret(token)
    decisions = workdir / "decisions.log"
    config["decision_log"] = {"sink": f"file:{decisions}", "redact_arguments": False}
    proxy = start_proxy(workdir, f"http://127.0.0.1:{upstream_port}",
                        {k: v for k, v in config.items() if k != "listen"}, port=port)
    yield Stack(proxy.base, tokens, record, decisions)
    proxy.stop()
    upstream.stop()


# --- raw clients ------------------------------------------------------------------------------------

def sse_messages(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip(" ") if line.startswith("data:") else "" for line in block.split("\n")
                         if line.startswith("data:"))
        if data:
            with contextlib.suppress(ValueError):
                out.append(json.loads(data))
    return out


def dumps(body: Any) -> bytes:
    """JSON, with float('inf') written as the number 1e400 (which a JSON parser reads as inf)."""
    return json.dumps(body).replace("-Infinity", "-1e400").replace("Infinity", "1e400").encode()


class Raw:
    """A Streamable HTTP session with raw httpx (protocol 2025-11-25, the demo's stateful sessions)."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url, self.session = http, url, None

    async def open(self) -> Raw:
        resp = await self.http.post(self.url, json={"jsonrpc": "2.0", "id": "init", "method": "initialize",
                                                    "params": INIT_PARAMS}, headers=self._headers())
        assert resp.status_code == 200, resp.text
        self.session = resp.headers["mcp-session-id"]
        note = await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                    headers=self._headers())
        assert note.status_code == 202
        return self

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {**HEADERS, "mcp-protocol-version": "2025-11-25"}
        if self.session:
            headers["mcp-session-id"] = self.session
        return {**headers, **(extra or {})}

    async def post(self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
                   ) -> tuple[int, list[dict[str, Any]]]:
        """POST one body; (HTTP status, the JSON-RPC messages of the answer)."""
        content = body if isinstance(body, bytes) else dumps(body)
        async with asyncio.timeout(TIMEOUT):
            resp = await self.http.post(self.url, content=content, headers=self._headers(headers))
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            return resp.status_code, sse_messages(resp.text)
        if not resp.content:
            return resp.status_code, []
        value = resp.json()
        return resp.status_code, value if isinstance(value, list) else [value]

    async def rpc(self, body: dict[str, Any] | bytes, rid: Any, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, Any]]:
        status, messages = await self.post(body, headers)
        answer = next((m for m in messages if m.get("id") == rid), None)
        if answer is None and status == 400 and messages and messages[0].get("id") is None:
            answer = messages[0]  # refused at intake as unparseable: no id of such a message is echoed
        assert answer is not None, f"no answer for id {rid}: HTTP {status} {messages}"
        return status, answer

    async def call(self, name: str, arguments: Any, rid: Any = None) -> tuple[int, dict[str, Any]]:
        rid = rid if rid is not None else f"c-{uuid.uuid4().hex[:8]}"
        return await self.rpc({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                               "params": {"name": name, "arguments": arguments}}, rid)


class RawLegacy:
    """A legacy HTTP+SSE session with raw httpx: GET /sse, POST the announced endpoint, answers on the stream."""

    def __init__(self, http: httpx.AsyncClient, sse_url: str) -> None:
        self.http, self.sse_url = http, sse_url
        self.endpoint: str | None = None
        self.answers: dict[Any, dict[str, Any]] = {}
        self._arrived = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawLegacy:
        resp = await self._stack.enter_async_context(self.http.stream("GET", self.sse_url,
                                                                      headers={"accept": "text/event-stream"}))
        assert resp.status_code == 200
        got_endpoint = asyncio.Event()

        async def read() -> None:
            event, data = None, []
            async for line in resp.aiter_lines():
                if line == "":
                    if event == "endpoint":
                        self.endpoint = httpx.URL(self.sse_url).join("\n".join(data)).__str__()
                        got_endpoint.set()
                    elif data:
                        with contextlib.suppress(ValueError):
                            msg = json.loads("\n".join(data))
                            if "id" in msg and ("result" in msg or "error" in msg):
                                self.answers[msg["id"]] = msg
                                self._arrived.set()
                    event, data = None, []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))

        self._task = asyncio.ensure_future(read())
        async with asyncio.timeout(TIMEOUT):
            await got_endpoint.wait()
        await self.rpc({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": INIT_PARAMS}, "init")
        status = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert status == 202
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stack.aclose()

    async def post(self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> int:
        return (await self._post(body, headers)).status_code

    async def _post(self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        assert self.endpoint is not None
        content = body if isinstance(body, bytes) else dumps(body)
        async with asyncio.timeout(TIMEOUT):
            return await self.http.post(self.endpoint, content=content, headers={**HEADERS, **(headers or {})})

    async def rpc(self, body: dict[str, Any] | bytes, rid: Any, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, Any]]:
        resp = await self._post(body, headers)
        status = resp.status_code
        if status == 400 and resp.headers.get("content-type", "").startswith("application/json") \
                and resp.json().get("id") is None:
            return status, resp.json()  # refused at intake as unparseable: answered on the POST, no id
        async with asyncio.timeout(TIMEOUT):
            while rid not in self.answers:
                self._arrived.clear()
                await self._arrived.wait()
        return status, self.answers.pop(rid)

    async def call(self, name: str, arguments: Any, rid: Any = None) -> tuple[int, dict[str, Any]]:
        rid = rid if rid is not None else f"c-{uuid.uuid4().hex[:8]}"
        return await self.rpc({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                               "params": {"name": name, "arguments": arguments}}, rid)


@contextlib.asynccontextmanager
async def raw(stack: Stack, server: str) -> AsyncIterator[Raw]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as http:
        yield await Raw(http, stack.url(server)).open()


@contextlib.asynccontextmanager
async def legacy(stack: Stack, server: str) -> AsyncIterator[RawLegacy]:
    async with (httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as http,
                RawLegacy(http, stack.url(server, "sse")) as session):
        yield session


def marker() -> str:
    return f"red-team-{uuid.uuid4().hex[:12]}"


def refused_call(status: int, answer: dict[str, Any]) -> bool:
    """Refused by the policy or the schema check (HTTP 200), or at intake: a number beyond the range
    of JSON numbers (1e400, which Python reads as inf and would re-encode as null) is no number."""
    if status == 400:
        return answer.get("error", {}).get("code") == -32700
    return status == 200 and refused(answer)


def refused(answer: dict[str, Any]) -> bool:
    """A JSON-RPC error, or a tool result with isError (what the proxy answers to a denied call)."""
    if "error" in answer:
        return True
    result = answer.get("result") or {}
    return result.get("isError") is True


def text_of(answer: dict[str, Any]) -> str:
    if "error" in answer:
        return json.dumps(answer["error"])
    return " ".join(c.get("text", "") for c in (answer.get("result") or {}).get("content", []))


def payload(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(text_of(answer))


async def a_conversation(session: Raw | RawLegacy) -> str:
    _, answer = await session.call("list_all_missive_conversations", {"inbox": True, "limit": 1})
    return payload(answer)["conversations"][0]["id"]


async def org_text(stack: Stack, conversation: str) -> str:
    """The conversation's drafts and newest messages as the upstream holds them (read via admin)."""
    async with raw(stack, "admin") as admin:
        _, drafts = await admin.call("list_all_missive_conversation_drafts", {"conversation": conversation})
        _, messages = await admin.call("list_all_missive_conversation_messages",
                                       {"conversation": conversation, "limit": 10})
    assert not refused(drafts) and not refused(messages)
    return text_of(drafts) + text_of(messages)


# --- 1. drafts are never sent ------------------------------------------------------------------------

def _draft_args(conversation: str, mark: str, **extra: Any) -> dict[str, Any]:
    return {"conversation": conversation, "body": f"{mark} please review", **extra}


async def test_support_never_sends_a_draft_raw(stack):
    attacks = [{"send": v} for v in SEND_REFUSED] + [{"send_at": v} for v in SEND_AT_REFUSED] + [
        {"send": False, "send_at": 1800000000}, {"send": None, "send_at": 0}]
    marks = []
    async with raw(stack, "support") as session:
        conversation = await a_conversation(session)
        for extra in attacks:
            mark = marker()
            marks.append(mark)
            status, answer = await session.call("create_a_missive_draft", _draft_args(conversation, mark, **extra))
            assert refused_call(status, answer), f"{extra!r} was not refused: {answer}"
            assert status == 400 or "send" in text_of(answer), (extra, answer)
    assert [m for m in marks if stack.received_with(m)] == [], "refused drafts reached the upstream"
    held = await org_text(stack, conversation)
    assert [m for m in marks if m in held] == []


async def test_support_saves_unsent_drafts_raw(stack):
    async with raw(stack, "support") as session:
        conversation = await a_conversation(session)
        for extra in ({"send": False}, {}):
            mark = marker()
            _, answer = await session.call("create_a_missive_draft", _draft_args(conversation, mark, **extra))
            assert not refused(answer), (extra, answer)
            draft = payload(answer)["drafts"]
            assert draft["sent"] is False and draft["send_at"] is None and draft["delivered_at"] is None
            assert stack.received_with(mark), "an accepted draft must reach the upstream"
            assert mark in await org_text(stack, conversation)


async def test_send_null_is_refused_by_the_declared_schema(stack):
    """`send: null`: the Missive pack would allow it (absent/null/false), but the demo upstream
    declares `send` as a plain boolean (`send: bool = False`, schema {"type": "boolean"}), which
    its pydantic model would refuse too, so the proxy's schema check refuses it first — not
    forwarded, and the reason says what to send instead."""
    async with raw(stack, "support") as session:
        conversation = await a_conversation(session)
        mark = marker()
        _, answer = await session.call("create_a_missive_draft", _draft_args(conversation, mark, send=None))
    assert refused(answer) and "boolean" in text_of(answer), answer
    assert not stack.received_with(mark)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_support_never_sends_a_draft_sdk(stack, mode):
    marks = []
    async with asyncio.timeout(120):
        async with sdk_client(stack.url("support"), mode=mode, read_timeout=TIMEOUT) as client:
            found = json.loads(await client.call_text("list_all_missive_conversations", {"inbox": True, "limit": 1}))
            conversation = found["conversations"][0]["id"]
            for extra in ([{"send": v} for v in on_the_wire(SEND_REFUSED)]
                          + [{"send_at": v} for v in on_the_wire(SEND_AT_REFUSED)]):
                mark = marker()
                marks.append(mark)
                try:
                    result = await client.call_tool("create_a_missive_draft", _draft_args(conversation, mark, **extra))
                except MCPError:
                    continue
                assert result.is_error, f"{mode}: {extra!r} was not refused: {result}"
            saved = await client.call_text("create_a_missive_draft", _draft_args(conversation, marker(), send=False))
            assert json.loads(saved)["drafts"]["sent"] is False
    assert [m for m in marks if stack.received_with(m)] == []
    held = await org_text(stack, conversation)
    assert [m for m in marks if m in held] == []


async def test_support_never_sends_a_draft_legacy_sse(stack):
    marks = []
    async with legacy(stack, "support") as session:
        conversation = await a_conversation(session)
        for extra in [{"send": v} for v in SEND_REFUSED] + [{"send_at": v} for v in SEND_AT_REFUSED]:
            mark = marker()
            marks.append(mark)
            status, answer = await session.call("create_a_missive_draft", _draft_args(conversation, mark, **extra))
            assert refused_call(200 if status == 202 else status, answer), \
                f"{extra!r}: POST {status}, on the stream: {answer}"
        _, saved = await session.call("create_a_missive_draft", _draft_args(conversation, marker(), send=False))
        assert not refused(saved) and payload(saved)["drafts"]["sent"] is False
    assert [m for m in marks if stack.received_with(m)] == []


async def test_support_never_sends_a_draft_sdk_legacy_sse(stack):
    marks = []
    async with asyncio.timeout(60):
        async with sse_client(stack.url("support", "sse"), read_timeout=TIMEOUT) as client:
            found = json.loads(await client.call_text("list_all_missive_conversations", {"inbox": True, "limit": 1}))
            conversation = found["conversations"][0]["id"]
            for value in (True, 1, "yes", "on", "1", 1.0):
                mark = marker()
                marks.append(mark)
                result = await client.call_tool("create_a_missive_draft", _draft_args(conversation, mark, send=value))
                assert result.is_error, (value, result)
    assert [m for m in marks if stack.received_with(m)] == []


# --- 2. max_limit ----------------------------------------------------------------------------------------

async def test_max_limit_refuses_every_other_spelling(stack):
    async with raw(stack, "admin") as admin:  # the cap matters: without it, more than 25 are listed
        _, answer = await admin.call("list_all_missive_conversations", {"all": True, "limit": 50})
        assert len(payload(answer)["conversations"]) > 25
    since = time.time()
    async with raw(stack, "limited") as session:
        for value in LIMIT_REFUSED:
            mark = marker()
            status, answer = await session.call("list_all_missive_conversations",
                                                {"all": True, "limit": value, "email": mark})
            assert refused_call(status, answer), f"limit {value!r} was not refused: {answer}"
            assert not stack.received_with(mark), f"limit {value!r} reached the upstream"
        for value in LIMIT_ACCEPTED:
            mark = marker()
            _, answer = await session.call("list_all_missive_conversations", {"all": True, "limit": value})
            assert not refused(answer), f"limit {value!r} was refused: {answer}"
            assert len(payload(answer)["conversations"]) == int(value)
    listed = []  # whatever reached the upstream through `limited` asked for at most 25
    for row in stack.received():
        body = json.loads(row["body"]) if row["body"].startswith("{") and row["ts"] >= since else {}
        arguments = (body.get("params") or {}).get("arguments") or {}
        if body.get("method") == "tools/call" and "limit" in arguments:
            listed.append(arguments["limit"])
    assert listed and all(type(v) in (int, float) and 1 <= v <= 25 for v in listed), listed


async def test_max_limit_sdk_and_legacy_sse(stack):
    async with asyncio.timeout(60):
        async with sdk_client(stack.url("limited"), read_timeout=TIMEOUT) as client:
            for value in ("+200", "25", 200.0, 25.5, True, 0, -1, 26):
                result = await client.call_tool("list_all_missive_conversations", {"all": True, "limit": value})
                assert result.is_error, (value, result)
            listed = json.loads(await client.call_text("list_all_missive_conversations", {"all": True, "limit": 25.0}))
            assert len(listed["conversations"]) == 25
    async with legacy(stack, "limited") as session:
        for value in ("+200", " 200", "0200", "200_000", "25", 200.0, 25.5, True, 0, -1):
            status, answer = await session.call("list_all_missive_conversations", {"all": True, "limit": value})
            assert status == 202 and refused(answer), (value, answer)


# --- 3. arguments and params that are not objects ------------------------------------------------------

@pytest.mark.parametrize("transport", ["streamable", "legacy"])
async def test_arguments_and_params_that_are_not_objects(stack, transport):
    mark = marker()
    draft = {"body": mark, "send": True}
    bodies = {
        "arguments as a JSON string": {"params": {"name": "create_a_missive_draft", "arguments": json.dumps(draft)}},
        "arguments as an array": {"params": {"name": "create_a_missive_draft", "arguments": [draft]}},
        "arguments as a number": {"params": {"name": "create_a_missive_draft", "arguments": 1}},
        "arguments true": {"params": {"name": "create_a_missive_draft", "arguments": True}},
        "params as an array": {"params": ["create_a_missive_draft", draft]},
        "params as a string": {"params": json.dumps({"name": "create_a_missive_draft", "arguments": draft})},
    }
    opener = raw if transport == "streamable" else legacy
    async with opener(stack, "support") as session:
        for what, extra in bodies.items():
            rid = f"shape-{uuid.uuid4().hex[:6]}"
            status, answer = await session.rpc({"jsonrpc": "2.0", "id": rid, "method": "tools/call", **extra}, rid)
            assert answer.get("error", {}).get("code") == -32602, f"{what}: HTTP {status} {answer}"
            # Streamable HTTP: 400. Legacy SSE: the error travels on the stream, the POST gets 202
            # (an error status would make the SDK's client end the whole session).
            assert status == (400 if transport == "streamable" else 202), f"{what}: HTTP {status}"
    assert not stack.received_with(mark)


# --- 4. tool names ------------------------------------------------------------------------------------------

FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in "create_a_missive_draft")
LOOKALIKES = ["Create_A_Missive_Draft", FULL_WIDTH,
              "create_a_missive_draft ", " create_a_missive_draft", "create_a_missive_draft\u200b",
              "cre\u0430te_a_missive_draft", "create_a_missive_draft\x00", "CREATE_A_MISSIVE_DRAFT",
              "create_a_missive_draft\t", "send_a_missive_draft", "create_a_missive_email"]
LONG_NAME = "create_a_missive_draft" + "x" * (2 * 1024 * 1024)


@pytest.mark.parametrize("transport", ["streamable", "legacy"])
async def test_lookalike_long_and_undeclared_names_are_refused_and_logged(stack, transport):
    names = [*LOOKALIKES, LONG_NAME]
    opener = raw if transport == "streamable" else legacy
    marks = {}
    async with opener(stack, "support") as session:
        conversation = await a_conversation(session)
        for name in names:
            mark = marker()
            marks[name] = mark
            _, answer = await session.call(name, _draft_args(conversation, mark, send=True))
            assert "error" in answer and answer["error"]["code"] == -32602, f"{name[:40]!r}: {answer}"
            message = answer["error"]["message"]
            assert message.startswith(("Unknown tool:", "Invalid params:")), message[:200]
    assert [n[:40] for n, m in marks.items() if stack.received_with(m)] == []
    for name in names:
        shown = name[:128]
        entries = await stack.decisions_for(lambda e, shown=shown, mark=marks[name]: (
            e["input"]["message"]["method"] == "tools/call" and (e["input"].get("tool") or {}).get("name") == shown
            and (e["input"]["tool"].get("arguments") or {}).get("body", "").startswith(mark)))
        assert entries, f"no decision-log entry for the call of {name[:40]!r}"
        assert all(e["result"]["allow"] is False for e in entries), entries


async def test_lookalike_names_sdk(stack):
    async with asyncio.timeout(60):
        async with sdk_client(stack.url("support"), read_timeout=TIMEOUT) as client:
            for name in LOOKALIKES[:4]:
                with pytest.raises(MCPError) as err:
                    await client.call_tool(name, {"body": "x", "send": True})
                assert err.value.error.code == -32602


# --- 5. a request named like a notification -------------------------------------------------------------

@pytest.mark.parametrize("transport", ["streamable", "legacy"])
async def test_notification_names_carrying_an_id_are_refused_as_requests(stack, transport):
    opener = raw if transport == "streamable" else legacy
    rids = []
    async with opener(stack, "support") as session:
        for method in ("notifications/initialized", "notifications/cancelled", "notifications/tools/call"):
            rid = f"note-{uuid.uuid4().hex[:8]}"
            rids.append(rid)
            status, answer = await session.rpc({"jsonrpc": "2.0", "id": rid, "method": method, "params": {}}, rid)
            assert answer.get("error", {}).get("code") == -32001, (method, answer)
            assert answer["error"]["message"] == "Forbidden by policy"
        # A tools/call *notification* (no id) carries no tool decision: refused, never forwarded.
        mark = marker()
        note = {"jsonrpc": "2.0", "method": "tools/call",
                "params": {"name": "create_a_missive_draft", "arguments": {"body": mark, "send": True}}}
        status = (await session.post(note))[0] if transport == "streamable" else await session.post(note)
        assert status == 202
    assert [r for r in stack.received() if any(rid in r["body"] for rid in rids)] == []
    assert not stack.received_with(mark)


# --- 6. underscore headers ------------------------------------------------------------------------------------

UNDERSCORE_HEADERS = {"mcp_method": "tools/call", "mcp_name": "create_a_missive_draft",
                      "mcp_session_id": "forged-session", "mcp_protocol_version": "2026-07-28",
                      "mcp_param_send": "true", "MCP_METHOD": "tools/call", "Mcp_Name": "create_a_missive_message"}


@pytest.mark.parametrize("transport", ["streamable", "legacy"])
async def test_underscore_headers_never_reach_the_upstream(stack, transport):
    opener = raw if transport == "streamable" else legacy
    async with opener(stack, "support") as session:
        rid = f"underscore-{uuid.uuid4().hex[:8]}"
        _, answer = await session.rpc({"jsonrpc": "2.0", "id": rid, "method": "tools/list"}, rid,
                                      headers=UNDERSCORE_HEADERS)
        assert "result" in answer, answer
        conversation = await a_conversation(session)
        mark = marker()
        _, saved = await session.call("create_a_missive_draft", _draft_args(conversation, mark, send=False))
        assert not refused(saved)
    rows = [r for r in stack.received() if rid in r["body"]]
    assert len(rows) == 1, "the tools/list itself must be forwarded"
    for row in rows:
        names = [n for n, _ in row["headers"]]
        assert not [n for n in names if "_" in n], f"underscore headers reached the upstream: {names}"
        assert not [v for _, v in row["headers"] if v in ("forged-session", "create_a_missive_message")]


async def test_underscore_headers_with_a_refused_call_forward_nothing(stack):
    async with raw(stack, "support") as session:
        conversation = await a_conversation(session)
        mark = marker()
        _, answer = await session.rpc({"jsonrpc": "2.0", "id": "u-1", "method": "tools/call", "params": {
            "name": "create_a_missive_draft", "arguments": _draft_args(conversation, mark, send="yes")}}, "u-1",
            headers={**UNDERSCORE_HEADERS, "mcp_param_send": "false"})
        assert refused(answer)
    assert not stack.received_with(mark)


# --- extra: case-variant keys (a parser differential with case-insensitive upstreams) --------------

DECIDED_KEYS = {"jsonrpc", "id", "method", "params", "name", "arguments", "send", "send_at", "limit"}


def _fold(key: str) -> str:
    """A key as Go's encoding/json matches it: case-insensitively, U+017F (long s) as s, U+212A (Kelvin) as k."""
    return key.replace("\u017f", "s").replace("\u212a", "k").lower()


def _smuggled(value: Any, path: str = "") -> list[str]:
    """Keys that are not a decided key but match one case-insensitively (where a case-insensitive
    decoder would read them as that key, the last one winning)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in DECIDED_KEYS and _fold(key) in DECIDED_KEYS:
                found.append(f"{path}/{key}")
            found += _smuggled(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _smuggled(item, f"{path}/{i}")
    return found


async def test_case_variant_keys_never_reach_the_upstream(stack):
    """The policy decides `send: false`, `method: tools/list`, `name: list_all_…`; a case-variant
    twin (`Send`, `\u017fend`, `Method`, `Name`) is forwarded in the re-serialization. The demo upstream
    (pydantic, case-sensitive) ignores it, so nothing is sent here; an upstream decoding with Go's
    encoding/json (the go-sdk before CVE-2026-27896 / GHSA-wvj2-96wp-fq3f, or any server built on
    it) matches it to the same field, last one winning: it would send the draft, run
    create_a_missive_draft on the read-only server, or call a hidden tool. What reaches the
    upstream must not carry such twins (refuse them, as duplicate keys are refused)."""
    marks = []
    async with raw(stack, "support") as support, raw(stack, "triage") as triage:
        conversation = await a_conversation(support)
        mark = marker()
        marks.append(mark)
        _, answer = await support.call("create_a_missive_draft", {
            **_draft_args(conversation, mark, send=False), "Send": True, "\u017fend": True, "SEND_AT": 1800000000})
        sent = not refused(answer) and payload(answer)["drafts"]["sent"]
        assert sent is not True  # the demo upstream is case-sensitive: the draft is not sent
        for message in [
            {"jsonrpc": "2.0", "id": "cv-1", "method": "tools/list", "Method": "tools/call",
             "params": {"name": "create_a_missive_draft", "arguments": {"body": "x", "send": True}}},
            {"jsonrpc": "2.0", "id": "cv-2", "method": "tools/call", "params": {
                "name": "list_all_missive_conversations", "Name": "create_a_missive_draft",
                "arguments": {"inbox": True, "limit": 1, "body": "x", "send": True}}},
            {"jsonrpc": "2.0", "id": "cv-3", "method": "tools/call", "params": {
                "name": "list_all_missive_conversations", "arguments": {"inbox": True, "limit": 1}},
                "PARAMS": {"name": "create_a_missive_draft", "arguments": {"body": "x", "send": True}}},
        ]:
            mark = marker()
            marks.append(mark)
            message["marker"] = mark
            await triage.rpc(message, message["id"])
    smuggled = {}
    for mark in marks:
        for row in stack.received_with(mark):
            if keys := _smuggled(json.loads(row["body"])):
                smuggled[mark] = keys
    assert not smuggled, f"case-variant twins of decided keys reached the upstream: {smuggled}"


# --- extra: other doors into the same upstream -------------------------------------------------------

async def test_a_session_of_one_server_is_unknown_on_another(stack):
    """A triage (read-only) session presented on support, and a support session on triage: 404,
    nothing forwarded; legacy sessions likewise, through another server's or no token."""
    mark = marker()
    call = {"jsonrpc": "2.0", "id": "x-1", "method": "tools/call",
            "params": {"name": "create_a_missive_draft", "arguments": {"body": mark, "send": True}}}
    async with raw(stack, "triage") as triage, raw(stack, "support") as support:
        for session, url in ((triage.session, stack.url("support")), (support.session, stack.url("triage"))):
            resp = await triage.http.post(url, json=call, headers={**HEADERS, "mcp-protocol-version": "2025-11-25",
                                                                   "mcp-session-id": session})
            assert resp.status_code == 404, resp.text
    async with legacy(stack, "triage") as session:
        assert session.endpoint is not None
        query = session.endpoint.split("?", 1)[1]
        for url in (f"{stack.url('support', 'messages/')}?{query}", f"{stack.base}/messages/?{query}"):
            resp = await session.http.post(url, json=call, headers=HEADERS)
            assert resp.status_code in (401, 404), (url, resp.status_code, resp.text)
    assert not stack.received_with(mark)


async def test_no_token_or_a_wrong_token_reaches_nothing(stack):
    mark = marker()
    call = {"jsonrpc": "2.0", "id": "x-2", "method": "tools/call",
            "params": {"name": "create_a_missive_draft", "arguments": {"body": mark, "send": True}}}
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as http:
        for path in ("/mcp", "/sse", "/not-a-token/mcp", f"/{stack.tokens['support']}x/mcp", "/mcp/not-a-token",
                     f"/{stack.tokens['support'].upper()}/mcp"):
            resp = await http.post(f"{stack.base}{path}", json=call,
                                   headers={**HEADERS, "mcp-protocol-version": "2025-11-25"})
            assert resp.status_code in (401, 404, 405), (path, resp.status_code, resp.text)
    assert not stack.received_with(mark)


if __name__ == "__main__":
    _serve_demo()
