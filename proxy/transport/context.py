"""What every request handler shares in one worker: config, pipeline, upstream client, sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..config import Config, Server
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
    legacy_sessions: dict[str, LegacySession] = field(default_factory=dict)

    def server_for(self, request: Request) -> Server:
        """The virtual server a request addresses (URL tokens route here once auth lands)."""
        server = self.config.default_server
        assert server is not None, "ProxyApp routes MCP paths only when a default server exists"
        return server

    def upstream_error(self, exc: UpstreamError, request_id: Any = None) -> BodyResponse:
        body = jsonrpc.encode(jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, exc.message))
        return BodyResponse(exc.status, [(b"content-type", b"application/json")], body)
