"""The proxy's HTTP/1.1 client to the upstream MCP server.

A small keep-alive client on asyncio protocols with httptools (llhttp) parsing responses: the
general-purpose clients spend most of the proxy's per-request budget (benchmarks/README.md has the
measurements: httpx ≈ 450 req/s, aiohttp ≈ 2,000 req/s inside this proxy at 32 connections), and
the proxy needs only one thing from a client: send one request, stream one response back.

The upstream's framing is untrusted. A connection carries one exchange at a time and is reused only
when its answer ended exactly where its framing said: bytes nobody asked for (an unrequested answer
on an idle connection, a second answer after the first, data after a body) close it, and never
reach a client. At most `upstream.max_connections` connections per origin are open (idle and in
use); further requests wait in a bounded FIFO queue, then get 503.

The timeout bounds the wait for response headers (and for a JSON body read whole, which may also
not fall silent for longer than `read_timeout_s`); an SSE stream, once started, lives as long as
both ends keep it open (TCP keepalive notices a peer that vanished). A response body is buffered
only up to a high-water mark before the socket stops being read, so a slow client slows the
upstream instead of filling memory.

An encoded answer (`Content-Encoding: gzip`/`x-gzip`/`deflate`, though the proxy asks for
identity) is decoded as it is read, in bounded slices (proxy/protocol/content_coding.py), and its
headers no longer describe the encoded form; any other coding is refused (502), never relayed with
its encoding stripped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httptools

from ..config import Upstream as UpstreamConfig
from ..observe import tracing
from ..protocol.content_coding import ContentCodingError, Decoder, decoder_for
from ..protocol.headers import redirect
from ..protocol.urls import UrlError, split_url
from . import egress
from .tls import client_context, closed_before_answer
from .tls import describe as tls_failure

if TYPE_CHECKING:
    from ..upstream_oauth.grant import UpstreamGrant

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
_IDEMPOTENT = frozenset({"GET", "DELETE", "OPTIONS"})
_NOTED = frozenset({"content-length", "transfer-encoding", "content-encoding"})
# Fields of an encoded answer that describe the encoded bytes, not the decoded body relayed.
_ENCODED_ONLY = frozenset({"content-encoding", "content-length", "accept-ranges"})
# Interim answers skipped: 100 Continue and 103 Early Hints. Any other 1xx (101 Switching Protocols
# above all: the proxy never asks for an upgrade) is no answer the proxy can relay.
_INTERIM = frozenset({100, 103})
# Raw bytes allowed without body data (a head with its interim answers, trailers, chunk framing),
# as a multiple of max_header_bytes: the final head's names and values are held to the limit
# exactly, this bounds what the parser buffers meanwhile (a field `a:` is 4 raw bytes for 1 counted).
_RAW_HEAD_FACTOR = 4
# Dead peers on long-idle SSE streams: probe after 60 s of silence, every 10 s, give up after 6.
_KEEPALIVE = [(getattr(socket, name), value) for name, value in
              (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)) if hasattr(socket, name)]
_EXPIRED = object()  # what a waiter gets when its queue_timeout_s is over
_FAILURE_LOG_S = 10.0  # a connect failure's cause is logged at most this often (per reason)

log = logging.getLogger("mcp_policy_proxy.upstream")


class UpstreamError(Exception):
    """The upstream could not be reached or answered unusably (502), did not answer in time (504),
    or the connection limit was reached (503, with `Retry-After` in `headers`)."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # for the client's answer


class _Pool:
    """The connections to one origin: `open` counts those idle, in use and being opened."""

    __slots__ = ("idle", "open", "origin", "route", "waiters")

    def __init__(self, origin: tuple[str, str, int], route: egress.Route | None) -> None:
        self.origin = origin
        self.route = route  # through an egress proxy's tunnel, or None: straight
        self.idle: list[_Connection] = []
        self.open = 0
        # Futures of requests waiting for a connection: a _Connection to reuse, None (a slot to
        # open one), or _EXPIRED.
        self.waiters: deque[asyncio.Future[Any]] = deque()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, client: UpstreamClient, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.client, self.pool, self.loop = client, pool, loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.max_header_bytes = client.config.max_header_bytes
        self.max_gap = _RAW_HEAD_FACTOR * self.max_header_bytes
        self.idle_s = client.config.read_timeout_s
        self.closed = False
        self.slot = False  # holds one of the pool's slots (from a successful connect until closed)
        self.active = False  # an exchange is under way
        self.reused = False  # has carried an exchange before the one under way
        self.pooled = False  # in the pool's idle list
        self.broken: UpstreamError | None = None  # why a callback stopped the parser
        self.idle_since = 0.0
        self.last = 0.0  # loop time of the last bytes received while a body is read whole
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.begin()

    # --- one exchange ---
    def begin(self) -> None:
        self.status = 0  # of the final answer; 0 until its head is complete
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
        self.gap = 0  # raw bytes received since the last body bytes (before this read)
        self.feeding = 0  # the size of the read being parsed
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def time_out(self) -> None:
        self.fail(UpstreamError(504, "Upstream timed out"))

    def tick(self) -> None:
        """While a body is read whole (`UpstreamResponse.read` arms this): the bounds in time."""
        now = self.loop.time() + 0.001  # timers may fire a rounding early
        if now >= self.deadline:
            self.time_out()
        elif now >= self.last + self.idle_s:
            self.fail(UpstreamError(504, f"Upstream timed out: no data for {self.idle_s:g} s"))
        else:
            self.timer = self.loop.call_later(min(self.deadline, self.last + self.idle_s) - now + 0.001, self.tick)

    def fail(self, error: UpstreamError) -> None:
        if self.active:
            if not self.head.done():
                self.head.set_exception(error)
            elif not self.complete and self.error is None:
                self.error = error
                self._wake()
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._gone()

    def _gone(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._gone(self)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _broken(self, message: str) -> UpstreamError:
        """The error for a callback to raise: the parser stops, `data_received` fails with it."""
        self.broken = UpstreamError(502, message)
        return self.broken

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
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in _KEEPALIVE:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)

    def data_received(self, data: bytes) -> None:
        if self.complete or not self.active:
            self.close()  # bytes nobody asked for: nothing later read here could be trusted
            return
        self.received = True
        if self.timer is not None:  # a whole body is being read: its silences are timed
            self.last = self.loop.time()
        buffered = self.buffered
        self.feeding = len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(self.broken or UpstreamError(502, f"Invalid HTTP response from upstream: {exc}"))
            return
        if self.buffered == buffered:  # no body bytes: a head, trailers, framing
            self.gap += self.feeding
            if self.gap > self.max_gap:
                self.fail(UpstreamError(502, "Upstream response headers are too large"))
        else:
            self.gap = 0

    def connection_lost(self, exc: Exception | None) -> None:
        ours = self.closed  # closed by this side (a failure, a timeout) before the loss
        self._gone()
        if exc is None and self.head.done() and not self.complete and not self.framed and self.error is None:
            self.complete = True  # a body delimited by the end of the connection (a clean end only)
            self._wake()
        elif not ours and self.active and not self.head.done() and not self.received and not self.reused \
                and self.pool.origin[0] == "https":
            # A new TLS connection ended before its first answer: with TLS 1.3 the upstream checks a
            # client certificate after the handshake, and says so (an alert) or just closes.
            failure = None
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
                failure = tls_failure(exc)
            self.fail(self.client._count_failure(self.pool, 502, *(failure or closed_before_answer())))
        else:
            self.fail(UpstreamError(502, "Upstream closed the connection"))

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        if self.complete:  # even a partial head after the answer: the parser would be left inside it
            raise self._broken("Upstream sent bytes after its answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer (after a chunked body): not one of the answer's headers, not relayed
        lname = name.decode("latin-1").lower()
        if lname in _NOTED:
            if lname == "content-encoding":
                self.encoded = True
            else:
                self.framed = True
        self.headers.append((lname, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:  # a second answer after this one (its fields were taken for trailers)
            raise self._broken("Upstream sent a second response")  # closes; the first stays whole
        status = self.parser.get_status_code()
        if status >= 200:
            if status > 599:
                raise self._broken(f"Upstream answered with an invalid status {status}")
            # Names and values are counted only when the raw bytes so far could exceed the limit.
            if self.gap + self.feeding > self.max_header_bytes and \
                    sum(len(n) + len(v) for n, v in self.headers) > self.max_header_bytes:
                raise self._broken("Upstream response headers are too large")
            self.status = status
            self.keep_alive = self.parser.should_keep_alive()  # only valid until the message ends
            if not self.head.done():
                self.head.set_result(None)
        elif status in _INTERIM:  # the real answer follows on this parser
            self.headers = []
            self.framed = self.encoded = False
        else:
            raise self._broken(f"Upstream answered with HTTP {status}" +
                               (" (a protocol switch the proxy never asks for)" if status == 101 else ""))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:
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
        self._conn: _Connection | None = conn  # None once the connection is released or closed
        self._client = client
        self.status = conn.status
        self.headers = conn.headers
        if 300 <= self.status < 400 and redirect(self.status, self.headers):
            raise UpstreamError(502, f"Upstream answered with a redirect (HTTP {self.status}); "
                                     "the proxy does not follow or relay redirects")
        self._decoder: Decoder | None = None
        if conn.encoded and self.status not in (204, 304):  # those carry no body to decode
            self._decode_as_sent()
        self.content_type = next((v for n, v in self.headers if n == "content-type"), "").lower()

    def __del__(self) -> None:
        # Dropped unread (a stream never started): the connection is closed and its slot freed.
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the loop may be gone already
                self._conn.close()

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

    def _taken(self) -> _Connection:
        conn = self._conn
        if conn is None:
            raise UpstreamError(502, "Upstream response was already read")
        return conn

    def _abandon(self, conn: _Connection) -> None:
        self._conn = None
        conn.close()

    async def read(self, limit: int, timeout_s: float) -> bytes:
        """The whole body (a single JSON message), bounded in size, in time (`timeout_s`), and in
        silence (`read_timeout_s`, counted from now or from the last bytes received since)."""
        conn, decoder = self._conn, self._decoder
        if conn is None:
            raise UpstreamError(502, "Upstream response was already read")
        loop = conn.loop
        conn.last = now = loop.time()
        conn.deadline = now + timeout_s
        conn.timer = loop.call_later(min(timeout_s, conn.idle_s), conn.tick)
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
            self._abandon(conn)
            raise _undecodable(exc) from None
        except BaseException:
            self._abandon(conn)
            raise
        finally:
            conn.timer.cancel()  # the one tick() armed last
            conn.timer = None
        self._conn = None
        self._client.release(conn)
        return b"".join(parts)

    def finished(self) -> bool:
        """The whole body has arrived and been taken from the connection: what `chunks()` has left
        to give, it gives without waiting (a decoder's last slices), then ends."""
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks and conn.error is None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes (decoded) as they arrive; the connection is closed if the consumer stops early."""
        conn, decoder = self._taken(), self._decoder
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
            self._abandon(conn)
            raise _undecodable(exc) from None
        except BaseException:
            self._abandon(conn)
            raise
        self._conn = None
        self._client.release(conn)

    def close(self) -> None:
        if self._conn is not None:
            self._abandon(self._conn)


class UpstreamClient:
    """Keep-alive connections to the upstream, per origin: at most `max_connections` open (idle
    and in use), one exchange per connection at a time, further requests queued (FIFO, bounded).

    `on_limit` is called for every request refused at the connection limit (a metric);
    `on_answer(status, seconds)` for every answer head, with the time since its request was written;
    `on_connect_failure(reason)` for every connection that could not be opened (tls.py, egress.py).

    Connections go straight to the origin or through the egress proxy `config.proxy` names
    (egress.py); TLS for https:// origins with the one context of `config.tls` (tls.py)."""

    def __init__(self, config: UpstreamConfig, on_limit: Callable[[], None] | None = None,
                 on_answer: Callable[[int, float], None] | None = None,
                 on_connect_failure: Callable[[str], None] | None = None,
                 grant: UpstreamGrant | None = None) -> None:
        self.config = config
        self.headers = dict(config.headers)
        # The proxy's OAuth grant (upstream.oauth): only the real upstream's client has one, never
        # the siblings' (cluster.py), and it is sent to upstream.url's origin only.
        self.grant = grant
        self._grant_origin = _origin(config.url) if grant is not None else None
        self._on_limit = on_limit
        self._on_answer = on_answer
        self._on_connect_failure = on_connect_failure
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, tuple[_Pool, bytes]] = {}
        https = any(u and u.startswith("https://") for u in (config.url, config.sse_url))
        # Built once, at start (the default store honours SSL_CERT_FILE); config.parse has proven the files.
        self._tls: ssl.SSLContext | None = client_context(config.tls) if https else None
        self._failures_logged: dict[str, float] = {}
        self._limited = (("retry-after", str(max(1, math.ceil(config.queue_timeout_s)))),)

    def pool_stats(self) -> tuple[int, int, int]:
        """(open, idle, waiting) over every origin's pool: connections open (idle, in use, being
        opened), those idle, and requests waiting for one."""
        pools = self._pools.values()
        return (sum(p.open for p in pools), sum(len(p.idle) for p in pools), sum(len(p.waiters) for p in pools))

    async def close(self) -> None:
        """Close the idle connections; those under way close when their exchange ends."""
        for pool in self._pools.values():
            for conn in list(pool.idle):
                conn.close()

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        """(pool, request-target + Host line) for a URL, computed once per URL."""
        cached = self._targets.get(url)
        if cached is None:
            try:
                parts = split_url(url)  # percent-encodes what the config or an endpoint event left
                scheme, host = parts.scheme, parts.hostname or ""
                port = parts.port or (443 if scheme == "https" else 80)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                default_port = port == (443 if scheme == "https" else 80)
                host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
                target = f"{path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("ascii")
            except (UrlError, UnicodeEncodeError):
                raise UpstreamError(502, "The upstream URL cannot be sent") from None
            origin = (scheme, host, port)
            pool = self._pools.get(origin) or self._pool(origin)
            cached = (pool, target)
            if len(self._targets) < 1024:
                self._targets[url] = cached
        return cached

    def _pool(self, origin: tuple[str, str, int]) -> _Pool:
        """An origin's pool, and the way to it (decided once, here)."""
        route = egress.route(self.config.proxy, *origin)
        if route is not None:
            log.info("upstream %s://%s:%d is reached through the egress proxy %s", *origin, route.where)
        return self._pools.setdefault(origin, _Pool(origin, route))

    # --- connection slots ---
    def _reuse(self, pool: _Pool) -> _Connection | None:
        idle = pool.idle
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                conn.pooled = False
                # Below the usual 5 s server keep-alive, so a server rarely closes a connection we reuse.
                if not conn.closed and now - conn.idle_since < self.config.keepalive_s:
                    return conn
                conn.close()  # frees its slot
        return None

    async def _acquire(self, pool: _Pool) -> _Connection | None:
        """When no idle connection is there: a free slot to open one (None), else wait for either."""
        while True:
            if pool.open < self.config.max_connections:
                pool.open += 1
                return None
            got = await self._wait(pool)
            if got is None or not got.closed:
                return got
            # handed a connection that closed before this request woke up (its slot went on): again
            if (conn := self._reuse(pool)) is not None:
                return conn

    async def _wait(self, pool: _Pool) -> _Connection | None:
        waiters = pool.waiters
        if len(waiters) >= self.config.max_queue:
            raise self._limit_reached()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        waiters.append(fut)
        timer = loop.call_later(self.config.queue_timeout_s, _expire, fut)
        try:
            got = await fut
        except BaseException:  # cancelled: what was handed over meanwhile goes back
            if fut.done() and not fut.cancelled():
                got = fut.result()
                if got is None:
                    self._free(pool)
                elif got is not _EXPIRED and not got.closed:  # (a closed one freed its slot itself)
                    self._recycle(got)
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            raise
        finally:
            timer.cancel()
        if got is _EXPIRED:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            raise self._limit_reached()
        return got

    def _limit_reached(self) -> UpstreamError:
        if self._on_limit is not None:
            self._on_limit()
        return UpstreamError(503, "Upstream connection limit reached", self._limited)

    def _free(self, pool: _Pool) -> None:
        """A slot is free (a connection closed, a connect failed): the next waiter takes it."""
        waiters = pool.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        pool.open -= 1

    def _recycle(self, conn: _Connection) -> None:
        """A connection ready for its next exchange: to the next waiter, else idle."""
        waiters = conn.pool.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        conn.pooled = True
        conn.pool.idle.append(conn)

    def _gone(self, conn: _Connection) -> None:
        """`conn` closed: out of the idle list, and its slot freed."""
        if conn.slot:
            conn.slot = False
            if conn.pooled:
                conn.pooled = False
                conn.pool.idle.remove(conn)
            self._free(conn.pool)

    async def _connect(self, pool: _Pool) -> _Connection:
        """A new connection, in the slot the caller holds (freed if this fails): straight, or in a
        tunnel through the egress proxy; TLS for https, inside the tunnel, to the origin's host."""
        scheme, host, port = pool.origin
        loop = asyncio.get_running_loop()
        tls = self._tls if scheme == "https" else None
        if tls is None and scheme == "https":
            tls = self._tls = client_context(self.config.tls)  # an https origin beside an http url
        server_name = (self.config.tls.server_name or host) if tls is not None else None
        deadline = loop.time() + self.config.connect_timeout_s

        def factory() -> _Connection:
            return _Connection(self, pool, loop)

        try:
            if pool.route is None:
                async with asyncio.timeout_at(deadline):
                    _, conn = await loop.create_connection(factory, host, port, ssl=tls, server_hostname=server_name)
            else:
                sock = await egress.open_tunnel(loop, pool.route, deadline)
                try:
                    async with asyncio.timeout_at(deadline):
                        _, conn = await loop.create_connection(factory, sock=sock, ssl=tls,
                                                               server_hostname=server_name)
                except BaseException:
                    sock.close()
                    raise
        except BaseException as exc:
            self._free(pool)
            if not isinstance(exc, Exception):
                raise
            raise self._connect_failed(pool, exc, tls is not None) from None
        if conn.closed:  # lost before it was ours
            self._free(pool)
            raise UpstreamError(502, "Upstream closed the connection")
        conn.slot = True
        return conn

    def _connect_failed(self, pool: _Pool, exc: Exception, tls: bool) -> UpstreamError:
        """The error for a connection that could not be opened: counted, its cause logged (at most
        every _FAILURE_LOG_S per reason), never the egress proxy's credentials."""
        if isinstance(exc, egress.EgressError):
            failure = (exc.status, exc.reason, exc.message, exc.detail)
        elif tls and (named := tls_failure(exc)) is not None:
            failure = (502, *named)
        elif isinstance(exc, TimeoutError):
            failure = (502, "timeout", "Upstream unreachable: connect timeout", "")
        elif isinstance(exc, OSError):
            failure = (502, "unreachable", f"Upstream unreachable: {exc.strerror or type(exc).__name__}", "")
        else:
            raise exc
        return self._count_failure(pool, *failure)

    def _count_failure(self, pool: _Pool, status: int, reason: str, message: str, detail: str) -> UpstreamError:
        if self._on_connect_failure is not None:
            self._on_connect_failure(reason)
        now = time.monotonic()
        logged = self._failures_logged.get(reason, -math.inf)
        if reason.startswith(("tls_", "proxy_")) and now - logged >= _FAILURE_LOG_S:
            self._failures_logged[reason] = now
            via = f" through the egress proxy {pool.route.where}" if pool.route is not None else ""
            log.warning("upstream %s://%s:%d%s: %s%s", *pool.origin, via, message, f" ({detail})" if detail else "")
        return UpstreamError(status, message)

    def release(self, conn: _Connection) -> None:
        """After a complete exchange: ready for the next one, or closed."""
        conn.active = False
        if conn.closed or not conn.keep_alive:
            conn.close()
            return
        conn.begin()
        conn.reused = True
        pool = conn.pool
        if pool.waiters:
            self._recycle(conn)
        else:
            conn.idle_since = time.monotonic()
            conn.pooled = True
            pool.idle.append(conn)

    # --- one exchange ---
    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
                   ) -> UpstreamResponse:
        if self.grant is not None:
            return await self._send_authorized(self.grant, method, url, headers, body)
        return await self._send_traced(method, url, headers, body)

    async def _send_traced(self, method: str, url: str, headers: dict[str, str], body: bytes | None
                           ) -> UpstreamResponse:
        if (trace := tracing.current()) is not None:  # a CLIENT span, the W3C headers its context
            return await trace.upstream(self._send, method, url, headers, body)
        return await self._send(method, url, headers, body)

    async def _send_authorized(self, grant: UpstreamGrant, method: str, url: str, headers: dict[str, str],
                               body: bytes | None) -> UpstreamResponse:
        """With the grant's bearer token. An upstream 401 means it did not act on the request: the
        grant is refreshed (once, however many requests found the same) and the request sent once
        more, as it was (bodies are sent whole, never streamed). The grant answers a 401 after that,
        and a 403 for a scope it lacks (grant.py): they are about the proxy's credential."""
        if self._target(url)[0].origin != self._grant_origin:
            raise UpstreamError(502, "The proxy's upstream grant is sent to upstream.url's origin only")
        value = grant.authorization() or await grant.current()
        resp = await self._send_traced(method, url, {**headers, "authorization": value}, body)
        if resp.status == 401:
            resp.close()
            value = await grant.rejected(value)
            resp = await self._send_traced(method, url, {**headers, "authorization": value}, body)
        if resp.status in (401, 403):
            grant.refused(resp)
        return resp

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> UpstreamResponse:
        if method == "HEAD":  # its answer has no body the parser could know of: never sent
            raise UpstreamError(502, "HEAD is not sent upstream")
        pool, target = self._target(url)
        head = [method.encode("latin-1"), b" ", target]
        try:
            for name, value in headers.items():
                head.append(f"{name}: {value}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise UpstreamError(502, "A request header cannot be sent upstream (not Latin-1)") from None
        if body is not None:
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body:
            head.append(body)
        request = b"".join(head)

        conn = self._reuse(pool) or await self._acquire(pool)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except UpstreamError:
                # A kept-alive connection the server closed meanwhile: try once more, but only
                # where repeating the request cannot do anything twice.
                if conn.received or method not in _IDEMPOTENT:
                    raise
            conn = self._reuse(pool) or await self._acquire(pool)
            if conn is not None:
                return await self._exchange(conn, request)
        return await self._exchange(await self._connect(pool), request)

    async def _exchange(self, conn: _Connection, request: bytes) -> UpstreamResponse:
        assert conn.transport is not None
        if conn.closed:
            raise UpstreamError(502, "Upstream closed the connection")
        conn.active = True
        written = time.perf_counter()
        conn.transport.write(request)
        timer = conn.loop.call_later(self.config.timeout_s, conn.time_out)
        try:
            await conn.head
            if self._on_answer is not None:
                self._on_answer(conn.status, time.perf_counter() - written)
            return UpstreamResponse(self, conn)  # refuses redirects, and codings it cannot decode
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()


def _origin(url: str) -> tuple[str, str, int]:
    parts = split_url(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)
