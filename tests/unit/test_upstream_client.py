"""The proxy's HTTP/1.1 upstream client against scripted HTTP servers on loopback sockets."""

from __future__ import annotations

import asyncio
import gc
import gzip
import re
import socket
import struct
import time
import zlib
from collections.abc import Awaitable, Callable

import pytest

from proxy.config import ConfigError, Upstream, parse
from proxy.protocol.content_coding import SLICE_BYTES
from proxy.protocol.headers import client_response_headers, redirect
from proxy.protocol.urls import UrlError, normalize_url
from proxy.transport.upstream import UpstreamClient, UpstreamError

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, str, list[int]]:
    """A TCP server running `script` per connection; returns it, its URL and a connection counter."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/mcp", connections


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def client(**overrides: float) -> UpstreamClient:
    return UpstreamClient(Upstream(url="http://unused/mcp", **overrides))  # type: ignore[arg-type]


async def test_request_bytes_and_keep_alive_reuse():
    heads: list[bytes] = []

    async def script(reader, writer):
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            heads.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")

    server, url, conns = await serve(script)
    c = client()
    for _ in range(3):
        resp = await c.send("POST", url, {"content-type": "application/json", "x-a": "1"}, b'{"x":1}')
        assert (resp.status, resp.content_type) == (200, "application/json")
        assert await resp.read(100, 5) == b"{}"
    assert len(conns) == 1
    port = url.split(":")[2].split("/")[0]
    assert heads[0] == (f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                        'x-a: 1\r\ncontent-length: 7\r\n\r\n{"x":1}').encode()
    await c.close()
    server.close()


async def test_chunked_stream_arrives_chunk_by_chunk():
    release = asyncio.Event()

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"8\r\ndata: 1\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
        await writer.drain()

    server, url, _ = await serve(script)
    c = client()
    resp = await c.send("GET", url, {})
    chunks = resp.chunks()
    assert await anext(chunks) == b"data: 1\n"  # before the server sent the rest
    release.set()
    assert [chunk async for chunk in chunks] == [b"data: 2\n"]
    await c.close()
    server.close()


async def test_body_delimited_by_connection_close():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":")
        await writer.drain()
        writer.write(b"1}")

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    assert await resp.read(100, 5) == b'{"a":1}'
    server.close()


async def test_interim_1xx_responses_are_skipped():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
                     b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    assert resp.status == 202 and resp.headers == [("content-length", "0")]
    server.close()


@pytest.mark.parametrize(("response", "status"), [
    (b"garbage\r\n\r\n", 502),
    (b"", 502),  # closed without answering
    (None, 504),  # never answers
])
async def test_broken_or_silent_upstreams(response, status):
    async def script(reader, writer):
        await read_request(reader)
        if response is None:
            await asyncio.sleep(5)
        writer.write(response or b"")

    server, url, _ = await serve(script)
    with pytest.raises(UpstreamError) as err:
        await client(timeout_s=0.3).send("POST", url, {}, b"{}")
    assert err.value.status == status
    server.close()


async def test_unreachable_upstream_is_502():
    server, url, _ = await serve(read_request)  # type: ignore[arg-type]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError) as err:
        await client().send("POST", url, {}, b"{}")
    assert err.value.status == 502 and "unreachable" in err.value.message


async def test_truncated_body_is_an_error():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    with pytest.raises(UpstreamError):
        await resp.read(100, 5)
    server.close()


async def test_stale_idle_connection_is_replaced():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # ... and the server drops the kept-alive connection right after

    server, url, conns = await serve(script)
    c = client()
    for method in ("GET", "POST", "DELETE"):
        resp = await c.send(method, url, {}, b"{}" if method == "POST" else None)
        assert await resp.read(10, 5) == b"ok"
        await asyncio.sleep(0.05)  # the close reaches the pooled connection
    assert len(conns) == 3
    server.close()


async def test_idle_connections_expire_before_the_server_keepalive():
    async def script(reader, writer):
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    server, url, conns = await serve(script)
    c = client(keepalive_s=0.1)
    await (await c.send("POST", url, {}, b"{}")).read(10, 5)
    await asyncio.sleep(0.2)
    await (await c.send("POST", url, {}, b"{}")).read(10, 5)
    assert len(conns) == 2
    server.close()


async def test_consumer_leaving_early_closes_the_connection():
    closed = asyncio.Event()

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        assert await reader.read() == b""  # EOF: the proxy hung up
        closed.set()

    server, url, _ = await serve(script)
    resp = await client().send("GET", url, {})
    chunks = resp.chunks()
    assert await anext(chunks) == b"one"
    await chunks.aclose()
    await asyncio.wait_for(closed.wait(), 2)
    server.close()


async def test_large_bodies_are_read_with_backpressure():
    payload = b"x" * (5 * 1024 * 1024)

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()

    server, url, _ = await serve(script)
    resp = await client().send("GET", url, {})
    received = bytearray()
    async for chunk in resp.chunks():
        received += chunk
        await asyncio.sleep(0)
    assert received == payload
    server.close()


# --- encoded answers: decoded before anyone reads them, or refused ---

def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def compressor(wbits: int = 16 + zlib.MAX_WBITS) -> zlib._Compress:
    return zlib.compressobj(6, zlib.DEFLATED, wbits)


async def test_gzip_json_body_with_content_length_is_decoded():
    body = b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + b"x" * 3000 + b'"}}'
    encoded = gzip.compress(body)

    async def script(reader, writer):
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                         b'content-length: %d\r\netag: "v1"\r\naccept-ranges: bytes\r\nmcp-session-id: s\r\n\r\n'
                         % len(encoded) + encoded)

    server, url, conns = await serve(script)
    c = client()
    for _ in range(2):
        resp = await c.send("POST", url, {}, b"{}")
        # nothing describing the encoded bytes is left for the relay (it reads content-length)
        assert resp.headers == [("content-type", "application/json"), ("etag", 'W/"v1"'), ("mcp-session-id", "s")]
        assert resp.content_type == "application/json"
        assert await resp.read(len(body), 5) == body  # the limit applies to the decoded body
    assert len(conns) == 1  # a decoded exchange leaves the connection reusable
    await c.close()
    server.close()


async def test_gzip_chunked_sse_stream_is_decoded_as_it_arrives():
    release = asyncio.Event()
    z = compressor()
    first = z.compress(b"event: message\ndata: 1\n\n") + z.flush(zlib.Z_SYNC_FLUSH)
    rest = z.compress(b"data: 2\n\n") + z.flush()

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: x-gzip\r\n"
                     b"transfer-encoding: chunked\r\n\r\n" + chunk(first[:5]) + chunk(first[5:]))
        await writer.drain()
        await release.wait()
        writer.write(chunk(rest) + b"0\r\n\r\n")
        await writer.drain()

    server, url, _ = await serve(script)
    resp = await client().send("GET", url, {})
    assert resp.content_type == "text/event-stream"
    assert resp.headers == [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
    chunks = resp.chunks()
    assert await anext(chunks) == b"event: message\ndata: 1\n\n"  # before the server sent the rest
    release.set()
    assert b"".join([c async for c in chunks]) == b"data: 2\n\n"
    server.close()


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_deflate_bodies_are_decoded(wbits):
    z = compressor(wbits)
    encoded = z.compress(b'{"a":1}') + z.flush()

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Encoding: Deflate\r\n\r\n")
        await writer.drain()
        writer.write(encoded)  # delimited by the end of the connection

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    assert resp.headers == [("content-type", "application/json")]
    assert await resp.read(100, 5) == b'{"a":1}'
    server.close()


async def test_identity_is_untouched():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: identity\r\ncontent-length: 2\r\n\r\nok")

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    assert resp.headers == [("content-encoding", "identity"), ("content-length", "2")]
    assert await resp.read(10, 5) == b"ok"
    server.close()


@pytest.mark.parametrize(("coding", "message"), [
    (b"br", "Upstream answered with an unsupported Content-Encoding: br"),
    (b"zstd", "Upstream answered with an unsupported Content-Encoding: zstd"),
    (b"gzip, gzip", "Upstream answered with an unsupported Content-Encoding: gzip, gzip (stacked codings)"),
])
async def test_unsupported_content_encoding_is_502(coding, message):
    hung_up = asyncio.Event()

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: %s\r\n"
                     b"content-length: 4\r\n\r\n\x0b\x01\x80{" % coding)
        await writer.drain()
        assert await reader.read() == b""  # the proxy closed the connection instead of pooling it
        hung_up.set()

    server, url, _ = await serve(script)
    with pytest.raises(UpstreamError) as err:
        await client().send("POST", url, {}, b"{}")
    assert (err.value.status, err.value.message) == (502, message)
    await asyncio.wait_for(hung_up.wait(), 2)
    server.close()


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_answers_without_a_body_need_no_decoding(status):
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 %s\r\ncontent-encoding: br\r\netag: \"v\"\r\n\r\n" % status)

    server, url, _ = await serve(script)
    resp = await client().send("GET", url, {})
    assert resp.headers == [("content-encoding", "br"), ("etag", '"v"')]  # relay.py drops Content-Encoding
    assert await resp.read(10, 5) == b""
    server.close()


async def test_empty_gzip_body_is_an_empty_body():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-encoding: gzip\r\ncontent-length: 0\r\n\r\n")

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    assert (resp.status, resp.headers) == (202, [])
    assert await resp.read(10, 5) == b""
    server.close()


async def test_corrupt_gzip_mid_body_is_an_error_after_the_first_part():
    z = compressor()
    first = z.compress(b"data: 1\n\n") + z.flush(zlib.Z_SYNC_FLUSH)

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
                     b"transfer-encoding: chunked\r\n\r\n" + chunk(first))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(b"\xff" * 16) + b"0\r\n\r\n")  # BTYPE 11: not a deflate block

    server, url, _ = await serve(script)
    resp = await client().send("GET", url, {})
    chunks = resp.chunks()
    assert await anext(chunks) == b"data: 1\n\n"
    with pytest.raises(UpstreamError) as err:
        await anext(chunks)
    assert err.value.status == 502 and err.value.message.startswith("Invalid upstream response body: corrupt gzip")
    server.close()


async def test_gzip_body_cut_short_is_an_error():
    encoded = gzip.compress(b'{"a":1}')

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(encoded) - 4, encoded[:-4]))  # framed correctly, but the gzip trailer is missing

    server, url, _ = await serve(script)
    resp = await client().send("POST", url, {}, b"{}")
    with pytest.raises(UpstreamError) as err:
        await resp.read(100, 5)
    assert err.value.status == 502 and "truncated gzip" in err.value.message
    server.close()


async def test_a_gzip_bomb_stops_at_the_read_limit_and_streams_in_slices():
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = z.compress(bytes(1 << 20)) + z.flush(zlib.Z_FULL_FLUSH)
    bomb = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * 256  # 256 MiB of zeros, never finished

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(bomb) + bomb)
        await writer.drain()

    server, url, _ = await serve(script)
    c = client()
    resp = await c.send("POST", url, {}, b"{}")
    with pytest.raises(UpstreamError) as err:
        await resp.read(1 << 20, 5)
    assert err.value.message == "Upstream response body is too large"
    resp = await c.send("GET", url, {})
    chunks = resp.chunks()
    sizes = [len(await anext(chunks)) for _ in range(64)]
    assert max(sizes) == SLICE_BYTES
    await chunks.aclose()
    server.close()



# --- connection integrity: bytes nobody asked for close the connection and reach no one ---

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n"
FIRST = ANSWER + b'{"n":1}'


class Scripted:
    """A server script: connection 1 answers its first request with the raw bytes `first` (then
    runs `then`); a later request on connection 1 (it must never come: that connection is not to be
    reused) gets `{"n":0}`; other connections answer `{"n":2}`. `eof`: connections the client hung up."""

    def __init__(self, first: bytes, then: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None,
                 delay: float = 0.0) -> None:
        self.first, self.then, self.delay = first, then, delay
        self.count = 0
        self.open = self.max_open = 0
        self.eof: set[int] = set()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        index, answered = self.count, 0
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                try:
                    await read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eof.add(index)
                    return
                await asyncio.sleep(self.delay)
                if index == 1 and not answered:
                    writer.write(self.first)
                    await writer.drain()
                    if self.then is not None:
                        await self.then(writer)
                else:
                    writer.write(ANSWER + (b'{"n":0}' if index == 1 else b'{"n":2}'))
                answered += 1
        except ConnectionError:
            pass
        finally:
            self.open -= 1


async def later(data: bytes, delay: float = 0.05) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def then(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        writer.write(data)
    return then


async def exchange(c: UpstreamClient, url: str) -> bytes:
    return await (await c.send("POST", url, {}, b"{}")).read(1000, 5)


async def test_an_unrequested_answer_on_an_idle_connection_closes_it():
    script = Scripted(FIRST, await later(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n"))
    server, url, conns = await serve(script)
    c = client()
    assert await exchange(c, url) == b'{"n":1}'
    await asyncio.sleep(0.2)  # the 408 arrives on the idle connection
    assert await exchange(c, url) == b'{"n":2}'  # its own answer, not the 408
    assert len(conns) == 2 and 1 in script.eof
    server.close()


@pytest.mark.parametrize("extra", [
    b'{"smuggled":true}',
    ANSWER + b'{"n":9}',  # a whole second answer, pipelined
    b"\r\n" + ANSWER + b'{"n":9}',
    b"HTTP/1.1 408 Request Timeout\r\n",  # a partial head: no callback but the message's beginning
], ids=["bytes", "second-answer", "crlf-second-answer", "partial-head"])
async def test_bytes_after_the_answer_in_the_same_read_close_the_connection(extra):
    script = Scripted(FIRST + extra)
    server, url, conns = await serve(script)
    c = client()
    assert await exchange(c, url) == b'{"n":1}'
    assert await exchange(c, url) == b'{"n":2}'
    assert len(conns) == 2
    await asyncio.sleep(0.05)
    assert 1 in script.eof
    server.close()


async def test_bytes_after_the_answer_in_a_later_read_before_it_was_consumed():
    script = Scripted(FIRST, await later(b'{"smuggled":true}'))
    server, url, conns = await serve(script)
    c = client()
    chunks = (await c.send("GET", url, {})).chunks()
    assert await anext(chunks) == b'{"n":1}'
    await asyncio.sleep(0.2)  # the message is complete, the consumer has not seen its end yet
    assert [chunk async for chunk in chunks] == []
    assert await exchange(c, url) == b'{"n":2}'
    assert len(conns) == 2
    server.close()


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_bodies_of_answers_that_have_none_close_the_connection(status):
    script = Scripted(b"HTTP/1.1 %s\r\ncontent-length: 5\r\n\r\nhello" % status)
    server, url, conns = await serve(script)
    c = client()
    resp = await c.send("GET", url, {})
    assert resp.status == int(status[:3]) and await resp.read(100, 5) == b""
    assert await exchange(c, url) == b'{"n":2}'
    assert len(conns) == 2
    server.close()


async def test_head_is_never_sent():
    script = Scripted(FIRST)
    server, url, conns = await serve(script)
    with pytest.raises(UpstreamError) as err:
        await client().send("HEAD", url, {})
    assert err.value.status == 502 and conns == []
    server.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n" + FIRST,
    b"HTTP/1.1 199 Whatever\r\n\r\n" + FIRST,
    b"HTTP/1.1 600 Beyond\r\ncontent-length: 0\r\n\r\n",
], ids=["101-upgrade", "101", "102", "199", "600"])
async def test_unexpected_statuses_are_502_and_close_the_connection(head):
    script = Scripted(head + b"garbage after the switch")
    server, url, _ = await serve(script)
    c = client()
    with pytest.raises(UpstreamError) as err:
        await c.send("POST", url, {}, b"{}")
    assert err.value.status == 502 and "Upstream answered with" in err.value.message
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


async def test_interim_100_and_103_answers_are_skipped():
    script = Scripted(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
                      b"HTTP/1.1 103 Early Hints\r\nlink: </b>\r\n\r\n" + FIRST)
    server, url, conns = await serve(script)
    c = client()
    resp = await c.send("POST", url, {}, b"{}")
    assert resp.status == 200 and ("link", "</a>") not in resp.headers
    assert await resp.read(100, 5) == b'{"n":1}'
    assert await exchange(c, url) == b'{"n":0}'  # a clean exchange: the connection is reused
    assert len(conns) == 1
    server.close()


# --- limits: headers, silence ---

async def test_a_header_block_over_max_header_bytes_is_502():
    script = Scripted(b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * 1100 + b"\r\ncontent-length: 0\r\n\r\n")
    server, url, _ = await serve(script)
    c = client(max_header_bytes=1024)
    with pytest.raises(UpstreamError) as err:
        await c.send("POST", url, {}, b"{}")
    assert (err.value.status, err.value.message) == (502, "Upstream response headers are too large")
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


async def test_headers_up_to_max_header_bytes_pass():
    value = b"v" * (1024 - len("x-big") - len("content-type") - len("application/json") - len("content-length") - 1)
    script = Scripted(b"HTTP/1.1 200 OK\r\nx-big: " + value + b"\r\n" + ANSWER.split(b"\r\n", 1)[1] + b'{"n":1}')
    server, url, _ = await serve(script)
    assert await exchange(client(max_header_bytes=1024), url) == b'{"n":1}'
    server.close()


async def test_a_16_mib_header_is_refused_without_buffering_it():
    async def huge(writer: asyncio.StreamWriter) -> None:
        for _ in range(256):
            writer.write(b"v" * 65536)
            await writer.drain()

    script = Scripted(b"HTTP/1.1 200 OK\r\nx-huge: ", huge)
    server, url, _ = await serve(script)
    c = client()
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        await c.send("POST", url, {}, b"{}")
    assert err.value.message == "Upstream response headers are too large"
    assert time.monotonic() - start < 2
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


async def test_many_tiny_header_fields_meet_the_raw_bound():
    script = Scripted(b"HTTP/1.1 200 OK\r\n" + b"a:\r\n" * 2000 + b"content-length: 0\r\n\r\n")
    server, url, _ = await serve(script)
    with pytest.raises(UpstreamError) as err:
        await client(max_header_bytes=1024).send("POST", url, {}, b"{}")
    assert err.value.message == "Upstream response headers are too large"
    server.close()


async def test_trailers_are_kept_apart_and_chunk_extensions_ignored():
    script = Scripted(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                      b'4;ext=1;q="a b"\r\n{"n"\r\n3\r\n:1}\r\n0;last\r\n'
                      b"x-trailer: t\r\ncontent-type: text/html\r\n\r\n")
    server, url, conns = await serve(script)
    c = client()
    resp = await c.send("POST", url, {}, b"{}")
    assert await resp.read(100, 5) == b'{"n":1}'
    assert resp.headers == [("content-type", "application/json"), ("transfer-encoding", "chunked")]
    assert await exchange(c, url) == b'{"n":0}'  # trailers are legitimate: the connection is reused
    assert len(conns) == 1
    server.close()


async def test_a_body_that_falls_silent_is_504_after_read_timeout():
    script = Scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", await later(b"", 5))
    server, url, _ = await serve(script)
    c = client(read_timeout_s=0.3)
    resp = await c.send("POST", url, {}, b"{}")
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        await resp.read(100, 10)
    assert (err.value.status, err.value.message) == (504, "Upstream timed out: no data for 0.3 s")
    assert 0.25 < time.monotonic() - start < 1.5
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


async def test_a_slow_but_steady_body_is_read_whole():
    async def drip(writer: asyncio.StreamWriter) -> None:
        for byte in b"012345":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))

    script = Scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n", drip)
    server, url, _ = await serve(script)
    resp = await client(read_timeout_s=0.3).send("POST", url, {}, b"{}")
    assert await resp.read(100, 10) == b"012345"  # 0.6 s in all, never 0.3 s of silence
    server.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"],
                         ids=["length", "close-delimited"])
async def test_a_reset_mid_body_is_an_error(head):
    async def rst(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        _reset(writer)

    script = Scripted(head + b'{"partial":', rst)
    server, url, _ = await serve(script)
    c = client()
    resp = await c.send("POST", url, {}, b"{}")
    with pytest.raises(UpstreamError) as err:
        await resp.read(1000, 5)
    assert err.value.status == 502
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


async def test_upstream_sockets_have_tcp_keepalive():
    script = Scripted(FIRST)
    server, url, _ = await serve(script)
    c = client()
    await exchange(c, url)
    (pool,) = c._pools.values()
    sock = pool.idle[0].transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    await c.close()
    server.close()


# --- the connection cap and its queue ---

async def test_max_connections_caps_open_connections_and_the_rest_wait():
    script = Scripted(FIRST, delay=0.1)
    server, url, conns = await serve(script)
    c = client(max_connections=2)
    answers = await asyncio.gather(*(exchange(c, url) for _ in range(6)))
    assert len(answers) == 6 and len(conns) == 2 and script.max_open == 2
    (pool,) = c._pools.values()
    assert (pool.open, len(pool.idle), len(pool.waiters)) == (2, 2, 0)
    await c.close()
    server.close()


async def test_waiting_longer_than_queue_timeout_is_503_with_retry_after():
    script = Scripted(FIRST, delay=0.4)
    server, url, _ = await serve(script)
    refused: list[int] = []
    c = UpstreamClient(Upstream(url="http://unused/mcp", max_connections=1, queue_timeout_s=0.2),
                       on_limit=lambda: refused.append(1))
    first = asyncio.ensure_future(exchange(c, url))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        await exchange(c, url)
    assert 0.15 < time.monotonic() - start < 0.5
    assert (err.value.status, err.value.message) == (503, "Upstream connection limit reached")
    assert err.value.headers == (("retry-after", "1"),) and refused == [1]
    assert await first == b'{"n":1}'
    assert await exchange(c, url) == b'{"n":0}'  # the slot was not lost
    server.close()


async def test_a_full_queue_is_503_at_once():
    script = Scripted(FIRST, delay=0.3)
    server, url, _ = await serve(script)
    c = client(max_connections=1, max_queue=1)
    running = [asyncio.ensure_future(exchange(c, url)) for _ in range(2)]  # one in use, one waiting
    await asyncio.sleep(0.05)
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        await exchange(c, url)
    assert err.value.status == 503 and time.monotonic() - start < 0.1
    assert await asyncio.gather(*running) == [b'{"n":1}', b'{"n":0}']
    server.close()


async def test_cancelled_waiters_leak_no_slot():
    script = Scripted(FIRST, delay=0.2)
    server, url, _ = await serve(script)
    c = client(max_connections=1)
    first = asyncio.ensure_future(exchange(c, url))
    await asyncio.sleep(0.05)
    waiters = [asyncio.ensure_future(exchange(c, url)) for _ in range(3)]
    await asyncio.sleep(0.05)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert await first == b'{"n":1}'
    assert await exchange(c, url) == b'{"n":0}'
    (pool,) = c._pools.values()
    assert (pool.open, len(pool.waiters)) == (1, 0)
    server.close()


async def test_a_waiter_cancelled_as_it_is_handed_the_connection_gives_it_back():
    script = Scripted(FIRST)
    server, url, _ = await serve(script)
    c = client(max_connections=1)
    resp = await c.send("POST", url, {}, b"{}")
    waiter = asyncio.ensure_future(exchange(c, url))
    await asyncio.sleep(0.01)
    await resp.read(100, 5)  # hands the connection to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await exchange(c, url) == b'{"n":0}'
    (pool,) = c._pools.values()
    assert (pool.open, len(pool.idle)) == (1, 1)
    server.close()


async def test_a_closed_connection_hands_its_slot_to_the_next_waiter():
    open_now = [0, 0]  # now, at most

    async def script(reader, writer):
        open_now[0] += 1
        open_now[1] = max(open_now)
        await read_request(reader)
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        open_now[0] -= 1

    server, url, conns = await serve(script)
    c = client(max_connections=1)
    assert await asyncio.gather(*(exchange(c, url) for _ in range(3))) == [b"ok"] * 3
    assert len(conns) == 3 and open_now[1] == 1
    server.close()


async def test_failed_connects_free_their_slots():
    server, url, _ = await serve(read_request)  # type: ignore[arg-type]
    server.close()
    await server.wait_closed()
    c = client(max_connections=1, queue_timeout_s=0.1)
    for _ in range(3):
        with pytest.raises(UpstreamError) as err:
            await c.send("POST", url, {}, b"{}")
        assert err.value.status == 502
    (pool,) = c._pools.values()
    assert pool.open == 0


async def test_an_answer_dropped_unread_frees_its_slot():
    script = Scripted(FIRST)
    server, url, _ = await serve(script)
    c = client(max_connections=1, queue_timeout_s=0.5)
    resp = await c.send("GET", url, {})
    resp.chunks()  # a stream that never started ...
    del resp  # ... and is dropped
    gc.collect()
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


# --- URLs, headers and redirects ---

def test_urls_are_percent_encoded_once():
    url = "http://h:8080/m\u00e4/%41?q=\u00fc&r=%25"
    once = normalize_url(url)
    assert once == "http://h:8080/m%C3%A4/%41?q=%C3%BC&r=%25"
    assert normalize_url(once) == once
    assert normalize_url("https://[::1]/a\"b<c>") == "https://[::1]/a%22b%3Cc%3E"


@pytest.mark.parametrize(("url", "why"), [
    ("http://user:pw@h/mcp", "credentials"),
    ("http://h/mcp#frag", "fragment"),
    ("http://h/mcp#", "fragment"),
    ("http://h/m cp", "spaces or control"),
    ("http://h/mcp\t", "spaces or control"),
    ("http://h/m\x00", "spaces or control"),
    ("http://h/m\x85", "spaces or control"),
    ("http://h:99999/mcp", "not a valid URL"),
    ("http://[::1/mcp", "not a valid URL"),
    ("http://[::zz]/mcp", "IPv6"),
    ("http://h\u00f6/mcp", "xn--"),
    ("http://h/%zz", "two hex digits"),
    ("ftp://h/mcp", "http(s) URL"),
    ("http:///mcp", "http(s) URL"),
])
def test_urls_that_cannot_be_sent_are_refused(url, why):
    with pytest.raises(UrlError, match=re.escape(why)):
        normalize_url(url)


@pytest.mark.parametrize("key", ["url", "sse_url"])
def test_config_refuses_unsendable_upstream_urls_naming_key_and_fix(key):
    secret = "http://user:s3cret@h/mcp"
    with pytest.raises(ConfigError) as err:
        parse({"upstream": {"url": "http://h/mcp", key: secret}}, "c.yaml")
    assert str(err.value).startswith(f"c.yaml: upstream.{key}: must not carry credentials")
    assert "s3cret" not in str(err.value)


def test_config_percent_encodes_upstream_urls():
    config = parse({"upstream": {"url": "http://h/\u00e4/mcp"}}, "c.yaml")
    assert config.upstream.url == "http://h/%C3%A4/mcp"
    assert config.upstream.sse_url == "http://h/%C3%A4/sse"


@pytest.mark.parametrize("url", ["http://h/\x00", "http://127.0.0.1:99999/mcp", "http://h/m cp", "mailto:x"])
async def test_a_url_that_cannot_be_sent_is_502_at_request_time(url):
    with pytest.raises(UpstreamError) as err:
        await client().send("POST", url, {}, b"{}")
    assert (err.value.status, err.value.message) == (502, "The upstream URL cannot be sent")


async def test_a_url_is_encoded_at_request_time_too():
    heads: list[bytes] = []

    async def script(reader, writer):
        heads.append((await read_request(reader))[0])
        writer.write(FIRST)

    server, url, _ = await serve(script)
    assert await exchange(client(), url.replace("/mcp", "/m\u00e4")) == b'{"n":1}'
    assert heads[0].startswith(b"POST /m%C3%A4 HTTP/1.1\r\n")
    server.close()


async def test_a_header_that_is_not_latin_1_is_502():
    with pytest.raises(UpstreamError) as err:
        await client().send("POST", "http://127.0.0.1:9/mcp", {"x-a": "\u2603"}, b"{}")
    assert err.value.status == 502


@pytest.mark.parametrize("status", [b"301 Moved", b"302 Found", b"307 Temporary Redirect", b"308 Permanent"])
async def test_redirects_are_refused(status):
    script = Scripted(b"HTTP/1.1 %s\r\nlocation: http://elsewhere/mcp\r\ncontent-length: 0\r\n\r\n" % status)
    server, url, _ = await serve(script)
    c = client()
    with pytest.raises(UpstreamError) as err:
        await c.send("POST", url, {}, b"{}")
    assert err.value.status == 502 and "redirect" in err.value.message
    assert "elsewhere" not in err.value.message
    assert await exchange(c, url) == b'{"n":2}'
    server.close()


def test_redirect_and_location_fields():
    assert redirect(307, [("location", "/x")]) and redirect(301, [("location", "http://up/mcp")])
    assert not redirect(304, [("etag", '"v"')]) and not redirect(200, [("location", "/x")])
    relayed = client_response_headers([("Location", "http://up/mcp"), ("content-location", "/a"), ("x-a", "1")])
    assert relayed == [(b"x-a", b"1")]
