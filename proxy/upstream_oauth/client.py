"""The proxy's requests to the upstream's authorization server: discovery, registration, tokens.

Wiring only, on maintained code: the official MCP SDK's discovery (which URLs to try in which
order, the RFC 9728 / RFC 8414 metadata models, the issuer and resource checks) and its RFC 7591
registration request and response checks; authlib's OAuth 2 client for the authorization URL
(PKCE S256), the code exchange and the refresh (client authentication, token responses, OAuth
errors). Both run on httpx2, the SDK's HTTP client. Nothing here is on the proxy's hot path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from mcp.client.auth import OAuthFlowError, OAuthRegistrationError
from mcp.client.auth.oauth2 import check_registration_usable
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    create_client_registration_request,
    create_oauth_metadata_request,
    extract_resource_metadata_from_www_auth,
    handle_auth_metadata_response,
    handle_protected_resource_response,
    handle_registration_response,
    validate_metadata_issuer,
)
from mcp.shared.auth import OAuthClientMetadata, OAuthMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url

from ..config import EgressProxy, Upstream, UpstreamTls
from ..transport import egress
from ..transport.tls import client_context
from .store import Grant

TIMEOUT_S = 10.0
CLIENT_NAME = "mcp-policy-proxy"
# OAuth errors meaning the grant itself is gone (RFC 6749 §5.2): only a new login helps.
_GRANT_GONE = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
# What the proxy sends the upstream to be challenged: a request without credentials, acted on by nobody.
_PROBE = b'{"jsonrpc":"2.0","id":0,"method":"ping"}'
_PROBE_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                  "mcp-protocol-version": "2025-11-25"}


class OAuthFailure(Exception):
    """A step failed. `gone`: the authorization server refused the grant itself (a new login is
    needed); otherwise it may pass (unreachable, 5xx, an answer that is no token)."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.message, self.gone = message, gone


@dataclass(frozen=True)
class Discovered:
    resource: str  # the RFC 8707 resource indicator: the protected resource metadata's
    issuer: str
    metadata: OAuthMetadata


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str | None
    auth_method: str  # none, client_secret_basic or client_secret_post
    registered: bool


def _proxy(proxy: EgressProxy) -> httpx2.Proxy:
    user, _, password = (proxy.credentials or "").partition(":")
    host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    return httpx2.Proxy(f"http://{host}:{proxy.port}", auth=(user, password) if proxy.credentials else None)


def http_options(upstream: Upstream) -> dict[str, Any]:
    """How every request here is sent. Through `upstream.proxy` when set, else as HTTPS_PROXY /
    NO_PROXY say (httpx2 reads them itself); to the upstream's own origin with `upstream.tls` (its
    CAs, the client certificate), to the authorization server as to any public server. Redirects
    are not followed (as the SDK's own flow)."""
    options: dict[str, Any] = {"timeout": TIMEOUT_S, "follow_redirects": False}
    explicit = upstream.proxy.https if upstream.proxy.https and upstream.proxy.https.source == "upstream.proxy" \
        else None
    if explicit is not None:
        options["proxy"] = _proxy(explicit)
    parts = urlsplit(upstream.url)
    if upstream.tls != UpstreamTls() and parts.scheme == "https":
        host, port = parts.hostname or "", parts.port or 443
        way = egress.route(upstream.proxy, "https", host, port)  # as the upstream's own connections go
        options["mounts"] = {f"https://{parts.netloc}": httpx2.AsyncHTTPTransport(
            verify=client_context(upstream.tls), proxy=_proxy(way.proxy) if way is not None else None)}
    return options


def http_client(upstream: Upstream) -> httpx2.AsyncClient:
    """For discovery and registration."""
    return httpx2.AsyncClient(**http_options(upstream))


async def discover(http: httpx2.AsyncClient, upstream_url: str) -> Discovered:
    """The upstream's 401 challenge → its protected resource metadata → its authorization server's."""
    try:
        probe = await http.post(upstream_url, content=_PROBE, headers=_PROBE_HEADERS)
        if probe.status_code != 401:
            raise OAuthFailure(f"the upstream answered HTTP {probe.status_code} to a request without credentials, "
                               "not 401: it does not ask for OAuth (remove upstream.oauth) or upstream.url is wrong")
        prm = None
        for url in build_protected_resource_metadata_discovery_urls(
                extract_resource_metadata_from_www_auth(probe), upstream_url):
            prm = await handle_protected_resource_response(await http.send(create_oauth_metadata_request(url)))
            if prm is not None:
                break
        if prm is None:
            raise OAuthFailure("the upstream publishes no protected resource metadata (RFC 9728)")
        expected = resource_url_from_server_url(upstream_url)
        resource = str(prm.resource)
        if not check_resource_allowed(requested_resource=expected, configured_resource=resource):
            raise OAuthFailure(f"the upstream's protected resource {resource} does not cover upstream.url {expected}")
        issuer = str(prm.authorization_servers[0])
        metadata = None
        for url in build_oauth_authorization_server_metadata_discovery_urls(issuer, upstream_url):
            ok, metadata = await handle_auth_metadata_response(await http.send(create_oauth_metadata_request(url)))
            if not ok or metadata is not None:
                break
        if metadata is None:
            raise OAuthFailure(f"the authorization server {issuer} publishes no metadata (RFC 8414)")
        validate_metadata_issuer(metadata, issuer)
    except OAuthFlowError as exc:
        raise OAuthFailure(str(exc)) from None
    except httpx2.HTTPError as exc:
        raise OAuthFailure(f"discovery failed: {type(exc).__name__}: {exc}") from None
    if "S256" not in (metadata.code_challenge_methods_supported or ()):
        raise OAuthFailure(f"the authorization server {issuer} does not offer PKCE with S256")  # MCP requires it
    return Discovered(resource=resource, issuer=issuer, metadata=metadata)


def _auth_method(metadata: OAuthMetadata, has_secret: bool) -> str:
    """How to authenticate at the token endpoint: as the server offers (RFC 8414's default: basic)."""
    offered = metadata.token_endpoint_auth_methods_supported or ["client_secret_basic"]
    if not has_secret:
        return "none"
    return "client_secret_basic" if "client_secret_basic" in offered or "client_secret_post" not in offered \
        else "client_secret_post"


def configured_client(found: Discovered, client_id: str, client_secret: str | None) -> ClientCredentials:
    return ClientCredentials(client_id, client_secret, _auth_method(found.metadata, client_secret is not None), False)


async def register(http: httpx2.AsyncClient, found: Discovered, redirect_uri: str,
                   scopes: Sequence[str]) -> ClientCredentials:
    """RFC 7591: the proxy registers itself; a public client (PKCE) where the server allows one."""
    metadata = found.metadata
    if metadata.registration_endpoint is None:
        raise OAuthFailure(f"the authorization server {found.issuer} offers no client registration (RFC 7591): "
                           "register the proxy there and set upstream.oauth.client_id")
    offered = metadata.token_endpoint_auth_methods_supported or ["client_secret_basic"]
    method = "none" if "none" in offered else _auth_method(metadata, True)
    request = OAuthClientMetadata.model_validate({
        "redirect_uris": [redirect_uri], "token_endpoint_auth_method": method, "response_types": ["code"],
        "grant_types": ["authorization_code", "refresh_token"], "scope": " ".join(scopes), "client_name": CLIENT_NAME})
    try:
        info = await handle_registration_response(await http.send(
            create_client_registration_request(metadata, request, found.issuer)))
        check_registration_usable(info)
    except OAuthRegistrationError as exc:
        raise OAuthFailure(str(exc)) from None
    except httpx2.HTTPError as exc:
        raise OAuthFailure(f"registration failed: {type(exc).__name__}: {exc}") from None
    return ClientCredentials(info.client_id, info.client_secret, info.token_endpoint_auth_method or method, True)


def oauth_session(upstream: Upstream, client: ClientCredentials, redirect_uri: str | None = None
                  ) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(client_id=client.client_id, client_secret=client.client_secret,
                             token_endpoint_auth_method=client.auth_method, redirect_uri=redirect_uri,
                             code_challenge_method="S256", **http_options(upstream))


def _client_id_field(client: ClientCredentials) -> dict[str, str]:
    # The MCP SDK's authorization server (and others) want client_id in every token request's form;
    # authlib puts it there itself for `none` and `client_secret_post`, not beside a Basic header.
    return {"client_id": client.client_id} if client.auth_method == "client_secret_basic" else {}


def authorization_url(session: AsyncOAuth2Client, found: Discovered, state: str, verifier: str,
                      scopes: Sequence[str]) -> str:
    url, _ = session.create_authorization_url(str(found.metadata.authorization_endpoint), state=state,
                                              code_verifier=verifier, scope=" ".join(scopes), resource=found.resource)
    return str(url)


async def exchange_code(session: AsyncOAuth2Client, client: ClientCredentials, found: Discovered, code: str,
                        verifier: str, redirect_uri: str, scopes: Sequence[str]) -> Grant:
    token = await _token_request(session.fetch_token(
        str(found.metadata.token_endpoint), grant_type="authorization_code", code=code, code_verifier=verifier,
        redirect_uri=redirect_uri, resource=found.resource, **_client_id_field(client)))
    revocation = found.metadata.revocation_endpoint
    return _grant(token, Grant(
        access_token="", refresh_token=None, expires_at=None, obtained_at=0.0, scope=" ".join(scopes),
        resource=found.resource, issuer=found.issuer, token_endpoint=str(found.metadata.token_endpoint),
        client_id=client.client_id, auth_method=client.auth_method, registered=client.registered,
        client_secret=client.client_secret if client.registered else None,  # a configured one stays in its file
        revocation_endpoint=str(revocation) if revocation else None))


async def refresh(upstream: Upstream, grant: Grant, client_secret: str | None) -> Grant:
    """A new access token (and, where the server rotates them, refresh token) for `grant`;
    `client_secret`: a pre-registered client's (upstream.oauth.client_secret_file)."""
    if grant.refresh_token is None:
        raise OAuthFailure("the access token expired and the grant has no refresh token", gone=True)
    client = ClientCredentials(grant.client_id, grant.client_secret or client_secret, grant.auth_method,
                               grant.registered)
    async with oauth_session(upstream, client) as session:
        token = await _token_request(session.refresh_token(
            grant.token_endpoint, refresh_token=grant.refresh_token, resource=grant.resource,
            **_client_id_field(client)))
    return _grant(token, grant)


async def _token_request(pending: Any) -> dict[str, Any]:
    """The token endpoint's answer, or OAuthFailure. (The server's error_description is not kept:
    it is the server's text, and may quote what it was sent.)"""
    try:
        token = await pending
    except OAuthError as exc:  # the server's own error answer: its code says whether the grant is gone
        raise OAuthFailure(f"the authorization server refused: {exc.error}", gone=exc.error in _GRANT_GONE) from None
    except httpx2.HTTPStatusError as exc:
        raise OAuthFailure(f"the authorization server answered HTTP {exc.response.status_code}") from None
    except httpx2.HTTPError as exc:
        raise OAuthFailure(f"the authorization server is unreachable: {type(exc).__name__}") from None
    except ValueError:
        raise OAuthFailure("the authorization server's answer is no token response") from None
    if not isinstance(token, dict) or not isinstance(token.get("access_token"), str) or not token["access_token"]:
        raise OAuthFailure("the authorization server's answer holds no access token")
    if str(token.get("token_type", "")).lower() != "bearer":
        raise OAuthFailure("the authorization server issued no bearer token")
    return token


def _grant(token: dict[str, Any], base: Grant) -> Grant:
    """`base` with the tokens of a token response. A response without a refresh token keeps the old
    one (RFC 6749 §6: the server does not rotate); one without scope keeps the scope (§5.1)."""
    now = time.time()
    try:
        lifetime = float(token["expires_in"]) if token.get("expires_in") is not None else None
    except (TypeError, ValueError):
        lifetime = None
    rotated = token.get("refresh_token")
    return replace(base, access_token=token["access_token"],
                   refresh_token=rotated if isinstance(rotated, str) and rotated else base.refresh_token,
                   expires_at=now + lifetime if lifetime is not None and lifetime > 0 else None, obtained_at=now,
                   scope=str(token.get("scope") or base.scope))
