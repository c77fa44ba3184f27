"""An upstream per virtual server (`servers[].upstream`): the real proxy in front of two SDK
upstreams with different tools and a stdio server, each server reaching only its own upstream,
with its own credential, its own tool inventory, and its own readiness.

Upstream A (the top-level one) declares `tally`; upstream B does not; the stdio peer declares
`whoami`. Servers: alpha → A; tuned → A with other limits (and read methods only); beta → B with
its own credential; legacy → the stdio peer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from proxy.app import create_app
from proxy.auth.tokens import url_token_hmac
from proxy.config import ConfigError, parse
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import REPO_ROOT, Upstream, eventually, free_port, start_sdk_upstream

KEY = "url-token-key-for-server-upstreams"
# Each upstream's credential: never sent to the other. Not registered as secrets: the upstreams
# under test record what they receive, their own credential included.
CRED_A, CRED_B = "credential-of-upstream-a", "credential-of-upstream-b"
ALPHA, TUNED, BETA, LEGACY = secret(), secret(), secret(), secret()  # URL tokens
STDIO_PEER = [sys.executable, "-m", "tests.peers.stdio_server"]
READ_TOOLS = {"list_all_missive_conversations", "get_single_missive_conversation_by_id"}
ALL = ["read", "write", "custom"]
JSON_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}


def servers(b_url: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "alpha", "token_hmac": url_token_hmac(KEY, ALPHA), "methods": ALL},
        {"name": "tuned", "token_hmac": url_token_hmac(KEY, TUNED), "methods": ["read"],
         "upstream": {"timeout_s": 7, "max_connections": 8}},
        {"name": "beta", "token_hmac": url_token_hmac(KEY, BETA), "methods": ALL,
         "upstream": {"url": b_url, "headers": {"Authorization": f"Bearer {CRED_B}"}, "timeout_s": 10}},
        *extra,
    ]


def top_level(a: Upstream) -> dict[str, Any]:
    return {"url": f"{a.base}/mcp", "headers": {"Authorization": f"Bearer {CRED_A}", "X-Proxy-Tenant": "acme"},
            "timeout_s": 10}


async def wait_ready(proxy: Proxy, timeout: float = 20.0) -> None:
    async def ready() -> bool:
        return (await readyz(proxy)).status_code == 200

    assert await eventually(ready, timeout=timeout, interval=0.2), (await readyz(proxy)).text


async def readyz(proxy: Proxy) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"{proxy.base}/readyz")


def url(proxy: Proxy, token: str, endpoint: str = "mcp") -> str:
    return f"{proxy.base}/{token}/{endpoint}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Upstream, Upstream]]:
    workdir = tmp_path_factory.mktemp("server-upstreams")
    a = start_sdk_upstream("stateful-json", workdir, env={"MCP_TALLY_FILE": str(workdir / "tally.jsonl")})
    b = start_sdk_upstream("stateless-json", workdir)
    legacy = {"name": "legacy", "token_hmac": url_token_hmac(KEY, LEGACY), "methods": ALL,
              "upstream": {"command": STDIO_PEER, "cwd": str(REPO_ROOT), "timeout_s": 10}}
    proxy = start_proxy(workdir, a.base, {"upstream": top_level(a), "auth": {"url_token_key": KEY},
                                          "servers": servers(f"{b.base}/mcp", legacy)})
    try:
        asyncio.run(wait_ready(proxy))
        yield proxy, a, b
    finally:
        proxy.stop()
        a.stop()
        b.stop()


async def test_each_server_reaches_only_its_upstream_with_its_own_credential(setup):
    proxy, a, b = setup
    a.clear_requests()
    b.clear_requests()
    async with sdk_client(url(proxy, ALPHA)) as client:
        assert await client.call_text("echo", {"text": "to A"}) == "to A"
    assert a.relayed() and not b.requests()
    async with sdk_client(url(proxy, BETA)) as client:
        assert await client.call_text("echo", {"text": "to B"}) == "to B"
    assert any("to B" in (r["body"] or "") for r in b.relayed())
    assert not any("to B" in (r["body"] or "") for r in a.requests())
    # Every request each upstream saw (relayed ones and the proxy's own tool listings) carried its
    # own credential only; the top-level upstream's other headers did not reach B either.
    for upstream, own, other in ((a, CRED_A, CRED_B), (b, CRED_B, CRED_A)):
        for request in upstream.requests():
            assert request["headers"].get("authorization") == f"Bearer {own}"
            assert other not in json.dumps(request)
    assert all("x-proxy-tenant" not in r["headers"] for r in b.requests())
    assert all(r["headers"].get("x-proxy-tenant") == "acme" for r in a.requests())


async def test_tools_list_shows_each_servers_own_upstream_filtered_by_policy(setup):
    proxy, _, _ = setup
    async with sdk_client(url(proxy, ALPHA)) as client:
        alpha = set(await client.tool_names())
    async with sdk_client(url(proxy, TUNED)) as client:
        tuned = set(await client.tool_names())
    async with sdk_client(url(proxy, BETA)) as client:
        beta = set(await client.tool_names())
    async with sdk_client(url(proxy, LEGACY)) as client:
        legacy = set(await client.tool_names())
    assert {"tally", "echo"} <= alpha and "whoami" not in alpha
    assert tuned == READ_TOOLS  # A's tools, as the policy shows a read-only server
    assert "echo" in beta and "tally" not in beta and "whoami" not in beta
    assert {"whoami", "echo"} <= legacy and "tally" not in legacy


async def test_a_tool_of_another_upstream_is_unknown(setup):
    """The inventory is per upstream: B's server cannot call A's `tally`, even after A's tools
    were listed through another server; the call reaches no upstream."""
    proxy, a, b = setup
    async with sdk_client(url(proxy, ALPHA)) as client:
        assert await client.call_text("tally", {"key": "through-alpha"}) == "1"
    a.clear_requests()
    b.clear_requests()
    for token, tool, arguments in ((BETA, "tally", {"key": "through-beta"}), (LEGACY, "tally", {"key": "x"}),
                                   (ALPHA, "whoami", {})):
        async with sdk_client(url(proxy, token)) as client:
            with pytest.raises(MCPError, match=f"Unknown tool: {tool}"):
                await client.call_tool(tool, arguments)
    for upstream in (a, b):
        assert not any('"tools/call"' in (r["body"] or "") for r in upstream.requests())


async def test_legacy_sse_goes_to_the_servers_upstream(setup):
    proxy, a, _ = setup
    a.clear_requests()
    async with sse_client(url(proxy, LEGACY, "sse")) as client:
        assert "whoami" in await client.tool_names()
        assert await client.call_text("echo", {"text": "via sse"}) == "via sse"
    assert not a.requests()


async def test_metrics_count_each_server(setup):
    proxy, _, _ = setup
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{proxy.base}/metrics")).text
    for name in ("alpha", "beta", "legacy"):
        assert f'server="{name}"' in text
    assert "mcp_proxy_upstream_connections_open" in text
    for value in (CRED_A, CRED_B, ALPHA, BETA):
        assert value not in text


async def test_one_upstream_down_names_its_server_and_the_others_keep_working(tmp_path: Path):
    a = start_sdk_upstream("stateless-json", tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    proxy = start_proxy(tmp_path, a.base, {"upstream": top_level(a), "auth": {"url_token_key": KEY},
                                           "servers": servers(dead)})
    try:
        async def not_ready() -> bool:
            return (await readyz(proxy)).status_code == 503

        assert await eventually(not_ready, timeout=15, interval=0.2)
        reason = (await readyz(proxy)).json()["reason"]
        assert reason == "server beta: upstream unreachable"  # neither URL nor credential
        async with sdk_client(url(proxy, ALPHA)) as client:
            assert await client.call_text("echo", {"text": "still"}) == "still"
        async with httpx.AsyncClient() as http:
            response = await http.post(url(proxy, BETA), json=INITIALIZE, headers=JSON_HEADERS)
        assert response.status_code == 502 and "Upstream unreachable" in response.text
    finally:
        proxy.stop()
        a.stop()


# --- configuration -------------------------------------------------------------------------------

BASE = {"upstream": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer top"},
                     "timeout_s": 30}}


def parsed(*upstreams: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> Any:
    listed = [{"name": f"s{i}", **({"upstream": u} if u is not None else {})} for i, u in enumerate(upstreams)]
    for i, server in enumerate(listed[1:], 1):
        server["token_hmac"] = url_token_hmac(KEY, f"token-{i}")
    return parse({**BASE, "auth": {"url_token_key": KEY}, "servers": listed, **(extra or {})}, "config.yaml")


@pytest.mark.parametrize(("section", "key", "words"), [
    ({"url": "http://127.0.0.1:9/mcp", "bogus": 1}, "servers[1].upstream.bogus", "unknown key"),
    ({"url": "http://127.0.0.1:9/mcp", "command": ["node", "x.js"]}, "servers[1].upstream.url", "not both"),
    ({"headers": {"X-A": "b"}}, "servers[1].upstream.headers", "name its url"),
    ({"oauth": {"token_file": "g.json", "scopes": ["a"]}}, "servers[1].upstream.oauth", "name its url"),
    ({"timeout_s": 0}, "servers[1].upstream.timeout_s", "greater than 0"),
    ({"max_children": 3}, "servers[1].upstream.max_children", "stdio upstream only"),
    ({"command": []}, "servers[1].upstream.command", "non-empty list"),
])
def test_config_errors_name_the_servers_upstream_key(section, key, words):
    with pytest.raises(ConfigError) as caught:
        parsed(None, section)
    assert caught.value.key == key and words in caught.value.message


def test_config_stdio_per_server_needs_one_worker_and_grants_are_not_shared():
    stdio = {"command": ["node", "server.js"]}
    with pytest.raises(ConfigError) as caught:
        parsed(None, stdio, extra={"listen": {"workers": 2}, "auth": {"url_token_key": KEY, "session_key": "k" * 32}})
    assert caught.value.key == "servers[1].upstream.command"
    grant = {"url": "https://a.example/mcp", "oauth": {"token_file": "grant.json", "scopes": ["x"]}}
    other = {**grant, "url": "https://b.example/mcp"}
    with pytest.raises(ConfigError) as caught:
        parsed(None, grant, other)
    assert caught.value.key == "servers[2].upstream.oauth.token_file"
    parsed(None, grant, grant)  # one upstream named twice: one grant


def test_config_an_upstream_of_its_own_inherits_nothing_a_tuned_one_inherits_all():
    config = parsed(None, {"url": "http://127.0.0.1:10/mcp"}, {"timeout_s": 5, "max_connections": 4})
    top, own, tuned = config.upstream, config.servers[1].upstream, config.servers[2].upstream
    assert config.servers[0].upstream is None
    assert own.url == "http://127.0.0.1:10/mcp" and own.headers == {} and own.timeout_s == 60.0
    assert own.sse_url == "http://127.0.0.1:10/sse"
    assert tuned == dataclasses.replace(top, timeout_s=5.0, max_connections=4)
    assert "Bearer" not in repr(config.servers[1])  # an upstream's credential is never printed


async def test_reload_may_use_running_upstreams_only(tmp_path: Path):
    """In-process (no upstream is contacted): servers share the client of an identical upstream;
    a reload may move a server onto a running upstream, and is refused whole for a new one."""
    config = parsed(None, {"url": "http://127.0.0.1:10/mcp"}, {"url": "http://127.0.0.1:10/mcp"},
                    {"timeout_s": 5}, extra={"decision_log": {"sink": "off"}})
    app = create_app(config)
    routes = app.upstreams.routes
    assert len(routes) == 3 and [r.servers for r in routes] == [["s0"], ["s1", "s2"], ["s3"]]
    s0, s1 = config.servers[0], config.servers[1]
    assert app.upstreams.route(s1).client is app.upstreams.route(config.servers[2]).client
    assert app.upstreams.route(s0).client is app.ctx.upstream
    moved = dataclasses.replace(config, servers=(dataclasses.replace(s0, upstream=s1.upstream), *config.servers[1:]))
    app.apply_config(moved)
    assert app.upstreams.route(moved.servers[0]) is routes[1]
    new = dataclasses.replace(s1, upstream=dataclasses.replace(s1.upstream, url="http://127.0.0.1:11/mcp"))
    with pytest.raises(ConfigError, match="takes a restart") as caught:
        app.apply_config(dataclasses.replace(moved, servers=(moved.servers[0], new, *moved.servers[2:])))
    assert caught.value.key == "servers[1].upstream"
    assert app.ctx.config is not None and app.ctx.config.servers == moved.servers  # nothing changed
    await app.upstreams.close()
