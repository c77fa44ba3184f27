"""Decision logs shipped OPA's way (decision_log.service; docs/logging.md): the real proxy as a
subprocess in front of the SDK upstream, a receiver on loopback (aiohttp.web, in the test's loop).

Every decision is also written to a `file:` sink: what the receiver gets must be exactly those
entries, in order. The receiver can be down (nothing listening), answer errors, or stall.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.proxy_harness import Proxy, start_proxy
from tests.peers.clients import sdk_client
from tests.peers.harness import free_port, soon

SECRET = "Bearer shipping-credential-7f3a9c"  # the service's Authorization header: never logged


class Receiver:
    """An OPA decision-log service: POST /logs, a gzip'd JSON array per request. A raw asyncio
    HTTP/1.1 server, so the body is checked as sent (aiohttp's server would decode it first)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.batches: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.stall = 0.0  # seconds each request is held before its answer
        self.status = 200
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/logs"

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                assert line == "POST /logs HTTP/1.1", line
                if self.stall:
                    await asyncio.sleep(self.stall)
                if self.status == 200:
                    self.headers.append(headers)
                    self.batches.append(json.loads(gzip.decompress(body)))
                status = 204 if self.status == 200 else self.status
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def until(check: Any) -> bool:
    return await soon(check, timeout=8.0)


@pytest.fixture
async def receiver() -> Any:
    r = Receiver(free_port())
    yield r
    await r.stop()


def shipping_proxy(workdir: Path, upstream: Any, receiver: Receiver, **service: Any) -> Proxy:
    return start_proxy(workdir, upstream.base, {"decision_log": {
        "sink": f"file:{workdir / 'decisions.log'}",
        "service": {"url": receiver.url, "headers": {"Authorization": SECRET}, "timeout_s": 2,
                    "min_delay_s": 0.1, "max_delay_s": 0.3, **service}}},
        log_level="info", access_log=True)


async def flushed() -> None:
    await asyncio.sleep(0.7)  # the file sink writes every 0.5 s


def written(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "decisions.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def decisions(proxy: Proxy, calls: int) -> list[float]:
    """`calls` tools/list over one session (each: the request's decision and its page's); each call's seconds."""
    took = []
    async with sdk_client(proxy.url) as client:
        for _ in range(calls):
            start = time.perf_counter()
            assert await client.tool_names()
            took.append(time.perf_counter() - start)
    return took


def dropped(proxy: Proxy) -> float:
    text = httpx.get(f"{proxy.base}/metrics").text
    match = re.search(r"^mcp_proxy_decision_log_dropped_total (\S+)$", text, re.M)
    assert match, "mcp_proxy_decision_log_dropped_total is not exported"
    return float(match.group(1))


async def test_entries_arrive_gzipped_in_order_and_complete(sdk_upstream, tmp_path, receiver):
    await receiver.start()
    proxy = shipping_proxy(tmp_path, sdk_upstream("stateless-json"), receiver, batch_size=4)
    try:
        await decisions(proxy, 10)
        assert await until(lambda: len(receiver.entries) >= len(written(tmp_path)) > 0)
        # Exactly what was decided (the file sink), in order, each whole; at most batch_size per POST.
        assert receiver.entries == written(tmp_path)
        assert max(len(b) for b in receiver.batches) <= 4 and len(receiver.batches) >= 3
        entry = receiver.entries[0]
        assert set(entry) == {"decision_id", "timestamp", "path", "input", "result", "metrics", "labels"}
        for headers in receiver.headers:
            assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/json"
            assert headers["authorization"] == SECRET
        # The access line names the request's decisions: every one of them was shipped.
        shipped = {e["decision_id"] for e in receiver.entries}
        access = [json.loads(line) for line in proxy.handle.stdout().splitlines()]
        posts = [a for a in access if a.get("logger") == "uvicorn.access" and a["method"] == "POST"]
        assert posts and all(a["decision_ids"] and set(a["decision_ids"]) <= shipped for a in posts)
        assert all(a["trace_id"] == "" for a in posts)
        assert dropped(proxy) == 0
    finally:
        proxy.stop()
    assert SECRET.split()[1] not in proxy.handle.stdout() + proxy.handle.stderr()


async def test_receiver_down_entries_wait_then_arrive(sdk_upstream, tmp_path, receiver):
    proxy = shipping_proxy(tmp_path, sdk_upstream("stateless-json"), receiver, batch_size=3)
    try:
        await decisions(proxy, 4)
        await asyncio.sleep(1.0)  # several failed uploads (backoff capped at max_delay_s)
        assert receiver.entries == [] and written(tmp_path)
        assert "decision log upload to http://127.0.0.1:" in proxy.handle.stderr()  # once per outage
        await receiver.start()
        assert await until(lambda: len(receiver.entries) >= len(written(tmp_path)))
        assert receiver.entries == written(tmp_path) and dropped(proxy) == 0
        assert "succeed again" in proxy.handle.stderr()
    finally:
        proxy.stop()
    logs = proxy.handle.stdout() + proxy.handle.stderr()
    assert SECRET.split()[1] not in logs and logs.count("decision log upload to") == 1  # once per outage


async def test_a_full_buffer_drops_the_oldest_and_counts_them(sdk_upstream, tmp_path, receiver):
    receiver.status = 503  # up, but refusing: every upload fails and is retried
    await receiver.start()
    proxy = shipping_proxy(tmp_path, sdk_upstream("stateless-json"), receiver, batch_size=2,
                           buffer_size_limit_events=5)
    try:
        await decisions(proxy, 6)
        await flushed()
        total = len(written(tmp_path))
        assert total >= 12
        assert await until(lambda: dropped(proxy) == total - 5)  # the buffer never holds more than 5
        receiver.status = 200
        assert await until(lambda: len(receiver.entries) == 5)
        await asyncio.sleep(0.5)
        assert len(receiver.entries) == 5 and dropped(proxy) == total - 5
        ids = [e["decision_id"] for e in written(tmp_path)]
        positions = [ids.index(e["decision_id"]) for e in receiver.entries]
        assert positions == sorted(positions)  # in order
        assert positions[-1] == len(ids) - 1  # the newest kept: the oldest were dropped
    finally:
        proxy.stop()


async def test_a_stalled_receiver_never_slows_requests(sdk_upstream, tmp_path, receiver):
    """Uploads hang for the whole measurement (until timeout_s): request latency stays as it was."""
    await receiver.start()
    upstream = sdk_upstream("stateless-json")
    proxy = shipping_proxy(tmp_path, upstream, receiver, batch_size=1, timeout_s=2)
    try:
        await decisions(proxy, 5)  # warm up
        assert await until(lambda: len(receiver.entries) >= len(written(tmp_path)))
        baseline = await decisions(proxy, 20)
        receiver.stall = 30.0
        stalled = await decisions(proxy, 20)
        b, s = statistics.median(baseline), statistics.median(stalled)
        print(f"tools/list median {b * 1000:.1f} ms (receiver fine), {s * 1000:.1f} ms (receiver stalled); "
              f"max {max(stalled) * 1000:.1f} ms")
        assert s < 2 * b + 0.02 and max(stalled) < 1.0  # one stalled upload takes 2 s (timeout_s)
    finally:
        receiver.stall = 0.0
        proxy.stop()


async def test_shutdown_flushes_what_is_buffered(sdk_upstream, tmp_path, receiver):
    await receiver.start()
    proxy = shipping_proxy(tmp_path, sdk_upstream("stateless-json"), receiver, batch_size=100, min_delay_s=60,
                           max_delay_s=60)
    try:
        await decisions(proxy, 3)
        await asyncio.sleep(0.3)
        assert receiver.entries == []  # neither a full batch nor min_delay_s yet
    finally:
        await asyncio.to_thread(proxy.stop)  # SIGTERM: the lifespan's shutdown uploads the rest
    assert receiver.entries == written(tmp_path) and receiver.entries
