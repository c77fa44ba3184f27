"""URL tokens, API tokens, session binding, RFC 9728 metadata and expiry, through the proxy.

JWT bearer tokens are covered in test_jwt_auth.py (real keys, a JWKS served over loopback).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime

import httpx
import pytest

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import free_port

KEY = "url-token-key-for-tests-0123456789"
TRIAGE, SUPPORT, TEMP = secret(), secret(), secret()
API_TOKEN = secret()
SECRETS = (TRIAGE, SUPPORT, TEMP, API_TOKEN)
READ_TOOLS = {"list_all_missive_conversations", "get_single_missive_conversation_by_id"}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def stack(sdk_upstream_module, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    upstream = sdk_upstream_module("stateful-json")
    legacy = sdk_upstream_module("legacy-sse")
    port = free_port()
    config = {
        "public_url": f"http://127.0.0.1:{port}",
        "upstream": {"sse_url": f"{legacy.base}/sse"},
        "auth": {"url_token_key": KEY, "authorization_servers": ["https://idp.example.com"],
                 "scopes_supported": ["mcp:read"],
                 "api_tokens": [{"name": "ci-agent", "sha256": hashlib.sha256(API_TOKEN.encode()).hexdigest()}]},
        "servers": [
            {"name": "triage", "token_hmac": url_token_hmac(KEY, TRIAGE), "methods": ["read"]},
            {"name": "support", "token_hmac": url_token_hmac(KEY, SUPPORT), "methods": ["read", "write"],
             "require_api_token_auth": True},
        ],
        "decision_log": {"sink": f"file:{workdir / 'decisions.log'}"},
    }
    proxy = start_proxy(workdir, upstream.base, config, port=port, log_level="info", access_log=True)
    yield upstream, legacy, proxy, workdir
    proxy.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/{t}/mcp", "/mcp/{t}"])
@pytest.mark.parametrize("client_mode", ["auto", "legacy"])
async def test_url_token_reaches_its_server(stack, path, client_mode):
    _, _, proxy, _ = stack
    async with sdk_client(proxy.base + path.format(t=TRIAGE), mode=client_mode) as client:
        assert set(await client.tool_names()) == READ_TOOLS


async def test_legacy_sse_with_a_url_token(stack):
    _, _, proxy, _ = stack
    async with sse_client(f"{proxy.base}/{TRIAGE}/sse") as client:
        assert set(await client.tool_names()) == READ_TOOLS


async def test_unknown_tokens_and_tokenless_paths_are_404_without_hints(stack):
    _, _, proxy, _ = stack
    async with httpx.AsyncClient() as http:
        for path in (f"/{secret()}/mcp", f"/mcp/{secret()}", "/mcp", "/sse", f"/{TRIAGE[:-1]}/mcp",
                     "/nothing-here"):
            r = await http.post(proxy.base + path, json=INIT, headers=HEADERS)
            assert (r.status_code, r.text) == (404, "Not Found"), path
            assert "www-authenticate" not in r.headers


async def test_require_api_token_auth_needs_a_bearer_too(stack):
    upstream, _, proxy, _ = stack
    url = f"{proxy.base}/{SUPPORT}/mcp"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, json=INIT, headers=HEADERS)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            f'Bearer resource_metadata="{proxy.base}/.well-known/oauth-protected-resource", '  # the root: no token
            'error="invalid_token", error_description="This server requires a bearer token as well as its URL"')
        for wrong in (secret(), "not-a-token", "a.b.c"):
            r = await http.post(url, json=INIT, headers={**HEADERS, **bearer(wrong)})
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    async with sdk_client(url, headers=bearer(API_TOKEN)) as client:
        assert "create_a_missive_post" in await client.tool_names()
    assert all(r["headers"]["authorization"] == "Bearer upstream-credential" for r in upstream.requests())


async def test_sessions_are_bound_to_their_principal(stack):
    _, _, proxy, _ = stack
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{proxy.base}/{TRIAGE}/mcp", json=INIT, headers=HEADERS)
        session = r.headers["mcp-session-id"]
        assert "." in session  # the upstream's id, bound by an HMAC tag
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        own = await http.post(f"{proxy.base}/{TRIAGE}/mcp", json=ping, headers={**HEADERS, "mcp-session-id": session})
        assert own.status_code == 200
        # The same session id through another server, another principal, or tampered: unknown.
        for url, extra in ((f"{proxy.base}/{SUPPORT}/mcp", bearer(API_TOKEN)),
                           (f"{proxy.base}/{TRIAGE}/mcp", bearer(API_TOKEN))):
            r = await http.post(url, json=ping, headers={**HEADERS, **extra, "mcp-session-id": session})
            assert r.status_code == 404
        bare = session.rsplit(".", 1)[0]
        for forged in (bare, bare + ".AAAAAAAAAAAAAAAAAAAAAAAA", session + "x"):
            r = await http.post(f"{proxy.base}/{TRIAGE}/mcp", json=ping,
                                headers={**HEADERS, "mcp-session-id": forged})
            assert r.status_code == 404


async def test_legacy_sessions_are_bound_too(stack):
    _, legacy, proxy, _ = stack
    async with httpx.AsyncClient(timeout=5) as http, http.stream("GET", f"{proxy.base}/{TRIAGE}/sse") as stream:
        lines = stream.aiter_lines()
        while not (line := await anext(lines)).startswith("data: "):
            pass
        endpoint = line[len("data: "):]
        assert endpoint.startswith(f"/{TRIAGE}/messages/?session_id=")
        session_part = endpoint.split("/messages/", 1)[1]
        legacy.clear_requests()
        r = await http.post(f"{proxy.base}/{SUPPORT}/messages/{session_part}", json=INIT,
                            headers={**HEADERS, **bearer(API_TOKEN)})
        assert r.status_code == 404
        r = await http.post(f"{proxy.base}{endpoint}", json=INIT, headers=HEADERS)
        assert r.status_code == 202
    assert [r["method"] for r in legacy.requests()] == ["POST"]


async def test_protected_resource_metadata(stack):
    _, _, proxy, _ = stack
    async with httpx.AsyncClient() as http:
        for path, resource in (("", proxy.base), ("/mcp", f"{proxy.base}/mcp"), ("/sse", f"{proxy.base}/sse")):
            r = await http.get(f"{proxy.base}/.well-known/oauth-protected-resource{path}")
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            doc = r.json()
            # RFC 9728 §2: resource is required; the rest as configured.
            assert doc == {"resource": resource, "authorization_servers": ["https://idp.example.com"],
                           "bearer_methods_supported": ["header"], "resource_name": "mcp-policy-proxy",
                           "scopes_supported": ["mcp:read"]}
        assert (await http.get(f"{proxy.base}/.well-known/oauth-protected-resource/{TRIAGE}/mcp")).status_code == 404


async def test_server_expires_at_its_second_without_restart(sdk_upstream, tmp_path):
    upstream = sdk_upstream("stateless-json")
    expires = datetime.fromtimestamp(int(time.time()) + 6, UTC)  # room for a start on a busy machine
    proxy = start_proxy(tmp_path, upstream.base, {"auth": {"url_token_key": KEY}, "servers": [
        {"name": "temp", "token_hmac": url_token_hmac(KEY, TEMP), "methods": ["read"],
         "expires_at": expires.isoformat().replace("+00:00", "Z")}]})
    url = f"{proxy.base}/{TEMP}/mcp"
    try:
        async with httpx.AsyncClient() as http:
            assert time.time() < expires.timestamp() - 0.3, "the proxy took too long to start"
            assert (await http.post(url, json=INIT, headers=HEADERS)).status_code == 200
            await asyncio.sleep(max(0.0, expires.timestamp() - time.time()) + 0.05)
            r = await http.post(url, json=INIT, headers=HEADERS)
            assert r.status_code == 401
            assert 'error="invalid_token", error_description="This server has expired"' in r.headers[
                "www-authenticate"]
            metrics = (await http.get(f"{proxy.base}/metrics")).text
        assert 'mcp_proxy_auth_failures_total{reason="server_expired",server="temp"}' in metrics
    finally:
        proxy.stop()


async def test_no_secret_in_logs_metrics_or_upstream(stack):
    upstream, legacy, proxy, workdir = stack
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{proxy.base}/metrics")).text
    proxy.stop()  # flush the decision log
    assert "/[redacted]/mcp" in proxy.handle.stdout()  # the access log, with its tokens redacted
    texts = [proxy.handle.stderr(), proxy.handle.stdout(), metrics, (workdir / "decisions.log").read_text(),
             *(str(r) for r in upstream.requests()), *(str(r) for r in legacy.requests())]
    for value in SECRETS:
        leaks = [text[max(0, text.find(value) - 200):text.find(value) + 50] for text in texts if value in text]
        assert not leaks


async def test_open_streams_end_when_the_server_expires(sdk_upstream, tmp_path):
    legacy = sdk_upstream("legacy-sse")
    expires = datetime.fromtimestamp(int(time.time()) + 6, UTC)  # room for a start on a busy machine
    proxy = start_proxy(tmp_path, legacy.base, {"auth": {"url_token_key": KEY}, "servers": [
        {"name": "temp", "token_hmac": url_token_hmac(KEY, TEMP), "methods": ["read"],
         "expires_at": expires.isoformat().replace("+00:00", "Z")}]})
    try:
        async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", f"{proxy.base}/{TEMP}/sse") as stream:
            assert stream.status_code == 200
            async for _ in stream.aiter_lines():  # the endpoint event, pings… until the proxy ends it
                pass
            ended = time.time()
        assert expires.timestamp() - 0.1 <= ended < expires.timestamp() + 1.5
    finally:
        proxy.stop()
