"""What every request handler shares in one worker: config, pipeline, upstreams, sessions,
stream admission, and what ends streams (revocation, the drain at shutdown)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import Request

from ..auth.resource import metadata_url
from ..auth.sessions import SessionBinder
from ..config import Config
from ..enforce.pipeline import Pipeline
from .admission import Admission
from .endings import Ending
from .upstream import UpstreamClient
from .upstreams import Upstreams

if TYPE_CHECKING:
    from .legacy_sse import LegacySession


@dataclass(slots=True)
class ProxyContext:
    config: Config
    pipeline: Pipeline
    upstreams: Upstreams  # each server's upstream: `upstreams.route(access.server)`
    sessions: SessionBinder
    admission: Admission
    legacy_sessions: dict[str, LegacySession] = field(default_factory=dict)
    # Per server: set when a config reload revokes it, ending its open streams.
    revocations: dict[str, Ending] = field(default_factory=dict)
    # Set when the worker begins to shut down: new requests are refused, long-lived streams end.
    draining: Ending = field(default_factory=Ending)
    # Per server: set on revocation or at the drain, ending its GET streams. (A POST's stream ends
    # by itself once answered, so the drain lets it finish; a legacy session ends at the drain once
    # its requests are answered.)
    stream_ends: dict[str, Ending] = field(default_factory=dict)

    @property
    def upstream(self) -> UpstreamClient:
        """The top-level upstream's client (servers without servers[].upstream use it)."""
        return self.upstreams.default.client

    def revocation(self, server: str) -> Ending:
        return self.revocations.setdefault(server, Ending())

    def stream_end(self, server: str) -> Ending:
        """What ends a server's long-lived stream: revocation, or the drain (already begun: set)."""
        if self.draining.is_set():
            return self.draining
        return self.stream_ends.setdefault(server, Ending())

    def revoke(self, server: str) -> None:
        for events in (self.revocations, self.stream_ends):
            event = events.pop(server, None)
            if event is not None:
                event.set()

    def drain(self) -> None:
        """Shutdown begins (SIGTERM): refuse new requests, end long-lived streams. Idempotent."""
        if self.draining.is_set():
            return
        self.draining.set()
        for event in self.stream_ends.values():
            event.set()
        self.stream_ends.clear()
        for session in list(self.legacy_sessions.values()):
            session.drain()

    def base_url(self, request: Request) -> str:
        """The proxy's origin as clients know it: public_url's, else the request's."""
        if self.config.public_url:
            parts = urlsplit(self.config.public_url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"

    def scope_challenge(self, request: Request, scope: str, endpoint: str) -> dict[str, str]:
        url = metadata_url(self.config, self.base_url(request), endpoint, request.scope["path"])
        pointer = f', resource_metadata="{url}"' if url else ""
        return {"www-authenticate": f'Bearer error="insufficient_scope", scope="{scope}"{pointer}'}
