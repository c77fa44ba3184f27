"""One session (in the bridge): the messages of an SDK server transport's streams to and from one
server process. A message pump, not a protocol implementation: the SDK transport does the HTTP
side (Streamable HTTP or legacy SSE), the server does MCP.

Over stdio, nothing says which of the client's requests a server's notification or request belongs
to; over Streamable HTTP that decides the stream it travels on (a POST's, or the GET stream, which
a client need not open). So each one is related here, as the SDK relates them when it runs a server
itself: a progress notification to the request whose `progressToken` it carries; a list-changed or
resource-updated notification to none (the GET stream); anything else (a log message, a sampling,
elicitation or roots request) to the latest request still unanswered, else to none.

A client's `notifications/cancelled` is passed on, and the cancelled request's stream ended, as
the SDK's transport asks (`on_request_unanswered`). When the process exits (or its stdout closes,
or it sends a message over the bound) the session ends: every request still waiting is answered
with a JSON-RPC error saying so, then the transport's streams close.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from .child import Child, MessageTooLarge
from .health import Health, exit_problem

log = logging.getLogger("mcp_policy_proxy.stdio")

_SESSION_WIDE = frozenset({
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/resources/list_changed", "notifications/resources/updated",
})
_FAREWELL_S = 1.0  # to tell waiting requests that the server is gone, should the client not read
_EXIT_POLL_S = 0.5


class _Waiting:
    """The client's requests the server has not answered yet, in the order they were sent."""

    def __init__(self) -> None:
        self.requests: dict[Any, tuple[Any, Callable[[], Awaitable[None]] | None]] = {}

    def add(self, request: types.JSONRPCRequest, metadata: Any) -> None:
        meta = (request.params or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        self.requests[request.id] = (token, getattr(metadata, "on_request_unanswered", None))

    def relate(self, message: types.JSONRPCRequest | types.JSONRPCNotification) -> Any:
        if message.method in _SESSION_WIDE:
            return None
        if message.method == "notifications/progress":
            token = (message.params or {}).get("progressToken")
            return next((rid for rid, (t, _) in self.requests.items() if t is not None and t == token), None)
        return next(reversed(self.requests), None)


async def pump(child: Child, health: Health, read_stream: Any, write_stream: Any) -> None:
    """Until the server's end or the client's (its read stream closing: DELETE, idle, gone); the
    process is ended either way."""
    waiting = _Waiting()
    ended: list[str] = []  # why the server's side ended, if it did
    answered = False  # the server sent a message: it started

    async def to_server() -> None:
        try:
            async for item in read_stream:
                if not isinstance(item, SessionMessage):  # the transport's own parse failure: answered already
                    continue
                message = item.message
                cancelled = None
                if isinstance(message, types.JSONRPCRequest):
                    waiting.add(message, item.metadata)
                elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
                    request_id = (message.params or {}).get("requestId")
                    if isinstance(request_id, int | str):
                        cancelled = waiting.requests.pop(request_id, None)
                await child.send(message)
                if cancelled is not None and cancelled[1] is not None:
                    await cancelled[1]()  # ends that request's stream (its answer may never come)
        except (BrokenPipeError, ConnectionResetError):
            # The server closed its stdin: it is exiting, mostly. A moment for to_client to see it
            # go and tell the waiting requests so, before the session ends anyway.
            await child.exited(2.0)
            await anyio.sleep(0.5)

    async def to_client() -> None:
        nonlocal answered
        try:
            async for message in _first_within(child, health.settings.start_timeout_s):
                if not answered:
                    answered = True
                    health.succeeded()
                related = None
                if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                    waiting.requests.pop(message.id, None)
                else:
                    related = waiting.relate(message)
                metadata = ServerMessageMetadata(related_request_id=related) if related is not None else None
                await write_stream.send(SessionMessage(message, metadata=metadata))
            ended.append(await exit_problem(child, "" if answered else "before its first message"))
        except MessageTooLarge:
            ended.append(f"sent a message over {health.settings.max_message_bytes} bytes (limits.max_sse_event_bytes)")
        except TimeoutError:
            ended.append(f"did not answer within {health.settings.start_timeout_s:g} s of starting")

    async def exit_seen() -> None:
        """The process's exit, for when its stdout stays open (a process it started holds it)."""
        while child.returncode is None:
            await anyio.sleep(_EXIT_POLL_S)
        await anyio.sleep(_FAREWELL_S)  # its last messages, read by to_client meanwhile
        ended.append(await exit_problem(child, "" if answered else "before its first message"))

    async def first_done(task: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        try:
            await task()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the transport's side went away: the session ends
        except Exception:  # this session ends, never the bridge's other sessions
            log.exception("stdio %s: the session failed", child.label)
        finally:
            scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_done, to_server, tg.cancel_scope)
            tg.start_soon(first_done, to_client, tg.cancel_scope)
            tg.start_soon(first_done, exit_seen, tg.cancel_scope)
        if ended:
            reason = ended[0].strip()
            if not answered:  # it never worked: the command is broken, not this session
                health.failed(reason)
            log.warning("stdio %s: the server process %s: its session ends", child.label, reason)
            await _answer_waiting(waiting, write_stream, f"The upstream stdio server {reason}; the session ended")
    finally:
        with anyio.CancelScope(shield=True):
            await child.stop()
            await write_stream.aclose()


async def _first_within(child: Child, timeout_s: float) -> Any:
    """The server's messages, the first within `timeout_s` of the start (TimeoutError)."""
    messages = child.messages()
    with anyio.fail_after(timeout_s):
        first = await anext(messages, None)
    if first is None:
        return
    yield first
    async for message in messages:
        yield message


async def _answer_waiting(waiting: _Waiting, write_stream: Any, text: str) -> None:
    with anyio.move_on_after(_FAREWELL_S):
        for request_id in list(waiting.requests):
            error = types.JSONRPCError(jsonrpc="2.0", id=request_id,
                                       error=types.ErrorData(code=types.INTERNAL_ERROR, message=text))
            try:
                await write_stream.send(SessionMessage(error))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
