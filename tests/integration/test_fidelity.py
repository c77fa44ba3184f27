"""What crosses the proxy unchanged (status codes, MCP headers, bodies) and what never does."""

from __future__ import annotations

import httpx
import pytest

from tests.peers.harness import free_port, start_server

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory):
    """The proxy in front of tests/peers/echo_server.py, a plain-HTTP stand-in (not MCP)."""
    from tests.integration.proxy_harness import start_proxy

    workdir = tmp_path_factory.mktemp("echo")
    port = free_port()
    echo = start_server(["tests.peers.echo_server", "--port", str(port)], port, log_dir=workdir)
    proxy = start_proxy(workdir, f"http://127.0.0.1:{port}")
    yield port, proxy
    proxy.stop()
    echo.stop()


@pytest.mark.parametrize("status", [200, 202, 400, 401, 403, 404, 405, 406, 409, 415, 421, 429, 500, 503])
async def test_every_upstream_status_and_body_is_relayed(echo_stack, status):
    _, proxy = echo_stack
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=PING, headers={**HEADERS, "x-test-status": str(status),
                                                           "x-test-header-retry-after": "7"})
    assert r.status_code == status
    assert r.headers["retry-after"] == "7"
    assert r.json()["body"] == '{"jsonrpc":"2.0","id":1,"method":"ping"}'


async def bound_session(proxy, upstream_id: str) -> str:
    """The session id the client sees for `upstream_id`: bound to this (anonymous) principal."""
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=PING, headers={**HEADERS, "x-test-header-mcp-session-id": upstream_id})
    client_id = r.headers["mcp-session-id"]
    assert client_id.startswith(upstream_id + ".")
    return client_id


async def test_request_headers_forwarded_and_stripped(echo_stack):
    port, proxy = echo_stack
    session = await bound_session(proxy, "s-1")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"region": "eu"}, "_meta": meta}}
    sent = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo",
            "mcp-param-region": "eu", "mcp-session-id": session, "last-event-id": "e-9",
            "authorization": "Bearer client-secret", "cookie": "sid=client", "connection": "keep-alive, x-hop",
            "x-hop": "1", "te": "trailers", "proxy-authorization": "Basic eA==", "x-custom": "kept",
            "mcp-param-undeclared": "x", "mcp_method": "tools/list", "mcp_name": "other"}
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=call, headers=sent)
    got = r.json()["headers"]
    for name in ("mcp-protocol-version", "mcp-method", "mcp-name", "mcp-param-region",
                 "last-event-id", "x-custom", "accept", "content-type"):
        assert got[name] == sent[name], name
    assert got["mcp-session-id"] == "s-1"  # the upstream's own id, unwrapped
    # Only Mcp-Param-* headers the tool declares (and the proxy checked) go on; underscore spellings
    # (which a CGI layer would read as Mcp-Method, Mcp-Name) never.
    for name in ("cookie", "x-hop", "te", "proxy-authorization", "connection", "origin",
                 "mcp-param-undeclared", "mcp_method", "mcp_name"):
        assert name not in got, name
    assert got["authorization"] == "Bearer upstream-credential"
    assert got["x-proxy-tenant"] == "acme"
    assert got["host"] == f"127.0.0.1:{port}"
    assert "client-secret" not in r.text


async def test_get_and_delete_are_relayed(echo_stack):
    _, proxy = echo_stack
    session = await bound_session(proxy, "s-2")
    async with httpx.AsyncClient() as http:
        r = await http.get(proxy.url, headers={"accept": "text/event-stream", "mcp-session-id": session,
                                               "x-test-status": "405"})
        assert r.status_code == 405 and r.json()["http_method"] == "GET"
        assert r.json()["headers"]["mcp-session-id"] == "s-2"
        r = await http.delete(proxy.url, headers={"mcp-session-id": session})
        assert r.status_code == 200 and r.json()["http_method"] == "DELETE"
        r = await http.put(proxy.url, json=PING)
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST, DELETE"


@pytest.mark.parametrize(("mode", "headers", "body", "status"), [
    ("stateful-sse", {"accept": "text/html"}, INIT, 406),
    ("stateful-json", {}, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, 400),  # no session
    ("stateful-sse", {"content-type": "text/plain"}, PING, 400),
])
async def test_sdk_server_statuses_are_relayed(sdk_upstream, proxy_for, mode, headers, body, status):
    upstream = sdk_upstream(mode)
    proxy = proxy_for(upstream.base)
    async with httpx.AsyncClient() as http:
        direct = await http.post(upstream.url, json=body, headers={**HEADERS, **headers})
        proxied = await http.post(proxy.url, json=body, headers={**HEADERS, **headers})
    assert direct.status_code == proxied.status_code == status
    assert direct.content == proxied.content
    assert direct.headers.get("content-type") == proxied.headers.get("content-type")


async def test_configured_origins_are_allowed(tmp_path):
    from tests.integration.proxy_harness import start_proxy

    port = free_port()
    echo = start_server(["tests.peers.echo_server", "--port", str(port)], port, log_dir=tmp_path)
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{port}", {"allowed_origins": ["https://app.example.com"],
                                                             "public_url": "https://mcp.example.com"})
    try:
        async with httpx.AsyncClient() as http:
            for origin, status in (("https://app.example.com", 200), ("https://mcp.example.com", 200),
                                   ("https://APP.example.com", 200), ("https://app.example.com.evil", 403),
                                   ("null", 403), ("http://app.example.com", 403)):
                r = await http.post(proxy.url, json=PING, headers={**HEADERS, "origin": origin})
                assert r.status_code == status, origin
    finally:
        proxy.stop()
        echo.stop()


async def test_foreign_browser_origin_is_refused_and_loopback_allowed(echo_stack):
    _, proxy = echo_stack
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=PING, headers={**HEADERS, "origin": "http://evil.example"})
        assert r.status_code == 403
        r = await http.post(proxy.url, json=PING, headers={**HEADERS, "origin": "http://localhost:6274"})
        assert r.status_code == 200
