"""Pure-Python HTTP/1.1 clients for the benchmark (no dependencies beyond the standard library).

- ``sequential()``: one keep-alive connection on a blocking socket, one request at a time, each
  timed with ``time.perf_counter_ns`` from just before ``send`` to the last byte of the body. Used
  for the 1-connection added-latency measurement.
- ``concurrent()``: N keep-alive connections on asyncio (uvloop when available), bounded by a
  request count and a wall-clock limit. The fallback for throughput when ``wrk`` is missing; one
  Python process saturates long before a good server does, so its req/s are a lower bound.

Both understand ``Content-Length`` and ``Transfer-Encoding: chunked`` answers and check that every
answer is HTTP 200 carrying the JSON-RPC result for the id that was sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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


class BenchError(RuntimeError):
    """An answer was not what an MCP tools/call should get."""


def request_bytes(host: str, port: int, path: str, msg_id: int) -> bytes:
    body = (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}' % msg_id
    )
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADERS}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


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


def check(status: int, body: bytes, msg_id: int) -> None:
    if status != 200:
        raise BenchError(f"HTTP {status}: {body[:300]!r}")
    try:
        message = orjson.loads(body)
        ok = message["id"] == msg_id and message["result"]["content"][0]["text"] == "hi"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise BenchError(f"unexpected answer for id {msg_id}: {body[:300]!r}")


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported: {url}")
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"


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


def sequential(url: str, count: int, warmup: int, timeout: float = 5.0) -> list[int]:
    """Per-request latencies in ns for ``count`` sequential tools/calls after ``warmup`` ones."""
    host, port, path = _target(url)
    conn = _SyncConn(host, port, timeout)
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        for i in range(warmup + count):
            req = request_bytes(host, port, path, i + 1)
            t0 = clock()
            status, body = conn.roundtrip(req)
            t1 = clock()
            check(status, body, i + 1)
            if i >= warmup:
                samples.append(t1 - t0)
        return samples
    finally:
        conn.close()


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


async def _worker(url: str, deadline: float, budget: list[int], out: LoadResult) -> None:
    host, port, path = _target(url)
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter_ns
    try:
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            msg_id = budget[0] + 1
            t0 = clock()
            writer.write(request_bytes(host, port, path, msg_id))
            status, body = await read_response(reader)
            out.latencies_ns.append(clock() - t0)
            check(status, body, msg_id)
    finally:
        writer.close()


async def _concurrent(url: str, connections: int, max_requests: int, seconds: float) -> LoadResult:
    out = LoadResult()
    budget = [max_requests]
    start = time.perf_counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_worker(url, deadline, budget, out) for _ in range(connections)))
    out.seconds = time.perf_counter() - start
    out.requests = len(out.latencies_ns)
    return out


def concurrent(url: str, connections: int, max_requests: int, seconds: float) -> LoadResult:
    """Closed-loop load: ``connections`` clients until ``max_requests`` or ``seconds`` run out."""
    main = _concurrent(url, connections, max_requests, seconds)
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)
