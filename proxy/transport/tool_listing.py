"""The proxy lists the upstream's tools itself, as an MCP client with its own upstream credential.

Used when a `tools/call` names a tool the inventory does not hold: the proxy must know the tool's
declared `inputSchema` before it can decide the call. Sessionless first (revision 2026-07-28, one
request per page), then the classic handshake (initialize, notifications/initialized, tools/list
pages, DELETE of the session), as the official SDK clients fall back. Nothing of this traffic
reaches a client; answers are bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..enforce.inventory import MAX_TOOLS
from ..protocol import jsonrpc
from ..protocol.headers import METHOD, PROTOCOL_VERSION, SESSION_ID
from ..protocol.sse import SSEDecoder
from .upstream import UpstreamClient, UpstreamError

MODERN_REVISION = "2026-07-28"
CLASSIC_REVISION = "2025-11-25"
MAX_PAGES = 100
_DELETE_TIMEOUT_S = 2.0
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLIENT_INFO = {"name": "mcp-policy-proxy", "version": __version__}
# The proxy's own requests say so (upstream logs, and tests telling them from relayed ones).
USER_AGENT = f"mcp-policy-proxy/{__version__} (tool listing)"
_POST_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class ListingFailed(Exception):
    pass


class UpstreamToolLister:
    """`await lister()` → every tool the upstream declares (all pages), over Streamable HTTP at `url`,
    else over legacy SSE at `sse_url` when the Streamable HTTP endpoint refuses."""

    def __init__(self, client: UpstreamClient, url: str, *, max_bytes: int, timeout_s: float,
                 sse_url: str | None = None) -> None:
        self._client, self._url, self._max_bytes, self._timeout_s = client, url, max_bytes, timeout_s
        self._sse_url = sse_url
        self._remaining = max_bytes
        self._background: set[asyncio.Future[None]] = set()
        # With the proxy's upstream credential; plain bytes (no Accept-Encoding would allow any coding).
        self._headers = {**client.headers, "user-agent": USER_AGENT, "accept-encoding": "identity"}

    async def __call__(self) -> list[dict[str, Any]]:
        self._remaining = self._max_bytes  # what the whole listing may read, every page together
        async with asyncio.timeout(self._timeout_s):
            try:
                return await self._pages(self._modern_page)
            except ListingFailed:
                pass
            try:
                return await self._classic()
            except ListingFailed:
                if self._sse_url is None:
                    raise
            return await self._legacy(self._sse_url)

    async def _modern_page(self, cursor: str | None) -> dict[str, Any]:
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN_REVISION,
                "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": _CLIENT_INFO}
        params: dict[str, Any] = {"_meta": meta}
        if cursor is not None:
            params["cursor"] = cursor
        headers = {METHOD: "tools/list", PROTOCOL_VERSION: MODERN_REVISION}
        _, result = await self._request("tools/list", params, headers)
        return result

    async def _classic(self) -> list[dict[str, Any]]:
        params = {"protocolVersion": CLASSIC_REVISION, "capabilities": {}, "clientInfo": _CLIENT_INFO}
        session, result = await self._request("initialize", params, {})
        version = result.get("protocolVersion")
        # Upstream text becomes a header of the proxy's own request: only a revision's shape.
        headers = {PROTOCOL_VERSION: version if isinstance(version, str) and _REVISION.fullmatch(version)
                   else CLASSIC_REVISION}
        if session is not None:
            headers[SESSION_ID] = session
        try:
            (await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)).close()

            async def page(cursor: str | None) -> dict[str, Any]:
                return (await self._request("tools/list", {} if cursor is None else {"cursor": cursor}, headers))[1]

            return await self._pages(page)
        finally:
            if session is not None:  # in the background: the listing may have timed out already
                ending = asyncio.ensure_future(self._end_session(headers))
                self._background.add(ending)
                ending.add_done_callback(self._background.discard)

    async def _end_session(self, headers: dict[str, str]) -> None:
        with contextlib.suppress(UpstreamError, OSError, TimeoutError):
            async with asyncio.timeout(_DELETE_TIMEOUT_S):
                (await self._client.send("DELETE", self._url, {**self._headers, **headers})).close()

    async def _pages(self, page: Any) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            result = await page(cursor)
            listed = result.get("tools")
            if not isinstance(listed, list):
                raise ListingFailed("tools/list result has no list of tools")
            tools.extend(t for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str))
            if len(tools) >= MAX_TOOLS:
                return tools[:MAX_TOOLS]  # the inventory keeps no more
            cursor = result.get("nextCursor")
            if cursor is None:
                return tools
            if not isinstance(cursor, str) or cursor in seen:
                raise ListingFailed("tools/list pagination does not terminate")
            seen.add(cursor)
        raise ListingFailed(f"tools/list has more than {MAX_PAGES} pages")

    async def _legacy(self, sse_url: str) -> list[dict[str, Any]]:
        """Revision 2024-11-05: GET the stream, POST to the endpoint it names, answers on the stream."""
        stream = await self._client.send("GET", sse_url, {**self._headers, "accept": "text/event-stream"})
        try:
            if stream.status != 200 or not stream.content_type.startswith("text/event-stream"):
                raise ListingFailed(f"legacy SSE: upstream answered HTTP {stream.status}")
            events = self._stream_data(stream)
            endpoint = await anext(events, None)
            if endpoint is None or endpoint[0] != "endpoint":
                raise ListingFailed("legacy SSE: the stream names no endpoint")
            target = urljoin(sse_url, endpoint[1].strip())
            if urlsplit(target)[:2] != urlsplit(sse_url)[:2]:
                raise ListingFailed("legacy SSE: the endpoint is on another origin")
            ids = iter(range(1, 1 + 2 * MAX_PAGES))

            async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
                request_id = next(ids)
                await self._post(target, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
                async for kind, data in events:
                    msg = _message(data) if kind == "message" else None
                    if msg is not None and msg.kind is jsonrpc.Kind.RESPONSE and msg.id == request_id:
                        return _result(method, msg)
                raise ListingFailed(f"{method}: the stream ended without an answer")

            params = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": _CLIENT_INFO}
            await request("initialize", params)
            await self._post(target, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            return await self._pages(lambda cursor: request("tools/list", {} if cursor is None else {"cursor": cursor}))
        finally:
            stream.close()

    async def _post(self, url: str, message: dict[str, Any]) -> None:
        resp = await self._client.send("POST", url, {**self._headers, "content-type": "application/json"},
                                       jsonrpc.encode(message))
        resp.close()  # its answer (202) is of no interest; the answers come on the stream
        if resp.status >= 300:
            raise ListingFailed(f"legacy SSE: upstream answered a POST with HTTP {resp.status}")

    async def _stream_data(self, resp: Any) -> Any:
        """(event type, data) of each event of an SSE stream that carries data."""
        decoder = SSEDecoder(self._max_bytes)
        async for chunk in resp.chunks():
            self._spend(len(chunk))
            for ev in decoder.feed(chunk):
                if ev.has_data and ev.data:
                    yield ev.event or "message", ev.data

    # --- one exchange ---
    async def _send(self, message: dict[str, Any], headers: dict[str, str]) -> Any:
        resp = await self._client.send("POST", self._url, {**self._headers, **_POST_HEADERS, **headers},
                                       jsonrpc.encode(message))
        return resp

    async def _request(self, method: str, params: dict[str, Any], headers: dict[str, str]
                       ) -> tuple[str | None, dict[str, Any]]:
        """(session id, result) of one request; ListingFailed for any error status or answer."""
        resp = await self._send({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers)
        if resp.status >= 300:
            resp.close()
            raise ListingFailed(f"{method}: upstream answered HTTP {resp.status}")
        session = next((v for n, v in resp.headers if n == SESSION_ID), None)
        if resp.content_type.startswith("text/event-stream"):
            msg = await self._from_stream(resp)
        else:
            body = await resp.read(self._remaining, self._timeout_s)
            self._spend(len(body))
            msg = _message(body)
        if msg is None or msg.kind is not jsonrpc.Kind.RESPONSE or msg.id != 1:
            raise ListingFailed(f"{method}: the upstream's answer is not a JSON-RPC response")
        return session, _result(method, msg)

    async def _from_stream(self, resp: Any) -> jsonrpc.Message | None:
        try:
            async for kind, data in self._stream_data(resp):
                msg = _message(data) if kind == "message" else None
                if msg is not None and msg.kind is jsonrpc.Kind.RESPONSE:
                    return msg
        finally:
            resp.close()  # the stream may go on (pings): this connection is not reused
        return None


    def _spend(self, size: int) -> None:
        self._remaining -= size
        if self._remaining < 0:
            raise ListingFailed(f"the upstream's tool listing is larger than {self._max_bytes} bytes")


def _message(data: bytes | str) -> jsonrpc.Message | None:
    try:
        return jsonrpc.parse_server_data(data)
    except jsonrpc.UndecidableAnswer as exc:
        raise ListingFailed(f"the upstream's answer cannot be read: {exc.reason}") from None


def _result(method: str, msg: jsonrpc.Message) -> dict[str, Any]:
    result = msg.data.get("result")
    if not isinstance(result, dict):
        raise ListingFailed(f"{method}: {msg.data.get('error')}")
    return result
