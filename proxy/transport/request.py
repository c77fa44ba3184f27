"""The MCP endpoints' request: Starlette's, with the header fields decoded once per request."""

from __future__ import annotations

from functools import cached_property

from starlette.requests import Request

from ..protocol.headers import RequestHeaders


class McpRequest(Request):
    @cached_property
    def headers(self) -> RequestHeaders:  # type: ignore[override]
        return RequestHeaders(self.scope["headers"])
