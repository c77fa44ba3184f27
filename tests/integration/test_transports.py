"""The official MCP SDK client and servers (mcp 2.3.0), with the proxy in between, in every mode."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import STREAMABLE_MODES

TOOLS = {"echo", "add", "slow_progress", "sleep", "create_a_missive_post"}


@pytest.fixture(scope="module")
def stack(sdk_upstream_module, tmp_path_factory):
    """One proxy per upstream mode for the module."""
    from tests.integration.proxy_harness import start_proxy

    proxies = {}

    def _stack(mode):
        upstream = sdk_upstream_module(mode)
        if mode not in proxies:
            proxies[mode] = start_proxy(tmp_path_factory.mktemp(f"proxy-{mode}"), upstream.base)
        return upstream, proxies[mode]

    yield _stack
    for proxy in proxies.values():
        proxy.stop()


@pytest.mark.parametrize("mode", STREAMABLE_MODES)
@pytest.mark.parametrize("client_mode", ["auto", "legacy"])
async def test_sdk_client_through_proxy(stack, mode, client_mode):
    upstream, proxy = stack(mode)
    upstream.clear_requests()
    async with sdk_client(proxy.url, mode=client_mode) as client:
        assert set(await client.tool_names()) >= TOOLS
        assert await client.call_text("echo", {"text": "héllo"}) == "héllo"
        assert await client.call_text("add", {"a": 2, "b": 40}) == "42"
        if client_mode == "auto":
            assert client.modern and client.protocol_version == "2026-07-28"
            assert client.session_id is None
        else:
            assert not client.modern
            assert (client.session_id is None) == (mode == "stateless-json")
    seen = upstream.requests()
    methods = [r["headers"].get("mcp-method") for r in seen]
    if client_mode == "auto":
        assert methods[:1] == ["server/discover"]
    elif mode != "stateless-json":  # the classic handshake: a GET stream, and DELETE at the end
        http_methods = [r["method"] for r in seen]
        assert "GET" in http_methods and http_methods[-1] == "DELETE"
    assert all(r["path"] == "/mcp" for r in seen)
    # No client credential in any form; the proxy's own upstream headers on every request.
    assert all(r["headers"]["authorization"] == "Bearer upstream-credential" for r in seen)
    assert all(r["headers"]["x-proxy-tenant"] == "acme" for r in seen)


@pytest.mark.parametrize("mode", ["stateful-sse", "stateful-json"])
async def test_session_delete_then_unknown_session_is_404(stack, mode):
    _upstream, proxy = stack(mode)
    async with sdk_client(proxy.url, mode="legacy", terminate_on_close=False) as client:
        session_id = client.session_id
        assert session_id
        assert await client.terminate() == 200
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={
            "accept": "application/json, text/event-stream", "mcp-session-id": session_id,
            "mcp-protocol-version": "2025-11-25"})
    assert r.status_code == 404


async def test_legacy_sse_through_proxy(stack):
    upstream, proxy = stack("legacy-sse")
    upstream.clear_requests()
    async with sse_client(proxy.sse_url) as client:
        assert set(await client.tool_names()) >= TOOLS
        assert await client.call_text("echo", {"text": "via sse"}) == "via sse"
        proxy_session = client.session_id
    seen = upstream.requests()
    upstream_sessions = {r["query"] for r in seen if r["method"] == "POST"}
    assert seen[0]["method"] == "GET" and seen[0]["path"] == "/sse"
    assert all(r["path"] == "/messages/" for r in seen[1:])
    # The client talks to the proxy's session id, never the upstream's.
    assert proxy_session and not any(proxy_session in q for q in upstream_sessions)
    assert all(r["headers"]["authorization"] == "Bearer upstream-credential" for r in seen)


async def test_legacy_sse_client_in_auto_mode_falls_back(stack):
    _, proxy = stack("legacy-sse")
    async with sse_client(proxy.sse_url, mode="auto") as client:
        assert await client.call_text("add", {"a": 1, "b": 1}) == "2"


@pytest.mark.parametrize(("mode", "client", "client_mode"), [
    ("stateful-sse", sdk_client, "legacy"), ("stateful-sse", sdk_client, "auto"), ("legacy-sse", sse_client, "legacy"),
])
async def test_progress_reaches_the_client_as_it_happens(stack, mode, client, client_mode):
    _, proxy = stack(mode)
    arrivals: list[float] = []

    async def on_progress(progress, total, message):
        arrivals.append(time.monotonic())

    url = proxy.sse_url if mode == "legacy-sse" else proxy.url
    async with client(url, mode=client_mode) as c:
        result = await c.call_tool("slow_progress", {"steps": 4, "delay": 0.5}, progress=on_progress)
        done = time.monotonic()
    assert not result.is_error
    assert len(arrivals) == 4
    assert done - arrivals[0] > 1.0, "the first progress event was held back until the end"
