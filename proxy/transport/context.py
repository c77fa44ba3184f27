"""What every request handler shares in one worker: config, pipeline, upstream client, sessions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import Request

from ..auth.sessions import SessionBinder
from ..config import Config
from ..enforce.pipeline import Pipeline
from .upstream import UpstreamClient

if TYPE_CHECKING:
    from .legacy_sse import LegacySession


@dataclass(slots=True)
class ProxyContext:
    config: Config
    pipeline: Pipeline
    upstream: UpstreamClient
    sessions: SessionBinder
    legacy_sessions: dict[str, LegacySession] = field(default_factory=dict)
    # Per server: set when a config reload revokes it, ending its open streams.
    revocations: dict[str, asyncio.Event] = field(default_factory=dict)

    def revocation(self, server: str) -> asyncio.Event:
        return self.revocations.setdefault(server, asyncio.Event())

    def revoke(self, server: str) -> None:
        event = self.revocations.pop(server, None)
        if event is not None:
            event.set()

    def base_url(self, request: Request) -> str:
        """The proxy's origin as clients know it: public_url's, else the request's."""
        if self.config.public_url:
            parts = urlsplit(self.config.public_url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"

    def scope_challenge(self, request: Request, scope: str, endpoint: str) -> dict[str, str]:
        url = f"{self.base_url(request)}/.well-known/oauth-protected-resource{endpoint}"
        return {"www-authenticate": f'Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{url}"'}
