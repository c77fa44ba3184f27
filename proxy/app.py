"""ASGI application: MCP endpoints dispatched directly, the rest through Starlette.

The MCP paths are the hot path: a dict lookup and one handler call, without Starlette's routing
and middleware layers (a quarter of the proxy's CPU time per request when measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .auth.authenticator import Access, Authenticator, AuthFailure, TokenVerifier
from .auth.resource import WELL_KNOWN, challenge, metadata, metadata_url
from .auth.sessions import SessionBinder
from .config import Config, Limits, Upstream, is_loopback
from .config_reload import ConfigReloader
from .config_words import check_config_words
from .enforce.enforcer import Enforcer
from .enforce.inventory import ToolInventory
from .enforce.pipeline import Pipeline
from .observe import access_log, log_context
from .observe.decision_log import DecisionLog
from .observe.metrics import Metrics, RequestRecord, current
from .observe.tracing import Tracing
from .policy.manager import PolicyManager, build_policy_set
from .protocol import jsonrpc
from .protocol.jsonrpc import ProtocolError
from .transport import answers, legacy_sse, streamable
from .transport.admission import Admission
from .transport.context import ProxyContext
from .transport.intake import error_response, header_fault
from .transport.paths import route
from .transport.request import McpRequest
from .transport.tool_listing import UpstreamToolLister
from .transport.upstream import UpstreamClient
from .transport.upstreams import Upstreams
from .upstream_oauth.grant import upstream_grant

Handler = Callable[[ProxyContext, Request, Access], Awaitable[Any]]
log = logging.getLogger("mcp_policy_proxy.app")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def allowed_origins(config: Config) -> frozenset[str]:
    allowed = {_origin_of(o) for o in config.allowed_origins}
    if config.public_url:
        allowed.add(_origin_of(config.public_url))
    return frozenset(allowed)


def origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """A browser Origin must be loopback or configured (the DNS-rebinding defence)."""
    if origin.lower() in allowed:
        return True
    try:
        host = urlsplit(origin).hostname
    except ValueError:  # `http://[`: no origin at all, so not an allowed one
        return False
    return host is not None and is_loopback(host)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready: not draining, the policy in force decides (a probe decision: proxy/policy/manager.py)
    and every upstream accepts connections (its OAuth grant, its stdio bridge). A 503's `reason`
    names each check that failed (with several upstreams, the servers of each that failed)."""
    ctx: ProxyContext = request.app.state.proxy
    if ctx.draining.is_set():  # shutting down: a load balancer sends no more
        return JSONResponse({"status": "draining"}, status_code=503, headers={"connection": "close"})
    manager: PolicyManager | None = request.app.state.policy
    checks = await asyncio.gather(manager.readiness() if manager is not None else _no_problem(),
                                  ctx.upstreams.readiness())
    problems = [problem for problem in checks if problem is not None]
    if problems:
        return JSONResponse({"status": "unavailable", "reason": "; ".join(problems)}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _no_problem() -> None:
    return None


class ProxyApp:
    def __init__(self, config: Config, pipeline: Pipeline | None = None, *,
                 clock: Callable[[], float] = time.time, reload_config: Callable[[], Config] | None = None,
                 owner: str | None = None) -> None:
        """`pipeline` replaces the policy pipeline (tests); without it the config's policies decide.
        `reload_config` reads the config anew (file and command line): reloads on change and SIGHUP.
        `owner`: this worker's internal address, with several (proxy/transport/cluster.py).

        Raises PolicyLoadError (naming file and line) when the policies cannot be used, ConfigError
        (naming file and key) when a server names a method or tag their catalog does not know.
        """
        self._clock = clock
        self._owner = owner
        self._background: set[asyncio.Future[Any]] = set()
        self.metrics = Metrics()
        # Every upstream the servers use (servers[].upstream), built once: client, grant, tool
        # inventory, stdio bridge (proxy/stdio). A stdio top-level upstream's bridge gives the
        # config the upstream URL the proxy runs with.
        self.upstreams = Upstreams(config, lambda reached: self._connect(reached, config))
        config = self.upstreams.bridged(config)
        if config.limits.max_streams >= config.upstream.max_connections:
            log.warning("limits.max_streams (%d) is not below upstream.max_connections (%d): open streams can take "
                        "every upstream connection, and other requests then wait (docs/configuration.md)",
                        config.limits.max_streams, config.upstream.max_connections)
        self.decision_log = DecisionLog(config.decision_log["sink"],
                                        redact_arguments=config.decision_log["redact_arguments"],
                                        service=config.decision_log["service"],
                                        dropped=self.metrics.decision_log_dropped.inc)
        self.metrics.servers(config.servers)
        self.tracing = Tracing.from_config(config)  # None: off (docs/tracing.md)
        self.policy_manager: PolicyManager | None = None
        if pipeline is None:
            policy = build_policy_set(config.policy)
            check_config_words(config, policy.catalog)
            self.metrics.policy_in_force(policy.engine.revision)
            enforcer = Enforcer(policy, config.servers, self.decision_log, mode=config.policy.mode, clock=clock,
                                metrics=self.metrics, inventory=self.upstreams.default.inventory,
                                inventories=self.upstreams.inventory)
            self.policy_manager = PolicyManager(config.policy, enforcer, lambda: self.ctx.config)
            pipeline = enforcer
        self.ctx = ProxyContext(config, pipeline, self.upstreams, session_binder(config, owner),
                                Admission(config.limits, self.metrics.limit_rejected))
        admission = self.ctx.admission
        self.metrics.watch(lambda: admission.streams, lambda: admission.legacy_sessions, self.upstreams.pool_stats)
        self.allowed_origins = allowed_origins(config)
        self.jwt = jwt_verifier(config)
        self.authenticator = authenticator(config, self.jwt, clock)
        self.config_reloader = None
        if reload_config is not None and os.path.isfile(config.source):
            self.config_reloader = ConfigReloader(config.source, reload_config, self.apply_config,
                                                  lambda ok: self.metrics.config_reloads.labels(
                                                      "success" if ok else "failure").inc())

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            access_log.install()  # here: after uvicorn has configured its loggers
            self.decision_log.start()  # shipping (decision_log.service), in the background
            # Everything built so far lives as long as the process: out of the collector's sight, a
            # full collection (which requests' containers trigger) costs ~0 instead of ~100 ms.
            gc.freeze()
            for bridge in self.upstreams.bridges():
                bridge.start()
            watchers = []
            manager, reloader = self.policy_manager, self.config_reloader
            interval = config.policy.reload_interval_s
            with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            if interval > 0:
                watchers += [asyncio.ensure_future(w.watch(interval)) for w in (manager, reloader) if w is not None]
            try:
                yield
            finally:
                for watcher in watchers:
                    watcher.cancel()
                if manager is not None:
                    await manager.holder.policy.engine.close()
                await self.upstreams.close()
                for bridge in self.upstreams.bridges():
                    await asyncio.to_thread(bridge.stop)  # its server processes end too
                if self.jwt is not None:
                    await self.jwt.close()  # type: ignore[attr-defined]
                await self.decision_log.aclose()  # shipped entries flushed too, within their timeout
                if self.tracing is not None:
                    await self.tracing.aclose()  # queued spans exported, within tracing.timeout_s

        self.other = Starlette(routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", self.serve_metrics, methods=["GET"]),
            Route(WELL_KNOWN, self.serve_metadata, methods=["GET"]),
            Route(WELL_KNOWN + "/{endpoint:path}", self.serve_metadata, methods=["GET"]),
        ], lifespan=lifespan)
        self.other.state.proxy = self.ctx
        self.other.state.policy = self.policy_manager  # for /readyz

    def _connect(self, upstream: Upstream, config: Config) -> tuple[UpstreamClient, ToolInventory]:
        """One upstream's client (with its OAuth grant) and tool inventory; `upstream` as reached."""
        client = UpstreamClient(upstream, on_limit=lambda: self.metrics.limit_rejected("upstream.max_connections"),
                                on_answer=self.metrics.upstream_answered,
                                on_connect_failure=self.metrics.upstream_connect_failed,
                                grant=upstream_grant(upstream, config.source, self.metrics.upstream_auth_failure))
        return client, tool_inventory(upstream, config.limits, client)

    def drain(self) -> None:
        """Shutdown begins (SIGTERM; proxy/transport/http_server.py): /readyz answers 503, new MCP
        requests 503, GET streams end cleanly and legacy sessions once answered; requests in
        flight finish (within limits.shutdown_grace_s). Idempotent."""
        if not self.ctx.draining.is_set():
            log.info("draining: open streams end, requests in flight may finish")
        self.ctx.drain()

    def reload(self) -> None:
        """SIGHUP: the config, then the policies."""
        if self.config_reloader is not None:
            self.config_reloader.reload()
        if self.policy_manager is not None:
            self.policy_manager.reload()

    def apply_config(self, new: Config) -> None:
        """Put a reloaded config in force: servers, tokens, auth and origins change on the next request;
        servers removed or changed have their open streams ended. Raises ConfigError, before anything
        changes, when a server names a method or tag the catalog in force does not know."""
        if self.policy_manager is not None:
            check_config_words(new, self.policy_manager.holder.policy.catalog)
        new = self.upstreams.bridged(new)  # the running upstream, unless upstream.* changed
        self.upstreams.check(new.servers)  # servers[].upstream: only upstreams running (a new one: restart)
        old = self.ctx.config
        kept = {key: getattr(old, key) for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)}
        for key in kept:
            log.warning("config reload: %s changes only on restart; the running value stays", key)
        new = dataclasses.replace(new, **kept)
        if new.auth.jwt != old.auth.jwt:
            if self.jwt is not None:
                closing = asyncio.ensure_future(self.jwt.close())  # type: ignore[attr-defined]
                self._background.add(closing)
                closing.add_done_callback(self._background.discard)
            self.jwt = jwt_verifier(new)
        if (new.auth.session_key, new.auth.url_token_key) != (old.auth.session_key, old.auth.url_token_key):
            self.ctx.sessions = session_binder(new, self._owner)
        self.ctx.config = new
        self.allowed_origins = allowed_origins(new)
        self.authenticator = authenticator(new, self.jwt, self._clock)
        self.upstreams.assign(new.servers)
        if isinstance(self.ctx.pipeline, Enforcer):
            self.ctx.pipeline.set_servers(new.servers)
        self.metrics.servers(new.servers)
        for server in old.servers:
            if server not in new.servers:
                self.ctx.revoke(server.name)

    async def serve_metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def serve_metadata(self, request: Request) -> Response:
        endpoint = request.path_params.get("endpoint", "").strip("/")
        if endpoint not in ("", "mcp", "sse"):
            return Response(b"Not Found", 404, media_type="text/plain")
        doc = metadata(self.ctx.config, self.ctx.base_url(request), f"/{endpoint}" if endpoint else "")
        if doc is None:  # no authorization server: no document (resource.py says why)
            return Response(b"Not Found", 404, media_type="text/plain")
        return JSONResponse(doc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = route(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.other(scope, receive, send)
            return
        kind, url_token = target
        log_context.begin_request()  # the access line's decision ids
        record, token = self.metrics.begin(kind)  # counted once, however the request ends
        trace = self.tracing.begin(scope) if self.tracing is not None else None
        try:
            await self._serve(scope, receive, send, kind, url_token, record)
        finally:
            if trace is not None:
                trace.end(record)
            self.metrics.finish(record, token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, kind: str, url_token: str | None,
                     record: RequestRecord) -> None:
        request = McpRequest(scope, receive)
        try:
            response = await self.serve_mcp(request, kind, url_token)
        except ClientDisconnect:  # gone before its request was read whole (or was too slow: a 408)
            record.outcome = "client_gone"
            return
        except asyncio.CancelledError:
            if not self.ctx.draining.is_set():
                record.outcome = "client_gone"
                raise
            log.warning("shutdown: a request still waiting for the upstream was cut at limits.shutdown_grace_s")
            record.outcome = "draining"
            response = answers.cut_at_shutdown(scope.get(streamable.REQUEST_ID)).response()
        except Exception:
            log.exception("request failed")
            record.outcome = "error"
            response = error_response(500, jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, "Internal error"))
        record.answered = time.perf_counter()
        try:
            await response(scope, receive, send)
        except asyncio.CancelledError:  # the grace period is over: the connection closes mid-answer
            if not self.ctx.draining.is_set():
                raise
            log.warning("shutdown: an answer still streaming was cut at limits.shutdown_grace_s")

    async def serve_mcp(self, request: Request, kind: str, url_token: str | None) -> Any:
        if self.ctx.draining.is_set():  # shutting down: nothing new is forwarded
            current().outcome = "draining"
            return answers.draining().response()
        if (fault := header_fault(request.scope["headers"])) is not None:
            return answers.protocol_failure(ProtocolError(jsonrpc.INVALID_REQUEST, f"Invalid Request: {fault}")
                                            ).response()
        origin_header = request.headers.get("origin")
        if origin_header is not None and not origin_allowed(origin_header, self.allowed_origins):
            return error_response(403, jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Origin not allowed"))
        try:
            access = await self.authenticator.authenticate(url_token, request.headers.get("authorization"))
        except AuthFailure as failure:
            return self.refuse(request, kind, failure)
        current().server = access.server.name
        return await HANDLERS[kind](self.ctx, request, access)

    def refuse(self, request: Request, kind: str, failure: AuthFailure) -> Any:
        self.metrics.auth_failure(failure.server or "unknown", failure.reason)
        record = current()
        record.server, record.outcome = failure.server or "unknown", "unauthorized"
        if failure.status == 404:  # an unknown URL token looks exactly like an unknown path
            return Response(b"Not Found", 404, media_type="text/plain")
        endpoint = "/sse" if kind in ("sse", "messages") else "/mcp"
        url = metadata_url(self.ctx.config, self.ctx.base_url(request), endpoint, request.scope["path"])
        body = jsonrpc.error_response(None, jsonrpc.FORBIDDEN, "Unauthorized",
                                      {"error": failure.error or "unauthorized", "reason": failure.reason})
        return error_response(401, body, headers={"www-authenticate": challenge(failure, url)})


HANDLERS: dict[str, Handler] = {
    "mcp": streamable.handle,
    "sse": legacy_sse.open_stream,
    "messages": legacy_sse.post_message,
}


# What a reload cannot change in a running process (sockets, pools, engines): kept until restart.
RESTART_ONLY = ("listen", "upstream", "limits", "policy", "decision_log", "tracing", "cluster")


def authenticator(config: Config, jwt: TokenVerifier | None, clock: Callable[[], float]) -> Authenticator:
    anonymous = config.auth.anonymous or not config.auth.configured
    return Authenticator(config, jwt, anonymous=anonymous, clock=clock)


def jwt_verifier(config: Config) -> TokenVerifier | None:
    jwt = config.auth.jwt
    if jwt is None:
        return None
    from .auth.jwt_verifier import JWTVerifier  # the crypto stack only where JWTs are configured

    audience = jwt.audience or config.public_url
    assert audience is not None  # config validation requires one
    return JWTVerifier(issuer=jwt.issuer, audience=audience, jwks_url=jwt.jwks_url, algorithms=list(jwt.algorithms),
                       leeway_s=jwt.leeway_s, jwks_cache_s=jwt.jwks_cache_s,
                       min_refetch_interval_s=jwt.min_refetch_interval_s, verified_cache_size=jwt.verified_cache_size)


def tool_inventory(upstream: Upstream, limits: Limits, client: UpstreamClient) -> ToolInventory:
    """What an upstream declares of its tools; listed with the proxy's own credential when needed."""
    lister = UpstreamToolLister(client, upstream.url, max_bytes=limits.max_sse_event_bytes,
                                timeout_s=upstream.timeout_s, sse_url=upstream.sse_url)
    return ToolInventory(lister, ttl_s=upstream.tools_ttl_s)


def session_binder(config: Config, owner: str | None = None) -> SessionBinder:
    """Keyed by auth.session_key, else derived from the URL token key, else random (one worker: with
    several, config.py requires auth.session_key)."""
    if config.auth.session_key:
        key = config.auth.session_key.encode()
    elif config.auth.url_token_key:
        key = hmac.new(config.auth.url_token_key.encode(), b"mcp-policy-proxy session binding", "sha256").digest()
    else:
        key = os.urandom(32)
    return SessionBinder(key, owner)


def create_app(config: Config, pipeline: Pipeline | None = None, *, clock: Callable[[], float] = time.time,
               reload_config: Callable[[], Config] | None = None, owner: str | None = None) -> ProxyApp:
    return ProxyApp(config, pipeline, clock=clock, reload_config=reload_config, owner=owner)
