"""Several workers (and replicas) as one proxy: each worker's internal endpoint, legacy SSE POSTs
passed on to the worker holding their stream, and /metrics added up over a worker group.

Why (docs/scaling.md): Streamable HTTP needs nothing here, as any worker checks any session id (one
shared auth.session_key) and the upstream holds the session. A legacy SSE session is a stream held
open by one worker, its owner; a `POST /messages/?session_id=…` may land on any other. Its session
id names the owner's internal address under an HMAC of the shared key (auth/sessions.py), and the
worker it lands on relays it as it is — method, path, headers (the client's credential with them),
body — to that address, where the owner serves it as if the client had posted there: the same
authentication, decision and forwarding, its answer relayed back. No broker, no affinity; a POST
whose owner is gone gets the 404 of a session that does not exist.

The internal endpoint serves siblings only: every request on it carries an HMAC (a key derived from
auth.session_key) over its method, target, body digest and a timestamp, and is refused (403,
counted) otherwise; it serves only relayed legacy POSTs and the worker's own metrics. A relayed
request is never relayed again. The client's credential goes to the owning proxy and nowhere else:
the owner's address is authenticated, so no client can point a relay elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from ..config import Upstream
from ..observe.metrics_merge import merge
from ..protocol import jsonrpc
from ..protocol.jsonrpc import ProtocolError
from . import answers
from .intake import read_body
from .paths import route
from .relay import JSON_HEADER, BodyResponse
from .replay import replaying
from .upstream import UpstreamClient, UpstreamError

if TYPE_CHECKING:
    from ..app import ProxyApp

log = logging.getLogger("mcp_policy_proxy.cluster")

SIBLING_HEADER = "x-mcp-proxy-sibling"  # `<unix time>:<hex HMAC>`
CLIENT_HOST_HEADER = "x-mcp-proxy-host"  # the client's Host: the owner's answers name the URL the client used
METRICS_PATH = "/_cluster/metrics"  # a worker's own metrics, for the sibling serving a scrape
MAX_SKEW_S = 30  # a signed request older (or newer) than this is refused: clocks of replicas may differ this much
SCRAPE_TIMEOUT_S = 2.0  # a sibling's metrics; one that does not answer is left out of the scrape (and counted)
MAX_EXPOSITION_BYTES = 32 * 1024 * 1024
RELAY_RESULTS = ("relayed", "owner_gone", "failed")
REFUSAL_REASONS = ("missing", "malformed", "stale", "forged")
UNREACHABLE = "Upstream unreachable"  # UpstreamError's message when nothing was connected (upstream.py)
# Not relayed: this hop's own framing and addressing, and what this worker adds itself.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                  "content-length", "host", "date", "server", SIBLING_HEADER, CLIENT_HOST_HEADER})
_SIBLING_RAW, _CLIENT_HOST_RAW = SIBLING_HEADER.encode(), CLIENT_HOST_HEADER.encode()
_TEXT = [(b"content-type", b"text/plain")]
_EXPOSITION = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_NOT_FOUND = BodyResponse(404, _TEXT, b"Could not find session")  # as legacy_sse.post_message answers
_FORBIDDEN = BodyResponse(403, _TEXT, b"Forbidden: not a request of a sibling proxy")


def sibling_key(session_key: str) -> bytes:
    """The key of internal requests: auth.session_key's, for this purpose alone."""
    return hmac.new(session_key.encode(), b"mcp-policy-proxy sibling requests", hashlib.sha256).digest()


def address(host: str, port: int) -> str:
    """`host:port` as it goes into a URL (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Signer:
    def __init__(self, key: bytes, clock: Any = time.time) -> None:
        self._key, self._clock = key, clock

    def _mac(self, stamp: str, method: str, target: str, body: bytes) -> str:
        signed = f"{stamp}\n{method}\n{target}\n{hashlib.sha256(body).hexdigest()}".encode("latin-1")
        return hmac.new(self._key, signed, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, body: bytes) -> str:
        stamp = str(int(self._clock()))
        return f"{stamp}:{self._mac(stamp, method, target, body)}"

    def early_refusal(self, presented: str | None) -> str | None:
        """Why an internal request is refused before its body is read (`missing`, `malformed`, `stale`)."""
        if presented is None:
            return "missing"
        stamp, _, mac = presented.partition(":")
        if not stamp.isdigit() or len(mac) != 64:
            return "malformed"
        if abs(self._clock() - int(stamp)) > MAX_SKEW_S:
            return "stale"
        return None

    def refusal(self, presented: str | None, method: str, target: str, body: bytes) -> str | None:
        """Why an internal request is refused (early_refusal's reasons, or `forged`), or None."""
        early = self.early_refusal(presented)
        if early is not None or presented is None:
            return early
        stamp, _, mac = presented.partition(":")
        return None if hmac.compare_digest(mac, self._mac(stamp, method, target, body)) else "forged"


def _target(scope: Scope) -> str:
    """The request target as received: raw path and query."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (path + b"?" + query if query else path).decode("latin-1")


def _relayed_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """The client's header fields for the owner (a repeated one joined with `, `, as HTTP allows)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "host":
            headers[CLIENT_HOST_HEADER] = value
        elif name not in _HOP:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class ClusterApp:
    """The ASGI app of one worker of several: ProxyApp, with the internal endpoint on `internal_port`
    and, on the public side, relayed legacy POSTs and /metrics over `siblings` (their internal
    addresses; none for a replica alone in its pod)."""

    def __init__(self, app: ProxyApp, *, internal_port: int, siblings: Sequence[str], key: bytes) -> None:
        self.app = app
        self.owner = app.ctx.sessions.owner
        self.internal_port = internal_port
        self.siblings = tuple(siblings)
        self.signer = Signer(key)
        up = app.ctx.config.upstream
        # The owner answers a relayed POST once it has forwarded it: within the upstream's own timeouts.
        # Straight to the sibling (no upstream.proxy, no TLS: the cluster network, docs/scaling.md).
        self.client = UpstreamClient(Upstream(
            url="http://siblings.invalid/", timeout_s=up.timeout_s + up.queue_timeout_s + 5,
            connect_timeout_s=min(up.connect_timeout_s, 2.0), keepalive_s=2.0,  # below uvicorn's 5 s keep-alive
            max_connections=up.max_connections, queue_timeout_s=up.queue_timeout_s, max_queue=up.max_queue,
            read_timeout_s=up.read_timeout_s))
        self.registry = r = CollectorRegistry()
        self.relays = Counter("mcp_proxy_cluster_relays_total",
                              "Legacy SSE POSTs passed on to the worker holding their session, by result",
                              ["result"], registry=r)
        self.refusals = Counter("mcp_proxy_cluster_refusals_total",
                                "Requests on the internal endpoint refused (not signed by a sibling), by reason",
                                ["reason"], registry=r)
        self.scrape_failures = Counter("mcp_proxy_cluster_scrape_failures_total",
                                       "Siblings whose metrics a scrape of this worker could not add", registry=r)
        for counter, values in ((self.relays, RELAY_RESULTS), (self.refusals, REFUSAL_REASONS)):
            for value in values:  # every series from the start, at 0: rate() sees the first one
                counter.labels(value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            if server is not None and server[1] == self.internal_port:
                await self._internal(scope, receive, send)
                return
            path = scope["path"]
            if path == "/metrics" and scope["method"] == "GET":
                await self._metrics(scope, receive, send)
                return
            if scope["method"] == "POST" and path.endswith(("/messages", "/messages/")):
                owner = self._elsewhere(scope)
                if owner is not None:
                    await self._relay(owner, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    # --- a legacy POST whose session another worker holds ---
    def _elsewhere(self, scope: Scope) -> str | None:
        target = route(scope["path"])
        if target is None or target[0] != "messages":
            return None
        session_id = QueryParams(scope["query_string"]).get("session_id")  # as legacy_sse reads it
        owner = self.app.ctx.sessions.legacy_owner(session_id) if session_id else None
        return owner if owner is not None and owner != self.owner else None

    async def _relay(self, owner: str, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.app.ctx.config.limits
        try:  # under the owner's own limit: what it would refuse is refused here, the same way
            body = await read_body(Request(scope, receive), limits.max_body_bytes)
        except ProtocolError as exc:
            await _answer(answers.protocol_failure(exc).response(), scope, receive, send)
            return
        except ClientDisconnect:
            return
        target = _target(scope)
        headers = _relayed_headers(scope["headers"])
        headers[SIBLING_HEADER] = self.signer.sign("POST", target, body)
        try:
            resp = await self.client.send("POST", f"http://{owner}{target}", headers, body)
            answer = await resp.read(limits.max_sse_event_bytes, self.client.config.timeout_s)
        except UpstreamError as exc:
            if exc.message.startswith(UNREACHABLE):  # nothing was sent: the owner is gone, and its session
                self.relays.labels("owner_gone").inc()
                await _answer(_NOT_FOUND, scope, receive, send)
                return
            self.relays.labels("failed").inc()
            log.warning("a legacy SSE POST relayed to the worker holding its session failed: %s", exc.message)
            error = jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, "The proxy worker holding this session did "
                                                                          "not answer; the message may have been sent")
            await _answer(BodyResponse(502, [JSON_HEADER], jsonrpc.encode(error)), scope, receive, send)
            return
        self.relays.labels("relayed").inc()
        relayed = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.headers if n not in _HOP]
        await _answer(BodyResponse(resp.status, relayed, answer), scope, receive, send)

    # --- the internal endpoint ---
    async def _internal(self, scope: Scope, receive: Receive, send: Send) -> None:
        presented = next((v.decode("latin-1") for n, v in scope["headers"] if n == _SIBLING_RAW), None)
        refusal = self.signer.early_refusal(presented)  # before reading a body
        body = b""
        if refusal is None:
            try:
                body = await read_body(Request(scope, receive), self.app.ctx.config.limits.max_body_bytes)
            except ClientDisconnect:
                return
            except ProtocolError:  # larger than a sibling relays
                refusal = "malformed"
            else:
                refusal = self.signer.refusal(presented, scope["method"], _target(scope), body)
        if refusal is not None:
            self.refusals.labels(refusal).inc()
            log.warning("refused a request on the internal endpoint: %s signature", refusal)
            await _answer(_FORBIDDEN, scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and scope["method"] == "GET":
            await _answer(BodyResponse(200, _EXPOSITION, self.own_metrics()), scope, receive, send)
            return
        target = route(scope["path"])
        if target is None or target[0] != "messages":
            await _answer(BodyResponse(404, _TEXT, b"Not Found"), scope, receive, send)
            return
        # The client's request, as the client sent it to the worker it reached: served here as any
        # other (the relayed Host back in its place), never relayed again.
        headers = [(b"host", v) if n == _CLIENT_HOST_RAW else (n, v) for n, v in scope["headers"]
                   if n not in (b"host", _SIBLING_RAW)]
        await self.app({**scope, "headers": headers}, replaying(body, receive), send)

    # --- metrics ---
    def own_metrics(self) -> bytes:
        return self.app.metrics.render() + generate_latest(self.registry)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        theirs = await asyncio.gather(*(self._sibling_metrics(s) for s in self.siblings))
        answered = [m for m in theirs if m is not None]
        if len(answered) < len(theirs):
            self.scrape_failures.inc(len(theirs) - len(answered))
        body = merge([self.own_metrics(), *answered]) + (
            "# HELP mcp_proxy_cluster_workers_scraped Workers whose metrics this scrape adds up\n"
            "# TYPE mcp_proxy_cluster_workers_scraped gauge\n"
            f"mcp_proxy_cluster_workers_scraped {1 + len(answered)}.0\n").encode()
        await _answer(BodyResponse(200, _EXPOSITION, body), scope, receive, send)

    async def _sibling_metrics(self, sibling: str) -> bytes | None:
        headers = {SIBLING_HEADER: self.signer.sign("GET", METRICS_PATH, b"")}
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                resp = await self.client.send("GET", f"http://{sibling}{METRICS_PATH}", headers)
                text = await resp.read(MAX_EXPOSITION_BYTES, SCRAPE_TIMEOUT_S)
        except (UpstreamError, TimeoutError) as exc:
            log.warning("a sibling's metrics are missing from this scrape (%s): %s", sibling,
                        getattr(exc, "message", "timeout"))
            return None
        return text if resp.status == 200 else None


async def _answer(response: BodyResponse, scope: Any, receive: Receive, send: Send) -> None:
    await response(scope, receive, send)


