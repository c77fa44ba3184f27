"""SIGTERM drains the proxy (what a Kubernetes preStop/terminationGracePeriod expects): requests in
flight finish within limits.shutdown_grace_s, open GET streams and idle legacy sessions end
cleanly at once, nothing new is accepted, and the process exits 0.

The real proxy as a subprocess in front of real SDK upstreams.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.config import load
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.harness import free_port

GRACE = 2
VERSION = "2025-06-18"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": VERSION}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "drain", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def _sleep_call(seconds: float, id: int = 7) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": seconds}}}


@pytest.fixture
def draining_proxy(tmp_path: Path):
    started: list[Proxy] = []

    def _start(upstream_base: str) -> Proxy:
        proxy = start_proxy(tmp_path, upstream_base, {"limits": {"shutdown_grace_s": GRACE}}, log_level="info")
        started.append(proxy)
        return proxy

    yield _start
    for proxy in started:
        proxy.stop()


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """(return code, seconds it took) once `proc` has exited; fails if it takes over `timeout`."""
    start = time.monotonic()
    code = await asyncio.to_thread(proc.wait, timeout)
    return code, time.monotonic() - start


async def _session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    r = await http.post(url, json=INIT, headers=HEADERS)
    assert r.status_code == 200, r.text
    session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"]}
    assert (await http.post(url, json=INITIALIZED, headers=session)).status_code == 202
    return session


def _sse_messages(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "{" in line]


async def test_sigterm_lets_a_slow_call_finish_refuses_new_requests_and_exits_0(sdk_upstream_module, draining_proxy):
    proxy = draining_proxy(sdk_upstream_module("stateful-sse").base)
    async with httpx.AsyncClient(timeout=10) as http:
        session = await _session(http, proxy.url)
        call = asyncio.ensure_future(http.post(proxy.url, json=_sleep_call(1.5), headers=session))
        await asyncio.sleep(0.5)  # forwarded, its SSE answer under way
        proxy.handle.proc.send_signal(signal.SIGTERM)
        exited = asyncio.ensure_future(_exit_code(proxy.handle.proc, GRACE + 2))
        await asyncio.sleep(0.3)
        # Nothing new: the listener is closed (or, in the instant before, a 503 says go elsewhere).
        async with httpx.AsyncClient(timeout=2) as fresh:
            try:
                late = await fresh.post(proxy.url, json={"jsonrpc": "2.0", "id": 8, "method": "ping"}, headers=session)
            except httpx.ConnectError:
                pass
            else:
                assert late.status_code == 503 and late.headers["retry-after"] == "1"
                assert late.headers["connection"] == "close"
        r = await call
        assert r.status_code == 200
        [answer] = _sse_messages(r.text)
        assert answer["id"] == 7 and not answer["result"].get("isError")
        code, took = await exited
    assert code == 0
    assert took < GRACE + 1  # once the call is done, not at the end of the grace period
    assert "Traceback" not in proxy.handle.stderr()


async def test_sigterm_ends_an_open_get_stream_cleanly_at_once(sdk_upstream_module, draining_proxy):
    proxy = draining_proxy(sdk_upstream_module("stateful-sse").base)
    async with httpx.AsyncClient(timeout=10) as http:
        session = await _session(http, proxy.url)
        async with http.stream("GET", proxy.url, headers={**session, "accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            proxy.handle.proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            # A clean end of the chunked body: an incomplete one raises RemoteProtocolError.
            async for _ in stream.aiter_bytes():
                pass
            ended = time.monotonic() - start
        code, _ = await _exit_code(proxy.handle.proc, GRACE + 3)
    assert code == 0
    assert ended < 1.5  # at once, not at the end of the grace period


async def test_sigterm_ends_a_legacy_session_once_its_pending_answer_is_out(sdk_upstream_module, draining_proxy):
    legacy = sdk_upstream_module("legacy-sse")
    proxy = draining_proxy(legacy.base)
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", proxy.sse_url) as stream:
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith("event: endpoint")
        endpoint = proxy.base + (await anext(lines)).removeprefix("data:").strip()

        async def next_message() -> dict:
            while not (line := await anext(lines)).startswith("data:"):
                pass
            return json.loads(line[5:])

        headers = {"content-type": "application/json"}
        assert (await http.post(endpoint, json=INIT, headers=headers)).status_code == 202
        assert (await next_message())["id"] == 1
        assert (await http.post(endpoint, json=INITIALIZED, headers=headers)).status_code == 202
        assert (await http.post(endpoint, json=_sleep_call(1.0), headers=headers)).status_code == 202
        await asyncio.sleep(0.2)
        proxy.handle.proc.send_signal(signal.SIGTERM)
        assert (await next_message())["id"] == 7  # the answer it waited for still arrives
        async for _ in lines:  # then the stream ends, cleanly
            pass
    code, _ = await _exit_code(proxy.handle.proc, GRACE + 3)
    assert code == 0


async def test_a_call_longer_than_the_grace_period_is_cut_and_the_exit_still_0(sdk_upstream_module, draining_proxy):
    proxy = draining_proxy(sdk_upstream_module("stateless-json").base)
    async with httpx.AsyncClient(timeout=20) as http:
        call = asyncio.ensure_future(http.post(proxy.url, json=_sleep_call(15), headers=HEADERS))
        await asyncio.sleep(0.5)
        proxy.handle.proc.send_signal(signal.SIGTERM)
        code, took = await _exit_code(proxy.handle.proc, GRACE + 3)
        r = await call  # cut, with an answer that says so (it may have been carried out: no Retry-After)
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert "shut down before the upstream answered" in r.json()["error"]["message"]
    assert r.json()["id"] == _sleep_call(15)["id"]  # the client can tell which call was cut
    assert code == 0
    assert GRACE - 0.5 < took < GRACE + 2
    assert "Traceback" not in proxy.handle.stderr()


async def test_while_draining_readyz_and_mcp_answer_503():
    app = create_app(load(None, {"upstream.url": f"http://127.0.0.1:{free_port()}/mcp"}))
    app.drain()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        assert ready.headers["connection"] == "close"
        r = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=HEADERS)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert r.json()["error"]["message"] == "The proxy is shutting down; retry"
        assert (await http.get("/healthz")).status_code == 200  # alive: the drain must not be cut short
