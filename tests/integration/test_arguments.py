"""tools/call is decided on exactly what the upstream will act on: a declared tool, arguments that
pass its declared inputSchema strictly, Mcp-Param-* headers that mirror them — with the official
SDK's servers (which coerce: pydantic lax mode) and the TypeScript reference server as upstreams."""

from __future__ import annotations

import json

import httpx
import pytest

from proxy.config import Upstream as UpstreamConfig
from proxy.transport.tool_listing import USER_AGENT, UpstreamToolLister
from proxy.transport.upstream import UpstreamClient
from tests.peers.clients import sdk_client
from tests.peers.harness import SDK_MODES, start_ts_everything

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
SDK_TOOLS = {"echo", "add", "slow_progress", "sleep", "create_a_missive_post", "regional_echo",
             "list_all_missive_conversations", "get_single_missive_conversation_by_id"}
ALL = {"servers": [{"name": "all", "methods": ["read", "write", "custom"]}],
       "decision_log": {"sink": "off"}}


async def list_tools(url: str, sse_url: str | None = None) -> list[dict]:
    client = UpstreamClient(UpstreamConfig(url=url))
    try:
        return await UpstreamToolLister(client, url, max_bytes=1 << 20, timeout_s=10, sse_url=sse_url)()
    finally:
        await client.close()


@pytest.mark.parametrize("mode", SDK_MODES)
async def test_the_proxy_lists_an_sdk_upstream_in_every_mode(sdk_upstream_module, mode):
    upstream = sdk_upstream_module(mode)
    tools = await list_tools(upstream.url, f"{upstream.base}/sse")
    assert {t["name"] for t in tools} == SDK_TOOLS
    assert next(t for t in tools if t["name"] == "add")["inputSchema"]["properties"]["a"]["type"] == "integer"


@pytest.mark.parametrize("transport", ["streamableHttp", "sse"])
async def test_the_proxy_lists_the_typescript_reference_server(tmp_path, transport):
    port, handle = start_ts_everything(transport, tmp_path)
    try:
        tools = await list_tools(f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}/sse")
    finally:
        handle.stop()
    assert {"echo", "get-sum"} <= {t["name"] for t in tools}


def rpc(id: int, name: str, arguments) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def relayed_calls(upstream) -> list[dict]:
    return [json.loads(r["body"]) for r in upstream.relayed() if r["body"] and "tools/call" in r["body"]]


@pytest.mark.parametrize(("name", "arguments", "argument"), [
    ("add", {"a": "1", "b": 2}, "a"), ("add", {"a": 1.5, "b": 2}, "a"), ("add", {"a": True, "b": 2}, "a"),
    ("add", {"a": "+200", "b": 2}, "a"), ("echo", {"text": 5}, "text"), ("add", {"b": 2}, None),
])
async def test_arguments_the_upstream_would_coerce_are_refused(sdk_upstream, proxy_for, name, arguments, argument):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, ALL)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(proxy.url, headers=HEADERS, json=rpc(7, name, arguments))
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert (f"argument {argument}: " in text) if argument else ("the arguments: " in text and "required" in text)
    assert relayed_calls(upstream) == []  # the upstream would have coerced "1" to 1: it never saw the call


async def test_a_call_before_any_listing_is_checked_against_the_proxys_own_listing(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateful-json")
    proxy = proxy_for(upstream.base, ALL)
    async with sdk_client(proxy.url, mode="legacy") as client:  # calls add without listing tools first
        assert await client.call_text("add", {"a": 2, "b": 3}) == "5"
    seen = upstream.requests()
    first_call = next(i for i, r in enumerate(seen) if "tools/call" in r["body"])
    own = [r for r in seen[:first_call] if r["headers"].get("user-agent") == USER_AGENT]
    assert own and all("tools/list" in r["body"] for r in own if r["method"] == "POST")
    [call] = relayed_calls(upstream)
    assert call["params"]["arguments"] == {"a": 2, "b": 3}


async def test_an_undeclared_tool_is_unknown_and_never_forwarded(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, ALL)
    async with httpx.AsyncClient(timeout=10) as http:
        for name in ("Echo", "echo ", "\uff45cho", "not_a_tool", "x" * 129):
            r = await http.post(proxy.url, headers=HEADERS, json=rpc(8, name, {"text": "hi"}))
            assert r.json()["error"]["code"] == -32602, name
    assert relayed_calls(upstream) == []


async def test_mcp_param_headers_through_a_2026_07_28_sdk_client(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, ALL)
    async with sdk_client(proxy.url) as client:  # the SDK's default: 2026-07-28, mirrors x-mcp-header params
        assert client.modern
        assert await client.call_text("regional_echo", {"region": "eu", "text": "hi"}) == "eu:hi"
    [call] = [r for r in upstream.relayed() if "regional_echo" in r["body"]]
    assert call["headers"]["mcp-param-region"] == "eu"


@pytest.mark.parametrize("headers", [{"mcp-param-region": "us"}, {}, {"mcp-param-region": "=?base64?!!?="}])
async def test_mcp_param_headers_that_disagree_are_refused(sdk_upstream, proxy_for, headers):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, ALL)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = rpc(9, "regional_echo", {"region": "eu", "text": "hi"})
    body["params"]["_meta"] = meta
    sent = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "regional_echo",
            **headers}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(proxy.url, headers=sent, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (400, -32020)
    assert relayed_calls(upstream) == []
