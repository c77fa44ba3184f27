"""Helpers for the tests of several workers and replicas (test_workers.py, test_replicas.py).

The official SDK clients, made to open a new connection for every request (no keep-alive), so that
a worker group's shared socket hands successive requests to whichever worker accepts first; the
internal addresses of a group's workers (from its log); a sibling's signed request, as a test that
knows auth.session_key can make one; and one worker's own metrics.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from proxy.transport.cluster import METRICS_PATH, SIBLING_HEADER, Signer, sibling_key
from tests.integration.proxy_harness import Proxy
from tests.peers.harness import eventually

TIMEOUT = httpx2.Timeout(30.0, read=300.0)
NO_KEEPALIVE = httpx2.Limits(max_keepalive_connections=0)
_ENDPOINTS = re.compile(r"internal endpoints ((?:[\d.]+:\d+(?:, )?)+)")


def _no_keepalive_factory(headers=None, timeout=None, auth=None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=headers, timeout=timeout or TIMEOUT, auth=auth, limits=NO_KEEPALIVE)


@asynccontextmanager
async def streamable(url: str, mode: str, *, keepalive: bool = False) -> AsyncIterator[Client]:
    """The SDK's Streamable HTTP client (`mode`: legacy = initialize and a session, auto = 2026-07-28)."""
    limits = httpx2.Limits() if keepalive else NO_KEEPALIVE
    async with (httpx2.AsyncClient(timeout=TIMEOUT, limits=limits) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client):
        yield client


@asynccontextmanager
async def legacy(url: str, sessions: list[str], *, keepalive: bool = False, mode: str = "legacy"
                 ) -> AsyncIterator[Client]:
    """The SDK's legacy HTTP+SSE client (`mode` auto: it probes server/discover first, and the SDK's
    SSE server then speaks 2026-07-28); the proxy's session ids go into `sessions`."""
    kwargs = {} if keepalive else {"httpx_client_factory": _no_keepalive_factory}
    async with Client(sse_client(url, on_session_created=sessions.append, **kwargs), mode=mode,
                      cache=None) as client:
        yield client


async def echo(client: Client, text: str) -> str:
    result = await client.call_tool("echo", {"text": text})
    assert not result.is_error, result
    return result.content[0].text  # type: ignore[union-attr]


def owner_of(session_id: str) -> str:
    """The internal address a legacy session id names (`<random>.<owner>.<tag>`)."""
    field = session_id.split(".")[1]
    return base64.urlsafe_b64decode(field + "=" * (-len(field) % 4)).decode()


def with_owner(session_id: str, owner: str) -> str:
    """The same id naming another owner (its tag no longer fits)."""
    nonce, _, tag = session_id.split(".")
    return f"{nonce}.{base64.urlsafe_b64encode(owner.encode()).decode().rstrip('=')}.{tag}"


async def internal_endpoints(proxy: Proxy, count: int) -> list[str]:
    """The workers' internal addresses, as the group's main process logs them (log level info)."""
    async def logged() -> bool:
        return _ENDPOINTS.search(proxy.handle.stderr()) is not None

    assert await eventually(logged, timeout=10), proxy.handle.stderr()
    match = _ENDPOINTS.search(proxy.handle.stderr())
    assert match is not None
    endpoints = match.group(1).split(", ")
    assert len(endpoints) == count, endpoints
    return endpoints


def signed(session_key: str, method: str, target: str, body: bytes = b"") -> dict[str, str]:
    return {SIBLING_HEADER: Signer(sibling_key(session_key)).sign(method, target, body)}


async def worker_metrics(http: httpx.AsyncClient, session_key: str, endpoint: str) -> str:
    """One worker's own exposition, from its internal endpoint (as a sibling asks for it)."""
    response = await http.get(f"http://{endpoint}{METRICS_PATH}", headers=signed(session_key, "GET", METRICS_PATH))
    assert response.status_code == 200, response.text
    return response.text


def total(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`."""
    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


async def wait_for_workers(http: httpx.AsyncClient, base: str, count: int) -> None:
    """Until a scrape adds up `count` workers (all of the group serve)."""
    async def all_serve() -> bool:
        try:
            text = (await http.get(f"{base}/metrics")).text
        except httpx.TransportError:
            return False
        return total(text, "mcp_proxy_cluster_workers_scraped") == count

    assert await eventually(all_serve, timeout=20, interval=0.2)
