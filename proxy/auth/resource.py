"""The proxy as an OAuth 2.1 resource server (MCP authorization): RFC 9728 metadata and the
`WWW-Authenticate` challenges that point clients to it. URL tokens never appear in either."""

from __future__ import annotations

from typing import Any

from ..config import Config
from .authenticator import AuthFailure

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata(config: Config, base: str, endpoint: str = "") -> dict[str, Any]:
    """The protected-resource metadata for `endpoint` (`/mcp`, `/sse` or the root)."""
    resource = (config.public_url or base).rstrip("/") + endpoint
    servers = list(config.auth.authorization_servers) or ([config.auth.jwt.issuer] if config.auth.jwt else [])
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-policy-proxy",
    }
    if config.auth.scopes_supported:
        doc["scopes_supported"] = list(config.auth.scopes_supported)
    return doc


def challenge(failure: AuthFailure, metadata_url: str) -> str:
    parts = [f'resource_metadata="{metadata_url}"']
    if failure.error:
        parts.append(f'error="{failure.error}"')
    if failure.description:
        parts.append(f'error_description="{failure.description}"')
    return "Bearer " + ", ".join(parts)
