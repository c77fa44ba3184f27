"""Upstream → client: relay an upstream answer, streaming, through the pipeline's response hook.

SSE streams are decoded event by event and each event is written as soon as it is complete.
Every JSON answer and every message event passes one gate (`decide`): the client gets the
re-encoding of what was decided, and what cannot be parsed as a JSON-RPC message is never
relayed undecided. Events without data (priming events, pings) go out byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .. import ratelimit
from ..enforce.pipeline import DROP, Channel, Pipeline
from ..observe.metrics import current
from ..protocol import jsonrpc
from ..protocol.headers import client_response_headers
from ..protocol.jsonrpc import Kind
from ..protocol.sse import BOM, Event, SSEDecoder, SSEError, message_event
from .endings import CLIENT_GONE, EXCHANGE_TASK, WATCHED, Ending
from .upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("mcp_policy_proxy.relay")

RawHeaders = list[tuple[bytes, bytes]]
# A transport's own handling of one event (legacy SSE rewrites `endpoint`); None = not handled.
EventHook = Callable[[Event], Awaitable[bytes | None]]

_SMALL_BODY = 1024 * 1024


class BodyResponse:
    """A complete body with the relayed headers (kept as raw pairs: repeated fields survive)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: RawHeaders, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class LastChunk(bytes):
    """A stream's last bytes: written together with the end of the chunked body (one write, not two)."""

    __slots__ = ()


class StreamResponse:
    """Streams chunks as they come. A client disconnect cancels the source (closing the upstream);
    so do `end_at` (epoch seconds: when the server or the credential expires) and `ended` (set
    when a config reload revokes the server), which end the stream cleanly for the client.
    `on_end` is called once the stream has ended, however it ended (its stream slot is released).

    One task pumps the chunks; the deadline is a timer and `ended` a callback (endings.py), and the
    client leaving cancels the waiting request task (or, under another server, a watcher notices)."""

    __slots__ = ("chunks", "end_at", "ended", "headers", "on_end", "status")

    def __init__(self, status: int, headers: RawHeaders, chunks: AsyncIterator[bytes]) -> None:
        self.status, self.headers, self.chunks = status, headers, chunks
        self.end_at: float | None = None
        self.ended: Ending | None = None
        self.on_end: Callable[[], None] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        loop = asyncio.get_running_loop()
        started = False

        async def pump() -> None:
            nonlocal started
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            started = True
            last = False
            async for chunk in self.chunks:
                last = type(chunk) is LastChunk
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if not last:
                await send({"type": "http.response.body", "body": b""})

        pumping = loop.create_task(pump())
        stop: asyncio.Future[str] = loop.create_future()  # why the stream stops: "done", "ended", "gone"

        def stop_as(reason: str) -> Callable[..., None]:
            def stop_now(*_: object) -> None:
                if not stop.done():
                    stop.set_result(reason)
            return stop_now

        done, ended = stop_as("done"), stop_as("ended")
        pumping.add_done_callback(done)
        timer = None if self.end_at is None else loop.call_later(max(0.0, self.end_at - time.time()), ended)
        if self.ended is not None:
            self.ended.call_when_set(ended)
        watcher = None if scope.get(WATCHED) else loop.create_task(_watch_disconnect(receive, stop_as("gone")))
        request_task = asyncio.current_task()
        scope[EXCHANGE_TASK] = request_task
        reason = "gone"
        try:
            reason = await stop
        except asyncio.CancelledError:
            if not scope.get(CLIENT_GONE) or request_task is None:  # not the client leaving: shutdown
                raise
            request_task.uncancel()
        finally:
            scope.pop(EXCHANGE_TASK, None)
            if timer is not None:
                timer.cancel()
            if self.ended is not None:
                self.ended.forget(ended)
            try:
                # Only tasks still running are waited for: a gather over finished ones costs a turn
                # of the loop (~4% of an SSE answer's instructions). Each outcome is retrieved.
                waiting = [task for task in (pumping, watcher) if task is not None and not task.done()]
                for task in waiting:
                    task.cancel()
                if waiting:
                    await asyncio.gather(*waiting, return_exceptions=True)
                for finished in (pumping, watcher):
                    if finished is not None and not finished.cancelled():
                        finished.exception()
                aclose = getattr(self.chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:  # even when this clean-up is itself cancelled
                if self.on_end is not None:
                    self.on_end()
        if reason == "ended" and started:
            await send({"type": "http.response.body", "body": b""})  # expired or revoked: end cleanly
        if reason == "done" and not pumping.cancelled() and (exc := pumping.exception()) is not None:
            raise exc


async def _watch_disconnect(receive: Callable, gone: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone()


class RateLimited(UpstreamError):
    """An upstream 429 answering a request to a server whose rate limits are surfaced to the agent
    (servers[].surface_rate_limit): the proxy answers it itself (answers.rate_limited)."""

    def __init__(self, limits: ratelimit.RateLimits, method: str | None, revision: str | None,
                 headers: tuple[tuple[str, str], ...]) -> None:
        super().__init__(429, "rate limited by the upstream", headers)
        self.limits, self.method, self.revision = limits, method, revision


async def relay(channel: Channel, pipeline: Pipeline, resp: UpstreamResponse, *, max_event_bytes: int,
                timeout_s: float, on_event: EventHook | None = None, request_id: Any = None
                ) -> BodyResponse | StreamResponse:
    """`request_id`: the request this answer answers, when the channel does not name it (a legacy POST)."""
    limits = observe_rate_limits(resp)
    if resp.status == 429 and channel.server.surface_rate_limit:
        target = channel.request_id if request_id is None else request_id
        method = channel.watched.get(target) if target is not None else None
        if method is not None:  # it answers a request (not a notification's or a response's POST)
            resp.close()  # its body is replaced by the proxy's answer
            limits = limits or ratelimit.RateLimits()
            raise RateLimited(limits, method, channel.protocol_version, tuple(ratelimit.carried(resp.headers, limits)))
    headers = relayed_headers(resp, limits)
    media = resp.content_type.partition(";")[0].strip()
    if media.startswith("text/event-stream"):
        events = relay_sse(channel, pipeline, resp.chunks(), max_event_bytes, on_event, finished=resp.finished)
        return StreamResponse(resp.status, typed(headers, SSE_TYPE), events)
    # Any other answer is one body, read whole (bounded): whatever a client might read as a message
    # passes the gate first.
    json_type = "json" in media  # application/json and any +json type
    body = await resp.read(max_event_bytes if json_type else _SMALL_BODY, timeout_s)
    if not body.strip():  # an empty body (a 202, a DELETE's 200) carries nothing to decide
        return BodyResponse(resp.status, headers, body)
    # Bodies a client reads messages from: Streamable HTTP's answers to POST and GET. (Messages
    # never travel in a DELETE's answer, nor in a legacy POST's: those arrive on the SSE stream.)
    reads_messages = (channel.transport == "streamable_http" and channel.http_method != "DELETE"
                      and 200 <= resp.status < 300 and resp.status not in (202, 204))
    if not json_type and reads_messages:
        # A success answer in a form no MCP client should read as messages, but a lenient one does
        # (the TypeScript SDK reads a GET's body as SSE whatever its type): refused.
        why = f"a {resp.status} answer with Content-Type {resp.content_type or '(none)'}"
        refusal, _ = _refused(channel, jsonrpc.UndecidableAnswer(why), answers_request=True)
        return BodyResponse(502, [JSON_HEADER], refusal)
    if not json_type and not _json_like(body):
        return BodyResponse(resp.status, headers, body)  # an error page of text: free text is not inspected
    payload, undecided = await decide(channel, pipeline, body.strip().lstrip(BOM) if not json_type else body,
                                      answers_request=True)
    if payload is None:  # a JSON document that is no message (an OAuth error body): as it is
        return BodyResponse(resp.status, typed(headers, JSON_TYPE) if json_type else headers, body)
    if not payload:
        return BodyResponse(202, [], b"")
    return BodyResponse(502 if undecided else resp.status, typed(headers, JSON_TYPE), payload)


def observe_rate_limits(resp: UpstreamResponse) -> ratelimit.RateLimits | None:
    """The upstream answer's rate limits, normalized, and noted for the metrics. Never retried,
    never throttled: only described (docs/rate-limits.md)."""
    limits = ratelimit.read(resp.headers, time.time())
    if limits is not None or resp.status == 429:
        current().rate_limits = (resp.status, limits)
    return limits


def relayed_headers(resp: UpstreamResponse, limits: ratelimit.RateLimits | None) -> RawHeaders:
    """The upstream answer's headers for the client, with the normalized rate-limit fields."""
    return client_response_headers(resp.headers, limits.fields() if limits is not None else ())


JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream"
JSON_HEADER = (b"content-type", JSON_TYPE)


def typed(headers: RawHeaders, media_type: bytes) -> RawHeaders:
    """`headers` with the proxy's own Content-Type: what it relays is UTF-8 JSON or SSE, as it read
    it, whatever charset the upstream named (a client decoding by that charset could read other
    messages than the proxy decided on)."""
    return [*(h for h in headers if h[0] != b"content-type"), (b"content-type", media_type)]


def _json_like(body: bytes) -> bool:
    return body.strip().lstrip(BOM)[:1] in (b"{", b"[")


async def decide(channel: Channel, pipeline: Pipeline, data: bytes | str, *, answers_request: bool
                 ) -> tuple[bytes | None, bool]:
    """The one gate of every server→client message, whatever carried it (a JSON answer, an SSE
    event of a POST, GET, resumed or legacy stream).

    Returns the bytes to relay — what was decided, re-encoded from what was parsed, so no parser
    of the client's can read the upstream's bytes differently (duplicate keys, escapes, numbers) —
    and True when they replace data that could not be decided on at all; b"" to relay nothing;
    None for a JSON document that is no message (an HTTP error body), relayed as it is on a JSON
    answer. Undecidable data is never relayed: the request it seems to answer gets a JSON-RPC
    error, or, when no waiting request can be named, it is dropped. `answers_request`: the data
    is the whole answer to the channel's request (a JSON body), not one event among others.
    """
    try:
        msg = jsonrpc.parse_server_data(data)
    except jsonrpc.UndecidableAnswer as exc:
        return _refused(channel, exc, answers_request=answers_request)
    if msg is None:  # a JSON document that is no message: an HTTP error body; never an SSE message
        return (None if answers_request else b""), False
    replacement = await pipeline.server_message(channel, msg)
    if msg.kind is Kind.RESPONSE and channel.watched:
        channel.answered(msg)
    decided = msg if replacement is None else replacement
    if decided is DROP:
        return b"", False
    try:
        return jsonrpc.encode(decided.data), False
    except jsonrpc.ProtocolError:  # parsed, but has no encoding (orjson nests less deeply than it parses)
        return _refused(channel, jsonrpc.UndecidableAnswer("it cannot be re-encoded", msg.id), answers_request)


def _refused(channel: Channel, exc: jsonrpc.UndecidableAnswer, answers_request: bool) -> tuple[bytes, bool]:
    """What replaces data that could not be decided on: a JSON-RPC error for the request it seems
    to answer, if that request waits on this channel (or the data is the whole answer to the
    channel's request); else nothing (b"")."""
    log.warning("refused an upstream message: %s", exc.reason)
    target = exc.id if exc.id is not None and (exc.id in channel.watched or exc.id == channel.request_id) \
        else channel.request_id if answers_request else None
    if target is None and not answers_request:
        return b"", True
    channel.watched.pop(target, None)
    return jsonrpc.encode(jsonrpc.undecided(target, exc.reason)), True


async def relay_sse(channel: Channel, pipeline: Pipeline, chunks: AsyncIterator[bytes], max_event_bytes: int,
                    on_event: EventHook | None = None, finished: Callable[[], bool] | None = None
                    ) -> AsyncIterator[bytes]:
    """Upstream SSE bytes → client SSE bytes, one pipeline call per message event.

    `finished()`: the upstream's body has arrived whole (UpstreamResponse.finished). Once it has,
    the rest is relayed as one LastChunk, so a POST's answer and the stream's end go out together."""
    decoder = SSEDecoder(max_event_bytes)

    async def relayed(events: list[Event]) -> bytes:
        return b"".join([await relay_event(channel, pipeline, ev, on_event) for ev in events])

    try:
        async for chunk in chunks:
            out = await relayed(decoder.feed(chunk))
            if finished is not None and finished():
                async for rest in chunks:  # a decoder's last slices, given without waiting
                    out += await relayed(decoder.feed(rest))
                yield LastChunk(out + await relayed(decoder.close()))
                return
            if out:
                yield out
        if tail := await relayed(decoder.close()):
            yield tail
    except SSEError as exc:
        log.warning("closing upstream SSE stream: %s", exc)
    except UpstreamError as exc:
        log.info("upstream SSE stream ended: %s", exc.message)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def relay_event(channel: Channel, pipeline: Pipeline, ev: Event, on_event: EventHook | None) -> bytes:
    if on_event is not None and (handled := await on_event(ev)) is not None:
        return handled
    if ev.unknown:
        ev = ev.known()  # lines the codec did not take are never relayed
    if not ev.data:
        return ev.raw  # priming events, pings, comments, id/retry-only events: nothing a client reads
    if ev.event not in (None, "message"):
        # MCP sends messages only. Nothing the pipeline did not see reaches the client; a request
        # waiting for what this seems to answer is told so.
        exc = jsonrpc.UndecidableAnswer(f"an SSE event of type {ev.event[:64]!r}", jsonrpc.salvage_id(ev.data))
        payload: bytes | None = _refused(channel, exc, answers_request=False)[0]
    else:
        payload, _ = await decide(channel, pipeline, ev.data, answers_request=False)
    if not payload:
        return b""
    event = None if ev.event is None else "message"  # a message event, whatever type carried it
    return message_event(payload, event=event, id=ev.id, retry=ev.retry, newline=ev.newline)
