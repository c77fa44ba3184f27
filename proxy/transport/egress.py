"""The way to the upstream: straight, or through an HTTP egress proxy's CONNECT tunnel.

The proxy is `upstream.proxy` or, when that is unset, HTTPS_PROXY (https:// upstreams) and
HTTP_PROXY (http:// upstreams), with NO_PROXY naming the hosts reached straight (proxy/config.py
reads them once). Which way an origin goes is decided once, when its pool is made (`route`).

Every upstream connection through a proxy is a CONNECT tunnel, http:// upstreams' too: one way for
both, and the bytes in the tunnel are exactly those of a direct connection (no absolute-form
requests, no proxy rewriting headers). The tunnel is the pooled connection: keep-alive reuse goes on
inside it. TLS to the upstream runs inside the tunnel, end to end (SNI and the certificate check are
the upstream's host): the proxy sees the host and port only. The credentials (Proxy-Authorization:
Basic) travel in the CONNECT request only, and never appear in a message, a log line or a label.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Egress, EgressProxy

# The labels of mcp_proxy_upstream_connect_failures_total this module gives.
FAILURE_REASONS = ("proxy_unreachable", "proxy_timeout", "proxy_auth", "proxy_refused", "proxy_upstream",
                   "proxy_invalid")
_MAX_HEAD = 16 * 1024  # a CONNECT answer's head


class EgressError(Exception):
    """The tunnel could not be opened: `status` for the client (502, 504), `reason` a bounded label,
    `message` the client's words, `detail` the operator's (logged). Never the credentials."""

    def __init__(self, status: int, reason: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.detail = status, reason, message, detail


@dataclass(frozen=True, slots=True)
class Route:
    """How one upstream origin is reached through `proxy`: the CONNECT request it sends."""

    proxy: EgressProxy
    request: bytes = field(default=b"", repr=False)  # it holds the credentials

    @property
    def where(self) -> str:
        """The proxy, for the log: its address and where it was set (never the credentials)."""
        host = f"[{self.proxy.host}]" if ":" in self.proxy.host else self.proxy.host
        return f"{self.proxy.source} {host}:{self.proxy.port}"


def route(proxies: Egress, scheme: str, host: str, port: int) -> Route | None:
    """The tunnel an origin's connections go through, or None: straight to it."""
    proxy = proxies.https if scheme == "https" else proxies.http
    if proxy is None or bypassed(proxies.no_proxy, host, port):
        return None
    return Route(proxy, connect_request(host, port, proxy.credentials))


def connect_request(host: str, port: int, credentials: str | None) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"host: {authority}"]
    if credentials is not None:  # user:password (RFC 7617, UTF-8)
        lines.append("proxy-authorization: Basic " + base64.b64encode(credentials.encode()).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def bypassed(no_proxy: tuple[str, ...], host: str, port: int) -> bool:
    """NO_PROXY's meaning, as curl and Python's urllib give it: `*` is every host; a name matches
    itself and its subdomains (`example.com` and `.example.com` both match `api.example.com`); an IP
    address matches itself, a CIDR block its addresses; `host:port` only that port."""
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    for entry in no_proxy:
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        name = name.lstrip(".").rstrip(".")
        if "/" in name:
            with contextlib.suppress(ValueError):
                if address is not None and address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        if host == name or host.endswith("." + name) or (address is not None and address == _ip(name)):
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, `v6` (no port), `host` → (host, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


async def open_tunnel(loop: asyncio.AbstractEventLoop, tunnel: Route, deadline: float) -> socket.socket:
    """A socket to the proxy whose CONNECT was answered 2xx: from here on, bytes to the upstream.
    Raises EgressError; `deadline` (loop time) bounds the whole."""
    proxy = tunnel.proxy
    try:
        async with asyncio.timeout_at(deadline):
            sock = await _connect(loop, proxy.host, proxy.port)
    except TimeoutError:
        raise EgressError(502, "proxy_unreachable", "Egress proxy unreachable: connect timeout") from None
    except OSError as exc:
        raise EgressError(502, "proxy_unreachable", f"Egress proxy unreachable: {_why(exc)}") from None
    try:
        async with asyncio.timeout_at(deadline):
            await loop.sock_sendall(sock, tunnel.request)
            head, extra = await _read_head(loop, sock)
        _check_answer(head, extra, tunnel)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, TimeoutError):
            raise EgressError(504, "proxy_timeout", "Egress proxy did not answer the CONNECT request in time") from None
        if isinstance(exc, OSError):
            raise EgressError(502, "proxy_invalid", "Egress proxy closed the connection before answering CONNECT",
                              _why(exc)) from None
        raise
    return sock


def _why(exc: OSError) -> str:
    """An OSError in words without the address (asyncio's strerror can carry it)."""
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or type(exc).__name__  # a name that does not resolve: getaddrinfo's words


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to host:port (each address in turn)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
            continue
        return sock
    raise error


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, bool]:
    """The CONNECT answer's head, and whether more bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
        if len(data) > _MAX_HEAD:
            raise EgressError(502, "proxy_invalid", "Egress proxy answered CONNECT with too large a head")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, bool(rest)


def _check_answer(head: bytes, extra: bool, tunnel: Route) -> None:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if not (version.startswith("HTTP/1.") and code.isdigit() and rest[3:4] in ("", " ")):
        raise EgressError(502, "proxy_invalid", "Egress proxy answered CONNECT with something other than HTTP")
    status = int(code)
    if 200 <= status < 300:
        if extra:  # before the client spoke: bytes that could only be an answer to nothing
            raise EgressError(502, "proxy_invalid", "Egress proxy sent bytes after its CONNECT answer")
        return
    if status == 407:
        if tunnel.proxy.credentials is None:
            raise EgressError(502, "proxy_auth", "Egress proxy requires credentials (HTTP 407 Proxy Authentication "
                                                 "Required)")
        raise EgressError(502, "proxy_auth", "Egress proxy refused the proxy credentials (HTTP 407 Proxy "
                                             "Authentication Required)")
    if status in (502, 503):
        raise EgressError(502, "proxy_upstream", f"Egress proxy could not reach the upstream (HTTP {status})")
    if status == 504:
        raise EgressError(504, "proxy_upstream", "Egress proxy timed out reaching the upstream (HTTP 504)")
    if 400 <= status < 500:
        raise EgressError(502, "proxy_refused", f"Egress proxy refused the tunnel to the upstream (HTTP {status})")
    raise EgressError(502, "proxy_invalid", f"Egress proxy answered CONNECT with HTTP {status}")
