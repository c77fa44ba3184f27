"""The proxy's HTTP/1.1 client to the upstream MCP server.

A small keep-alive client on asyncio protocols with httptools (llhttp) parsing responses: the
general-purpose clients spend most of the proxy's per-request budget (benchmarks/README.md has the
measurements: httpx ≈ 450 req/s, aiohttp ≈ 2,000 req/s inside this proxy at 32 connections), and
the proxy needs only one thing from a client: send one request, stream one response back.

The timeout bounds the wait for response headers (and for a JSON body read whole); an SSE stream,
once started, lives as long as both ends keep it open. A response body is buffered only up to a
high-water mark before the socket stops being read, so a slow client slows the upstream instead of
filling memory.

An encoded answer (`Content-Encoding: gzip`/`x-gzip`/`deflate`, though the proxy asks for
identity) is decoded as it is read, in bounded slices (proxy/protocol/content_coding.py), and its
headers no longer describe the encoded form; any other coding is refused (502), never relayed with
its encoding stripped.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from ..config import Upstream as UpstreamConfig
from ..protocol.content_coding import ContentCodingError, Decoder, decoder_for

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_NOTED = frozenset({"content-length", "transfer-encoding", "content-encoding"})
# Fields of an encoded answer that describe the encoded bytes, not the decoded body relayed.
_ENCODED_ONLY = frozenset({"content-encoding", "content-length", "accept-ranges"})


class UpstreamError(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.active = False  # an exchange is under way
        self.idle_since = 0.0
        self.begin()

    # --- one exchange ---
    def begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.framed = False  # Content-Length or chunked: the end of the body is known
        self.encoded = False  # a Content-Encoding field
        self.keep_alive = False
        self.received = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def time_out(self) -> None:
        self.fail(UpstreamError(504, "Upstream timed out"))

    def fail(self, error: UpstreamError) -> None:
        if not self.active:
            self.close()
            return
        if not self.head.done():
            self.head.set_exception(error)
        elif not self.complete and self.error is None:
            self.error = error
            self._wake()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self.waiter = self.loop.create_future()
            await self.waiter

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(502, f"Invalid HTTP response from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head.done() and not self.complete and not self.framed and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        else:
            self.fail(UpstreamError(502, "Upstream closed the connection"))

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.decode("latin-1").lower()
        if lname in _NOTED:
            if lname == "content-encoding":
                self.encoded = True
            else:
                self.framed = True
        self.headers.append((lname, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid until the message ends
        if self.status < 200:  # 1xx: an interim response; the real one follows on this parser
            self.headers = []
            self.framed = self.encoded = False
        elif not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True
            self._wake()


def _too_large() -> UpstreamError:
    return UpstreamError(502, "Upstream response body is too large")


def _undecodable(exc: ContentCodingError) -> UpstreamError:
    return UpstreamError(502, f"Invalid upstream response body: {exc}")


class UpstreamResponse:
    """Status, headers and body of one upstream answer; the body is read once, decoded."""

    __slots__ = ("_client", "_conn", "_decoder", "content_type", "headers", "status")

    def __init__(self, client: UpstreamClient, conn: _Connection) -> None:
        self._client, self._conn = client, conn
        self.status = conn.status
        self.headers = conn.headers
        self._decoder: Decoder | None = None
        if conn.encoded and self.status not in (204, 304):  # those carry no body to decode
            self._decode_as_sent()
        self.content_type = next((v for n, v in self.headers if n == "content-type"), "").lower()

    def _decode_as_sent(self) -> None:
        """Set up the decoding of an encoded body, or refuse a coding that cannot be decoded."""
        try:
            self._decoder = decoder_for(v for n, v in self.headers if n == "content-encoding")
        except ContentCodingError as exc:
            raise UpstreamError(502, f"Upstream answered with an {exc}") from None
        if self._decoder is not None:
            # What is relayed is the decoded body: the encoded length, ranges and a strong
            # validator of the encoded bytes no longer describe it (as nginx's gunzip does).
            self.headers = [(n, f"W/{v}" if n == "etag" and v.startswith('"') else v)
                            for n, v in self.headers if n not in _ENCODED_ONLY]

    async def read(self, limit: int, timeout_s: float) -> bytes:
        """The whole body (a single JSON message), bounded in size and time."""
        conn, decoder = self._conn, self._decoder
        timer = conn.loop.call_later(timeout_s, conn.time_out)
        parts: list[bytes] = []
        size = 0
        try:
            if decoder is None:
                while (chunk := await conn.next_chunk()) is not None:
                    size += len(chunk)
                    if size > limit:
                        raise _too_large()
                    parts.append(chunk)
            else:
                while (chunk := await conn.next_chunk()) is not None:
                    for piece in decoder.feed(chunk):  # slice by slice: a bomb stops at the limit
                        size += len(piece)
                        if size > limit:
                            raise _too_large()
                        parts.append(piece)
                decoder.close()
        except ContentCodingError as exc:
            conn.close()
            raise _undecodable(exc) from None
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
        self._client.release(conn)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes (decoded) as they arrive; the connection is closed if the consumer stops early."""
        conn, decoder = self._conn, self._decoder
        try:
            if decoder is None:
                while (chunk := await conn.next_chunk()) is not None:
                    yield chunk
            else:
                while (chunk := await conn.next_chunk()) is not None:
                    more = False
                    for piece in decoder.feed(chunk):
                        if more:  # one small chunk expanding to many slices: let the loop run between them
                            await asyncio.sleep(0)
                        more = True
                        yield piece
                decoder.close()
        except ContentCodingError as exc:
            conn.close()
            raise _undecodable(exc) from None
        except BaseException:
            conn.close()
            raise
        self._client.release(conn)

    def close(self) -> None:
        self._conn.close()


class UpstreamClient:
    """Keep-alive connections to the upstream, per origin; one exchange per connection at a time."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.headers = dict(config.headers)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._tls: ssl.SSLContext | None = None

    async def close(self) -> None:
        """Close the idle connections; those under way close when their exchange ends."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        """(origin, request-target + Host line) for a URL, computed once per URL."""
        cached = self._targets.get(url)
        if cached is None:
            parts = urlsplit(url)
            scheme, host = parts.scheme, parts.hostname or ""
            port = parts.port or (443 if scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            default_port = port == (443 if scheme == "https" else 80)
            host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
            cached = ((scheme, host, port), f"{path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1"))
            if len(self._targets) < 1024:
                self._targets[url] = cached
        return cached

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(loop, origin), host, port, ssl=tls)
        except TimeoutError:
            raise UpstreamError(502, "Upstream unreachable: connect timeout") from None
        except OSError as exc:
            raise UpstreamError(502, f"Upstream unreachable: {exc.strerror or type(exc).__name__}") from None
        return conn

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            # Below the usual 5 s server keep-alive, so a server rarely closes a connection we reuse.
            if not conn.closed and now - conn.idle_since < self.config.keepalive_s:
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        """Back to the pool after a complete exchange, or closed."""
        conn.active = False
        idle = self._idle.setdefault(conn.origin, [])
        if conn.closed or not conn.keep_alive or len(idle) >= self.config.max_connections:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.begin()
        idle.append(conn)

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
                   ) -> UpstreamResponse:
        origin, target = self._target(url)
        head = [method.encode("latin-1"), b" ", target]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body:
            head.append(body)
        request = b"".join(head)

        conn = self._reuse(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except UpstreamError:
                # A kept-alive connection the server closed meanwhile: try a fresh one, but only
                # where repeating the request cannot do anything twice.
                if conn.received or method not in _IDEMPOTENT:
                    raise
        return await self._exchange(await self._connect(origin), request)

    async def _exchange(self, conn: _Connection, request: bytes) -> UpstreamResponse:
        assert conn.transport is not None
        if conn.closed:
            raise UpstreamError(502, "Upstream closed the connection")
        conn.active = True
        conn.transport.write(request)
        timer = conn.loop.call_later(self.config.timeout_s, conn.time_out)
        try:
            await conn.head
            return UpstreamResponse(self, conn)  # refuses a Content-Encoding it cannot decode
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
