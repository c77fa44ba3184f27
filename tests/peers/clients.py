"""Async helpers around the official ``mcp`` 2.3.0 client for integration tests.

``sdk_client(url, mode=...)`` speaks Streamable HTTP (``mode="auto"`` probes ``server/discover``
first and falls back to ``initialize`` on HTTP >= 400; ``mode="legacy"`` goes straight to
``initialize``). ``sse_client(url)`` speaks the 2024-11-05 HTTP+SSE transport. Both yield a
:class:`PeerClient`; the SDK ``Client`` is available as ``.client`` for anything not wrapped here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
from mcp import Client
from mcp.client.sse import sse_client as _sdk_sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp_types import CallToolResult, ListToolsResult, TextContent

SESSION_HEADER = "mcp-session-id"
# Same defaults as mcp.shared._httpx_utils.create_mcp_http_client (30 s, 300 s read for streams).
DEFAULT_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


@dataclass
class PeerClient:
    """A connected SDK client plus the transport facts tests want to inspect."""

    client: Client
    url: str
    transport: Literal["streamable-http", "sse"]
    http: httpx2.AsyncClient | None = None
    session_ids: list[str] = field(default_factory=list)
    """Every ``Mcp-Session-Id`` (streamable) or ``session_id`` (SSE endpoint) seen, in order."""

    @property
    def session_id(self) -> str | None:
        """The current session id, or None (stateless server or 2026-07-28 connection)."""
        return self.session_ids[-1] if self.session_ids else None

    @property
    def protocol_version(self) -> str:
        """The negotiated protocol version (``2026-07-28`` when discover succeeded)."""
        return self.client.protocol_version

    @property
    def modern(self) -> bool:
        """True when the connection negotiated via ``server/discover`` (no initialize, no session)."""
        return self.client.session.discover_result is not None

    async def list_tools(self) -> ListToolsResult:
        """Send ``tools/list`` (first page)."""
        return await self.client.list_tools()

    async def tool_names(self) -> list[str]:
        """Names of the tools on the first ``tools/list`` page."""
        return [t.name for t in (await self.list_tools()).tools]

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        progress: ProgressFnT | None = None,
        timeout: float | None = None,
    ) -> CallToolResult:
        """Send ``tools/call``; ``progress(progress, total, message)`` receives progress notifications."""
        return await self.client.call_tool(name, arguments, read_timeout_seconds=timeout, progress_callback=progress)

    async def call_text(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Call a tool and return its first text content (raises if the result is an error)."""
        result = await self.call_tool(name, arguments)
        if result.is_error:
            raise AssertionError(f"tool {name} failed: {result.content}")
        block = result.content[0]
        assert isinstance(block, TextContent), block
        return block.text

    async def terminate(self) -> int:
        """Send DELETE for the current session (Streamable HTTP only); return the HTTP status."""
        if self.http is None or self.session_id is None:
            raise RuntimeError("no Streamable HTTP session to terminate")
        headers = {SESSION_HEADER: self.session_id, "mcp-protocol-version": self.protocol_version}
        response = await self.http.delete(self.url, headers=headers)
        return response.status_code


@asynccontextmanager
async def sdk_client(
    url: str,
    mode: str = "auto",
    headers: dict[str, str] | None = None,
    *,
    read_timeout: float | None = 30.0,
    terminate_on_close: bool = True,
    **client_kwargs: Any,
) -> AsyncIterator[PeerClient]:
    """Connect the official Streamable HTTP client to `url` (``/mcp``).

    `mode`: ``"auto"`` (SDK default), ``"legacy"`` or a modern version such as ``"2026-07-28"``.
    `headers` go on every HTTP request (e.g. ``Authorization``). The SDK's response cache is off
    unless ``cache=`` is passed, so every call reaches the wire. On exit the SDK sends DELETE
    when it holds a session id and `terminate_on_close` is true.
    """
    seen: list[str] = []

    async def on_response(response: httpx2.Response) -> None:
        sid = response.headers.get(SESSION_HEADER)
        # Stateful SDK servers put a throw-away session id even on 4xx answers; ignore those.
        if sid and response.status_code < 400 and sid not in seen:
            seen.append(sid)

    client_kwargs.setdefault("cache", None)
    async with httpx2.AsyncClient(
        headers=headers, timeout=DEFAULT_TIMEOUT, event_hooks={"response": [on_response]}
    ) as http:
        transport = streamable_http_client(url, http_client=http, terminate_on_close=terminate_on_close)
        client = Client(transport, mode=mode, read_timeout_seconds=read_timeout, **client_kwargs)
        async with client:
            yield PeerClient(client=client, url=url, transport="streamable-http", http=http, session_ids=seen)


@asynccontextmanager
async def sse_client(
    url: str,
    mode: str = "legacy",
    headers: dict[str, str] | None = None,
    *,
    read_timeout: float | None = 30.0,
    **client_kwargs: Any,
) -> AsyncIterator[PeerClient]:
    """Connect the official legacy HTTP+SSE client to `url` (``/sse``).

    `mode` defaults to ``"legacy"`` (plain initialize); ``"auto"`` also works against the SDK SSE
    server (its discover probe is answered with a JSON-RPC error and the client falls back).
    """
    seen: list[str] = []
    client_kwargs.setdefault("cache", None)
    transport = _sdk_sse_client(url, headers=headers, on_session_created=seen.append)
    client = Client(transport, mode=mode, read_timeout_seconds=read_timeout, **client_kwargs)
    async with client:
        yield PeerClient(client=client, url=url, transport="sse", session_ids=seen)
