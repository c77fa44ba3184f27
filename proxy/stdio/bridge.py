"""The bridge process: a stdio server served as Streamable HTTP (`/mcp`) and legacy HTTP+SSE
(`/sse`, `/messages/`) to the proxy, one server process per session.

Run by the proxy only (`python -m proxy.stdio FD`, launcher.py): it serves the listening socket
the proxy bound and handed down as FD, and reads its settings (settings.py) from stdin. Every
request must carry the proxy's secret (`Authorization: Bearer …`, compared in constant time), else
401: another local user who finds the loopback port cannot use the server through it.

The HTTP side is the official SDK's server transports (`StreamableHTTPServerTransport`,
`SseServerTransport`); pump.py moves their messages to and from the server process. What the SDK's
session manager would do around a `Server` is done here around a process:

- a request without a session must be `initialize` (the classic handshake, whatever the client's
  revision): anything else gets 400 with a JSON-RPC error, which makes the SDK clients fall back
  from revision 2026-07-28's sessionless requests to the handshake (docs/upstreams.md says why);
- the session's server process is started before that request is answered, within
  `max_children` (beyond: 503, Retry-After); while the command cannot start (health.py): 503;
- a session ends on DELETE, after `idle_timeout_s` without a request in flight (an open GET stream
  counts as one), or when its process exits; its id then answers 404 (the client initializes anew).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.types import Message, Receive, Scope, Send

from ..transport.replay import replaying
from .child import Child
from .health import Health, Refused
from .pump import pump
from .settings import BridgeSettings

log = logging.getLogger("mcp_policy_proxy.stdio")

_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain")]
_NOT_IN_SESSION = ("This upstream is a stdio server, served in sessions: a request without Mcp-Session-Id must be "
                   "initialize (revision 2026-07-28's sessionless requests are not served; clients fall back to "
                   "the initialize handshake)")


class BridgeApp:
    """The ASGI app of the bridge process."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.health = Health(settings)
        self._authorization = f"Bearer {settings.secret}".encode()
        self._sessions: dict[str, StreamableHTTPServerTransport] = {}
        self._children: set[object] = set()  # sessions' server processes (both transports): max_children
        self._group: TaskGroup | None = None
        self._sse = SseServerTransport("/messages/", max_request_body_size=settings.max_body_bytes)
        self._mcp = RequestBodyLimitMiddleware(self._streamable, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        authorization = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
        if not hmac.compare_digest(authorization, self._authorization):
            await _reply(send, 401, _TEXT, b"Unauthorized")
            return
        path, method = scope["path"], scope["method"]
        if path == "/mcp":
            await self._mcp(scope, receive, send)
        elif path == "/sse" and method == "GET":
            await self._legacy(scope, receive, send)
        elif path in ("/messages/", "/messages"):
            await self._sse.handle_post_message(scope, receive, send)
        elif path == "/readyz" and method == "GET":
            problem = self.health.readiness()
            body = json.dumps({"ready": problem is None, "reason": problem}).encode()
            await _reply(send, 200 if problem is None else 503, _JSON, body)
        else:
            await _reply(send, 404, _TEXT, b"Not Found")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self.health.watch)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            group.cancel_scope.cancel()  # every session's process is ended (pump.py, shielded)
        await send({"type": "lifespan.shutdown.complete"})

    # --- admission ---
    async def _start(self, label: str) -> Child:
        """A session's server process, counted against max_children until `_release`d."""
        if len(self._children) >= self.settings.max_children:
            raise Refused(f"{len(self._children)} stdio server processes are running (upstream.max_children)", 5)
        placeholder = object()  # holds the place while the process starts
        self._children.add(placeholder)
        try:
            child = await self.health.start(label)
        finally:
            self._children.discard(placeholder)
        self._children.add(child)
        return child

    async def _release(self, child: Child) -> None:
        """The session is over: its process is ended (once; pump.py ends it too) and uncounted."""
        if child in self._children:
            with anyio.CancelScope(shield=True):
                await child.stop()
            self._children.discard(child)

    # --- Streamable HTTP ---
    async def _streamable(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        presented = headers.get(MCP_SESSION_ID_HEADER.encode())
        if presented is not None:
            transport = self._sessions.get(presented.decode("latin-1"))
            if transport is None:
                await _error(send, 404, None, types.INVALID_REQUEST, "Session not found")
                return
            await transport.handle_request(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _error(send, 400, None, types.INVALID_REQUEST, "Bad Request: Missing session ID")
            return
        body = await _body(receive)
        request_id, method = _opening(body)
        if method != "initialize":
            await _error(send, 400, request_id, types.INVALID_REQUEST, _NOT_IN_SESSION)
            return
        session_id = uuid.uuid4().hex
        try:
            child = await self._start(session_id[:8])
        except Refused as refused:
            await _error(send, 503, request_id, types.INTERNAL_ERROR, f"Upstream unavailable: {refused.reason}",
                         refused.retry_after_s)
            return
        transport = StreamableHTTPServerTransport(session_id, idle_timeout=self.settings.idle_timeout_s)
        self._sessions[session_id] = transport
        assert self._group is not None
        established = False
        try:
            await self._group.start(self._session, transport, child)
            status = await _answered(transport, scope, replaying(body, receive), send)
            established = status is not None and status < 400
        finally:
            if not established:  # no session came of it (refused, failed, or its client went away)
                self._sessions.pop(session_id, None)
                with anyio.CancelScope(shield=True):
                    await transport.terminate()  # its pump ends, and its process
                    await self._release(child)

    async def _session(self, transport: StreamableHTTPServerTransport, child: Child, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        session_id = transport.mcp_session_id
        assert session_id is not None
        try:
            async with transport.connect() as (read_stream, write_stream):
                task_status.started()
                idle = transport.idle_scope or anyio.CancelScope()
                with idle:
                    await pump(child, self.health, read_stream, write_stream)
                if idle.cancelled_caught:
                    log.info("stdio %s: no request for %g s (upstream.session_idle_timeout_s): the session ended",
                             child.label, self.settings.idle_timeout_s)
        finally:
            self._sessions.pop(session_id, None)  # 404 from now on
            with anyio.CancelScope(shield=True):
                await transport.terminate()
            await self._release(child)

    # --- legacy HTTP+SSE ---
    async def _legacy(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            child = await self._start(uuid.uuid4().hex[:8])
        except Refused as refused:
            await _error(send, 503, None, types.INTERNAL_ERROR, f"Upstream unavailable: {refused.reason}",
                         refused.retry_after_s)
            return
        try:
            async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await pump(child, self.health, read_stream, write_stream)
        finally:
            await self._release(child)


def _opening(body: bytes) -> tuple[Any, Any]:
    """(id, method) of the request opening a session, as far as the body has them."""
    try:
        message = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(message, dict):
        return None, None
    request_id = message.get("id")
    return (request_id if isinstance(request_id, int | str) and not isinstance(request_id, bool) else None,
            message.get("method"))


async def _body(receive: Receive) -> bytes:
    """The request body (its size is bounded by RequestBodyLimitMiddleware in front)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answered(transport: StreamableHTTPServerTransport, scope: Scope, receive: Receive, send: Send
                    ) -> int | None:
    status: int | None = None

    async def watch(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await transport.handle_request(scope, receive, watch)
    return status


async def _reply(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, request_id: Any, code: int, message: str,
                 retry_after_s: int | None = None) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    headers = list(_JSON)
    if retry_after_s is not None:
        error["data"] = {"retry_after_s": retry_after_s}
        headers.append((b"retry-after", str(retry_after_s).encode()))
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
    await _reply(send, status, headers, body)


def _stop_with_parent(parent: int) -> None:
    """SIGTERM to this bridge once the proxy that started it is gone: no orphan serves on."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    import uvicorn

    from ..observe import logging_setup

    settings = BridgeSettings.decode(sys.stdin.buffer.read())
    log_config = logging_setup.configure(settings.log_format, settings.log_level)
    for name in ("mcp", "sse_starlette"):  # their debug lines quote messages (arguments, results)
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines: the proxy's say it
    _stop_with_parent(os.getppid())
    sock = socket.socket(fileno=int(argv[0]))
    config = uvicorn.Config(BridgeApp(settings), log_level=settings.log_level, loop="uvloop", log_config=log_config,
                            access_log=False, server_header=False, lifespan="on", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run([sock])
    return 0
