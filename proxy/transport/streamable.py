"""Streamable HTTP (every revision, 2025-03-26 … 2026-07-28) between the client and the upstream.

POST carries one client message: admitted through the pipeline, then its re-serialization is sent
upstream and the answer (202, JSON or SSE) relayed as it arrives. GET (server→client stream) and
DELETE (end of session) carry no client message and are relayed, their streams still passing
through the pipeline's response hook.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..auth.authenticator import Access
from ..enforce.pipeline import Channel
from ..protocol import jsonrpc
from ..protocol.headers import METHOD, NAME, PROTOCOL_VERSION, SESSION_ID, upstream_request_headers
from ..protocol.jsonrpc import Kind, ProtocolError
from . import answers
from .context import ProxyContext
from .intake import admit
from .relay import BodyResponse, StreamResponse, relay
from .streams import forward
from .upstream import UpstreamError

_ALLOWED = "GET, POST, DELETE"
REQUEST_ID = "mcp.request_id"  # ASGI scope key: the JSON-RPC id of the request being forwarded


async def handle(ctx: ProxyContext, request: Request, access: Access) -> Any:
    channel = Channel("streamable_http", access.server, request.method, request.headers.get(PROTOCOL_VERSION),
                      request.headers.get("origin"), access.principal)
    identity, server_name = access.principal.identity, access.server.name
    upstream_session: str | None = None
    if (presented := request.headers.get(SESSION_ID)) is not None:
        upstream_session = ctx.sessions.unwrap(identity, server_name, presented)
        if upstream_session is None:  # another principal's session, or a forged one: unknown here
            return answers.Answer(404, jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Session not found")
                                  ).response()
    body: bytes | None = None
    forwarded: tuple[tuple[str, str], ...] = ()
    if request.method == "POST":
        try:
            msg, verdict = await admit(request, channel, ctx.pipeline, ctx.config.limits.max_body_bytes)
        except ProtocolError as exc:
            return answers.protocol_failure(exc).response()
        if not verdict.allow:
            challenge = ctx.scope_challenge(request, verdict.scope, "/mcp") if verdict.scope else None
            return answers.refusal(verdict, challenge).response()
        body, forwarded = msg.encode(), verdict.headers
        channel.request_id = msg.id if msg.kind is Kind.REQUEST else None
        request.scope[REQUEST_ID] = channel.request_id  # for an answer made outside this handler (shutdown)
    elif request.method not in ("GET", "DELETE"):
        return BodyResponse(405, [(b"allow", _ALLOWED.encode())], b"")

    up = ctx.upstreams.route(access.server)  # this server's upstream (servers[].upstream)
    headers = upstream_request_headers(request.headers.items(), up.client.headers)
    if body is None:  # Mcp-Method and Mcp-Name describe a body: without one nothing checked them
        headers.pop(METHOD, None)
        headers.pop(NAME, None)
    headers.update(forwarded)
    if upstream_session is not None:
        headers[SESSION_ID] = upstream_session

    async def exchange() -> BodyResponse | StreamResponse:
        resp = await up.client.send(request.method, up.config.url, headers, body)
        response = await relay(channel, ctx.pipeline, resp, max_event_bytes=ctx.config.limits.max_sse_event_bytes,
                               timeout_s=up.config.timeout_s)
        response.headers = [(n, ctx.sessions.wrap(identity, server_name, v.decode("latin-1")).encode("latin-1"))
                            if n == b"mcp-session-id" else (n, v) for n, v in response.headers]
        if isinstance(response, StreamResponse):
            response.end_at = access.valid_until
            # A GET stream ends at the drain too; a POST's ends by itself once answered.
            response.ended = ctx.stream_end(server_name) if body is None else ctx.revocation(server_name)
        return response

    # Only a request's answer or a GET may be a stream (a notification's or response's is a 202).
    may_stream = request.method == "GET" or channel.request_id is not None
    try:
        relayed = await forward(ctx, access, exchange, may_stream=may_stream, request_id=channel.request_id,
                                scope=request.scope)
    except UpstreamError as exc:
        return answers.upstream_failure(exc, channel.request_id).response()
    return relayed.response() if isinstance(relayed, answers.Answer) else relayed
