"""The proxy as an OAuth 2.1 resource server (MCP authorization): RFC 9728 metadata and the
`WWW-Authenticate` challenges that point clients to it. URL tokens never appear in either.

Metadata exists only where a client can get a bearer token from an authorization server (a JWT
issuer, or `auth.authorization_servers`). Without one (URL tokens, API tokens) there is no
document and no `resource_metadata` in challenges: metadata with no authorization server makes
OAuth clients (mcp-remote) take the resource URL, URL token and all, for the authorization server.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..transport.paths import route
from .authenticator import AuthFailure

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def authorization_servers(config: Config) -> list[str]:
    """`auth.authorization_servers`, else the JWT issuer, else none."""
    return list(config.auth.authorization_servers) or ([config.auth.jwt.issuer] if config.auth.jwt else [])


def metadata(config: Config, base: str, endpoint: str = "") -> dict[str, Any] | None:
    """The protected-resource metadata for `endpoint` (`/mcp`, `/sse` or the root); None where no
    authorization server issues bearer tokens for the proxy."""
    servers = authorization_servers(config)
    if not servers:
        return None
    doc: dict[str, Any] = {
        "resource": (config.public_url or base).rstrip("/") + endpoint,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-policy-proxy",
    }
    if config.auth.scopes_supported:
        doc["scopes_supported"] = list(config.auth.scopes_supported)
    return doc


def metadata_url(config: Config, base: str, endpoint: str, path: str) -> str | None:
    """The metadata for a request refused at `path` (which addressed `endpoint`, `/mcp` or `/sse`);
    None where none is served. A path with a URL token gets the root document: its `resource`, the
    origin, is a prefix of the token URL (what MCP clients check) without naming the token."""
    if not authorization_servers(config):
        return None
    target = route(path)
    if target is not None and target[1] is not None:
        endpoint = ""
    return f"{base}{WELL_KNOWN}{endpoint}"


def challenge(failure: AuthFailure, metadata_url: str | None) -> str:
    parts = [f'resource_metadata="{metadata_url}"'] if metadata_url else []
    if failure.error:
        parts.append(f'error="{failure.error}"')
    if failure.description:
        parts.append(f'error_description="{failure.description}"')
    return " ".join(["Bearer", ", ".join(parts)]) if parts else "Bearer"
