"""An OAuth-protected MCP server with its own authorization server, on the official SDK (`mcp` 2.3.0).

Run: ``python -m tests.peers.oauth_upstream --port PORT [--access-ttl 2] [--client-id ID
--client-secret-file FILE --redirect-uri URI]`` (cwd = repository root).

As Missive's hosted server is said to be: stateless Streamable HTTP at ``/mcp`` (JSON answers),
an RFC 9728 resource that answers 401 with ``WWW-Authenticate: Bearer resource_metadata=…``, tokens
bound to it (RFC 8707: the SDK's ``validate_token_resource``), and the SDK's authorization server
routes (RFC 8414 metadata, ``/authorize``, ``/token``, ``/register`` (RFC 7591), ``/revoke``) on the
same origin. The provider below is the only code of its own: it approves every authorization at
once (no person), issues access tokens that expire after ``--access-ttl`` seconds, and rotates
refresh tokens (each is good once). ``--client-id`` pre-registers a confidential client.

Test hooks (no auth): ``GET /test/stats`` (counts, and every secret issued, for the leak check),
``POST /test/expire`` (every access token stops working; refresh tokens stay good),
``POST /test/revoke`` (every token, refresh tokens included, stops working).
"""

from __future__ import annotations

import argparse
import secrets
import time
from typing import Any

import uvicorn
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.peers.sdk_server import NO_DNS_REBINDING

SCOPES = ["mcp:read", "mcp:write", "mcp:admin"]


class Provider:
    """In memory: clients, codes, tokens; and what the tests count."""

    def __init__(self, access_ttl: float) -> None:
        self.access_ttl = access_ttl
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.access_expiry: dict[str, float] = {}  # finer than AccessToken.expires_at (whole seconds)
        self.refresh: dict[str, RefreshToken] = {}
        self.stats: dict[str, Any] = {"registrations": 0, "authorizations": 0, "code_exchanges": 0,
                                      "refreshes": 0, "refused_refreshes": 0, "resources": [], "scopes": [],
                                      "mcp_requests": 0, "mcp_unauthorized": 0, "bearer_requests": 0}
        self.issued: list[str] = []  # every secret: tokens, codes, client secrets

    def _mint(self) -> str:
        value = secrets.token_urlsafe(32)
        self.issued.append(value)
        return value

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.stats["registrations"] += 1
        if client_info.client_secret:
            self.issued.append(client_info.client_secret)
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        """Approved at once: the browser goes straight back with a code."""
        self.stats["authorizations"] += 1
        self.stats["resources"].append(params.resource)
        self.stats["scopes"].append(params.scopes)
        code = self._mint()
        self.codes[code] = AuthorizationCode(
            code=code, scopes=params.scopes or [], expires_at=time.time() + 60, client_id=client.client_id,
            code_challenge=params.code_challenge, redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly, resource=params.resource)
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(self, client: OAuthClientInformationFull, code: str) -> AuthorizationCode | None:
        found = self.codes.get(code)
        return found if found is not None and found.client_id == client.client_id else None

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        self.stats["code_exchanges"] += 1
        self.codes.pop(authorization_code.code, None)
        return self._tokens(client.client_id, authorization_code.scopes, authorization_code.resource)

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        found = self.refresh.get(refresh_token)
        if found is None or found.client_id != client.client_id:
            self.stats["refused_refreshes"] += 1
            return None
        return found

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: RefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        if self.refresh.pop(refresh_token.token, None) is None:  # rotated: each is good once
            raise TokenError("invalid_grant", "refresh token already used")
        self.stats["refreshes"] += 1
        return self._tokens(client.client_id, scopes, refresh_token.resource)

    async def load_access_token(self, token: str) -> AccessToken | None:
        found = self.access.get(token)
        if found is None or time.time() >= self.access_expiry[token]:
            return None
        return found

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.access.pop(token.token, None)
        self.refresh.pop(token.token, None)

    def _tokens(self, client_id: str, scopes: list[str], resource: str | None) -> OAuthToken:
        access, refresh = self._mint(), self._mint()
        self.access[access] = AccessToken(token=access, client_id=client_id, scopes=scopes,
                                          expires_at=int(time.time() + self.access_ttl) + 1, resource=resource)
        self.access_expiry[access] = time.time() + self.access_ttl
        self.refresh[refresh] = RefreshToken(token=refresh, client_id=client_id, scopes=scopes, resource=resource)
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=max(1, round(self.access_ttl)),
                          refresh_token=refresh, scope=" ".join(scopes))


class Counting:
    """Counts the requests to /mcp and their 401s (no header value is kept anywhere)."""

    def __init__(self, app: ASGIApp, provider: Provider) -> None:
        self.app, self.provider = app, provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/mcp":
            await self.app(scope, receive, send)
            return
        stats = self.provider.stats
        stats["mcp_requests"] += 1
        if any(name == b"authorization" for name, _ in scope["headers"]):
            stats["bearer_requests"] += 1

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                stats["mcp_unauthorized"] += 1
            await send(message)

        await self.app(scope, receive, counted)


def build_app(port: int, access_ttl: float, preregistered: OAuthClientInformationFull | None) -> ASGIApp:
    base = f"http://127.0.0.1:{port}"
    provider = Provider(access_ttl)
    if preregistered is not None:
        provider.clients[preregistered.client_id] = preregistered
    auth = AuthSettings(issuer_url=base, resource_server_url=f"{base}/mcp", validate_token_resource=True,  # type: ignore[arg-type]
                        required_scopes=["mcp:read"],
                        client_registration_options=ClientRegistrationOptions(enabled=True, valid_scopes=SCOPES),
                        revocation_options=RevocationOptions(enabled=True))
    mcp = MCPServer(name="oauth-test-peer", version="1.0.0", log_level="WARNING", auth=auth,
                    auth_server_provider=provider)

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.custom_route("/test/stats", methods=["GET"])
    async def stats(request: Request) -> Response:
        return JSONResponse({**provider.stats, "issued": provider.issued})

    @mcp.custom_route("/test/expire", methods=["POST"])
    async def expire(request: Request) -> Response:
        provider.access.clear()
        return JSONResponse({"ok": True})

    @mcp.custom_route("/test/revoke", methods=["POST"])
    async def revoke(request: Request) -> Response:
        provider.access.clear()
        provider.refresh.clear()
        return JSONResponse({"ok": True})

    app = mcp.streamable_http_app(json_response=True, stateless_http=True, transport_security=NO_DNS_REBINDING)
    return Counting(app, provider)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--access-ttl", type=float, default=2.0)
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret-file")
    parser.add_argument("--redirect-uri")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    preregistered = None
    if args.client_id:
        with open(args.client_secret_file) as fh:
            secret = fh.read().strip()
        preregistered = OAuthClientInformationFull(
            client_id=args.client_id, client_secret=secret, token_endpoint_auth_method="client_secret_basic",
            redirect_uris=[args.redirect_uri], grant_types=["authorization_code", "refresh_token"],
            scope=" ".join(SCOPES))
    uvicorn.run(build_app(args.port, args.access_ttl, preregistered), host="127.0.0.1", port=args.port,
                log_level=args.log_level)


if __name__ == "__main__":
    main()
