"""upstream.tls and upstream.proxy: checked at load with errors naming the key and the fix; the
environment's HTTPS_PROXY/HTTP_PROXY/NO_PROXY; NO_PROXY matching; and the upstream client's TLS
and CONNECT paths in-process (certificates made by tests/peers/certs.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from proxy.config import ConfigError, Egress, EgressProxy, Upstream, UpstreamTls, load, parse
from proxy.observe.metrics import CONNECT_FAILURES, Metrics
from proxy.transport import egress, tls
from proxy.transport.upstream import UpstreamClient, UpstreamError
from tests.peers.certs import Leaf, Pki
from tests.peers.connect_proxy import ConnectProxy
from tests.peers.tls_listener import SwitchingTlsUpstream

PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaf(pki: Pki) -> Leaf:
    return pki.leaf("server")


def config(tls_section: dict[str, Any] | None = None, url: str = "https://mcp.example.com/mcp",
           **upstream: Any) -> Any:
    section: dict[str, Any] = {"url": url, **upstream}
    if tls_section is not None:
        section["tls"] = tls_section
    return parse({"upstream": section}, "proxy.yaml")


def refused(key: str, *words: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config(**kwargs)
    assert info.value.key == key, str(info.value)
    for word in words:
        assert word in info.value.message, str(info.value)
    return str(info.value)


# --- upstream.tls ---------------------------------------------------------------------------------

def test_tls_settings_are_read_and_checked(pki, leaf):
    c = config({"ca_file": str(pki.ca), "server_name": "mcp.internal", "min_version": 1.3})
    assert c.upstream.tls == UpstreamTls(ca_file=str(pki.ca), server_name="mcp.internal", min_version="1.3")
    assert config().upstream.tls == UpstreamTls()  # the default store, TLS 1.2 at least
    assert config({"min_version": "1.2"}).upstream.tls.min_version == "1.2"


def test_tls_files_are_checked_at_load(pki, leaf, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    refused("upstream.tls.ca_file", "cannot be read: No such file", tls_section={"ca_file": str(tmp_path / "none")})
    refused("upstream.tls.ca_file", "does not hold a PEM certificate", tls_section={"ca_file": str(junk)})
    refused("upstream.tls.ca_file", "does not hold a PEM certificate", tls_section={"ca_file": str(leaf.key)})
    refused("upstream.tls.key_file", "is required with cert_file", tls_section={"cert_file": str(leaf.cert)})
    refused("upstream.tls.cert_file", "is required with key_file", tls_section={"key_file": str(leaf.key)})
    refused("upstream.tls.key_file", "does not hold a PEM private key",
            tls_section={"cert_file": str(leaf.cert), "key_file": str(leaf.cert)})
    refused("upstream.tls.key_file", "is not the key of the certificate",
            tls_section={"cert_file": str(leaf.cert), "key_file": str(pki.leaf("another").key)})
    refused("upstream.tls.key_password_file", "applies only with cert_file and key_file",
            tls_section={"key_password": "x"})


def test_an_encrypted_client_key_needs_its_password(pki, tmp_path):
    client = pki.leaf("client", client=True, password=b"s3cret-pass")
    section = {"cert_file": str(client.cert), "key_file": str(client.key)}
    refused("upstream.tls.key_password_file", "is required: key_file is encrypted", tls_section=section)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    message = refused("upstream.tls.key_password_file", "is not the password",
                      tls_section={**section, "key_password_file": str(wrong)})
    assert "nope" not in message
    right = tmp_path / "right"
    right.write_text("s3cret-pass\n")
    c = config({**section, "key_password_file": str(right)})
    assert c.upstream.tls.key_password == "s3cret-pass" and "s3cret" not in repr(c.upstream)


def test_verification_cannot_be_turned_off():
    for key in ("insecure", "verify", "insecure_skip_verify"):
        refused(f"upstream.tls.{key}", "cannot be turned off", "ca_file", tls_section={key: True})


def test_other_tls_mistakes():
    refused("upstream.tls.min_version", 'must be "1.2" or "1.3"', tls_section={"min_version": "1.1"})
    refused("upstream.tls.server_name", "must be a host name", tls_section={"server_name": "https://x:1"})
    refused("upstream.tls", "applies to https:// upstreams only", tls_section={"server_name": "x"},
            url="http://127.0.0.1:3000/mcp")
    refused("upstream.tls.ciphers", "unknown key", tls_section={"ciphers": "ALL"})


def test_tls_paths_are_relative_to_the_config_file(pki, tmp_path):
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    path = tmp_path / "proxy.yaml"
    path.write_text("upstream: {url: 'https://mcp.example.com/mcp', tls: {ca_file: ca.pem}}\n")
    assert load(path).upstream.tls.ca_file == str(tmp_path / "ca.pem")


def test_the_context_is_built_once_with_verification_on(pki):
    client = UpstreamClient(config({"ca_file": str(pki.ca), "min_version": "1.3"}).upstream)
    context = client._tls
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert UpstreamClient(Upstream(url="http://127.0.0.1:1/mcp"))._tls is None  # plain http: none built


# --- upstream.proxy and the environment -----------------------------------------------------------

def test_the_configured_proxy(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("alice:pa:ss wörd\n")
    c = config(proxy={"url": "http://proxy.corp:3128", "credentials_file": str(creds)})
    proxy = EgressProxy("proxy.corp", 3128, "alice:pa:ss wörd", "upstream.proxy")
    assert c.upstream.proxy == Egress(https=proxy, http=proxy)
    assert "pa:ss" not in repr(c.upstream)
    assert config(proxy={"url": "proxy.corp"}).upstream.proxy.https == EgressProxy("proxy.corp", 80)
    creds.write_text("no-colon\n")
    refused("upstream.proxy.credentials_file", "must hold user:password",
            proxy={"url": "http://p:1", "credentials_file": str(creds)})
    refused("upstream.proxy.url", "is required", proxy={})
    refused("upstream.proxy.url", "must not carry credentials", proxy={"url": "http://u:secret@p:1"})
    refused("upstream.proxy.url", "https:// and SOCKS proxies are not supported", proxy={"url": "socks5://p:1"})
    refused("upstream.proxy.url", "the proxy's address only", proxy={"url": "http://p:1/path"})
    refused("upstream.proxy.url", "not a valid proxy URL", proxy={"url": "http://p:99999"})


def test_the_configured_proxy_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:8080")
    monkeypatch.setenv("NO_PROXY", "*")
    c = config(proxy={"url": "http://proxy.corp:3128"})
    assert c.upstream.proxy.https == EgressProxy("proxy.corp", 3128) and c.upstream.proxy.no_proxy == ()


def test_the_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://bob:p%40ss@env-proxy:8080/")
    monkeypatch.setenv("NO_PROXY", " Localhost, .corp.example ,,10.0.0.0/8")
    c = config()
    assert c.upstream.proxy == Egress(https=EgressProxy("env-proxy", 8080, "bob:p@ss", "HTTPS_PROXY"),
                                      no_proxy=("localhost", ".corp.example", "10.0.0.0/8"))
    monkeypatch.setenv("https_proxy", "lower:3128")  # lowercase first, as urllib and curl read them
    assert config().upstream.proxy.https == EgressProxy("lower", 3128, None, "https_proxy")
    monkeypatch.setenv("https_proxy", "")  # set and empty: no proxy, the uppercase one is not used
    assert config().upstream.proxy.https is None
    # HTTP_PROXY is for http:// upstreams, HTTPS_PROXY for https:// ones.
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy:3128")
    assert config(url="http://127.0.0.1:3000/mcp").upstream.proxy.http == EgressProxy(
        "plain-proxy", 3128, None, "HTTP_PROXY")


def test_an_unusable_proxy_variable_is_refused_when_it_applies(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "https://user:hunter2-secret@proxy:443")
    with pytest.raises(ConfigError) as info:
        config()
    assert info.value.key == "upstream.proxy" and "HTTPS_PROXY applies" in info.value.message
    assert "hunter2" not in str(info.value)
    assert config(url="http://127.0.0.1:3000/mcp").upstream.proxy == Egress()  # not for http:// upstreams


def test_clients_built_without_parse_go_straight(monkeypatch):
    """The siblings' client (proxy/transport/cluster.py) builds its Upstream itself: never a proxy."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    client = UpstreamClient(Upstream(url="http://siblings.invalid/"))
    pool, _ = client._target("http://10.1.2.3:9001/internal")
    assert pool.route is None


@pytest.mark.parametrize(("no_proxy", "host", "port", "bypassed"), [
    (("*",), "anything.example", 443, True),
    (("example.com",), "example.com", 443, True),
    (("example.com",), "api.example.com", 443, True),
    ((".example.com",), "api.example.com", 443, True),
    ((".example.com",), "example.com", 443, True),
    (("example.com",), "badexample.com", 443, False),
    (("example.com:8443",), "example.com", 443, False),
    (("example.com:8443",), "example.com", 8443, True),
    (("127.0.0.1",), "127.0.0.1", 3000, True),
    (("localhost",), "127.0.0.1", 3000, False),  # loopback is not special: NO_PROXY decides
    (("10.0.0.0/8",), "10.20.30.40", 443, True),
    (("10.0.0.0/8",), "11.0.0.1", 443, False),
    (("::1",), "::1", 443, True),
    (("[::1]:443",), "[::1]", 443, True),
    (("0:0::1",), "::1", 443, True),
    (("fd00::/8",), "fd12::1", 443, True),
    (("API.EXAMPLE.COM".lower(),), "api.example.com.", 443, True),
    ((), "example.com", 443, False),
])
def test_no_proxy_matching(no_proxy, host, port, bypassed):
    assert egress.bypassed(no_proxy, host, port) is bypassed


def test_routes_and_the_connect_request():
    proxy = EgressProxy("proxy", 3128, "alice:pw")
    proxies = Egress(https=proxy, no_proxy=("internal",))
    assert egress.route(proxies, "http", "example.com", 80) is None  # no http proxy
    assert egress.route(proxies, "https", "mcp.internal", 443) is None
    route = egress.route(proxies, "https", "mcp.example.com", 443)
    assert route is not None and route.request == (b"CONNECT mcp.example.com:443 HTTP/1.1\r\n"
                                                    b"host: mcp.example.com:443\r\n"
                                                    b"proxy-authorization: Basic YWxpY2U6cHc=\r\n\r\n")
    assert egress.connect_request("::1", 8443, None) == b"CONNECT [::1]:8443 HTTP/1.1\r\nhost: [::1]:8443\r\n\r\n"
    assert "pw" not in route.where and route.where == "upstream.proxy proxy:3128"


def test_every_failure_reason_is_a_known_label():
    given = {*tls.FAILURE_REASONS, *egress.FAILURE_REASONS, "unreachable", "timeout"}
    assert given == set(CONNECT_FAILURES)
    metrics = Metrics()
    metrics.upstream_connect_failed("tls_expired")
    metrics.upstream_connect_failed("anything else")  # never a new label
    text = metrics.render().decode()
    assert 'mcp_proxy_upstream_connect_failures_total{reason="tls_expired"} 1.0' in text
    assert "anything else" not in text


# --- the client, in-process -----------------------------------------------------------------------

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def tls_client(url: str, reasons: list[str], **tls_settings: Any) -> UpstreamClient:
    settings = UpstreamTls(**tls_settings)
    return UpstreamClient(Upstream(url=url, tls=settings, connect_timeout_s=2, timeout_s=5),
                          on_connect_failure=reasons.append)


async def post(client: UpstreamClient, url: str) -> bytes:
    resp = await client.send("POST", url, {"content-type": "application/json"}, PING)
    return await resp.read(1 << 20, 5)


async def test_client_certificate_refusals_during_and_after_the_handshake(pki, leaf, tmp_path):
    """TLS 1.2: the alert ends the handshake; TLS 1.3: it comes after, on the first read."""
    stranger = Pki(tmp_path, "stranger").leaf("proxy", client=True)
    listener = SwitchingTlsUpstream()
    url = f"https://127.0.0.1:{listener.port}/mcp"
    try:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            listener.use(leaf, max_version=version, client_ca=pki.ca)
            reasons: list[str] = []
            client = tls_client(url, reasons, ca_file=str(pki.ca), cert_file=str(stranger.cert),
                                key_file=str(stranger.key))
            with pytest.raises(UpstreamError) as info:
                await post(client, url)
            assert info.value.status == 502
            assert info.value.message == ("Upstream refused the proxy's TLS client certificate: it does not "
                                          "trust the CA that issued it"), version
            assert reasons == ["tls_client_cert"]
            assert client.pool_stats() == (0, 0, 0)
    finally:
        listener.close()


async def test_tls_inside_a_connect_tunnel_with_the_upstream_host_as_sni(pki, leaf):
    listener = SwitchingTlsUpstream()
    listener.use(leaf)
    tunnel = ConnectProxy().start()
    try:
        url = f"https://localhost:{listener.port}/mcp"
        proxy = EgressProxy("127.0.0.1", tunnel.port)
        client = UpstreamClient(Upstream(url=url, tls=UpstreamTls(ca_file=str(pki.ca)), proxy=Egress(https=proxy),
                                         connect_timeout_s=2))
        assert await post(client, url) == b'{"jsonrpc":"2.0","id":1,"result":{}}'
        assert listener.server_names == ["localhost"]
        assert [c.line for c in tunnel.connects] == [f"CONNECT localhost:{listener.port} HTTP/1.1"]
        assert tunnel.connects[0].authorization is None
    finally:
        tunnel.stop()
        listener.close()


async def test_a_proxy_that_speaks_before_it_is_asked_is_refused():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reasons: list[str] = []
    try:
        client = UpstreamClient(Upstream(url="http://upstream.example/mcp",
                                         proxy=Egress(http=EgressProxy("127.0.0.1", port)), connect_timeout_s=2),
                                on_connect_failure=reasons.append)
        with pytest.raises(UpstreamError) as info:
            await post(client, "http://upstream.example/mcp")
        assert info.value.message == "Egress proxy sent bytes after its CONNECT answer"
        assert reasons == ["proxy_invalid"] and client.pool_stats() == (0, 0, 0)
    finally:
        server.close()


async def test_a_new_tls_connection_closed_unanswered_is_named_but_a_timeout_stays_a_timeout(pki, leaf):
    behaviour = {"close": True}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if behaviour["close"]:
            writer.close()
            return
        await asyncio.sleep(2)
        # The client left at its timeout: a TLS close now would wait for a peer that is gone
        # (24 s of the loop's teardown), so the connection is just dropped.
        writer.transport.abort()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert, leaf.key)
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    reasons: list[str] = []
    client = UpstreamClient(Upstream(url=url, tls=UpstreamTls(ca_file=str(pki.ca)), timeout_s=0.3),
                            on_connect_failure=reasons.append)
    try:
        with pytest.raises(UpstreamError) as info:
            await post(client, url)
        assert info.value.message.startswith("Upstream closed the TLS connection before answering")
        assert reasons == ["tls_closed"]
        behaviour["close"] = False
        with pytest.raises(UpstreamError) as info:
            await post(client, url)
        assert info.value.status == 504 and reasons == ["tls_closed"]
    finally:
        server.close()
