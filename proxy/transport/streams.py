"""Stream slots around one upstream exchange: the one path every transport forwards through.

A request whose answer may be a stream (a Streamable HTTP POST carrying a request, a GET, a legacy
`/sse` session) takes its slot *before* anything is forwarded: at a cap it is refused while the
upstream has not acted on it, never after. A JSON or empty answer gives the slot back at once; a
stream keeps it until it ends, however it ends (StreamResponse.on_end). So a principal's open
streams and its requests in flight share its cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Scope

from ..auth.authenticator import Access
from ..observe.metrics import OTHER, STATUS_LABELS, current
from . import answers
from .admission import Refusal, Slot
from .context import ProxyContext
from .endings import CLIENT_GONE, EXCHANGE_TASK, Ending
from .relay import BodyResponse, StreamResponse
from .upstream import UpstreamError

Relayed = BodyResponse | StreamResponse

_ENDED = Ending()
_ENDED.set()


async def _unless_gone(exchange: Callable[[], Awaitable[Relayed]], scope: Scope) -> Relayed:
    """`exchange()`, cancelled if the client leaves before it returns (ClientDisconnect; no watcher
    task per request: proxy/transport/endings.py)."""
    if scope.get(CLIENT_GONE):
        raise ClientDisconnect()
    task = asyncio.current_task()
    assert task is not None
    scope[EXCHANGE_TASK] = task
    try:
        return await exchange()
    except asyncio.CancelledError:
        if scope.get(CLIENT_GONE):  # cancelled by the server: the client left
            task.uncancel()
            raise ClientDisconnect() from None
        raise
    finally:
        del scope[EXCHANGE_TASK]


async def forward(ctx: ProxyContext, access: Access, exchange: Callable[[], Awaitable[Relayed]], *,
                  may_stream: bool, request_id: Any = None, legacy: bool = False,
                  scope: Scope | None = None) -> Relayed | answers.Answer:
    """`exchange()` (forward upstream, relay the answer) with a stream slot for its answer; the
    limit's Answer when a cap is reached. UpstreamError passes through (the slot released).

    `may_stream`: the protocol allows a stream here, so the slot is taken first. An answer the
    protocol has as no stream (to a notification, a response, a DELETE, a legacy POST) that comes
    as one anyway takes a slot when it arrives; at a cap it ends at once (nobody waits on it).

    `scope`: the client request's ASGI scope; when the client leaves before the answer starts, the
    exchange is cancelled (ClientDisconnect): a request still waiting for an upstream connection is
    never sent, one under way has its upstream connection closed (as nginx does by default)."""
    identity, server = access.principal.identity, access.server.name
    record = current()  # the request's outcome is noted here, once for every transport
    slot: Slot | None = None
    if may_stream:
        taken = ctx.admission.take(identity, server, legacy=legacy)
        if isinstance(taken, Refusal):
            record.outcome, record.error_type = "limited", str(taken.status)
            return answers.limit_reached(taken, request_id)
        slot = taken
    try:
        response = await (exchange() if scope is None else _unless_gone(exchange, scope))
    except BaseException as exc:
        if slot is not None:
            slot.release()
        if isinstance(exc, UpstreamError):  # 503: the upstream connection limit (upstream.py)
            record.outcome = "limited" if exc.status == 503 else "upstream_error"
            record.error_type = str(exc.status)
        raise
    record.outcome = "forwarded"
    if response.status >= 400 and not record.error_type:  # no JSON-RPC error named it (the enforcer)
        record.error_type = STATUS_LABELS.get(response.status, OTHER)
    if not isinstance(response, StreamResponse):
        if slot is not None:
            slot.release()
        return response
    if slot is None:
        taken = ctx.admission.take(identity, server)
        if isinstance(taken, Refusal):
            response.ended = _ENDED
            return response
        slot = taken
    response.on_end = slot.release
    return response
