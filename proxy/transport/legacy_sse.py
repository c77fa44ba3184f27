"""Legacy HTTP+SSE (2024-11-05): `GET /sse` plus the messages POST endpoint it announces.

The upstream's `endpoint` event is rewritten so the client posts back through the proxy, under a
session id of the proxy's own. Each session keeps an outgoing queue merging the upstream's events
with messages the proxy writes itself (denials, errors), because on this transport every answer
travels on the GET stream, correlated by JSON-RPC id. A session holds a stream slot (and a legacy
session slot) for its life (streams.py); at the drain it ends once the requests posted to it are
answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from starlette.requests import Request

from ..auth.authenticator import Access
from ..enforce.pipeline import Channel
from ..protocol import jsonrpc
from ..protocol.headers import upstream_request_headers
from ..protocol.jsonrpc import INVALID_REQUEST, ProtocolError
from ..protocol.sse import Event, encode_event
from ..protocol.urls import normalize_url
from . import answers
from .context import ProxyContext
from .intake import admit
from .relay import SSE_TYPE, BodyResponse, StreamResponse, observe_rate_limits, relay, relay_sse, relayed_headers, typed
from .streams import forward
from .upstream import UpstreamError
from .upstreams import Route

log = logging.getLogger("mcp_policy_proxy.legacy_sse")

_END = b""


@dataclass(slots=True)
class LegacySession:
    id: str
    channel: Channel
    upstream_url: str | None = None
    # Bounded, so a client that reads slowly slows the upstream instead of filling memory.
    outgoing: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    newline: bytes = b"\n"
    draining: bool = False

    def drain(self) -> None:
        """Shutdown begins: end the stream once no request posted to it waits for its answer
        (the answer travels on this stream), at once when none does."""
        self.draining = True
        if not self.channel.watched:
            with contextlib.suppress(asyncio.QueueFull):  # full: the stream ends after what is queued
                self.outgoing.put_nowait(_END)

    @property
    def drained(self) -> bool:
        return self.draining and not self.channel.watched

    async def inject(self, message: dict[str, Any]) -> None:
        """Put a message of the proxy's own into the client's stream."""
        data = jsonrpc.encode(message).decode()
        await self.outgoing.put(encode_event(data, event="message", newline=self.newline).raw)

    async def deliver(self, answer: answers.Answer) -> BodyResponse:
        """The proxy's answer to a POST. One that answers a request travels on the stream, where this
        transport's answers travel, and the POST gets 202 Accepted (an error status would make the
        SDK's client end the whole session) — unless it carries a challenge (403 insufficient_scope,
        for an OAuth client's step-up); any other gets its status on the POST."""
        if answer.answers_request:
            assert answer.message is not None
            await self.inject(answer.message)
            if not any(name == "www-authenticate" for name, _ in answer.headers):  # Retry-After is no challenge
                return BodyResponse(202, [(b"content-type", b"text/plain")], b"Accepted")
        elif answer.status == 200:
            return BodyResponse(202, [(b"content-type", b"text/plain")], b"Accepted")
        return answer.response()


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


async def open_stream(ctx: ProxyContext, request: Request, access: Access) -> Any:
    if request.method != "GET":  # HEAD or POST must not open an upstream stream
        return BodyResponse(405, [(b"allow", b"GET")], b"")
    up = ctx.upstreams.route(access.server)  # this server's upstream (servers[].upstream)
    sse_url = up.config.sse_url
    if sse_url is None:
        return BodyResponse(404, [], b"Legacy SSE is not configured (upstream.sse_url)")
    channel = Channel("legacy_sse", access.server, "GET", None, request.headers.get("origin"), access.principal)
    headers = upstream_request_headers(request.headers.items(), up.client.headers)
    try:  # a session is a stream: its slot is taken before the upstream opens one
        relayed = await forward(ctx, access, lambda: _open_session(ctx, up, request, access, channel, sse_url, headers),
                                may_stream=True, legacy=True)
    except UpstreamError as exc:
        return answers.upstream_failure(exc, None).response()
    return relayed.response() if isinstance(relayed, answers.Answer) else relayed


async def _open_session(ctx: ProxyContext, up: Route, request: Request, access: Access, channel: Channel,
                        sse_url: str, headers: dict[str, str]) -> BodyResponse | StreamResponse:
    resp = await up.client.send("GET", sse_url, headers)
    limits = ctx.config.limits
    if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
        return await relay(channel, ctx.pipeline, resp, max_event_bytes=limits.max_sse_event_bytes,
                           timeout_s=up.config.timeout_s)

    session = LegacySession(ctx.sessions.legacy_id(), channel)  # naming its owner when there are several
    messages_path = request.url.path.removesuffix("sse") + "messages/"

    async def on_event(ev: Event) -> bytes | None:
        if ev.event != "endpoint":
            return None
        try:  # percent-encoded once, as the config's URLs are; what cannot be sent is dropped
            target = normalize_url(urljoin(sse_url, ev.data.strip()))
        except ValueError:
            log.warning("dropped an upstream endpoint event whose URL cannot be sent")
            return b""
        if not _same_origin(target, sse_url):
            log.warning("dropped an upstream endpoint event pointing to another origin")
            return b""
        session.upstream_url, session.newline = target, ev.newline
        return encode_event(f"{messages_path}?session_id={session.id}", event="endpoint", newline=ev.newline).raw

    async def pump() -> None:
        try:
            async for chunk in relay_sse(channel, ctx.pipeline, resp.chunks(), limits.max_sse_event_bytes, on_event):
                await session.outgoing.put(chunk)
        except Exception:
            log.exception("legacy SSE relay failed")
        await session.outgoing.put(_END)  # not reached when cancelled: then the reader is gone

    async def stream() -> AsyncIterator[bytes]:
        ctx.legacy_sessions[session.id] = session
        if ctx.draining.is_set():  # the drain began while the session was being opened
            session.drain()
        task = asyncio.ensure_future(pump())
        try:
            while (chunk := await session.outgoing.get()) is not _END:
                yield chunk
                if session.drained:  # the last answer it waited for is out
                    break
        finally:
            ctx.legacy_sessions.pop(session.id, None)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    response = StreamResponse(200, typed(relayed_headers(resp, observe_rate_limits(resp)), SSE_TYPE), stream())
    response.end_at = access.valid_until
    response.ended = ctx.revocation(access.server.name)
    return response


async def post_message(ctx: ProxyContext, request: Request, access: Access) -> Any:
    if request.method != "POST":
        return BodyResponse(405, [(b"allow", b"POST")], b"")
    session_id = request.query_params.get("session_id")
    if not session_id:
        return answers.protocol_failure(ProtocolError(INVALID_REQUEST, "session_id is required")).response()
    session = ctx.legacy_sessions.get(session_id)
    # A session is bound to the principal and server that opened it: anyone else finds nothing.
    if (session is None or session.upstream_url is None or session.channel.server != access.server
            or session.channel.principal.identity != access.principal.identity):
        return BodyResponse(404, [(b"content-type", b"text/plain")], b"Could not find session")
    try:
        msg, verdict = await admit(request, session.channel, ctx.pipeline, ctx.config.limits.max_body_bytes)
    except ProtocolError as exc:
        return await session.deliver(answers.protocol_failure(exc))
    if not verdict.allow:
        challenge = ctx.scope_challenge(request, verdict.scope, "/sse") if verdict.scope else None
        return await session.deliver(answers.refusal(verdict, challenge))
    up = ctx.upstreams.route(access.server)  # the session's: its server is the same (checked above)
    headers = upstream_request_headers(request.headers.items(), up.client.headers)
    headers.update(verdict.headers)
    upstream_url = session.upstream_url

    async def exchange() -> BodyResponse | StreamResponse:
        resp = await up.client.send("POST", upstream_url, headers, msg.encode())
        return await relay(session.channel, ctx.pipeline, resp, max_event_bytes=ctx.config.limits.max_sse_event_bytes,
                           timeout_s=up.config.timeout_s, request_id=msg.id)

    try:  # this transport's answers travel on the session's stream: the POST's own is no stream
        relayed = await forward(ctx, access, exchange, may_stream=False, request_id=msg.id)
    except UpstreamError as exc:
        session.channel.watched.pop(msg.id, None)  # answered here: nothing more to wait for
        return await session.deliver(answers.upstream_failure(exc, msg.id))
    return await session.deliver(relayed) if isinstance(relayed, answers.Answer) else relayed
