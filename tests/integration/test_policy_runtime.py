"""Policy runtime: the remote OPA mode, hot reload, and expiry at the configured second."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from mcp.shared.exceptions import MCPError

from proxy.app import create_app
from proxy.config import BUNDLED_POLICIES, load
from tests.peers.clients import sdk_client
from tests.peers.harness import eventually, free_port, start_server

READ_TOOLS = {"list_all_missive_conversations", "get_single_missive_conversation_by_id"}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
HIDE_LIST_ALL = 'package mcp.authz\nimport rego.v1\nhidden_tools contains "list_all_missive_conversations"\n'
CALL = {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "list_all_missive_conversations", "arguments": {}}}


def start_opa(tmp_path: Path, mode: str = "ok"):
    """The OPA stand-in (tests/peers/opa_standin.py: no OPA binary installs here) over our policies."""
    port = free_port()
    handle = start_server(["tests.peers.opa_standin", "--port", str(port), "--policies", BUNDLED_POLICIES,
                           "--mode", mode], port, log_dir=tmp_path)
    return f"http://127.0.0.1:{port}", handle


async def test_remote_opa_mode_enforces_the_same_policy(sdk_upstream, proxy_for, tmp_path):
    opa_url, opa = start_opa(tmp_path)
    try:
        upstream = sdk_upstream("stateless-json")
        proxy = proxy_for(upstream.base, {"servers": [{"name": "ro", "methods": ["read"]}],
                                          "policy": {"engine": "opa", "opa": {"url": opa_url, "timeout_ms": 1000}}})
        async with sdk_client(proxy.url) as client:
            assert set(await client.tool_names()) == READ_TOOLS
            with pytest.raises(MCPError) as err:
                await client.call_tool("create_a_missive_post", {"conversation": "c", "text": "t"})
            assert err.value.error.code == -32602
    finally:
        opa.stop()


@pytest.mark.parametrize("mode", ["down", "slow", "garbage", "undefined"])
async def test_remote_opa_failures_deny_with_503(sdk_upstream, proxy_for, tmp_path, mode):
    if mode == "down":
        opa_url, opa = f"http://127.0.0.1:{free_port()}", None
    else:
        opa_url, opa = start_opa(tmp_path, mode)
    try:
        upstream = sdk_upstream("stateless-json")
        proxy = proxy_for(upstream.base, {"policy": {"engine": "opa", "opa": {"url": opa_url, "timeout_ms": 300}}})
        upstream.clear_requests()
        async with httpx.AsyncClient() as http:
            start = time.monotonic()
            r = await http.post(proxy.url, headers=HEADERS, json=CALL)
        assert r.status_code == 503 and r.json()["error"]["message"] == "Policy engine unavailable"
        assert time.monotonic() - start < 1.5
        assert upstream.relayed() == []
    finally:
        if opa:
            opa.stop()


async def _tool_names(url: str) -> set[str]:
    async with sdk_client(url, mode="legacy") as client:
        return set(await client.tool_names())


def _proxy_with_site_policies(sdk_upstream, proxy_for, tmp_path, reload_interval_s: float):
    """A read-only server decided by the bundled policies plus an (empty) site directory; both are
    watched. Returns the proxy and the site directory."""
    site = tmp_path / "site"
    site.mkdir()
    upstream = sdk_upstream("stateful-json")
    proxy = proxy_for(upstream.base, {"servers": [{"name": "ro", "methods": ["read"]}], "policy": {
        "paths": ["@bundled", str(site)], "reload_interval_s": reload_interval_s}})
    return proxy, site


async def test_hot_reload_on_change_keeps_the_last_good_policy(sdk_upstream, proxy_for, tmp_path):
    proxy, site = _proxy_with_site_policies(sdk_upstream, proxy_for, tmp_path, 0.2)
    assert await _tool_names(proxy.url) == READ_TOOLS

    # A new rule file: picked up without restart.
    extra = site / "hide.rego"
    extra.write_text(HIDE_LIST_ALL)
    assert await eventually(lambda: _equals(proxy.url, {"get_single_missive_conversation_by_id"}))

    # A broken version is refused, named with file and line; the previous one stays in force.
    extra.write_text('package mcp.authz\nimport rego.v1\nhidden_tools contains name if {\n')
    assert await eventually(lambda: _stderr_has(proxy, "hide.rego:"))
    assert "policy reload rejected, the previous version stays in force" in proxy.handle.stderr()
    assert await _tool_names(proxy.url) == {"get_single_missive_conversation_by_id"}

    extra.unlink()
    assert await eventually(lambda: _equals(proxy.url, READ_TOOLS))
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{proxy.base}/metrics")).text
    assert 'mcp_proxy_policy_reloads_total{result="failure"} 1.0' in metrics
    assert 'mcp_proxy_policy_reloads_total{result="success"} 2.0' in metrics


async def test_sighup_reloads(sdk_upstream, proxy_for, tmp_path):
    proxy, site = _proxy_with_site_policies(sdk_upstream, proxy_for, tmp_path, 0)
    (site / "hide.rego").write_text(HIDE_LIST_ALL)
    await asyncio.sleep(1.0)
    assert await _tool_names(proxy.url) == READ_TOOLS  # no polling: nothing changed yet
    proxy.handle.proc.send_signal(signal.SIGHUP)
    assert await eventually(lambda: _equals(proxy.url, {"get_single_missive_conversation_by_id"}))
    assert proxy.handle.proc.poll() is None


async def _equals(url: str, expected: set[str]) -> bool:
    return await _tool_names(url) == expected


async def _stderr_has(proxy, text: str) -> bool:
    return text in proxy.handle.stderr()


async def test_expiry_flips_access_at_the_configured_second(sdk_upstream):
    """In-process proxy with an injected clock: allowed up to the second before, denied from it."""
    upstream = sdk_upstream("stateful-json")
    expires = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    config = load(None, {"upstream.url": f"{upstream.base}/mcp", "servers": [
        {"name": "temp", "methods": ["read"], "expires_at": expires.isoformat()}]})
    now = [expires.timestamp() - 1.0]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, clock=lambda: now[0]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with sdk_client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
            assert "c-1" in await client.call_text("list_all_missive_conversations", {})
            now[0] = expires.timestamp() - 0.001  # still the second before
            assert "c-1" in await client.call_text("list_all_missive_conversations", {})
            now[0] = expires.timestamp()
            # From that second the server answers 401 (the authenticator), before any policy runs.
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{port}/mcp", headers=HEADERS, json=CALL)
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
            with pytest.raises(Exception):  # noqa: B017  (the SDK surfaces the 401 as its own error)
                await client.call_tool("list_all_missive_conversations", {})
    finally:
        server.should_exit = True
        await task
