"""Reaching the upstream over TLS and through egress proxies, with the real proxy in front.

Certificates are made by the tests (tests/peers/certs.py). The HTTPS upstream is the official SDK
server under uvicorn's TLS (tests/peers/tls_sdk_server.py), the client the official SDK client; the
failure causes are played by a TLS listener whose certificate and settings the test switches
between requests (blocking OpenSSL sockets in a thread: they send the alerts a real server sends,
where an asyncio server hangs up without one). The egress proxy is an HTTP CONNECT proxy on
loopback (tests/peers/connect_proxy.py) that records what it is asked.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.proxy_harness import Proxy
from tests.leakcheck import secret
from tests.peers.certs import Leaf, Pki
from tests.peers.clients import sdk_client, sse_client
from tests.peers.connect_proxy import ConnectProxy
from tests.peers.harness import Upstream, free_port, start_sdk_upstream, start_server
from tests.peers.tls_listener import SwitchingTlsUpstream

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
KEY_PASSWORD = "correct horse battery staple"


@dataclass
class Certs:
    pki: Pki
    client_pki: Pki
    server: Leaf
    expired: Leaf
    future: Leaf
    other_host: Leaf
    untrusted: Leaf
    client: Leaf  # its key encrypted with KEY_PASSWORD
    password_file: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    pki, client_pki, other = Pki(d), Pki(d, "clients"), Pki(d, "other")
    (d / "key-password").write_text(KEY_PASSWORD + "\n")
    return Certs(pki, client_pki, server=pki.leaf("server"), expired=pki.leaf("expired", days=(-30, -1)),
                 future=pki.leaf("future", days=(10, 30)), other_host=pki.leaf("other", names=("other.example",)),
                 untrusted=other.leaf("server"),
                 client=client_pki.leaf("proxy", names=("mcp-policy-proxy",), client=True,
                                        password=KEY_PASSWORD.encode()),
                 password_file=d / "key-password")


def start_tls_upstream(workdir: Path, leaf: Leaf, mode: str = "stateless-json", client_ca: Path | None = None
                       ) -> Upstream:
    port = free_port()
    record = workdir / f"tls-{mode}-{port}.jsonl"
    args = ["tests.peers.tls_sdk_server", "--mode", mode, "--port", str(port), "--cert", str(leaf.cert),
            "--key", str(leaf.key)]
    handle = start_server([*args, "--client-ca", str(client_ca)] if client_ca else args, port,
                          {"MCP_RECORD_FILE": str(record)}, log_dir=workdir)
    return Upstream(mode=mode, port=port, record_file=record, handle=handle)


@pytest.fixture(scope="module")
def tls_upstream(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    upstream = start_tls_upstream(tmp_path_factory.mktemp("tls-upstream"), certs.server)
    yield upstream
    upstream.stop()


def https(upstream: Upstream) -> str:
    return f"https://127.0.0.1:{upstream.port}"


def tls_config(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {"upstream": {"tls": {"ca_file": str(certs.pki.ca), **extra}, "connect_timeout_s": 2}}


async def call_tools(proxy: Proxy) -> None:
    async with sdk_client(proxy.url) as client:
        assert "echo" in await client.tool_names()
        assert await client.call_text("echo", {"text": "über TLS"}) == "über TLS"
        assert await client.call_text("add", {"a": 2, "b": 3}) == "5"


async def ping(proxy: Proxy, rid: int = 1) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(proxy.url, json={"jsonrpc": "2.0", "id": rid, "method": "ping"}, headers=HEADERS)


def failed(r: httpx.Response, status: int = 502) -> str:
    """The JSON-RPC error message of a failed exchange."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == -32603, body
    return str(body["error"]["message"])


async def connect_failures(proxy: Proxy) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{proxy.base}/metrics")).text
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "mcp_proxy_upstream_connect_failures" for s in f.samples if s.name.endswith("_total")}


# --- TLS ----------------------------------------------------------------------------------------

async def test_sdk_client_through_the_proxy_to_an_https_upstream_of_a_private_ca(certs, tls_upstream, proxy_for):
    proxy = proxy_for(https(tls_upstream), tls_config(certs))
    await call_tools(proxy)
    assert set((await connect_failures(proxy)).values()) == {0.0}
    # The default trust store does not know the test CA: refused, never relayed unverified.
    plain = proxy_for(https(tls_upstream), {"upstream": {"connect_timeout_s": 2}})
    assert "not trusted" in failed(await ping(plain))


async def test_each_tls_failure_is_a_502_naming_its_cause_and_counted(certs, proxy_for):
    upstream = SwitchingTlsUpstream()
    try:
        # server_name is the name checked and the SNI sent (the URL's host is an IP address).
        proxy = proxy_for(f"https://127.0.0.1:{upstream.port}",
                          tls_config(certs, server_name="localhost", min_version="1.3"))
        upstream.use(certs.server)
        assert (await ping(proxy)).json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
        assert upstream.server_names[-1] == "localhost"
        cases = [
            (lambda: upstream.use(certs.untrusted), "not trusted: it was issued by an unknown certificate authority",
             "tls_untrusted"),
            (lambda: upstream.use(certs.expired), "certificate has expired", "tls_expired"),
            (lambda: upstream.use(certs.future), "certificate is not valid yet", "tls_not_yet_valid"),
            (lambda: upstream.use(certs.other_host), "not valid for the upstream's host name", "tls_hostname"),
            (lambda: upstream.use(certs.server, max_version=ssl.TLSVersion.TLSv1_2),
             "no TLS version both sides accept", "tls_protocol"),
            (lambda: upstream.use(certs.server, client_ca=certs.client_pki.ca),
             "refused the proxy's TLS client certificate: it requires a client certificate", "tls_client_cert"),
            (lambda: setattr(upstream, "context", None), "does not speak TLS there", "tls_handshake"),
        ]
        for setup, words, _ in cases:
            setup()
            message = failed(await ping(proxy))
            assert words in message, message
            assert "127.0.0.1" not in message and "localhost" not in message  # addresses: for the log only
        counts = await connect_failures(proxy)
        for _, _, reason in cases:
            assert counts[reason] == 1, (reason, counts)
        # Logged for the operator, with the upstream's address and OpenSSL's words.
        stderr = proxy.handle.stderr()
        assert f"upstream https://127.0.0.1:{upstream.port}: Upstream TLS certificate has expired" in stderr
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in stderr
    finally:
        upstream.close()


async def test_mtls_works_with_the_client_certificate_and_fails_clearly_without(certs, proxy_for, tmp_path):
    upstream = start_tls_upstream(tmp_path, certs.server, client_ca=certs.client_pki.ca)
    try:
        with_cert = proxy_for(https(upstream), tls_config(
            certs, cert_file=str(certs.client.cert), key_file=str(certs.client.key),
            key_password_file=str(certs.password_file)))
        await call_tools(with_cert)
        without = proxy_for(https(upstream), tls_config(certs))
        # uvicorn (asyncio) hangs up after the TLS 1.3 handshake without an alert: the proxy says what it saw.
        assert "closed the TLS connection before answering" in failed(await ping(without))
        assert (await connect_failures(without))["tls_closed"] == 1
        assert KEY_PASSWORD not in with_cert.handle.stderr()
    finally:
        upstream.stop()


# --- egress proxies -------------------------------------------------------------------------------

@pytest.fixture
def egress() -> Iterator[ConnectProxy]:
    started = ConnectProxy().start()
    yield started
    started.stop()


async def test_through_the_configured_egress_proxy_with_credentials_and_every_refusal(
        certs, tls_upstream, egress, proxy_for, tmp_path):
    password = secret()  # never in any log or output of the suite (tests/conftest.py)
    egress.credentials = f"alice:{password}"
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(f"alice:{password}\n")
    config = tls_config(certs)
    config["upstream"]["proxy"] = {"url": egress.url, "credentials_file": str(credentials)}
    config["upstream"]["connect_timeout_s"] = 1
    proxy = proxy_for(https(tls_upstream), config)
    await call_tools(proxy)
    target = f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"
    assert {c.line for c in egress.connects} == {target}
    assert {c.authorization for c in egress.connects} == {egress.basic(f"alice:{password}")}
    # The tunnel is the pooled connection: keep-alive reuse goes on inside it.
    opened = egress.tunnels
    for rid in range(5):
        assert (await ping(proxy, rid)).status_code == 200
    assert egress.tunnels == opened
    assert len(tls_upstream.requests()) >= 5

    async def refused(mode: str, status: int = 502) -> str:
        egress.mode = mode
        egress.cut()  # the pooled tunnels end: the next request opens a new one
        await asyncio.sleep(0.2)
        return failed(await ping(proxy), status)

    egress.credentials = "alice:another"
    assert "refused the proxy credentials (HTTP 407" in await refused("ok")
    egress.credentials = f"alice:{password}"
    assert "refused the tunnel to the upstream (HTTP 403)" in await refused("403")
    assert "could not reach the upstream (HTTP 502)" in await refused("502")
    assert "timed out reaching the upstream (HTTP 504)" in await refused("504", 504)
    assert "did not answer the CONNECT request in time" in await refused("silent", 504)
    assert "something other than HTTP" in await refused("garbage")
    egress.mode = "ok"
    assert (await ping(proxy)).status_code == 200
    egress.stop()
    egress.cut()
    await asyncio.sleep(0.2)
    assert "Egress proxy unreachable" in failed(await ping(proxy))
    counts = await connect_failures(proxy)
    assert {r: counts[r] for r in ("proxy_auth", "proxy_refused", "proxy_upstream", "proxy_timeout",
                                   "proxy_invalid", "proxy_unreachable")} == {
        "proxy_auth": 1, "proxy_refused": 1, "proxy_upstream": 2, "proxy_timeout": 1, "proxy_invalid": 1,
        "proxy_unreachable": 1}
    assert "through the egress proxy upstream.proxy 127.0.0.1" in proxy.handle.stderr()


async def test_https_proxy_from_the_environment(certs, tls_upstream, egress, proxy_for):
    password = secret()
    egress.credentials = f"bob:{password}"
    proxy = proxy_for(https(tls_upstream), tls_config(certs), env={
        "HTTPS_PROXY": f"http://bob:{password}@127.0.0.1:{egress.port}", "NO_PROXY": "localhost,.internal"})
    await call_tools(proxy)
    assert {c.line for c in egress.connects} == {f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"}
    assert {c.authorization for c in egress.connects} == {egress.basic(f"bob:{password}")}


async def test_no_proxy_from_the_environment_goes_straight(certs, tls_upstream, egress, proxy_for):
    proxy = proxy_for(https(tls_upstream), tls_config(certs), env={
        "HTTPS_PROXY": egress.url, "no_proxy": "example.com, 127.0.0.1"})
    await call_tools(proxy)
    assert egress.connects == []


async def test_http_proxy_carries_a_plain_http_legacy_sse_upstream(egress, proxy_for, tmp_path):
    """http:// upstreams go through CONNECT too, and so does the legacy SSE stream."""
    upstream = start_sdk_upstream("legacy-sse", tmp_path)
    try:
        proxy = proxy_for(upstream.base, {}, env={"HTTP_PROXY": egress.url})
        async with sse_client(proxy.sse_url) as client:
            assert await client.call_text("echo", {"text": "tunnelled"}) == "tunnelled"
        assert egress.connects and {c.line for c in egress.connects} == {f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"}
        assert {r["path"] for r in upstream.requests()} >= {"/sse", "/messages/"}
    finally:
        upstream.stop()
