"""Red team, connection level: a hostile upstream plays with HTTP/1.1 framing and connections, with
the real proxy in front. Every client must get its own answer or a clear JSON-RPC error (never
another's, never bytes the upstream sent unasked), a connection that carried anything unasked is
never reused, and the next request works.

The upstream is a raw asyncio HTTP/1.1 server on 127.0.0.1 (in a thread of the test process). A
request with an `x-scenario` header (the proxy forwards such headers) is answered by that
scenario's script; every other request gets a sane JSON-RPC answer naming the connection it came
on. A connection a scenario made untrustworthy ("tainted") answers any further request with
`"reused": true`, which no client may ever see.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.raw_server import ThreadedServer

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
MAX_CONNECTIONS = 4
READ_TIMEOUT_S = 0.5
QUEUE_TIMEOUT_S = 0.4
MAX_QUEUE = 2

Writer = asyncio.StreamWriter
# A scenario: writes the answer to request `rid` (raw bytes).
Script = Callable[[Any, Writer], Awaitable[None]]


def answer(rid: Any, result: dict[str, Any], extra: bytes = b"") -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (len(body), extra, body))


def chunked(rid: Any, result: dict[str, Any], size_line: bytes = b"%x", trailer: bytes = b"") -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()
    half = len(body) // 2
    parts = b"".join(size_line % len(p) + b"\r\n" + p + b"\r\n" for p in (body[:half], body[half:]))
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + parts + b"0\r\n" + trailer + b"\r\n")


def sse_whole(rid: Any, result: dict[str, Any], extra: bytes = b"") -> bytes:
    """An SSE answer arriving whole in one write: head, one message event, the chunked body's end."""
    event = b"event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode() + b"\n\n"
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(event) + event + b"\r\n0\r\n\r\n" + extra)


def reset(writer: Writer) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- the scenarios ----------------------------------------------------------------------------

async def idle_408(rid: Any, w: Writer) -> None:
    w.write(answer(rid, {"own": True}))
    await w.drain()
    await asyncio.sleep(0.1)  # the proxy has pooled the connection: an answer nobody asked for
    w.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")


async def extra_same_read(rid: Any, w: Writer) -> None:
    w.write(answer(rid, {"own": True}) + b'{"smuggled":true}')


async def sse_in_one_write(rid: Any, w: Writer) -> None:
    w.write(sse_whole(rid, {"own": True}))


async def sse_then_extra(rid: Any, w: Writer) -> None:
    w.write(sse_whole(rid, {"own": True}, extra=answer(rid, {"smuggled": True})))


async def pipelined(rid: Any, w: Writer) -> None:
    w.write(answer(rid, {"own": True}) + answer(rid, {"smuggled": True}))


async def extra_later_read(rid: Any, w: Writer) -> None:
    w.write(answer(rid, {"own": True}))
    await w.drain()
    await asyncio.sleep(0.05)
    w.write(answer(rid + 1000, {"smuggled": True}))


async def huge_header(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-huge: ")
    for _ in range(256):  # 16 MiB
        w.write(b"v" * 65536)
        await w.drain()


async def trailers(rid: Any, w: Writer) -> None:
    w.write(chunked(rid, {"own": True}, trailer=b"x-trailer: secret\r\nset-cookie: t=1\r\n"))


async def chunk_extensions(rid: Any, w: Writer) -> None:
    w.write(chunked(rid, {"own": True}, size_line=b'%x;name=value;q="a b"'))


async def close_delimited(rid: Any, w: Writer) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"own": True}}).encode()
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body[:10])
    await w.drain()
    await asyncio.sleep(0.05)
    w.write(body[10:])
    await w.drain()
    w.close()


async def rst_mid_body(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"jsonrpc\":")
    await w.drain()
    await asyncio.sleep(0.05)
    reset(w)


async def interim(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
    await w.drain()
    await asyncio.sleep(0.05)
    w.write(answer(rid, {"own": True}))


async def processing_102(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 102 Processing\r\n\r\n" + answer(rid, {"own": True}))


async def upgrade_101(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
            b"\x81\x05hello")


async def redirect_self(rid: Any, w: Writer) -> None:
    port = w.get_extra_info("sockname")[1]
    w.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:%d/mcp\r\ncontent-length: 0\r\n\r\n"
            % port)


async def redirect_elsewhere(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://upstream.internal:9/admin\r\n"
            b"content-length: 0\r\n\r\n")


async def no_content_with_body(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 17\r\n\r\n" + b'{"smuggled":true}')


async def not_modified_with_body(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 304 Not Modified\r\netag: \"v\"\r\n\r\n" + answer(rid, {"smuggled": True}))


async def stalled(rid: Any, w: Writer) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\":")
    await w.drain()
    await asyncio.sleep(10)


async def slow(rid: Any, w: Writer, delay: float) -> None:
    await asyncio.sleep(delay)
    w.write(answer(rid, {"own": True}))


async def abort_after_answer(rid: Any, w: Writer) -> None:
    """TLS: the answer, then the TCP connection ends without a TLS close_notify."""
    w.write(answer(rid, {"own": True}))
    await w.drain()
    w.transport.abort()


async def abort_close_delimited(rid: Any, w: Writer) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"own": True}}).encode()
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body)
    await w.drain()
    w.transport.abort()


# Scenarios after which the connection may be reused: their framing is legitimate.
REUSABLE = frozenset({"trailers", "chunk_extensions", "interim", "sse_in_one_write"})
SCRIPTS: dict[str, Script] = {s.__name__: s for s in (
    idle_408, extra_same_read, sse_in_one_write, sse_then_extra, pipelined, extra_later_read, huge_header,
    trailers, chunk_extensions, close_delimited, rst_mid_body, interim, processing_102, upgrade_101,
    redirect_self, redirect_elsewhere, no_content_with_body, not_modified_with_body, stalled, abort_after_answer,
    abort_close_delimited)}


# --- the upstream -----------------------------------------------------------------------------

class RawUpstream(ThreadedServer):
    """The scripted upstream in a thread; records connections (open now, at most, hung up by the proxy)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls)
        self.count = 0
        self.max_open = 0
        self._live: set[tuple[asyncio.StreamReader, Writer]] = set()
        self.hung_up: set[int] = set()
        self.tainted: list[int] = []  # connections a scenario made untrustworthy
        self.methods: list[str] = []
        self.ids: list[Any] = []  # JSON-RPC ids of the requests received

    @property
    def open(self) -> int:
        """Connections the proxy has not closed (a script may still be sleeping on a closed one)."""
        return sum(1 for r, w in self._live if not (r.at_eof() or w.transport.is_closing() or r.exception()))

    def reset_max(self) -> None:
        self.max_open = self.open

    async def handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.count += 1
        index, tainted = self.count, False
        self._live.add((reader, writer))
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    self.hung_up.add(index)
                    return
                lines = head.decode("latin-1").split("\r\n")
                self.methods.append(lines[0].split(" ")[0])
                headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                rid = json.loads(body).get("id") if body else None
                self.ids.append(rid)
                scenario = headers.get("x-scenario", "")
                if tainted:
                    writer.write(answer(rid, {"reused": True}))
                elif scenario.startswith("slow_"):
                    await slow(rid, writer, float(scenario[5:]))
                elif scenario:
                    if scenario not in REUSABLE:
                        tainted = True
                        self.tainted.append(index)
                    await SCRIPTS[scenario](rid, writer)
                else:
                    writer.write(answer(rid, {"conn": index}))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            self._live.discard((reader, writer))
            with contextlib.suppress(Exception):
                writer.close()


# --- fixtures and helpers ---------------------------------------------------------------------

def _config() -> dict[str, Any]:
    return {"upstream": {"timeout_s": 5, "read_timeout_s": READ_TIMEOUT_S, "max_connections": MAX_CONNECTIONS,
                         "queue_timeout_s": QUEUE_TIMEOUT_S, "max_queue": MAX_QUEUE}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    started = RawUpstream().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def proxy(upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    started = start_proxy(tmp_path_factory.mktemp("hostile-upstream"), upstream.base, _config())
    yield started
    started.stop()


def ping(rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "ping"}


async def call(http: httpx.AsyncClient, proxy: Proxy, rid: int, scenario: str = "",
               method: str = "POST") -> httpx.Response:
    headers = {**HEADERS, "x-scenario": scenario} if scenario else HEADERS
    if method == "POST":
        return await http.post(proxy.url, json=ping(rid), headers=headers)
    return await http.request(method, proxy.url, headers=headers)


async def next_request_works(http: httpx.AsyncClient, proxy: Proxy, upstream: RawUpstream, rid: int = 99) -> None:
    """A plain request after the scenario gets its own answer, on a connection that was not tainted."""
    r = await call(http, proxy, rid)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid and set(r.json()["result"]) == {"conn"}, r.text


def error_of(r: httpx.Response, rid: int | None) -> str:
    body = r.json()
    assert body["id"] == rid and body["error"]["code"] == -32603, body
    return str(body["error"]["message"])


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --- bytes nobody asked for -------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["idle_408", "extra_same_read", "pipelined", "extra_later_read"])
async def test_bytes_nobody_asked_for_reach_no_client_and_close_the_connection(upstream, proxy, scenario):
    async with httpx.AsyncClient(timeout=10) as http:
        await next_request_works(http, proxy, upstream, rid=0)  # a pooled connection to misuse
        r = await call(http, proxy, 1, scenario)
        assert r.status_code == 200 and r.json() == {"jsonrpc": "2.0", "id": 1, "result": {"own": True}}
        tainted = upstream.tainted[-1]
        await asyncio.sleep(0.3)  # whatever comes unasked has arrived
        # Sequential clients each get their own answer: nothing is shifted by one.
        for rid in (2, 3):
            await next_request_works(http, proxy, upstream, rid)
        assert await eventually(lambda: tainted in upstream.hung_up)


@pytest.mark.parametrize(("scenario", "method", "status"), [
    ("no_content_with_body", "POST", 204), ("not_modified_with_body", "GET", 304)])
async def test_answers_without_a_body_relay_no_stray_bytes(upstream, proxy, scenario, method, status):
    async with httpx.AsyncClient(timeout=10) as http:
        r = await call(http, proxy, 1, scenario, method)
        assert r.status_code == status and r.content == b""
        await asyncio.sleep(0.1)
        await next_request_works(http, proxy, upstream)


async def test_head_is_answered_by_the_proxy_and_never_sent(upstream, proxy):
    async with httpx.AsyncClient(timeout=10) as http:
        before = len(upstream.methods)
        r = await call(http, proxy, 1, method="HEAD")
        assert r.status_code == 405
        await next_request_works(http, proxy, upstream)
    assert "HEAD" not in upstream.methods[before:]


# --- framing the proxy reads as intended ------------------------------------------------------

@pytest.mark.parametrize("scenario", ["trailers", "chunk_extensions", "close_delimited", "interim"])
async def test_legitimate_framing_is_read_whole(upstream, proxy, scenario):
    async with httpx.AsyncClient(timeout=10) as http:
        r = await call(http, proxy, 1, scenario)
        assert r.status_code == 200 and r.json() == {"jsonrpc": "2.0", "id": 1, "result": {"own": True}}
        # trailers are not response headers: never relayed
        assert "x-trailer" not in r.headers and "set-cookie" not in r.headers and "link" not in r.headers
        await next_request_works(http, proxy, upstream)


# --- answers refused ----------------------------------------------------------------------------

@pytest.mark.parametrize(("scenario", "status", "message"), [
    ("huge_header", 502, "Upstream response headers are too large"),
    ("upgrade_101", 502, "Upstream answered with HTTP 101"),
    ("processing_102", 502, "Upstream answered with HTTP 102"),
    ("redirect_self", 502, "Upstream answered with a redirect (HTTP 307)"),
    ("redirect_elsewhere", 502, "Upstream answered with a redirect (HTTP 307)"),
    ("rst_mid_body", 502, "Upstream closed the connection"),
])
async def test_unusable_answers_are_json_rpc_errors_and_the_next_request_works(upstream, proxy, scenario, status,
                                                                               message):
    async with httpx.AsyncClient(timeout=10) as http:
        start = time.monotonic()
        r = await call(http, proxy, 1, scenario)
        assert r.status_code == status and error_of(r, 1).startswith(message)
        assert "location" not in r.headers and "upstream.internal" not in r.text
        assert time.monotonic() - start < 3
        await next_request_works(http, proxy, upstream)


async def test_a_stalled_body_is_504_after_read_timeout(upstream, proxy):
    async with httpx.AsyncClient(timeout=10) as http:
        start = time.monotonic()
        r = await call(http, proxy, 1, "stalled")
        elapsed = time.monotonic() - start
        assert r.status_code == 504 and error_of(r, 1) == f"Upstream timed out: no data for {READ_TIMEOUT_S:g} s"
        assert READ_TIMEOUT_S * 0.9 < elapsed < READ_TIMEOUT_S + 1.5
        await next_request_works(http, proxy, upstream)


# --- the connection cap -----------------------------------------------------------------------

async def test_concurrency_above_max_connections_waits_for_a_connection(upstream, proxy):
    await asyncio.sleep(0.2)
    upstream.reset_max()
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as http:
        # 6 requests of 0.1 s on 4 connections: 2 wait less than queue_timeout_s, all are answered
        rs = await asyncio.gather(*(call(http, proxy, i, "slow_0.1") for i in range(MAX_CONNECTIONS + MAX_QUEUE)))
    assert [r.status_code for r in rs] == [200] * (MAX_CONNECTIONS + MAX_QUEUE)
    assert [r.json()["id"] for r in rs] == list(range(MAX_CONNECTIONS + MAX_QUEUE))
    assert upstream.max_open <= MAX_CONNECTIONS


async def test_waiting_too_long_or_in_a_full_queue_is_503_with_retry_after(upstream, proxy):
    await asyncio.sleep(0.2)
    upstream.reset_max()
    n = MAX_CONNECTIONS + MAX_QUEUE + 2
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as http:
        start = time.monotonic()
        rs = await asyncio.gather(*(call(http, proxy, i, "slow_1.0") for i in range(n)))
        assert time.monotonic() - start < 3
        metrics = (await http.get(f"{proxy.base}/metrics")).text
        await next_request_works(http, proxy, upstream)
    statuses = sorted(r.status_code for r in rs)
    assert statuses == [200] * MAX_CONNECTIONS + [503] * (n - MAX_CONNECTIONS)
    for r in rs:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert error_of(r, r.json()["id"]) == "Upstream connection limit reached"
    assert upstream.max_open <= MAX_CONNECTIONS
    assert 'mcp_proxy_limit_rejections_total{limit="upstream.max_connections"}' in metrics


async def test_a_request_whose_client_left_while_queued_is_never_sent(upstream, proxy_for):
    # One connection, and a queue that would keep the leaver long after it left.
    proxy = proxy_for(upstream.base, {"upstream": {"max_connections": 1, "queue_timeout_s": 10}})
    async with httpx.AsyncClient(timeout=10) as http:
        await next_request_works(http, proxy, upstream)
        busy = asyncio.ensure_future(call(http, proxy, 700, "slow_1.0"))
        await asyncio.sleep(0.2)  # the connection is taken
        async with httpx.AsyncClient(timeout=0.3) as leaver:
            with pytest.raises(httpx.TimeoutException):
                await call(leaver, proxy, 777)  # queued, then gone
        assert (await busy).status_code == 200
        start = time.monotonic()
        await next_request_works(http, proxy, upstream)
        assert time.monotonic() - start < 0.5  # no ghost ahead of it in the queue
    assert 777 not in upstream.ids


# --- TLS without close_notify -----------------------------------------------------------------

def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_without_close_notify(tmp_path, proxy_for):
    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    upstream = RawUpstream(tls).start()
    try:
        # The proxy trusts the test's certificate through SSL_CERT_FILE (ssl.create_default_context).
        proxy = proxy_for(upstream.base, _config(), env={"SSL_CERT_FILE": str(cert)})
        async with httpx.AsyncClient(timeout=10) as http:
            await next_request_works(http, proxy, upstream, rid=1)
            for scenario in ("abort_after_answer", "abort_close_delimited"):
                # A framed answer is whole before the TCP end; a close-delimited one ends there, as
                # for every TLS client that accepts a missing close_notify (docs/transports.md).
                r = await call(http, proxy, 2, scenario)
                assert r.status_code == 200 and r.json()["result"] == {"own": True}, r.text
                await asyncio.sleep(0.05)
                await next_request_works(http, proxy, upstream)
    finally:
        upstream.stop()


# --- an SSE answer that arrives whole (its last event goes out with the end of the body) ------

def _sse_message(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = [block for block in r.text.split("\n\n") if block]
    assert len(events) == 1 and events[0].startswith("event: message\ndata: "), r.text
    return json.loads(events[0].split("data: ", 1)[1])


async def test_an_sse_answer_in_one_write_reaches_the_client_and_its_connection_is_reused(upstream, proxy_for):
    # One upstream connection at most: a connection given up after the SSE answer would show as a new one.
    proxy = proxy_for(upstream.base, {"upstream": {**_config()["upstream"], "max_connections": 1}})
    async with httpx.AsyncClient(timeout=10) as http:
        first = await call(http, proxy, 1)
        conn = first.json()["result"]["conn"]
        for rid in (2, 3):
            assert _sse_message(await call(http, proxy, rid, "sse_in_one_write")) == \
                {"jsonrpc": "2.0", "id": rid, "result": {"own": True}}
        last = await call(http, proxy, 4)
        assert last.json() == {"jsonrpc": "2.0", "id": 4, "result": {"conn": conn}}, last.text
        assert conn not in upstream.hung_up


async def test_bytes_after_an_sse_answer_in_one_write_reach_no_client_and_close_the_connection(upstream, proxy):
    async with httpx.AsyncClient(timeout=10) as http:
        await next_request_works(http, proxy, upstream, rid=0)
        assert _sse_message(await call(http, proxy, 1, "sse_then_extra")) == \
            {"jsonrpc": "2.0", "id": 1, "result": {"own": True}}
        tainted = upstream.tainted[-1]
        for rid in (2, 3):
            await next_request_works(http, proxy, upstream, rid)
        assert await eventually(lambda: tainted in upstream.hung_up)
