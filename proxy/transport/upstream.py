"""The proxy's HTTP client to the upstream MCP server.

aiohttp, chosen by measurement (benchmarks/README.md): one pooled session per worker, created at
startup; bodies are streamed chunk by chunk. The timeout bounds the wait for response headers (and
for a JSON body); an SSE stream, once started, lives as long as both ends keep it open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from ..config import Upstream as UpstreamConfig


class UpstreamError(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    content_type: str
    _resp: aiohttp.ClientResponse

    async def read(self, limit: int, timeout_s: float) -> bytes:
        """The whole body (a single JSON message), bounded in size and time."""
        try:
            async with asyncio.timeout(timeout_s):
                body = await self._resp.content.read(limit + 1)
                if len(body) > limit:
                    raise UpstreamError(502, "Upstream response body is too large")
                return body
        except TimeoutError:
            raise UpstreamError(504, "Upstream timed out") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream connection failed: {type(exc).__name__}") from None
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; the connection is closed if the consumer stops early."""
        complete = False
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
            complete = True
        finally:
            if complete:
                self._resp.release()
            else:
                self._resp.close()

    def close(self) -> None:
        self._resp.close()


class UpstreamClient:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.headers = dict(config.headers)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> UpstreamResponse:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        try:
            async with asyncio.timeout(self.config.timeout_s):
                resp = await self._session.request(method, url, headers=headers, data=body,
                                                   allow_redirects=False)
        except TimeoutError:
            raise UpstreamError(504, "Upstream timed out") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream unreachable: {type(exc).__name__}") from None
        return UpstreamResponse(resp.status, list(resp.headers.items()),
                                resp.headers.get("content-type", "").lower(), resp)
