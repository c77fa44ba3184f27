"""The proxy's HTTP/1.1 upstream client against scripted HTTP servers on loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable

import pytest

from proxy.config import Upstream
from proxy.protocol.content_coding import SLICE_BYTES
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
