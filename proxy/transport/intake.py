"""Client → proxy: read one bounded body, parse it strictly, and have the pipeline decide it.

Shared by every transport, so a message is admitted the same way whichever door it came through.

What a message costs to decide is bounded before the work starts (jsonrpc.MAX_VALUES): a body too
large to parse here whatever it holds (over INLINE_BYTES) that may hold more values than that (its
commas and brackets, counted at C speed, say so) is checked first by a child process
(body_checker.py). A 4 MiB array of empty objects then costs that process a few milliseconds and
every other client nothing; a body it passes (a long string, source code, CSV) is parsed here at a
cost bounded by its few values.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..enforce.pipeline import Channel, Pipeline, Verdict
from ..observe import tracing
from ..protocol import jsonrpc
from ..protocol.headers import check_routing_headers
from ..protocol.jsonrpc import INVALID_REQUEST, Kind, Message, ProtocolError
from .body_checker import BodyChecker

# Bodies up to this size are parsed on the event loop whatever they hold (at most ~10 ms here).
INLINE_BYTES = 64 * 1024

_checker = BodyChecker()  # one per worker process: the child starts with the first body it must check


class _OneAtATime:
    """A lock per event loop (tests run several loops in one process)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


# Large bodies are parsed and decided one at a time: each costs the event loop up to tens of
# milliseconds (parsing a 4 MiB string, the policy engine reading it), and one such turn at a time,
# with every other client served between them, keeps the others' latency to one turn, not many.
# (A decision that must list the upstream's tools first holds the others for that listing too,
# within upstream.timeout_s: rare, as listings are.)
_large = _OneAtATime()


async def decide(body: bytes, headers: list[tuple[str, str]], channel: Channel, pipeline: Pipeline
                 ) -> tuple[Message, Verdict]:
    """The one message in `body`, parsed strictly (ProtocolError otherwise) and decided, at a
    bounded cost to the event loop."""
    if len(body) <= INLINE_BYTES:
        return await _decide(jsonrpc.parse_client_body(body), headers, channel, pipeline)
    if not _few_values(body):
        await _checker.check(body)  # of more values than jsonrpc.MAX_VALUES? malformed? (not on this loop)
    async with _large.lock():
        msg = jsonrpc.parse_client_body(body)
        await asyncio.sleep(0)  # parsing and deciding: two turns, others run between
        return await _decide(msg, headers, channel, pipeline)


async def _decide(msg: Message, headers: list[tuple[str, str]], channel: Channel, pipeline: Pipeline
                  ) -> tuple[Message, Verdict]:
    # Its span begins (with tracing on); `_meta` carries the span's context from here, before it is decided.
    tracing.message_arrived(msg, channel, headers)
    try:
        check_routing_headers(headers, msg, streamable=channel.transport == "streamable_http")
    except ProtocolError as exc:
        tracing.message_refused(exc.code)
        raise
    return msg, await pipeline.client_message(channel, msg, headers)


def _few_values(body: bytes) -> bool:
    """Certainly at most MAX_VALUES values, found at C speed: a value follows each comma and each
    opening bracket holds one, so their count bounds the values (commas in strings only add). A
    large body of text (an email's HTML) is parsed here without the round trip to the checker."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") < jsonrpc.MAX_VALUES


_REVISION = re.compile(rb"\d{4}-\d{2}-\d{2}")


def header_fault(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why the raw request header fields of an MCP request are refused (400), or None.

    A value with bytes beyond ASCII (obs-text) is refused in every field: the proxy reads such
    bytes as latin-1, an upstream may read them as UTF-8, so one header could mean two things;
    MCP writes non-ASCII values as `=?base64?…?=`. `MCP-Protocol-Version` must name a revision
    (a date): it is the policy's `transport.protocol_version`, and what the upstream is told.
    """
    for name, value in headers:
        if not value.isascii():
            return f"the {name.decode('latin-1')} header is not ASCII"
        if name == b"mcp-protocol-version" and not _REVISION.fullmatch(value):
            return "MCP-Protocol-Version is not a protocol revision (YYYY-MM-DD)"
    return None


def _check_content_type(value: str | None) -> None:
    """A body the proxy reads as UTF-8 must not be declared in another charset: the upstream is
    sent the client's Content-Type with the proxy's canonical UTF-8 JSON, and one that decodes by
    the declared charset would read another message than was decided. (A wrong media type is the
    upstream's to answer, as it would without the proxy: the SDK's servers refuse it.)"""
    if value is None or "charset" not in value.lower():
        return
    for param in value.split(";")[1:]:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ProtocolError(INVALID_REQUEST, "Unsupported Media Type: a JSON-RPC body is UTF-8", status=415)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)  # the HTTP parser has checked it; anything in between might not have
        except ValueError:
            raise ProtocolError(INVALID_REQUEST, "Invalid Request: Content-Length is not a number") from None
        if length > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:  # the ASGI messages themselves: Starlette's request.stream() adds a generator per request
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, f"Request body exceeds {limit} bytes", status=413)


async def admit(request: Request, channel: Channel, pipeline: Pipeline, limit: int) -> tuple[Message, Verdict]:
    """Parse the one message in the request and decide it; ProtocolError for anything malformed."""
    _check_content_type(request.headers.get("content-type"))
    body = await read_body(request, limit)
    msg, verdict = await decide(body, request.headers.items(), channel, pipeline)
    if verdict.allow and msg.kind is Kind.REQUEST:
        channel.remember(channel.watched, msg.id, msg.method or "")
    return msg, verdict


def error_response(status: int, error: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    return Response(jsonrpc.encode(error), status_code=status, media_type="application/json", headers=headers)
