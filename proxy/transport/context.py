"""What every request handler shares in one worker: config, pipeline, upstream client, sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..auth.sessions import SessionBinder
from ..config import Config
from ..enforce.pipeline import Pipeline
from ..protocol import jsonrpc
from .relay import BodyResponse
from .upstream import UpstreamClient, UpstreamError

if TYPE_CHECKING:
    from .legacy_sse import LegacySession


@dataclass(slots=True)
class ProxyContext:
    config: Config
    pipeline: Pipeline
    upstream: UpstreamClient
    sessions: SessionBinder
    legacy_sessions: dict[str, LegacySession] = field(default_factory=dict)

    def upstream_error(self, exc: UpstreamError, request_id: Any = None) -> BodyResponse:
        body = jsonrpc.encode(jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, exc.message))
        return BodyResponse(exc.status, [(b"content-type", b"application/json")], body)
