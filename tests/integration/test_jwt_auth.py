"""Bearer JWTs through the proxy: real RSA and EC keys made here, a JWKS served over loopback, the
official SDK client presenting the token; claims and scopes reach the policy input."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client
from tests.peers.harness import free_port
from tests.peers.jwks_server import JWKSServer, ec_key, jwk_set, rsa_key

ISSUER = "https://idp.example.com"
KEY = "url-token-key-for-tests-0123456789"
URL_TOKEN = secret()
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def keys():
    return rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-2")


@pytest.fixture
async def stack(sdk_upstream, tmp_path, keys):
    rsa1, ec1, _ = keys
    jwks = JWKSServer(jwk_set(rsa1, ec1))
    await jwks.start()
    upstream = sdk_upstream("stateless-json")
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    proxy = start_proxy(tmp_path, upstream.base, {
        "public_url": public_url,
        "auth": {"url_token_key": KEY, "jwt": {"issuer": ISSUER, "jwks_url": jwks.url, "leeway_s": 0,
                                                         "min_refetch_interval_s": 0.5}},
        "servers": [{"name": "strict", "token_hmac": url_token_hmac(KEY, URL_TOKEN), "methods": ["read"],
                     "require_api_token_auth": True}],
        "decision_log": {"sink": f"file:{tmp_path / 'decisions.log'}"},
    }, port=port)
    yield proxy, jwks, public_url, upstream, tmp_path
    proxy.stop()
    await jwks.stop()


def sign(key, payload: dict, **kwargs) -> str:
    return secret(key.sign(payload, **kwargs))


def claims(audience: str, **extra) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": audience, "sub": "agent-7", "iat": now, "exp": now + 300,
            "scope": "mcp:read mcp:tools", **extra}


@pytest.mark.parametrize("key_index", [0, 1], ids=["RS256", "ES256"])
async def test_sdk_client_with_a_jwt(stack, keys, key_index):
    proxy, _, public_url, upstream, workdir = stack
    token = sign(keys[key_index], claims(public_url))
    url = f"{proxy.base}/{URL_TOKEN}/mcp"
    async with sdk_client(url, headers={"authorization": f"Bearer {token}"}) as client:
        assert "list_all_missive_conversations" in await client.tool_names()
        with pytest.raises(MCPError):
            await client.call_tool("create_a_missive_post", {"conversation": "c", "text": "t"})
    assert not any(token in json.dumps(r) for r in upstream.requests())
    proxy.stop()
    log = (workdir / "decisions.log").read_text()
    principal = json.loads(log.splitlines()[0])["input"]["principal"]
    assert principal["via"] == ["url_token", "jwt"] and principal["subject"] == "agent-7"
    assert principal["scopes"] == ["mcp:read", "mcp:tools"] and principal["claims"]["iss"] == ISSUER
    assert token not in log and URL_TOKEN not in log and token not in proxy.handle.stderr()


async def test_bad_tokens_get_401_with_a_challenge(stack, keys):
    proxy, _, public_url, _, _ = stack
    rsa1, _, stranger = keys
    now = int(time.time())
    bad = {
        "wrong audience": sign(rsa1, claims("https://elsewhere.example.com")),
        "wrong issuer": sign(rsa1, claims(public_url, iss="https://evil.example.com")),
        "expired": sign(rsa1, claims(public_url, iat=now - 600, exp=now - 60)),
        "not yet valid": sign(rsa1, claims(public_url, nbf=now + 600)),
        "unknown key": sign(stranger, claims(public_url)),
        "alg none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + sign(rsa1, claims(public_url)).split(".")[1] + ".",
    }
    async with httpx.AsyncClient() as http:
        for name, token in bad.items():
            r = await http.post(f"{proxy.base}/{URL_TOKEN}/mcp", json=INIT,
                                headers={**HEADERS, "authorization": f"Bearer {token}"})
            assert r.status_code == 401, name
            assert r.headers["www-authenticate"].startswith(
                f'Bearer resource_metadata="{public_url}/.well-known/oauth-protected-resource", '  # the root: no token
                'error="invalid_token"'), name
            assert token not in r.text


async def test_key_rotation_is_picked_up(stack, keys):
    proxy, jwks, public_url, _, _ = stack
    rsa1, _, rsa2 = keys

    async def status(token: str) -> int:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{proxy.base}/{URL_TOKEN}/mcp", json=INIT,
                                headers={**HEADERS, "authorization": f"Bearer {token}"})
        return r.status_code

    assert await status(sign(rsa1, claims(public_url))) == 200  # keys fetched and cached
    fetches = jwks.fetches
    jwks.set_keys(rsa2)  # the IdP rotates to a key the proxy has never seen
    await asyncio.sleep(0.6)  # past min_refetch_interval_s
    assert await status(sign(rsa2, claims(public_url))) == 200  # unknown kid: one refetch
    assert jwks.fetches == fetches + 1
    start = time.monotonic()
    for _ in range(20):  # garbage kids cannot make it hammer the IdP: one fetch per interval at most
        await status(sign(rsa1, claims(public_url), kid=secret()))
    allowed = 1 + int((time.monotonic() - start) / 0.5) + 1
    assert jwks.fetches <= fetches + 1 + allowed < fetches + 20


async def test_policy_can_ask_for_a_scope_with_403(sdk_upstream, tmp_path, keys):
    """An extension rule sets insufficient_scope: the proxy answers 403 with the challenge."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "scopes.rego").write_text(
        'package mcp.authz\nimport rego.v1\n'
        'insufficient_scope := "mcp:write" if {\n  input.tool.access == "write"\n'
        '  not "mcp:write" in input.principal.scopes\n}\n'
        'deny contains "writing needs the mcp:write scope" if insufficient_scope == "mcp:write"\n')
    rsa1, _, _ = keys
    jwks = JWKSServer(jwk_set(rsa1))
    await jwks.start()
    upstream = sdk_upstream("stateless-json")
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    proxy = start_proxy(tmp_path, upstream.base, {
        "public_url": public_url, "policy": {"paths": ["@bundled", str(site)]},
        "auth": {"jwt": {"issuer": ISSUER, "jwks_url": jwks.url}},
        "servers": [{"name": "writer", "methods": ["read", "write"]}]}, port=port)
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "create_a_missive_post", "arguments": {"conversation": "c", "text": "t"}}}
    try:
        async with httpx.AsyncClient() as http:
            reader = sign(rsa1, claims(public_url, scope="mcp:read"))
            r = await http.post(proxy.url, json=call, headers={**HEADERS, "authorization": f"Bearer {reader}"})
            assert r.status_code == 403
            assert r.headers["www-authenticate"] == (
                f'Bearer error="insufficient_scope", scope="mcp:write", '
                f'resource_metadata="{public_url}/.well-known/oauth-protected-resource/mcp"')
            assert r.json()["error"]["data"]["reasons"] == ["writing needs the mcp:write scope"]
            writer = sign(rsa1, claims(public_url, scope="mcp:read mcp:write"))
            r = await http.post(proxy.url, json=call, headers={**HEADERS, "authorization": f"Bearer {writer}"})
            assert r.status_code == 200 and r.json()["result"]["isError"] is False
    finally:
        proxy.stop()
        await jwks.stop()
