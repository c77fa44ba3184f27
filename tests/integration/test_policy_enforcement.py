"""The default policy enforced through the proxy, with the official SDK client and servers.

Every proxy here serves one server on /mcp and /sse (URL tokens arrive with the auth issue), so
each scenario starts its own proxy with its own `servers:` entry.
"""

from __future__ import annotations

import json

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.proxy_harness import start_proxy
from tests.peers.clients import sdk_client, sse_client

READ_TOOLS = {"list_all_missive_conversations", "get_single_missive_conversation_by_id"}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}


@pytest.fixture(scope="module")
def stack(sdk_upstream_module, tmp_path_factory):
    """`stack(mode, server, **config) -> (upstream, proxy)`, one proxy per distinct setup."""
    started = {}

    def _stack(mode, server, **extra):
        upstream = sdk_upstream_module(mode)
        key = (mode, json.dumps(server, sort_keys=True), json.dumps(extra, sort_keys=True))
        if key not in started:
            workdir = tmp_path_factory.mktemp("policy")
            started[key] = start_proxy(workdir, upstream.base, {"servers": [{"name": "triage", **server}], **extra})
        return upstream, started[key]

    yield _stack
    for proxy in started.values():
        proxy.stop()


def calls_to(upstream, tool):
    return [r for r in upstream.requests() if f'"name":"{tool}"' in r["body"].replace(" ", "")]


CLIENTS = [("stateful-sse", "legacy"), ("stateless-json", "auto"), ("stateful-json", "legacy"), ("legacy-sse", None)]


def connect(proxy, mode, client_mode):
    if mode == "legacy-sse":
        return sse_client(proxy.sse_url)
    return sdk_client(proxy.url, mode=client_mode)


@pytest.mark.parametrize(("mode", "client_mode"), CLIENTS)
async def test_read_only_server_neither_shows_nor_runs_write_tools(stack, mode, client_mode):
    upstream, proxy = stack(mode, {"methods": ["read"]})
    upstream.clear_requests()
    async with connect(proxy, mode, client_mode) as client:
        assert set(await client.tool_names()) == READ_TOOLS
        assert "c-1" in await client.call_text("list_all_missive_conversations", {})
        for name in ("create_a_missive_post", "echo",
                     "Create_A_Missive_Post", "create_a_missive_p\u03bfst", "\uff43reate_a_missive_post"):
            with pytest.raises(MCPError) as err:
                await client.call_tool(name, {"conversation": "c-1", "text": "x"})
            assert (err.value.error.code, err.value.error.message) == (-32602, f"Unknown tool: {name}")
    assert calls_to(upstream, "create_a_missive_post") == []
    assert not any("reate_a_missive_p" in r["body"] and "tools/call" in r["body"]
                   for r in upstream.requests())


@pytest.mark.parametrize(("mode", "client_mode"), CLIENTS[:2])
async def test_tag_filter(stack, mode, client_mode):
    _, proxy = stack(mode, {"methods": ["read", "write"], "tags": ["posts"]})
    async with connect(proxy, mode, client_mode) as client:
        assert set(await client.tool_names()) == {"create_a_missive_post"}
        assert (await client.call_text("create_a_missive_post", {"conversation": "c", "text": "t"})).startswith("post-")
        with pytest.raises(MCPError):
            await client.call_tool("list_all_missive_conversations", {})


async def test_unknown_method_is_forbidden_with_reasons(stack):
    upstream, proxy = stack("stateless-json", {"methods": ["read"]})
    upstream.clear_requests()
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, headers=HEADERS,
                            json={"jsonrpc": "2.0", "id": 3, "method": "admin/shutdown", "params": {}})
    body = r.json()
    assert r.status_code == 200 and body["error"]["code"] == -32001
    assert body["error"]["message"] == "Forbidden by policy"
    assert body["error"]["data"]["reasons"] == ["admin/shutdown is not a method server triage allows"]
    assert len(body["error"]["data"]["decision_id"]) == 36
    assert upstream.relayed() == []


async def test_dry_run_decides_and_logs_but_never_blocks(stack, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("dl") / "decisions.log"
    _, proxy = stack("stateless-json", {"methods": ["read"]},
                            policy={"mode": "dry_run"}, decision_log={"sink": f"file:{log_path}"})
    async with sdk_client(proxy.url) as client:
        assert "create_a_missive_post" in await client.tool_names()
        assert (await client.call_text("create_a_missive_post", {"conversation": "c", "text": "secret"})
                ).startswith("post-")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{proxy.base}/metrics")).text
    assert 'mcp_proxy_policy_decisions_total{mode="dry_run",outcome="deny",server="triage"} 1.0' in metrics
    assert 'mcp_proxy_policy_bundle_info{revision="' in metrics
    proxy.stop()  # flushes the decision log
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    call = next(e for e in entries if (e["input"].get("tool") or {}).get("name") == "create_a_missive_post")
    assert call["result"]["allow"] is False and call["labels"]["mode"] == "dry_run"
    assert call["input"]["tool"]["arguments"] == {"conversation": "[redacted]", "text": "[redacted]"}
    assert "secret" not in log_path.read_text()
    page = next(e for e in entries if e["input"]["message"]["method"] == "tools/list"
                and e["input"]["message"]["kind"] == "response")
    assert set(page["result"]["visible_tools"]) == READ_TOOLS
    assert all(set(e) >= {"decision_id", "timestamp", "path", "input", "result", "metrics", "labels"}
               for e in entries)


async def test_engine_failure_is_503_and_nothing_is_forwarded(sdk_upstream, proxy_for, tmp_path):
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    # Decides ping fine; a tools/call makes a builtin fail (to_number of a word): an evaluation error.
    (policy_dir / "authz.rego").write_text(
        'package mcp.authz\nimport rego.v1\n'
        'decision := {"allow": true, "reasons": [], "visible_tools": []} if input.message.method != "tools/call"\n'
        'decision := {"allow": to_number(input.tool.arguments.text) > 0, "reasons": [], "visible_tools": []} '
        'if input.message.method == "tools/call"\n')
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"policy": {"paths": [str(policy_dir)]}})
    upstream.clear_requests()
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "not a number"}}}
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, headers=HEADERS, json=call)
    assert r.status_code == 503
    assert r.json() == {"jsonrpc": "2.0", "id": 4, "error": {"code": -32603, "message": "Policy engine unavailable"}}
    assert upstream.relayed() == []


async def test_every_tools_list_page_and_stream_is_filtered(tmp_path):
    """Pagination and a tools/list answer on a GET stream, from the plain-HTTP stand-in upstream."""
    from tests.peers.harness import free_port, start_server

    port = free_port()
    echo = start_server(["tests.peers.echo_server", "--port", str(port)], port, log_dir=tmp_path)
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{port}", {"servers": [{"name": "ro", "methods": ["read"]}]})
    try:
        async with httpx.AsyncClient() as http:
            page1 = (await http.post(proxy.url, headers={**HEADERS, "x-test-tools": "json"},
                                     json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).json()["result"]
            assert [t["name"] for t in page1["tools"]] == ["list_all_missive_conversations"]
            assert (page1["ttlMs"], page1["cacheScope"], page1["nextCursor"]) == (0, "private", "page-2")
            page2 = (await http.post(proxy.url, headers={**HEADERS, "x-test-tools": "json"}, json={
                "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": "page-2"}})).json()["result"]
            assert [t["name"] for t in page2["tools"]] == ["get_single_missive_conversation_by_id"]
            stream = await http.get(proxy.url, headers={"accept": "text/event-stream", "x-test-tools": "sse"})
            assert stream.headers["content-type"] == "text/event-stream"
            data = json.loads(stream.text.split("data: ", 1)[1])
            assert [t["name"] for t in data["result"]["tools"]] == ["list_all_missive_conversations"]
            assert stream.text.startswith("id: 1\n")
    finally:
        proxy.stop()
        echo.stop()


async def test_batch_mixing_allowed_and_denied_calls_is_refused_whole(stack):
    upstream, proxy = stack("stateless-json", {"methods": ["read"]})
    upstream.clear_requests()
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
              "params": {"name": "list_all_missive_conversations", "arguments": {}}},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "create_a_missive_post", "arguments": {"conversation": "c", "text": "t"}}}]
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, headers={**HEADERS, "mcp-protocol-version": "2025-03-26"}, json=batch)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600
    assert upstream.relayed() == []


async def test_no_server_without_a_token_means_no_plain_mcp_endpoint(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"auth": {"url_token_key": "k" * 32},
                                      "servers": [{"name": "tokened", "token_hmac": "0" * 64, "methods": ["read"]}]})
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, headers=HEADERS, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 404
        assert (await http.get(proxy.sse_url)).status_code == 404
    assert upstream.relayed() == []
