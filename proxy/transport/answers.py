"""Outcome → answer: what a client gets when its message is not forwarded, or the upstream failed.

One mapping for every transport. Streamable HTTP sends the answer as the HTTP response; legacy SSE
delivers its JSON-RPC message on the session's stream (where that transport's answers travel) and
gives the POST the answer's status (202 Accepted for 200).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..enforce.pipeline import Verdict
from ..protocol import jsonrpc
from ..protocol.jsonrpc import ProtocolError
from .admission import Refusal
from .relay import JSON_HEADER, BodyResponse, RateLimited
from .upstream import UpstreamError


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    message: dict[str, Any] | None = None  # the JSON-RPC message for the client; None: nothing to say
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def answers_request(self) -> bool:
        return self.message is not None and self.message.get("id") is not None

    def response(self) -> BodyResponse:
        """The answer as the HTTP response (Streamable HTTP; a legacy POST's own errors)."""
        if self.message is None:
            return BodyResponse(202 if self.status == 200 else self.status, [], b"")
        headers = [JSON_HEADER, *((n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers)]
        return BodyResponse(self.status, headers, jsonrpc.encode(self.message))


def refusal(verdict: Verdict, challenge: dict[str, str] | None) -> Answer:
    """A message the pipeline did not let through (`challenge`: the insufficient_scope header)."""
    return Answer(verdict.status, verdict.reply, tuple((challenge or {}).items()))


def protocol_failure(exc: ProtocolError) -> Answer:
    return Answer(exc.status, exc.to_message())


def upstream_failure(exc: UpstreamError, request_id: Any) -> Answer:
    """(`Retry-After` with the 503 of the upstream connection limit.)"""
    if isinstance(exc, RateLimited):
        return rate_limited(exc, request_id)
    return Answer(exc.status, jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, exc.message), exc.headers)


def rate_limited(exc: RateLimited, request_id: Any) -> Answer:
    """An upstream 429 told to the agent (servers[].surface_rate_limit; docs/rate-limits.md): a
    tools/call gets a tool result the model reads and can back off from, any other request a
    JSON-RPC error naming the wait. 200, with the rate-limit fields: the client reads the message."""
    limits, wait = exc.limits, exc.limits.retry_in_s
    text = "rate limited by the upstream; " + (f"retry after {wait} s" if wait is not None else "retry later")
    message: dict[str, Any]
    if exc.method == "tools/call":
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True,
                                  "_meta": {"ratelimit": limits.meta()}}
        if jsonrpc.result_type_needed(exc.revision):
            result["resultType"] = "complete"
        message = {"jsonrpc": "2.0", "id": request_id, "result": result}
    else:
        message = jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, text,
                                         {"retry_after_s": wait, "ratelimit": limits.meta()})
    return Answer(200, message, exc.headers)


# Seconds a refused client waits before trying again: a stream slot frees when some stream ends;
# a draining worker's replacement (or another replica) is ready at once.
LIMIT_RETRY_AFTER_S = 5
DRAIN_RETRY_AFTER_S = 1


def limit_reached(refusal: Refusal, request_id: Any = None) -> Answer:
    """A stream cap is reached: 429 for the principal's own, 503 for the worker's. Refused before
    anything was forwarded."""
    whose = "this client's" if refusal.status == 429 else "this proxy worker's"
    message = f"Too many open streams: {whose} limit is reached ({refusal.limit}); retry later"
    error = jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, message, {"limit": refusal.limit})
    return Answer(refusal.status, error, (("retry-after", str(LIMIT_RETRY_AFTER_S)),))


def draining() -> Answer:
    """A request that arrives while the worker shuts down: not forwarded; the client retries elsewhere."""
    return Answer(503, jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, "The proxy is shutting down; retry"),
                  (("retry-after", str(DRAIN_RETRY_AFTER_S)), ("connection", "close")))


def cut_at_shutdown(request_id: Any = None) -> Answer:
    """A request still waiting for its answer when the shutdown grace period ends. It may have
    been carried out upstream: no Retry-After."""
    message = "The proxy shut down before the upstream answered; the request may have been carried out"
    return Answer(503, jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, message),
                  (("connection", "close"),))


def client_too_slow(limit: str) -> Answer:
    """408 (`limit`: limits.client_header_timeout_s or limits.client_body_timeout_s); the connection closes."""
    what = "request head" if limit == "limits.client_header_timeout_s" else "request body"
    error = jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, f"The {what} did not arrive in time ({limit})",
                                   {"limit": limit})
    return Answer(408, error)


def header_too_large(max_bytes: int) -> Answer:
    return Answer(431, jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST,
                                              f"Request header fields exceed {max_bytes} bytes",
                                              {"limit": "limits.max_header_bytes"}))
