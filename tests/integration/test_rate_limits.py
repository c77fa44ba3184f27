"""Upstream rate limits through the real proxy: a Missive-style 429 (Retry-After, X-RateLimit-* with
the reset in epoch seconds) reaches the client with the normalized fields beside the originals, is
never retried, and — with rate_limit.surface_to_agent — becomes what the official SDK client shows
the model: a tool result with the wait, or a JSON-RPC error with data.retry_after_s.

The upstream is the demo Missive server (its own per-minute X-RateLimit-* on every answer), in this
test process, behind `Missive429`, which answers the chosen JSON-RPC methods with Missive's 429.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.demo.upstream import build_app
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import free_port

RETRY_AFTER = 42
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-11-25"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "list_all_missive_users",
                                                                      "arguments": {}}}
TOOL = "list_all_missive_users"


class Missive429:
    """Answers POSTed JSON-RPC requests whose method is in `limited` as Missive does at its limit;
    counts every method it receives (`seen`), limited or not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.limited: set[str] = set()
        self.seen: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        method = json.loads(body).get("method") if body.strip().startswith(b"{") else None
        self.seen[method] += 1
        if method in self.limited:
            reset = math.ceil(time.time()) + RETRY_AFTER
            data = json.dumps({"error": "rate_limited", "limit": 300, "window": "minute",
                               "retry_after": RETRY_AFTER}).encode()
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                (b"retry-after", str(RETRY_AFTER).encode()), (b"x-ratelimit-limit", b"300"),
                (b"x-ratelimit-remaining", b"0"), (b"x-ratelimit-reset", str(reset).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Missive429]]:
    """The demo upstream (1000 requests a minute: its X-RateLimit-* on every answer) behind Missive429,
    served from a thread for the whole module."""
    app = Missive429(build_app(concurrent=0, per_minute=1000, per_15min=0, dns_rebinding_protection=False))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def proxies(upstream: tuple[str, Missive429], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    """One proxy passing 429s through (the default), one surfacing them to the agent."""
    workdir = tmp_path_factory.mktemp("rate-limits")
    started = {"through": start_proxy(workdir, upstream[0]),
               "surfaced": start_proxy(workdir, upstream[0], {"rate_limit": {"surface_to_agent": True}})}
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.fixture
def missive(upstream: tuple[str, Missive429]) -> Missive429:
    upstream[1].limited, upstream[1].seen = set(), Counter()
    return upstream[1]


def _assert_normalized(headers: httpx.Headers) -> None:
    """Missive's originals kept, the seed's trio and the current draft's fields added."""
    assert headers["retry-after"] == str(RETRY_AFTER)
    assert headers["x-ratelimit-limit"] == "300" and headers["x-ratelimit-remaining"] == "0"
    assert int(headers["x-ratelimit-reset"]) > time.time()  # epoch seconds, as Missive sent it
    assert headers["ratelimit-limit"] == "300" and headers["ratelimit-remaining"] == "0"
    reset = int(headers["ratelimit-reset"])
    assert RETRY_AFTER - 5 <= reset <= RETRY_AFTER + 1  # delay seconds
    assert headers["ratelimit-policy"] == '"default";q=300'
    assert headers["ratelimit"] == f'"default";r=0;t={reset}'


async def _metric(http: httpx.AsyncClient, base: str, name: str) -> float | None:
    text = (await http.get(f"{base}/metrics")).text
    m = re.search(rf'^{name}\{{server="default"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


async def test_streamable_429_passes_through_normalized_and_unretried(missive, proxies):
    upstream, proxy = missive, proxies["through"]
    upstream.limited = {"tools/call"}
    async with httpx.AsyncClient(timeout=10) as http:
        init = await http.post(proxy.url, json=INIT, headers=HEADERS)
        assert init.status_code == 200
        # A 200 carries the demo's per-minute fields: normalized too (reset: epoch → delay).
        assert init.headers["x-ratelimit-limit"] == "1000" and init.headers["ratelimit-limit"] == "1000"
        assert 0 <= int(init.headers["ratelimit-reset"]) <= 61
        session = {**HEADERS, "mcp-session-id": init.headers["mcp-session-id"]}
        await http.post(proxy.url, json=INITIALIZED, headers=session)
        before = await _metric(http, proxy.base, "mcp_proxy_upstream_rate_limited_total") or 0
        limited = await http.post(proxy.url, json=CALL, headers=session)
        assert limited.status_code == 429
        _assert_normalized(limited.headers)
        assert limited.json()["error"] == "rate_limited"  # the upstream's body, as it sent it
        assert upstream.seen["tools/call"] == 1  # no retry
        assert await _metric(http, proxy.base, "mcp_proxy_upstream_rate_limited_total") == before + 1
        assert await _metric(http, proxy.base, "mcp_proxy_upstream_ratelimit_remaining") == 0
        assert await _metric(http, proxy.base, "mcp_proxy_upstream_ratelimit_limit") == 300
        assert 30 <= (await _metric(http, proxy.base, "mcp_proxy_upstream_ratelimit_reset_seconds") or 0) <= 43


@asynccontextmanager
async def _legacy_session(http: httpx.AsyncClient, proxy_base: str) -> AsyncIterator[tuple[str, Any]]:
    """A raw legacy session through the proxy: (messages URL, the stream's data lines)."""
    async with http.stream("GET", f"{proxy_base}/sse", headers={"accept": "text/event-stream"}) as stream:
        lines = stream.aiter_lines()
        endpoint = None
        async for line in lines:
            if line.startswith("data: "):
                endpoint = line[len("data: "):]
                break
        assert endpoint is not None
        yield f"{proxy_base}{endpoint}", lines


async def _next_message(lines: Any) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])
    raise AssertionError("the stream ended")


async def test_legacy_429_is_the_posts_status_with_the_headers(missive, proxies):
    upstream, proxy = missive, proxies["through"]
    upstream.limited = {"tools/call"}
    post_headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as http, _legacy_session(http, proxy.base) as (url, lines):
        assert (await http.post(url, json=INIT, headers=post_headers)).status_code == 202
        assert (await asyncio.wait_for(_next_message(lines), 5))["id"] == 1
        await http.post(url, json=INITIALIZED, headers=post_headers)
        limited = await http.post(url, json=CALL, headers=post_headers)
        assert limited.status_code == 429
        _assert_normalized(limited.headers)
        assert limited.json()["error"] == "rate_limited"
        assert upstream.seen["tools/call"] == 1


HINT = f"rate limited by the upstream; retry after {RETRY_AFTER} s"


def _assert_hint(result: Any) -> None:
    assert result.is_error
    assert [c.text for c in result.content] == [HINT]
    meta = result.meta["ratelimit"]
    assert meta["limit"] == 300 and meta["remaining"] == 0 and meta["retry_after_s"] == RETRY_AFTER
    assert RETRY_AFTER - 5 <= meta["reset_s"] <= RETRY_AFTER + 1


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_surfaced_to_the_agent_on_streamable_http(missive, proxies, mode):
    """The SDK client's model-visible tool result, whichever revision it negotiates."""
    upstream, proxy = missive, proxies["surfaced"]
    upstream.limited = {"tools/call"}
    async with sdk_client(proxy.url, mode=mode) as client:
        assert client.modern == (mode == "auto")  # 2026-07-28 (its results carry resultType) or classic
        _assert_hint(await client.call_tool(TOOL, {}))
    assert upstream.seen["tools/call"] == 1


async def test_surfaced_to_the_agent_on_legacy_sse(missive, proxies):
    upstream, proxy = missive, proxies["surfaced"]
    upstream.limited = {"tools/call"}
    async with sse_client(proxy.sse_url) as client:
        _assert_hint(await client.call_tool(TOOL, {}))
        upstream.limited = set()
        assert not (await client.call_tool(TOOL, {})).is_error  # the session goes on
    assert upstream.seen["tools/call"] == 2


async def test_surfaced_other_requests_get_a_jsonrpc_error(missive, proxies):
    upstream, proxy = missive, proxies["surfaced"]
    upstream.limited = {"prompts/list"}
    async with httpx.AsyncClient(timeout=10) as http:
        init = await http.post(proxy.url, json=INIT, headers=HEADERS)
        session = {**HEADERS, "mcp-session-id": init.headers["mcp-session-id"]}
        await http.post(proxy.url, json=INITIALIZED, headers=session)
        r = await http.post(proxy.url, json={"jsonrpc": "2.0", "id": 3, "method": "prompts/list"}, headers=session)
        assert r.status_code == 200
        _assert_normalized(r.headers)
        error = r.json()["error"]
        assert r.json()["id"] == 3 and error["message"] == HINT
        assert error["data"]["retry_after_s"] == RETRY_AFTER and error["data"]["ratelimit"]["remaining"] == 0
        # A notification's 429 answers no request: passed through.
        upstream.limited = {"notifications/initialized"}
        assert (await http.post(proxy.url, json=INITIALIZED, headers=session)).status_code == 429
    assert upstream.seen["prompts/list"] == 1
