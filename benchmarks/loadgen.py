"""Pure-Python HTTP/1.1 clients for the benchmark (no dependencies beyond orjson and, optionally, uvloop).

- ``sequential()`` / ``sequential_spec()``: one keep-alive connection on a blocking socket, one
  request at a time, each timed with ``time.perf_counter_ns`` from just before ``send`` to the last
  byte of the body. The 1-connection added-latency measurement.
- ``concurrent()`` / ``concurrent_spec()``: N keep-alive connections on asyncio (uvloop when
  available), bounded by a request count and a wall-clock limit. The fallback for throughput when
  ``wrk`` is missing, and the client of the ``legacy_sse`` comparison.
- ``legacy_spec()``: N legacy HTTP+SSE (2024-11-05) sessions, each a ``GET /sse`` stream and a
  keep-alive connection for its POSTs; a request is timed from before its POST to the end of the
  matching event on the stream.

A ``Spec`` says what to send (a JSON-RPC body with ``{id}`` and, for the ``vary`` workload, ``{n}``
placeholders; bearer tokens rotated by ``n``) and how to check the answer (JSON or one SSE event,
the echoed id, the result text, the number of tools). Every answer is checked.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson

try:
    import uvloop
except ImportError:  # optional: plain asyncio works, just slower
    uvloop = None  # type: ignore[assignment]

HEADERS = (
    "Content-Type: application/json\r\n"
    "Accept: application/json, text/event-stream\r\n"
    "MCP-Protocol-Version: 2025-06-18\r\n"
)
ECHO_BODY = '{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'


WATCHDOG_S = 10


class BenchError(RuntimeError):
    """An answer was not what the request should get."""


@dataclass(frozen=True)
class Spec:
    """One kind of request: what is sent, and what its answer must be."""

    path: str
    body: str  # JSON-RPC text; "{id}" is the request id, "{n}" (vary workload) the request's counter
    tokens: tuple[str, ...] = ()  # Authorization: Bearer, rotated by the counter
    answer: str = "json"  # "json" or "sse" (one message event)
    expect_text: Callable[[int], str] | None = None  # tools/call: the result text for counter n
    expect_tools: int | None = None  # tools/list: the number of tools in the answer
    counter_start: int = 1

    @property
    def varies(self) -> bool:
        return "{n}" in self.body or len(self.tokens) > 1

    def body_bytes(self, msg_id: int, n: int) -> bytes:
        return self.body.replace("{id}", str(msg_id)).replace("{n}", str(n)).encode()

    def head(self, host: str, port: int, n: int, path: str | None = None, length: int = 0) -> bytes:
        auth = f"Authorization: Bearer {self.tokens[n % len(self.tokens)]}\r\n" if self.tokens else ""
        return (
            f"POST {path or self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADERS}{auth}"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    def request(self, host: str, port: int, msg_id: int, n: int, path: str | None = None) -> bytes:
        body = self.body_bytes(msg_id, n)
        return self.head(host, port, n, path, len(body)) + body

    def check(self, status: int, body: bytes, msg_id: int, n: int) -> None:
        """Raise BenchError unless ``body`` (HTTP ``status``) is the right answer to request ``msg_id``."""
        if status != 200:
            raise BenchError(f"HTTP {status}: {body[:300]!r}")
        self.check_message(sse_data(body) if self.answer == "sse" else body, msg_id, n)

    def check_message(self, data: bytes, msg_id: int, n: int) -> None:
        try:
            message = orjson.loads(data)
            result = message["result"]
            ok = isinstance(result, dict) and message["id"] == msg_id
            if ok and self.expect_text is not None:
                ok = result.get("isError") is False and result["content"][0]["text"] == self.expect_text(n)
            if ok and self.expect_tools is not None:
                ok = len(result["tools"]) == self.expect_tools
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            ok = False
        if not ok:
            raise BenchError(f"unexpected answer for id {msg_id}: {data[:300]!r}")


def echo_spec(path: str) -> Spec:
    """The classic request: tools/call echo {"text": "hi"}."""
    return Spec(path, ECHO_BODY, expect_text=lambda n: "hi")


def sse_data(body: bytes) -> bytes:
    """The data of the first ``message`` event of an SSE body (b"" if none)."""
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        event, data = sse_block(block)
        if data and event == b"message":
            return b"\n".join(data)
    return b""


def sse_block(block: bytes) -> tuple[bytes, list[bytes]]:
    """One SSE event block (LF line ends): its event type and its data lines."""
    event, data = b"message", []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"event":
            event = value
        elif name == b"data":
            data.append(value)
    return event, data


# --- the classic API (soak.py, instructions.py) ---------------------------------------------------


def request_bytes(host: str, port: int, path: str, msg_id: int) -> bytes:
    return echo_spec(path).request(host, port, msg_id, 0)


def check(status: int, body: bytes, msg_id: int) -> None:
    echo_spec("/").check(status, body, msg_id, 0)


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, content_length or None, chunked) from a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, path


class _SyncConn:
    """One blocking keep-alive connection with a read buffer."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed by server")
        self.buf += chunk

    def _until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._fill()
        out, self.buf = self.buf[:i], self.buf[i + len(sep) :]
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def roundtrip(self, req: bytes) -> tuple[int, bytes]:
        self.sock.sendall(req)
        status, length, chunked = parse_head(self._until(b"\r\n\r\n"))
        if chunked:
            parts = []
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                parts.append(self._exactly(size))
                self._exactly(2)
            self._until(b"\r\n")  # end of (empty) trailers
            return status, b"".join(parts)
        return status, self._exactly(length or 0)

    def close(self) -> None:
        self.sock.close()


def sequential_spec(url: str, spec: Spec, count: int, warmup: int, timeout: float = 5.0) -> list[int]:
    """Per-request latencies in ns for ``count`` sequential requests after ``warmup`` ones."""
    host, port, _ = _target(url)
    conn = _SyncConn(host, port, timeout)
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        for i in range(warmup + count):
            n = spec.counter_start + i
            req = spec.request(host, port, i + 1, n)
            t0 = clock()
            status, body = conn.roundtrip(req)
            t1 = clock()
            spec.check(status, body, i + 1, n)
            if i >= warmup:
                samples.append(t1 - t0)
        return samples
    finally:
        conn.close()


def sequential(url: str, count: int, warmup: int, timeout: float = 5.0) -> list[int]:
    """The classic request (tools/call echo "hi"), sequentially: latencies in ns."""
    return sequential_spec(url, echo_spec(_target(url)[2]), count, warmup, timeout)


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one keep-alive answer, Content-Length or chunked."""
    status, length, chunked = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if not chunked:
        return status, await reader.readexactly(length or 0)
    parts = []
    while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    await reader.readuntil(b"\r\n")
    return status, b"".join(parts)


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


class _Budget:
    """Requests left and the deadline, shared by every connection of one run."""

    def __init__(self, max_requests: int, seconds: float, start: int) -> None:
        self.left, self.deadline, self.next_n = max_requests, time.monotonic() + seconds, start

    def take(self) -> int | None:
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return None
        self.left -= 1
        self.next_n += 1
        return self.next_n - 1


class _HttpClient:
    """One keep-alive Streamable HTTP connection posting one request at a time."""

    def __init__(self, url: str, spec: Spec) -> None:
        self.host, self.port, _ = _target(url)
        self.spec = spec
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        self.reader, self.writer = await _open(self.host, self.port)
        self.writers.append(self.writer)

    async def loop(self, budget: _Budget, out: LoadResult) -> None:
        spec, clock = self.spec, time.perf_counter_ns
        while (n := budget.take()) is not None:
            t0 = clock()
            self.writer.write(spec.request(self.host, self.port, n, n))
            status, body = await read_response(self.reader)
            out.latencies_ns.append(clock() - t0)
            spec.check(status, body, n, n)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class _EventReader:
    """Reads SSE events (their type and data) from a chunked or close-delimited stream body."""

    def __init__(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        self.reader, self.chunked, self.buf = reader, chunked, b""

    async def _more(self) -> None:
        if self.chunked:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                raise BenchError("the SSE stream ended")
            self.buf += (await self.reader.readexactly(size + 2))[:-2]
        else:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise BenchError("the SSE stream ended")
            self.buf += chunk

    async def next(self) -> tuple[bytes, bytes]:
        while True:
            self.buf = self.buf.replace(b"\r\n", b"\n")
            i = self.buf.find(b"\n\n")
            if i >= 0:
                block, self.buf = self.buf[:i], self.buf[i + 2 :]
                event, data = sse_block(block)
                if data:
                    return event, b"\n".join(data)
                continue
            await self._more()


class _LegacyClient(_HttpClient):
    """One legacy session: the GET stream, then POSTs on a keep-alive connection of their own, each
    request timed from before its POST to the end of the matching event on the stream."""

    async def open(self) -> None:
        sse_path = self.spec.path
        s_reader, s_writer = await _open(self.host, self.port)
        self.writers.append(s_writer)
        auth = f"Authorization: Bearer {self.spec.tokens[0]}\r\n" if self.spec.tokens else ""
        s_writer.write(f"GET {sse_path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                       f"Accept: text/event-stream\r\n{auth}\r\n".encode())
        status, _, chunked = parse_head((await s_reader.readuntil(b"\r\n\r\n"))[:-4])
        if status != 200:
            raise BenchError(f"GET {sse_path}: HTTP {status}")
        self.events = _EventReader(s_reader, chunked)
        event, data = await self.events.next()
        if event != b"endpoint":
            raise BenchError(f"expected an endpoint event, got {event!r}: {data[:200]!r}")
        self.post_path = urljoin(sse_path, data.decode())
        await super().open()

    async def loop(self, budget: _Budget, out: LoadResult) -> None:
        spec, clock = self.spec, time.perf_counter_ns
        while (n := budget.take()) is not None:
            t0 = clock()
            self.writer.write(spec.request(self.host, self.port, n, n, path=self.post_path))
            status, body = await read_response(self.reader)
            if status != 202:
                raise BenchError(f"POST {self.post_path}: HTTP {status}: {body[:200]!r}")
            event, data = await self.events.next()
            out.latencies_ns.append(clock() - t0)
            if event != b"message":
                raise BenchError(f"unexpected event {event!r}: {data[:200]!r}")
            spec.check_message(data, n, n)


Hook = Callable[[], object] | None


async def _run(kind: type[_HttpClient], url: str, spec: Spec, connections: int, max_requests: int,
               seconds: float, on_start: Hook, on_end: Hook) -> LoadResult:
    """Open every connection (session) first; then ``on_start``, the timed requests, ``on_end``; then
    close them: so a caller can measure the requests alone. A server that stops answering ends the
    run ``WATCHDOG_S`` after its deadline (a SIGALRM handler's exception does not get out of uvloop)."""
    out = LoadResult()
    clients = [kind(url, spec) for _ in range(connections)]
    try:
        async with asyncio.timeout(seconds + WATCHDOG_S):
            await asyncio.gather(*(c.open() for c in clients))
            if on_start is not None:
                on_start()
            budget = _Budget(max_requests, seconds, spec.counter_start)
            start = time.perf_counter()
            await asyncio.gather(*(c.loop(budget, out) for c in clients))
            out.seconds = time.perf_counter() - start
            if on_end is not None:
                on_end()
    except TimeoutError:
        raise BenchError(f"no answer within {WATCHDOG_S} s after the end of the run") from None
    finally:
        for c in clients:
            c.close()
    out.requests = len(out.latencies_ns)
    return out


def _loop_run(main: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)


def concurrent_spec(url: str, spec: Spec, connections: int, max_requests: int, seconds: float,
                    on_start: Hook = None, on_end: Hook = None) -> LoadResult:
    """Closed-loop Streamable HTTP load: ``connections`` clients until ``max_requests`` or ``seconds``."""
    return _loop_run(_run(_HttpClient, url, spec, connections, max_requests, seconds, on_start, on_end))


def legacy_spec(sse_url: str, spec: Spec, sessions: int, max_requests: int, seconds: float,
                on_start: Hook = None, on_end: Hook = None) -> LoadResult:
    """Closed-loop legacy HTTP+SSE load: ``sessions`` sessions until ``max_requests`` or ``seconds``."""
    return _loop_run(_run(_LegacyClient, sse_url, spec, sessions, max_requests, seconds, on_start, on_end))


def concurrent(url: str, connections: int, max_requests: int, seconds: float) -> LoadResult:
    """The classic request under closed-loop load (the fallback when wrk is missing)."""
    return concurrent_spec(url, echo_spec(_target(url)[2]), connections, max_requests, seconds)
