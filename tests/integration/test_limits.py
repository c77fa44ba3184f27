"""Resource bounds on the client side: stream caps (per principal, per worker, legacy sessions), the
request header block's size, and clients too slow to send their head or body.

The real proxy in front of real SDK upstreams; hostile clients are raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import secret

KEY = "url-token-key-for-limit-tests-0123456789"
VERSION = "2025-06-18"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": VERSION}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "limits", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
PER_PRINCIPAL, TOTAL = 2, 3


def _servers(tokens: dict[str, str]) -> list[dict]:
    return [{"name": name, "token_hmac": url_token_hmac(KEY, token), "methods": ["read", "write", "custom"]}
            for name, token in tokens.items()]


async def _metric(http: httpx.AsyncClient, proxy: Proxy, limit: str) -> float:
    text = (await http.get(f"{proxy.base}/metrics")).text
    match = re.search(rf'mcp_proxy_limit_rejections_total{{limit="{re.escape(limit)}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def _session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    r = await http.post(url, json=INIT, headers=HEADERS)
    assert r.status_code == 200, r.text
    session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"]}
    assert (await http.post(url, json=INITIALIZED, headers=session)).status_code == 202
    return session


@contextlib.asynccontextmanager
async def _get_stream(http: httpx.AsyncClient, url: str, session: dict[str, str]) -> AsyncIterator[httpx.Response]:
    """A GET stream of `session`, open (status 200) until the block ends; or the refusal."""
    async with http.stream("GET", url, headers={**session, "accept": "text/event-stream"}) as stream:
        if stream.status_code != 200:
            await stream.aread()
        yield stream


def _assert_refused(r: httpx.Response, status: int, limit: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["retry-after"] == "5"
    error = r.json()["error"]
    assert error["data"] == {"limit": limit} and "Too many open streams" in error["message"]


@contextlib.asynccontextmanager
async def _open_get(http: httpx.AsyncClient, url: str, session: dict[str, str],
                    waits: Counter[str]) -> AsyncIterator[httpx.Response]:
    """A GET stream of `session` once it opens. Until the proxy (or the upstream) has seen an earlier
    stream end, it is refused: the proxy's refusals are counted in `waits` by limit."""
    deadline = time.monotonic() + 5
    while True:
        async with _get_stream(http, url, session) as stream:
            if stream.status_code == 200:
                yield stream
                return
            if stream.status_code in (429, 503):
                waits[stream.json()["error"]["data"]["limit"]] += 1
            else:  # the upstream has not yet seen this session's last GET end
                assert stream.status_code == 409, (stream.status_code, stream.text)
        assert time.monotonic() < deadline, "a stream slot did not come back"
        await asyncio.sleep(0.05)


async def test_stream_caps_refuse_before_forwarding_and_every_slot_comes_back(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateful-sse")
    tokens = {"a": secret(), "b": secret()}
    proxy = proxy_for(upstream.base, {"auth": {"url_token_key": KEY}, "servers": _servers(tokens),
                                      "limits": {"max_streams_per_principal": PER_PRINCIPAL, "max_streams": TOTAL}})
    url_a, url_b = (f"{proxy.base}/{tokens[n]}/mcp" for n in "ab")
    waits: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as http:
        a_sessions = [await _session(http, url_a) for _ in range(3)]
        b_sessions = [await _session(http, url_b) for _ in range(2)]

        async def fill_and_check() -> None:
            """Fill the caps (waiting for the slots of streams just closed) and see them refuse."""
            async with contextlib.AsyncExitStack() as open_streams:
                for session in a_sessions[:PER_PRINCIPAL]:
                    await open_streams.enter_async_context(_open_get(http, url_a, session, waits))
                async with _get_stream(http, url_a, a_sessions[2]) as third:
                    _assert_refused(third, 429, "limits.max_streams_per_principal")
                # A request in flight shares its principal's cap (its answer may be a stream): refused
                # before the upstream saw it. A notification's answer is no stream: it goes through.
                upstream.clear_requests()
                ping = await http.post(url_a, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=a_sessions[0])
                _assert_refused(ping, 429, "limits.max_streams_per_principal")
                assert ping.json()["id"] == 9
                assert not [r for r in upstream.requests() if '"ping"' in r["body"]]
                note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
                assert (await http.post(url_a, json=note, headers=a_sessions[0])).status_code == 202

                await open_streams.enter_async_context(_open_get(http, url_b, b_sessions[0], waits))
                async with _get_stream(http, url_b, b_sessions[1]) as over:
                    _assert_refused(over, 503, "limits.max_streams")

        async def refusals(limit: str) -> float:
            return await _metric(http, proxy, limit) - waits[limit]

        await fill_and_check()
        assert await refusals("limits.max_streams_per_principal") == 2
        assert await refusals("limits.max_streams") == 1

        # Streams end every way, many times: the client leaves, the upstream ends a POST's SSE
        # answer, an answer is JSON (an upstream 4xx), the upstream refuses a GET.
        for _ in range(5):
            async with _open_get(http, url_a, a_sessions[0], waits):
                pass
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "x"}}}
            r = await http.post(url_b, json=call, headers=b_sessions[0])
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            no_session = await http.post(url_a, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers=HEADERS)
            assert no_session.status_code == 400 and no_session.headers["content-type"] == "application/json"
            async with _get_stream(http, url_b, HEADERS) as no_stream:
                assert no_stream.status_code == 400

        # Every slot came back: the caps fill exactly as before (a leaked slot would keep one
        # stream from opening) and refuse exactly as before.
        await fill_and_check()
        assert await refusals("limits.max_streams_per_principal") == 4
        assert await refusals("limits.max_streams") == 2


async def test_legacy_session_cap(sdk_upstream, proxy_for):
    legacy = sdk_upstream("legacy-sse")
    proxy = proxy_for(legacy.base, {"limits": {"max_legacy_sessions": 1}})
    refused = 0

    @contextlib.asynccontextmanager
    async def session_when_free(http: httpx.AsyncClient) -> AsyncIterator[httpx.Response]:
        """A session, once the proxy has seen the last one's client leave (each wait is a refusal)."""
        nonlocal refused
        deadline = time.monotonic() + 5
        while True:
            async with http.stream("GET", proxy.sse_url) as stream:
                if stream.status_code == 200:
                    yield stream
                    return
                refused += 1
            assert time.monotonic() < deadline, "the legacy session slot did not come back"
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(4):  # the slot comes back each time the session ends
            async with session_when_free(http) as first:
                assert (await anext(first.aiter_lines())).startswith("event: endpoint")
                second = await http.get(proxy.sse_url)
                _assert_refused(second, 503, "limits.max_legacy_sessions")
                refused += 1
        assert await _metric(http, proxy, "limits.max_legacy_sessions") == refused


# --- the request head and body (raw sockets) ---

SLOW = {"limits": {"client_header_timeout_s": 1, "client_body_timeout_s": 1}}
SLOW_LIMITS = ("limits.max_header_bytes", "limits.client_header_timeout_s", "limits.client_body_timeout_s")


def _exchange(port: int, parts: list[bytes], pause: float = 0.0, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send `parts` (`pause` s apart, stopping when the peer has closed), read until the proxy closes;
    (everything read, seconds until closed)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:  # closed by the proxy (408/431 already on its way)
                break
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received, time.monotonic() - start


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _body(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def slow_proxy(sdk_upstream_module, tmp_path_factory) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path_factory.mktemp("slow-clients"), sdk_upstream_module("stateless-json").base, SLOW)
    yield proxy
    proxy.stop()


@pytest.fixture
async def metric_delta(slow_proxy) -> AsyncIterator[Callable[[str], Awaitable[float]]]:
    """`await delta(limit)`: how many refusals of `limit` the test itself caused."""
    async with httpx.AsyncClient() as http:
        before = {limit: await _metric(http, slow_proxy, limit) for limit in SLOW_LIMITS}

        async def delta(limit: str) -> float:
            return await _metric(http, slow_proxy, limit) - before[limit]

        yield delta


@pytest.mark.parametrize("fields", [
    [b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)],  # many fields
    [b"X-Pad: " + b"v" * 40 * 1024 + b"\r\n"],  # one giant field
], ids=["many-fields", "one-field"])
async def test_a_header_block_over_the_limit_is_431(slow_proxy, metric_delta, fields):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(fields) + b"\r\n"
    # In small writes too, so the head spans many reads of the proxy's.
    for parts in ([head], [head[i:i + 4096] for i in range(0, len(head), 4096)]):
        raw, _ = await asyncio.to_thread(_exchange, slow_proxy.port, parts)
        assert _status(raw) == 431, raw[:200]
        assert b"connection: close" in raw.lower() and b"limits.max_header_bytes" in _body(raw)
    # Just under the limit (32 KiB) is served.
    ok = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"v" * 30 * 1024 + b"\r\nConnection: close\r\n\r\n"
    raw, _ = await asyncio.to_thread(_exchange, slow_proxy.port, [ok])
    assert _status(raw) == 200
    # A large body in the same reads as a small head is no part of the head.
    body = b"x" * 200 * 1024
    big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    raw, _ = await asyncio.to_thread(_exchange, slow_proxy.port, [big + body])
    assert _status(raw) == 200
    assert await metric_delta("limits.max_header_bytes") == 2


async def test_pipelined_requests_with_a_large_body_between_their_heads_are_all_answered(slow_proxy):
    """One read that ends a head, carries its 40 KiB body and begins the next head: none of that
    body is counted as the next head's."""
    body = b"x" * 40 * 1024
    first = b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    parts = [first[:20], first[20:] + body + second[:20], second[20:]]
    raw, _ = await asyncio.to_thread(_exchange, slow_proxy.port, parts, 0.1)
    assert raw.count(b"HTTP/1.1 ") == 2 and b"431" not in raw, raw[:300]
    assert raw.rstrip().endswith(b'{"status":"ok"}')


async def test_a_head_sent_too_slowly_is_408_and_closed(slow_proxy, metric_delta):
    drip = [b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", *[b"X-Drip: %d\r\n" % i for i in range(20)]]
    raw, elapsed = await asyncio.to_thread(_exchange, slow_proxy.port, drip, 0.2)
    assert _status(raw) == 408 and b"limits.client_header_timeout_s" in _body(raw)
    assert 0.9 < elapsed < 2.5  # the head's deadline, however steadily it drips
    # A connection that never sends a byte is closed without an answer (nothing was asked).
    raw, elapsed = await asyncio.to_thread(_exchange, slow_proxy.port, [])
    assert raw == b"" and 0.9 < elapsed < 2.5
    assert await metric_delta("limits.client_header_timeout_s") == 1


async def test_a_stalled_body_is_408_but_a_slow_steady_one_is_served(slow_proxy, metric_delta):
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    head = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    raw, elapsed = await asyncio.to_thread(_exchange, slow_proxy.port, [head + body[:10]])
    assert _status(raw) == 408 and b"limits.client_body_timeout_s" in _body(raw)
    assert 0.9 < elapsed < 2.5
    # Never silent for 1 s, though it takes 2.4 s in all: served.
    pieces = [head, *(body[i:i + 7] for i in range(0, len(body), 7))]
    raw, elapsed = await asyncio.to_thread(_exchange, slow_proxy.port, pieces, 0.4)
    assert _status(raw) == 200 and b'"result"' in raw and elapsed > 2
    assert await metric_delta("limits.client_body_timeout_s") == 1
    assert "Traceback" not in slow_proxy.handle.stderr()
