"""Faults: upstream down or hanging, clients leaving mid-stream, and bodies the proxy must refuse."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from tests.peers.harness import free_port

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}


async def test_upstream_down_is_502_with_a_jsonrpc_error(proxy_for):
    proxy = proxy_for(f"http://127.0.0.1:{free_port()}")
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=CALL, headers=HEADERS)
        assert r.status_code == 502
        assert r.json()["id"] == 5 and r.json()["error"]["code"] == -32603
        assert (await http.get(proxy.sse_url)).status_code == 502
        ready = await http.get(f"{proxy.base}/readyz")
        assert ready.status_code == 503
        assert (await http.get(f"{proxy.base}/healthz")).status_code == 200


async def test_upstream_that_hangs_is_504_after_the_timeout(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"upstream": {"timeout_s": 1}})
    call = {**CALL, "params": {"name": "sleep", "arguments": {"seconds": 5}}}
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{proxy.base}/readyz")).status_code == 200
        start = time.monotonic()
        r = await http.post(proxy.url, json=call, headers=HEADERS)
        elapsed = time.monotonic() - start
    assert r.status_code == 504 and r.json()["error"]["message"] == "Upstream timed out"
    assert 0.9 < elapsed < 3


def _upstream_connections(proxy_pid: int, upstream_port: int) -> int:
    conns = psutil.Process(proxy_pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == upstream_port and c.status == psutil.CONN_ESTABLISHED)


async def test_client_disconnect_mid_stream_closes_the_upstream_connection(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateful-sse")
    proxy = proxy_for(upstream.base)
    pid = proxy.handle.proc.pid
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(proxy.url, json=init, headers=HEADERS)
        session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"]}
        await http.post(proxy.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "slow_progress", "arguments": {"steps": 40, "delay": 0.25},
                           "_meta": {"progressToken": "p"}}}
        async with http.stream("POST", proxy.url, json=call, headers=session) as stream:
            lines = stream.aiter_lines()
            while "notifications/progress" not in await anext(lines):
                pass
            during = _upstream_connections(pid, upstream.port)
        # The client is gone while the tool still has ~9 s to run.
        for _ in range(40):
            await asyncio.sleep(0.05)
            if _upstream_connections(pid, upstream.port) < during:
                break
        assert _upstream_connections(pid, upstream.port) < during


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}', 400, -32700),
    (b'{"jsonrpc":"2.0","id":1,"params":{}}', 400, -32600),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 2048 + b'"}}', 413, -32600),
])
async def test_refused_bodies_never_reach_the_upstream(sdk_upstream, proxy_for, body, status, code):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"limits": {"max_body_bytes": 1024}})
    upstream.clear_requests()
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, content=body, headers=HEADERS)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)

        async def chunked():  # no Content-Length: the limit must hold while streaming too
            for _ in range(4):
                yield b" " * 512
        r = await http.post(proxy.url, content=chunked(), headers=HEADERS)
        assert r.status_code == 413
    assert upstream.relayed() == []


async def test_header_body_mismatch_never_reaches_the_upstream(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base)
    upstream.clear_requests()
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "create_a_missive_post", "arguments": {"conversation": "c", "text": "t"}, "_meta": meta}}
    headers = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=call, headers=headers)
    assert r.status_code == 400
    assert r.json() == {"jsonrpc": "2.0", "id": 9, "error": {
        "code": -32020, "message": "Header mismatch: Mcp-Name does not match params.name"}}
    assert upstream.relayed() == []


async def test_legacy_messages_need_a_known_session(sdk_upstream, proxy_for):
    upstream = sdk_upstream("legacy-sse")
    proxy = proxy_for(upstream.base)
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{proxy.base}/messages/", json=CALL, headers=HEADERS)).status_code == 400
        r = await http.post(f"{proxy.base}/messages/?session_id=deadbeef", json=CALL, headers=HEADERS)
        assert r.status_code == 404
    assert all(r["method"] != "POST" for r in upstream.requests())
