"""The proxy's MCP URL space: which endpoint a path addresses and with which URL token; and the
form of a path that logs may print."""

from __future__ import annotations

ENDPOINTS = ("mcp", "sse", "messages")
REDACTED = "[redacted]"

# What a log may print of a path: only the words the proxy's own paths, and the discovery paths
# OAuth clients probe, are made of. Every other segment is [redacted]: a URL token, but also one a
# client mistyped, truncated, split or percent-encoded (`%41`, `%2541`), put after `/mcp/` or into a
# discovery path. Matching is exact and case-sensitive on the printed text, so no encoding of
# anything but these words ever survives (an encoded word is redacted too, which costs nothing).
LOGGED_WORDS = frozenset({
    "", *ENDPOINTS, ".well-known", "oauth-protected-resource", "oauth-authorization-server",
    "openid-configuration", "healthz", "readyz", "metrics", "register", "authorize", "token", "favicon.ico",
})
# Query parameter names a log may print; values are always [redacted] (`session_id` is a legacy
# session's capability; `token=`, `access_token=` are where clients misplace credentials).
LOGGED_QUERY_KEYS = frozenset({"session_id", "sessionId", "token", "access_token", "api_key", "code", "state"})


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


def redact_path(target: str) -> str:
    """`target` (path and query, as uvicorn prints it) as a log may print it: segments that are not
    LOGGED_WORDS, query names not in LOGGED_QUERY_KEYS and every query value become [redacted].
    `/<token>/mcp?session_id=…` → `/[redacted]/mcp?session_id=[redacted]`."""
    path, sep, query = target.partition("?")
    out = "/".join(s if s in LOGGED_WORDS else REDACTED for s in path.split("/"))
    if sep:
        out += "?" + "&".join(_redact_param(p) for p in query.split("&"))
    return out


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    shown = name if not name or name in LOGGED_QUERY_KEYS else REDACTED
    return f"{shown}={REDACTED}" if eq else shown
