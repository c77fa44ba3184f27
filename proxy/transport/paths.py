"""The proxy's MCP URL space: which endpoint a path addresses and with which URL token."""

from __future__ import annotations

ENDPOINTS = ("mcp", "sse", "messages")
REDACTED = "[redacted]"


def route(path: str) -> tuple[str, str | None] | None:
    """(endpoint, URL token) for /mcp, /sse, /messages/, /<token>/mcp, /<token>/sse,
    /<token>/messages/ and the seed-style /mcp/<token>; None for any other path."""
    parts = path.strip("/").split("/")
    if len(parts) == 1 and parts[0] in ENDPOINTS:
        return parts[0], None
    if len(parts) == 2 and parts[0] and parts[1]:
        if parts[0] == "mcp":
            return "mcp", parts[1]
        if parts[1] in ENDPOINTS:
            return parts[1], parts[0]
    return None


def redact_path(path: str) -> str:
    """The path with its URL token (if any) replaced, for logs. Clients put the token into
    discovery paths too (`/.well-known/oauth-protected-resource/<token>/mcp`)."""
    path_only, sep, query = path.partition("?")
    rest = path_only
    if rest.startswith("/.well-known/"):
        rest = "/" + rest[len("/.well-known/"):].partition("/")[2]
    target = route(rest)
    if target is None or target[1] is None:
        return path
    return path_only.replace(target[1], REDACTED) + sep + query
