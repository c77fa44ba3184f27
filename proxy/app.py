"""Starlette application assembly: routes, origin check, lifespan of the upstream client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import Config, is_loopback
from .enforce.pipeline import AllowAll, Pipeline
from .protocol import jsonrpc
from .transport import legacy_sse, streamable
from .transport.context import ProxyContext
from .transport.intake import error_response
from .transport.upstream import UpstreamClient

Handler = Callable[[Request], Awaitable[Any]]


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_guard(config: Config, handler: Handler) -> Handler:
    """403 for a browser Origin that is neither loopback nor configured (DNS rebinding defence)."""
    allowed = {_origin_of(o) for o in config.allowed_origins}
    if config.public_url:
        allowed.add(_origin_of(config.public_url))

    async def guarded(request: Request) -> Any:
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in allowed:
            host = urlsplit(origin).hostname
            if host is None or not is_loopback(host):
                return error_response(403, jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Origin not allowed"))
        return await handler(request)

    return guarded


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    ctx: ProxyContext = request.app.state.proxy
    url = urlsplit(ctx.config.upstream.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(url.hostname, port)
        writer.close()
    except (OSError, TimeoutError):
        return JSONResponse({"status": "unavailable", "reason": "upstream unreachable"}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(config: Config, pipeline: Pipeline | None = None) -> Starlette:
    upstream = UpstreamClient(config.upstream)
    ctx = ProxyContext(config, pipeline or AllowAll(), upstream)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await upstream.start()
        try:
            yield
        finally:
            await upstream.close()

    def mcp(handler: Handler) -> Handler:
        return origin_guard(config, handler)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/mcp", mcp(streamable.handle), methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
        Route("/sse", mcp(legacy_sse.open_stream), methods=["GET"]),
        Route("/messages/", mcp(legacy_sse.post_message), methods=["POST"]),
        Route("/messages", mcp(legacy_sse.post_message), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.proxy = ctx
    return app
