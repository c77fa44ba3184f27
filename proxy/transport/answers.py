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
from .relay import JSON_HEADER, BodyResponse
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
    return Answer(exc.status, jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, exc.message))
