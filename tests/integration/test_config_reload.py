"""Config reload without restart: revocation takes effect on the next request and ends streams."""

from __future__ import annotations

import asyncio
import signal

import httpx
import yaml

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import start_proxy
from tests.leakcheck import secret
from tests.peers.harness import eventually

KEY = "url-token-key-for-tests-0123456789"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def server(name: str, token: str) -> dict:
    return {"name": name, "token_hmac": url_token_hmac(KEY, token), "methods": ["read"]}


async def status(http: httpx.AsyncClient, base: str, token: str) -> int:
    return (await http.post(f"{base}/{token}/mcp", json=INIT, headers=HEADERS)).status_code


async def test_reload_revokes_adds_and_rejects_broken_versions(sdk_upstream, tmp_path):
    upstream, legacy = sdk_upstream("stateful-json"), sdk_upstream("legacy-sse")
    keep, gone, added = secret(), secret(), secret()
    extra = {"auth": {"url_token_key": KEY}, "upstream": {"sse_url": f"{legacy.base}/sse"},
             "policy": {"reload_interval_s": 0.2}, "servers": [server("keep", keep), server("gone", gone)]}
    proxy = start_proxy(tmp_path, upstream.base, extra)
    config = yaml.safe_load(proxy.config_path.read_text())
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert await status(http, proxy.base, gone) == 200
            async with http.stream("GET", f"{proxy.base}/{gone}/sse") as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("event: endpoint")
                config["servers"] = [server("keep", keep), server("added", added)]
                proxy.config_path.write_text(yaml.safe_dump(config))
                ended = asyncio.ensure_future(_drain(lines))
                await asyncio.wait_for(ended, 5)  # the revoked server's stream ends
            assert await status(http, proxy.base, gone) == 404
            assert await status(http, proxy.base, added) == 200
            assert await status(http, proxy.base, keep) == 200

            # A broken version: refused, named by file and key; the running config stays.
            config["servers"][1]["methods"] = "read"
            proxy.config_path.write_text(yaml.safe_dump(config))
            assert await eventually(lambda: _has(proxy, "config reload rejected"))
            assert f"{proxy.config_path}: servers[1].methods: must be a list" in proxy.handle.stderr()
            assert await status(http, proxy.base, added) == 200
            metrics = (await http.get(f"{proxy.base}/metrics")).text
            assert 'mcp_proxy_config_reloads_total{result="failure"} 1.0' in metrics
    finally:
        proxy.stop()


async def test_reload_to_a_method_the_catalog_does_not_know_is_rejected(sdk_upstream, tmp_path):
    upstream = sdk_upstream("stateless-json")
    token = secret()
    proxy = start_proxy(tmp_path, upstream.base, {"auth": {"url_token_key": KEY}, "policy": {"reload_interval_s": 0.2},
                                                  "servers": [server("triage", token)]})
    config = yaml.safe_load(proxy.config_path.read_text())
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            config["servers"] = [{**server("triage", token), "methods": ["reed"]}]
            proxy.config_path.write_text(yaml.safe_dump(config))
            assert await eventually(lambda: _has(proxy, "config reload rejected"))
            assert (f"{proxy.config_path}: servers[0].methods[0]: unknown method 'reed' (did you mean 'read'?); "
                    "known: read, write, custom, ") in proxy.handle.stderr()
            assert await status(http, proxy.base, token) == 200  # the running config (methods: [read]) stays
            metrics = (await http.get(f"{proxy.base}/metrics")).text
            assert 'mcp_proxy_config_reloads_total{result="failure"} 1.0' in metrics
            tools = await http.post(f"{proxy.base}/{token}/mcp", headers=HEADERS,
                                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert tools.status_code == 200 and tools.json()["result"]["tools"], tools.text
    finally:
        proxy.stop()


async def test_sighup_reloads_the_config(sdk_upstream, tmp_path):
    upstream = sdk_upstream("stateless-json")
    first, second = secret(), secret()
    proxy = start_proxy(tmp_path, upstream.base, {"auth": {"url_token_key": KEY}, "policy": {"reload_interval_s": 0},
                                                  "servers": [server("first", first)]})
    config = yaml.safe_load(proxy.config_path.read_text())
    try:
        async with httpx.AsyncClient() as http:
            config["servers"] = [server("second", second)]
            proxy.config_path.write_text(yaml.safe_dump(config))
            await asyncio.sleep(0.5)
            assert await status(http, proxy.base, first) == 200  # no polling: unchanged until SIGHUP
            proxy.handle.proc.send_signal(signal.SIGHUP)
            assert await eventually(lambda: _status_is(http, proxy.base, second, 200))
            assert await status(http, proxy.base, first) == 404
    finally:
        proxy.stop()


async def _drain(lines) -> None:
    async for _ in lines:
        pass


async def _has(proxy, text: str) -> bool:
    return text in proxy.handle.stderr()


async def _status_is(http, base, token, expected) -> bool:
    return await status(http, base, token) == expected
