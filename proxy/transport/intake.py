"""Client → proxy: read one bounded body, parse it strictly, and have the pipeline decide it.

Shared by every transport, so a message is admitted the same way whichever door it came through.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..enforce.pipeline import Channel, Pipeline, Verdict
from ..protocol import jsonrpc
from ..protocol.headers import check_routing_headers
from ..protocol.jsonrpc import INVALID_REQUEST, Kind, Message, ProtocolError


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:  # the HTTP parser has validated it
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, f"Request body exceeds {limit} bytes", status=413)


async def admit(request: Request, channel: Channel, pipeline: Pipeline, limit: int) -> tuple[Message, Verdict]:
    """Parse the one message in the request and decide it; ProtocolError for anything malformed."""
    body = await read_body(request, limit)
    msg = jsonrpc.parse_client_body(body)
    headers = request.headers.items()
    check_routing_headers(headers, msg, streamable=channel.transport == "streamable_http")
    verdict = await pipeline.client_message(channel, msg, headers)
    if verdict.allow and msg.kind is Kind.REQUEST:
        channel.remember(channel.watched, msg.id, msg.method or "")
    return msg, verdict


def error_response(status: int, error: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    return Response(jsonrpc.encode(error), status_code=status, media_type="application/json", headers=headers)
