"""MCP HTTP headers: which ones cross the proxy, and whether they agree with the body."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from .jsonrpc import HEADER_MISMATCH, Kind, Message, ProtocolError

PROTOCOL_VERSION = "mcp-protocol-version"
SESSION_ID = "mcp-session-id"
METHOD = "mcp-method"
NAME = "mcp-name"
LAST_EVENT_ID = "last-event-id"

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"

class RequestHeaders:
    """A request's header fields decoded once (latin-1, names lowercase as ASGI servers give them):
    every pair in order, and each name's first value. Starlette's Headers decodes and scans the
    whole list again at every look-up."""

    __slots__ = ("_first", "_items")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._items = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        self._first = dict(reversed(self._items))  # reversed: the first of repeated names wins

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name, default)

    def items(self) -> list[tuple[str, str]]:
        return self._items


# Methods whose target is mirrored in `Mcp-Name` (revision 2026-07-28), and the param holding it.
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy sets itself or must never pass on.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# Request headers never forwarded upstream: the client's credentials (the proxy uses its own),
# framing and routing the proxy owns (Host, length, encoding), and the browser Origin the proxy
# itself validates (the upstream would see a foreign Origin for every browser client).
_NOT_FORWARDED_REQUEST = HOP_BY_HOP | {
    "host", "content-length", "authorization", "proxy-authorization", "cookie", "accept-encoding", "origin",
    "expect",
}
# The only Mcp-* request fields forwarded as the client sent them: checked against the body
# (check_routing_headers) or rewritten by the proxy (the session id). Mcp-Param-* fields are
# forwarded only when the called tool declares them and they agree with its arguments.
FORWARDED_MCP = frozenset({PROTOCOL_VERSION, SESSION_ID, METHOD, NAME})
# `Location` and `Content-Location` name the upstream's own URLs: relayed, they would point clients
# past the proxy (redirects themselves are refused: `redirect`).
_NOT_RELAYED_RESPONSE = HOP_BY_HOP | {
    "content-length", "content-encoding", "server", "date", "set-cookie", "location", "content-location",
}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def upstream_request_headers(client: Iterable[tuple[str, str]], extra: dict[str, str]) -> dict[str, str]:
    """Client request headers (lowercase names) fit to send upstream, plus the proxy's own.

    A repeated field keeps its last value. Names containing `_` are dropped (nginx's default,
    `underscores_in_headers off`): a CGI/WSGI layer in front of the upstream maps `_` to `-`, so
    `mcp_method` or `mcp_session_id` could stand in for the `Mcp-*` fields the proxy checked.
    """
    items = client if type(client) is list else list(client)  # Starlette's items() is a list already
    out = dict(items)
    drop = _NOT_FORWARDED_REQUEST | _connection_tokens(items) if "connection" in out else _NOT_FORWARDED_REQUEST
    for name in drop.intersection(out):
        del out[name]
    if "_" in "".join(out):  # rare: one scan of all names, then the slow path
        for name in [n for n in out if "_" in n]:
            del out[name]
    for name in [n for n in out if n.startswith("mcp-") and n not in FORWARDED_MCP]:
        del out[name]  # Mcp-Param-* the tool declares come back with the verdict, checked
    out["accept-encoding"] = "identity"  # the proxy parses SSE; it must see plain bytes
    out.update(extra)
    return out


def client_response_headers(upstream: Iterable[tuple[str, str]], replace: Iterable[tuple[str, str]] = ()
                            ) -> list[tuple[bytes, bytes]]:
    """Upstream response headers fit to relay to the client, as ASGI raw pairs; `replace`: fields
    of the proxy's own (lowercase names: the normalized rate limits) in place of the upstream's."""
    items = [(n.lower(), v) for n, v in upstream]
    own = list(replace)
    drop = _NOT_RELAYED_RESPONSE | _connection_tokens(items) | {n for n, _ in own}
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in [*(i for i in items if i[0] not in drop), *own]]


def redirect(status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """Whether an upstream answer is a redirect (3xx with `Location`), which the proxy refuses (502).

    The proxy sends every request to its configured URL, whatever URL a client asks it for: a client
    following a redirect through the proxy would only loop, and one following it to the Location
    would bypass the proxy and its policy. So no redirect is relayed, not even one to the upstream
    URL itself (nginx's `proxy_redirect default` would rewrite that one to the proxy's path); the
    operator sets `upstream.url` to where the upstream redirects. A 3xx without `Location` (304) is
    no redirect.
    """
    return 300 <= status < 400 and any(name == "location" for name, _ in headers)


def decode_header_value(value: str) -> str | None:
    """Decode the `=?base64?…?=` form MCP uses for non-ASCII header values; None when a value in
    that form does not decode strictly (a lenient decoder would read something, the proxy nothing)."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value


def _mismatch(message: str, msg: Message) -> ProtocolError:
    return ProtocolError(HEADER_MISMATCH, f"Header mismatch: {message}", id=msg.id)


def check_routing_headers(headers: Iterable[tuple[str, str]], msg: Message, *, streamable: bool = True) -> None:
    """Refuse a message whose MCP routing headers disagree with its body.

    An upstream that routes on headers must never run something other than what the policy decided
    on. Revision 2026-07-28 requests (protocol version in `params._meta`) over Streamable HTTP must
    carry `Mcp-Method` (and `Mcp-Name` for the name-bearing methods); in every revision and on
    every transport, headers that are present must agree with the body and must not be repeated.
    """
    seen: dict[str, str] = {}
    for name, value in headers:
        if name in (METHOD, NAME, PROTOCOL_VERSION):
            if name in seen:
                raise _mismatch(f"{name} given more than once", msg)
            seen[name] = value
    if msg.kind is Kind.RESPONSE:
        if METHOD in seen or NAME in seen:
            raise _mismatch("a response carries no Mcp-Method or Mcp-Name", msg)
        return
    params = msg.params
    meta = params.get("_meta")
    body_version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
    modern = streamable and body_version is not None
    if modern and seen.get(PROTOCOL_VERSION) != body_version:
        raise _mismatch("MCP-Protocol-Version does not match params._meta", msg)
    method_header = seen.get(METHOD)
    if method_header is None:
        if modern:
            raise _mismatch("Mcp-Method is required", msg)
    elif method_header != msg.method:
        raise _mismatch("Mcp-Method does not match the body's method", msg)
    name_key = NAME_PARAMS.get(msg.method or "")
    name_header = seen.get(NAME)
    if name_key is None:
        if name_header is not None:
            raise _mismatch(f"Mcp-Name is not used with {msg.method}", msg)
        return
    body_name = params.get(name_key)
    if name_header is None:
        if modern:
            raise _mismatch("Mcp-Name is required", msg)
    elif (decoded := decode_header_value(name_header)) is None or decoded != body_name:
        raise _mismatch(f"Mcp-Name does not match params.{name_key}", msg)
