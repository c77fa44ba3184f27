"""upstream.oauth without a network: its config, the token file, the grant's states and its one
refresh (client.refresh replaced), and the upstream client's bearer and 401 retry against a
scripted server. The real authorization server: tests/integration/test_upstream_oauth.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest

from proxy.config import ConfigError, Upstream, parse
from proxy.transport.upstream import UpstreamClient, UpstreamError
from proxy.upstream_oauth import client, store
from proxy.upstream_oauth import grant as grant_module
from proxy.upstream_oauth.grant import UpstreamGrant
from proxy.upstream_oauth.store import Grant, GrantFileError
from tests.peers.certs import Pki
from tests.unit.test_upstream_client import read_request, serve

URL = "http://127.0.0.1:9/mcp"


def config(tmp_path: Path, url: str = URL, **oauth: Any) -> Upstream:
    oauth = {"token_file": "grant.json", "scopes": ["read"], **oauth}
    return parse({"upstream": {"url": url, "oauth": oauth}}, str(tmp_path / "proxy.yaml")).upstream


def a_grant(**fields: Any) -> Grant:
    now = time.time()
    return Grant(**{"access_token": "old-access", "refresh_token": "old-refresh", "expires_at": now + 3600,
                    "obtained_at": now, "scope": "read", "resource": URL, "issuer": "http://127.0.0.1:9",
                    "token_endpoint": "http://127.0.0.1:9/token", "client_id": "c", "auth_method": "none",
                    "registered": True, **fields})


# --- config ---
def test_config_keys(tmp_path):
    up = config(tmp_path, client_id="proxy", client_secret="s3cret", token_key="k" * 16, redirect_port=9000)
    assert up.oauth is not None
    assert up.oauth.token_file == str(tmp_path / "grant.json")  # beside the config; a path, not a secret read in
    assert (up.oauth.scopes, up.oauth.client_id, up.oauth.redirect_port) == (("read",), "proxy", 9000)
    assert "s3cret" not in repr(up.oauth) and "kkkk" not in repr(up.oauth)
    assert config(tmp_path).oauth.redirect_port == 8765  # type: ignore[union-attr]


@pytest.mark.parametrize(("oauth", "key", "message"), [
    ({"token_file": None}, "upstream.oauth.token_file", "is required"),
    ({"scopes": []}, "upstream.oauth.scopes", "must list the scopes"),
    ({"scopes": ["a b"]}, "upstream.oauth.scopes", "each one word"),
    ({"client_secret": "x"}, "upstream.oauth.client_secret_file", "needs client_id"),
    ({"token_key": "short"}, "upstream.oauth.token_key", "at least 16"),
    ({"redirect_port": 0}, "upstream.oauth.redirect_port", "between 1 and 65535"),
    ({"refresh": 1}, "upstream.oauth.refresh", "unknown key"),
])
def test_config_errors(tmp_path, oauth, key, message):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, **oauth)
    assert err.value.key == key and message in err.value.message


def test_oauth_and_a_static_authorization_header_exclude_each_other(tmp_path):
    data = {"upstream": {"url": URL, "headers": {"Authorization": "Bearer x"},
                         "oauth": {"token_file": "g.json", "scopes": ["read"]}}}
    with pytest.raises(ConfigError, match=r"either upstream\.oauth or an Authorization header"):
        parse(data, "proxy.yaml")


# --- the token file ---
def test_token_file_round_trip_mode_and_encryption(tmp_path):
    path = str(tmp_path / "grant.json")
    g = a_grant()
    store.save(path, g, None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.load(path, None) == g
    assert "old-access" not in repr(g) and "old-refresh" not in repr(g)

    store.save(path, g, "a-key-of-16-chars")
    text = Path(path).read_text()
    assert "old-access" not in text and set(json.loads(text)) == {"format", "version", "encrypted"}
    assert store.load(path, "a-key-of-16-chars") == g
    for key, why in (("another-key-16-chars", "cannot be decrypted"), (None, "is encrypted")):
        with pytest.raises(GrantFileError, match=why) as err:
            store.load(path, key)
        assert err.value.reason == "unreadable"
    store.save(path, g, None)
    with pytest.raises(GrantFileError, match="is not encrypted"):
        store.load(path, "a-key-of-16-chars")
    Path(path).write_text("{}")
    with pytest.raises(GrantFileError, match="not a token file"):
        store.load(path, None)
    with pytest.raises(GrantFileError) as err:
        store.load(str(tmp_path / "none.json"), None)
    assert err.value.reason == "no_grant"


# --- the grant in serve ---
class Refresher:
    """client.refresh replaced: counts, waits a little, answers as told."""

    def __init__(self, failure: client.OAuthFailure | None = None, lifetime: float = 3600) -> None:
        self.calls: list[str | None] = []
        self.failure, self.lifetime = failure, lifetime

    async def __call__(self, upstream: Upstream, old: Grant, secret: str | None) -> Grant:
        self.calls.append(old.refresh_token)
        await asyncio.sleep(0.05)
        if self.failure is not None:
            raise self.failure
        n, now = len(self.calls), time.time()
        return replace(old, access_token=f"access-{n}", refresh_token=f"refresh-{n}", obtained_at=now,
                       expires_at=now + self.lifetime)


def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refresher: Refresher, **fields: Any
          ) -> tuple[UpstreamGrant, list[str], Upstream]:
    up = config(tmp_path)
    assert up.oauth is not None
    store.save(up.oauth.token_file, a_grant(**fields), None)
    monkeypatch.setattr(client, "refresh", refresher)
    refused: list[str] = []
    return UpstreamGrant(up, "proxy.yaml", refused.append), refused, up


async def test_one_refresh_however_many_requests_wait(tmp_path, monkeypatch):
    refresher = Refresher()
    g, refused, up = setup(tmp_path, monkeypatch, refresher, expires_at=time.time() - 1)
    assert g.authorization() is None
    values = await asyncio.gather(*(g.current() for _ in range(32)))
    assert values == ["Bearer access-1"] * 32 and refresher.calls == ["old-refresh"]
    assert g.authorization() == "Bearer access-1"  # built once, read as it is
    assert store.load(up.oauth.token_file, None).refresh_token == "refresh-1"  # type: ignore[union-attr]
    assert refused == []


async def test_ahead_of_expiry_the_refresh_runs_in_the_background(tmp_path, monkeypatch):
    refresher = Refresher()
    now = time.time()  # 60 s margin, half of a 90 s life: due from 45 s on
    g, _, _ = setup(tmp_path, monkeypatch, refresher, obtained_at=now - 50, expires_at=now + 40)
    assert g.authorization() is None
    assert await g.current() == "Bearer old-access"  # still valid: nobody waits
    await asyncio.sleep(0.1)
    assert g.authorization() == "Bearer access-1" and len(refresher.calls) == 1


async def test_a_revoked_grant_refuses_until_a_new_login(tmp_path, monkeypatch):
    refresher = Refresher(client.OAuthFailure("the authorization server refused: invalid_grant", gone=True))
    g, refused, up = setup(tmp_path, monkeypatch, refresher, expires_at=time.time() - 1)
    for _ in range(2):
        with pytest.raises(UpstreamError) as err:
            await g.current()
        assert err.value.status == 503 and "is expired or revoked" in err.value.message
        assert "mcp-policy-proxy upstream login --config" in err.value.message
    assert len(refresher.calls) == 1 and refused == ["revoked", "revoked"]
    assert "expired or revoked" in (g.readiness() or "")

    monkeypatch.setattr(grant_module, "RECHECK_S", 0.0)
    store.save(up.oauth.token_file, a_grant(access_token="new-access"), None)  # type: ignore[union-attr]
    assert await g.current() == "Bearer new-access" and g.readiness() is None


async def test_a_failure_that_may_pass_keeps_a_valid_token_and_refuses_an_expired_one(tmp_path, monkeypatch):
    refresher = Refresher(client.OAuthFailure("the authorization server is unreachable: ConnectError"))
    now = time.time()
    g, refused, _ = setup(tmp_path, monkeypatch, refresher, obtained_at=now - 50, expires_at=now + 40)
    assert await g.current() == "Bearer old-access"
    await asyncio.sleep(0.1)
    assert await g.current() == "Bearer old-access" and len(refresher.calls) == 1  # tried again RETRY_S later

    g, refused, _ = setup(tmp_path, monkeypatch, refresher, expires_at=time.time() - 1)
    with pytest.raises(UpstreamError) as err:
        await g.current()
    assert err.value.status == 503 and ("retry-after", "5") in err.value.headers and refused == ["unavailable"]


async def test_a_sibling_s_fresh_grant_is_taken_as_it_is(tmp_path, monkeypatch):
    refresher = Refresher()
    g, _, up = setup(tmp_path, monkeypatch, refresher, expires_at=time.time() - 1)
    store.save(up.oauth.token_file, a_grant(access_token="sibling-access"), None)  # type: ignore[union-attr]
    assert await g.current() == "Bearer sibling-access" and refresher.calls == []
    # After an upstream 401 to a token, one refreshed since is used at once.
    assert await g.rejected("Bearer older") == "Bearer sibling-access" and refresher.calls == []


async def test_a_grant_for_another_upstream_is_never_sent(tmp_path, monkeypatch):
    g, refused, _ = setup(tmp_path, monkeypatch, Refresher(), resource="http://other.example/mcp")
    with pytest.raises(UpstreamError, match="issued for another upstream"):
        await g.current()
    assert refused == ["other_upstream"]


async def test_a_login_for_another_upstream_is_never_overwritten(tmp_path, monkeypatch):
    refresher = Refresher()
    g, _, up = setup(tmp_path, monkeypatch, refresher, expires_at=time.time() - 1)
    elsewhere = a_grant(resource="http://other.example/mcp", access_token="theirs")
    store.save(up.oauth.token_file, elsewhere, None)  # type: ignore[union-attr]
    with pytest.raises(UpstreamError, match="issued for another upstream"):
        await g.current()
    assert refresher.calls == [] and store.load(up.oauth.token_file, None) == elsewhere  # type: ignore[union-attr]


# --- the upstream client with a grant ---
async def test_bearer_and_one_retry_after_an_upstream_401(tmp_path, monkeypatch):
    seen: list[str] = []
    answers = [b"401", b"200", b"401", b"401", b"403"]

    async def script(reader, writer):
        while answers:
            try:
                head, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(next((line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                              if line.lower().startswith(b"authorization:")), ""))
            status = answers.pop(0)
            extra = b'www-authenticate: Bearer error="insufficient_scope", scope="admin"\r\n' if status == b"403" \
                else b""
            writer.write(b"HTTP/1.1 " + status + b" X\r\n" + extra + b"content-length: 2\r\n\r\n{}")
            await writer.drain()

    server, url, _ = await serve(script)
    up = config(tmp_path, url=url)
    assert up.oauth is not None
    store.save(up.oauth.token_file, a_grant(resource=url), None)
    refresher = Refresher()
    monkeypatch.setattr(client, "refresh", refresher)
    refused: list[str] = []
    c = UpstreamClient(up, grant=UpstreamGrant(up, "proxy.yaml", refused.append))

    resp = await c.send("POST", url, {"content-type": "application/json"}, b"{}")
    assert resp.status == 200 and await resp.read(100, 5) == b"{}"
    assert seen == ["Bearer old-access", "Bearer access-1"] and len(refresher.calls) == 1

    with pytest.raises(UpstreamError) as err:  # a refreshed token refused too: the proxy answers
        await c.send("POST", url, {}, b"{}")
    assert err.value.status == 503 and "refused by the upstream" in err.value.message
    assert seen[2:] == ["Bearer access-1", "Bearer access-2"] and refused == ["rejected"]

    monkeypatch.setattr(grant_module, "REJECTED_HOLD_S", 0.0)
    monkeypatch.setattr(grant_module, "RECHECK_S", 0.0)
    g = UpstreamGrant(up, "proxy.yaml", refused.append)
    c = UpstreamClient(up, grant=g)
    with pytest.raises(UpstreamError) as err:  # a scope the grant lacks: no client can mend that
        await c.send("POST", url, {}, b"{}")
    assert err.value.status == 403 and "(the upstream asks for: admin)" in err.value.message

    with pytest.raises(UpstreamError, match=r"upstream\.url's origin only"):
        await c.send("GET", "http://127.0.0.2:9/sse", {})
    assert UpstreamClient(Upstream(url=url)).grant is None  # e.g. the siblings' client (cluster.py)
    await c.close()
    server.close()


# --- how the OAuth requests go out ---
async def tls_server(leaf: Any) -> tuple[asyncio.Server, int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert, leaf.key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_the_upstream_s_tls_settings_apply_to_its_origin_only(tmp_path, monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    pki = Pki(tmp_path)  # a private CA: upstream.tls.ca_file trusts it for the upstream only
    (upstream, port), (elsewhere, other_port) = await tls_server(pki.leaf("a")), await tls_server(pki.leaf("b"))
    url = f"https://127.0.0.1:{port}/mcp"
    up = parse({"upstream": {"url": url, "tls": {"ca_file": str(pki.ca)},
                             "oauth": {"token_file": "g.json", "scopes": ["read"]}}}, str(tmp_path / "p.yaml")).upstream
    async with client.http_client(up) as http:
        assert (await http.post(url, content=b"{}")).status_code == 200
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # the default store elsewhere
            await http.post(f"https://127.0.0.1:{other_port}/token", content=b"{}")
    upstream.close()
    elsewhere.close()
