"""Who is asking, and which virtual server: URL token, bearer (API token or JWT), expiry.

Every request is authenticated, before its body is read. A URL token names the server (unknown →
404, with no hint that tokens exist); a bearer token names the client. A bad bearer token is never
ignored in favour of weaker credentials, and a server past its `expires_at` answers 401 from that
second on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Config, Server
from .principal import ANONYMOUS, Principal
from .tokens import DigestIndex, sha256_hex, url_token_hmac


class AuthFailure(Exception):
    """A refusal: 401 (with a `WWW-Authenticate` challenge) or 404 (unknown URL token)."""

    def __init__(self, status: int, reason: str, server: str | None = None, *, error: str | None = "invalid_token",
                 description: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason, self.server, self.error, self.description = status, reason, server, error, description


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Access:
    server: Server
    principal: Principal

    @property
    def valid_until(self) -> float | None:
        """When this access ends by itself (epoch seconds): the server's expiry or the JWT's `exp`."""
        ends = [self.server.expires_at.timestamp()] if self.server.expires_at else []
        exp = self.principal.claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            ends.append(float(exp))
        return min(ends) if ends else None


def _scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    scope = claims.get("scope", claims.get("scp", ()))
    if isinstance(scope, str):
        return tuple(scope.split())
    return tuple(s for s in scope if isinstance(s, str)) if isinstance(scope, list) else ()


class Authenticator:
    def __init__(self, config: Config, jwt: TokenVerifier | None = None, *,
                 anonymous: bool = False, clock: Callable[[], float] = time.time) -> None:
        """`anonymous`: clients without any credential may use the server without a URL token."""
        key = config.auth.url_token_key
        self._servers = DigestIndex(
            ((s.token_hmac, s) for s in config.servers if s.token_hmac and key),
            lambda token: url_token_hmac(key or "", token))
        self._api_tokens = DigestIndex(((t["sha256"], t["name"]) for t in config.auth.api_tokens), sha256_hex)
        self._default = config.default_server
        self._jwt = jwt
        # With no bearer credentials configured, an Authorization header means nothing here (and it
        # is never forwarded): it is ignored rather than refused.
        self._bearer_configured = bool(len(self._api_tokens)) or jwt is not None
        self._anonymous = anonymous
        self._clock = clock

    async def authenticate(self, url_token: str | None, authorization: str | None) -> Access:
        server = self._default if url_token is None else self._servers.find(url_token)
        if server is None:
            raise AuthFailure(404, "unknown_url_token" if url_token else "no_server", error=None)
        if server.expires_at is not None and self._clock() >= server.expires_at.timestamp():
            raise AuthFailure(401, "server_expired", server.name, description="This server has expired")
        via = ("url_token",) if url_token is not None else ()
        if authorization is None or not self._bearer_configured:
            if url_token is None and not self._anonymous:
                raise AuthFailure(401, "missing_credentials", server.name, error=None)
            if server.require_api_token_auth:
                raise AuthFailure(401, "bearer_required", server.name,
                                  description="This server requires a bearer token as well as its URL")
            return Access(server, Principal(authenticated=bool(via), via=via) if via else ANONYMOUS)
        bearer = await self._bearer(authorization, server)
        return Access(server, Principal(True, (*via, *bearer.via), bearer.subject, bearer.claims, bearer.scopes))

    async def _bearer(self, authorization: str, server: Server) -> Principal:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailure(401, "malformed_authorization", server.name)
        name = self._api_tokens.find(token)
        if name is not None:
            return Principal(True, ("api_token",), name)
        if self._jwt is None or token.count(".") != 2:
            raise AuthFailure(401, "invalid_token", server.name)
        try:
            claims = await self._jwt.verify(token)
        except Exception as exc:  # every verification failure is a 401, named by its reason
            raise AuthFailure(401, getattr(exc, "reason", "invalid_token"), server.name) from None
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        return Principal(True, ("jwt",), subject, claims, _scopes(claims))
