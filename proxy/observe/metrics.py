"""Prometheus metrics (prefix `mcp_proxy_`), one registry per app, served at /metrics.

Labels are bounded: server names come from config, outcomes and engines from fixed sets. What is
counted per request goes to lock-free series (series.py); the rest are prometheus_client's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from ..config import Server
from ..policy import memo
from .series import Series

EVAL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

# No `<name>_created` series beside every counter and histogram (process-wide in prometheus_client).
disable_created_metrics()

# --- requests: names, buckets and label values (docs/metrics.md) ---
# The OpenTelemetry MCP semantic conventions' ExplicitBucketBoundaries for mcp.server.operation.duration.
OPERATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
OUTCOMES = ("forwarded", "denied", "invalid", "unauthorized", "limited", "upstream_error", "draining",
            "client_gone", "error")
TRANSPORTS = {"mcp": "streamable_http", "sse": "legacy_sse", "messages": "legacy_sse"}
OTHER = "other"  # a method or tool name outside the known sets: a client never makes a label value
# MCP methods (the semantic conventions' well-known values, and the tasks of 2025-11-25 on).
MCP_METHODS = frozenset({
    "completion/complete", "elicitation/create", "initialize", "logging/setLevel", "notifications/cancelled",
    "notifications/initialized", "notifications/message", "notifications/progress",
    "notifications/prompts/list_changed", "notifications/resources/list_changed", "notifications/resources/updated",
    "notifications/roots/list_changed", "notifications/tools/list_changed", "ping", "prompts/get", "prompts/list",
    "resources/list", "resources/read", "resources/subscribe", "resources/templates/list", "resources/unsubscribe",
    "roots/list", "sampling/createMessage", "tools/call", "tools/list", "server/discover", "tasks/get",
    "tasks/list", "tasks/result", "tasks/cancel", "notifications/tasks/status"})
# `error_type`: a JSON-RPC error code of the answer (from this set), `tool_error` (a tool result with
# isError), an HTTP status of a failed exchange; `_OTHER` for any other code, "" on success.
_JSONRPC_CODES = (-32700, -32600, -32601, -32602, -32603, -32001, -32002, -32020, -32042)
JSONRPC_ERROR_TYPES = {code: str(code) for code in _JSONRPC_CODES}
OTHER_ERROR = "_OTHER"
# Upstream `status`: the exact code for these, else its class (2xx … 5xx).
_EXACT_STATUSES = frozenset({200, 202, 204, 400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429,
                             500, 502, 503, 504})
STATUS_LABELS = {s: str(s) if s in _EXACT_STATUSES else f"{s // 100}xx" for s in range(100, 600)}
# The config keys that refuse requests (mcp_proxy_limit_rejections_total{limit}; docs/metrics.md).
LIMIT_KEYS = ("limits.max_streams_per_principal", "limits.max_streams", "limits.max_legacy_sessions",
              "limits.max_header_bytes", "limits.client_header_timeout_s", "limits.client_body_timeout_s",
              "upstream.max_connections")
# Why an upstream connection could not be opened (mcp_proxy_upstream_connect_failures_total{reason};
# given by proxy/transport/upstream.py, tls.py and egress.py; docs/upstreams.md).
CONNECT_FAILURES = ("unreachable", "timeout", "tls_untrusted", "tls_expired", "tls_not_yet_valid", "tls_hostname",
                    "tls_protocol", "tls_client_cert", "tls_handshake", "tls_closed", "proxy_unreachable",
                    "proxy_timeout", "proxy_auth", "proxy_refused", "proxy_upstream", "proxy_invalid")


def error_type_of(message: dict[str, Any] | None) -> str:
    """The semantic conventions' error.type of a JSON-RPC answer, from a bounded set; "" for a success."""
    if message is None:
        return ""
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return JSONRPC_ERROR_TYPES.get(code, OTHER_ERROR) if type(code) is int else OTHER_ERROR
    result = message.get("result")
    return "tool_error" if isinstance(result, dict) and result.get("isError") is True else ""


class RequestRecord:
    """What one MCP HTTP request did, noted where each fact is known (app, streams.forward, the
    enforcer, the upstream client) and counted once when the request ends (Metrics.finish)."""

    __slots__ = ("answered", "decision", "error_type", "method", "outcome", "rate_limits", "server", "start", "tool",
                 "transport", "upstream_s")

    def __init__(self, transport: str) -> None:
        self.start = time.perf_counter()
        self.transport = transport
        self.server = "unknown"
        self.method: str | None = None  # the client message's method (bounded label), if there is one
        self.tool = ""  # tools/call: the bounded tool label
        self.decision: str | None = None  # allow / deny / error, when the message was decided
        self.outcome: str | None = None
        self.error_type = ""
        self.upstream_s = 0.0  # waiting for upstream answer heads (tool listings included)
        self.answered = 0.0  # when the answer was ready to be sent (perf_counter)
        self.rate_limits: tuple[int, Any] | None = None  # the upstream answer's (status, ratelimit.RateLimits)


# The request being served: a context variable, so the parts that note facts need no parameter
# for it (each request runs in its own task; tasks it starts inherit it).
_CURRENT: ContextVar[RequestRecord] = ContextVar("mcp_proxy_request")
_NOWHERE = RequestRecord("none")  # what parts driven outside a request note: never counted


class _DecisionMemoCollector:
    """The decision memo's hits and misses (proxy/policy/memo.py), read when scraped."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("mcp_proxy_policy_decision_cache_lookups",
                                     "Embedded-engine decisions looked up in the exact memo, by result",
                                     labels=["result"])
        family.add_metric(["hit"], memo.STATS.hits)
        family.add_metric(["miss"], memo.STATS.misses)
        yield family


def current() -> RequestRecord:
    return _CURRENT.get(_NOWHERE)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.series = hot = Series()
        r.register(hot)
        self.decisions = hot.counter("mcp_proxy_policy_decisions_total", "Policy decisions, by outcome",
                                     ["server", "outcome", "mode"])
        self.evaluation = hot.histogram("mcp_proxy_policy_evaluation_duration_seconds",
                                        "Time to evaluate one decision", ["engine"], EVAL_BUCKETS)
        self.errors = Counter("mcp_proxy_policy_errors_total", "Evaluations that gave no valid decision (denied)",
                              ["engine"], registry=r)
        self.reloads = Counter("mcp_proxy_policy_reloads_total", "Policy reloads, by result", ["result"], registry=r)
        self.bundle = Gauge("mcp_proxy_policy_bundle_info", "The policy revision in force", ["revision"], registry=r)
        Gauge("mcp_proxy_build_info", "Version of the proxy", ["version"], registry=r).labels(__version__).set(1)
        self.auth_failures = hot.counter("mcp_proxy_auth_failures_total", "Requests refused by authentication",
                                         ["server", "reason"])
        self.server_expiry = Gauge("mcp_proxy_server_expiry_timestamp_seconds", "When a server's access ends",
                                   ["server"], registry=r)
        self.config_reloads = Counter("mcp_proxy_config_reloads_total", "Config reloads, by result", ["result"],
                                      registry=r)
        # `limit` names the config key that refused (limits.max_streams, upstream.max_connections, …).
        self.limit_rejections = Counter("mcp_proxy_limit_rejections_total",
                                        "Requests refused because a resource limit was reached", ["limit"],
                                        registry=r)
        # Shipping (decision_log.service): entries dropped from the full buffer or lost at shutdown.
        self.decision_log_dropped = Counter("mcp_proxy_decision_log_dropped_total",
                                            "Decision-log entries dropped before they could be shipped", registry=r)
        # upstream.oauth: requests answered by the proxy for want of a usable grant (reasons: grant.py REASONS).
        self.upstream_auth_failures = Counter("mcp_proxy_upstream_auth_failures_total",
                                              "Requests not sent upstream, or refused by it, for want of a usable "
                                              "OAuth grant to the upstream, by reason", ["reason"], registry=r)
        self._request_metrics(r, hot)
        self._rate_limit_metrics(r)
        r.register(_DecisionMemoCollector())
        # Series of known labels exist from the start at 0, so rate() and increase() see their first
        # increment (a series born at 1 looks like no change).
        for result in ("success", "failure"):
            self.reloads.labels(result)
            self.config_reloads.labels(result)
        for engine in ("embedded", "opa"):
            self.errors.labels(engine)
        for limit in LIMIT_KEYS:
            self.limit_rejections.labels(limit)
        self.connect_failures = Counter("mcp_proxy_upstream_connect_failures_total",
                                        "Upstream connections that could not be opened (TCP, egress proxy, TLS), "
                                        "by reason", ["reason"], registry=r)
        for reason in CONNECT_FAILURES:
            self.connect_failures.labels(reason)

    def decision(self, server: str, outcome: str, mode: str) -> None:
        self.decisions.inc((server, outcome, mode))

    def evaluated(self, engine: str, seconds: float) -> None:
        self.evaluation.observe((engine,), seconds)

    def servers(self, servers: tuple[Server, ...]) -> None:
        self.server_expiry.clear()
        for server in servers:
            self.upstream_rate_limited.labels(server.name)  # at 0 until the first 429 (see __init__)
            if server.expires_at is not None:
                self.server_expiry.labels(server.name).set(server.expires_at.timestamp())

    def auth_failure(self, server: str, reason: str) -> None:
        self.auth_failures.inc((server, reason))

    def limit_rejected(self, limit: str) -> None:
        self.limit_rejections.labels(limit).inc()

    def upstream_auth_failure(self, reason: str) -> None:
        self.upstream_auth_failures.labels(reason).inc()

    def upstream_connect_failed(self, reason: str) -> None:
        """`reason`: one of CONNECT_FAILURES (a bounded label)."""
        self.connect_failures.labels(reason if reason in CONNECT_FAILURES else "unreachable").inc()

    def policy_in_force(self, revision: str) -> None:
        self.bundle.clear()
        self.bundle.labels(revision).set(1)

    # --- requests, upstream exchanges, streams and the upstream pool ---
    def _request_metrics(self, r: CollectorRegistry, hot: Series) -> None:
        self.operations = hot.histogram("mcp_server_operation_duration_seconds",
                                        "MCP request or notification duration, from receipt until the answer is sent",
                                        ["mcp_method_name", "gen_ai_tool_name", "error_type", "server"],
                                        OPERATION_BUCKETS)
        self.requests = hot.counter("mcp_proxy_requests_total", "MCP endpoint requests, by outcome",
                                    ["server", "transport", "outcome"])
        self.overhead = hot.histogram("mcp_proxy_overhead_seconds",
                                      "Time in the proxy until the answer starts, upstream waits excluded",
                                      ["transport"], OVERHEAD_BUCKETS)
        self.upstream_latency = hot.histogram("mcp_proxy_upstream_request_duration_seconds",
                                              "Upstream time to response headers", ["server"], OPERATION_BUCKETS)
        self.upstream_statuses = hot.counter("mcp_proxy_upstream_responses_total", "Upstream answers, by HTTP status",
                                             ["server", "status"])
        self.tool_calls = hot.counter("mcp_proxy_tool_calls_total", "tools/call requests decided, by decision",
                                      ["server", "gen_ai_tool_name", "decision"])
        # Read when scraped (Metrics.watch), nothing done per request.
        self.open_streams = Gauge("mcp_proxy_open_streams", "Open SSE streams (legacy sessions included)",
                                  registry=r)
        self.legacy_sessions = Gauge("mcp_proxy_legacy_sessions", "Open legacy SSE sessions", registry=r)
        self.pool_open = Gauge("mcp_proxy_upstream_connections_open", "Upstream connections open (idle and in use)",
                               registry=r)
        self.pool_idle = Gauge("mcp_proxy_upstream_connections_idle", "Upstream connections idle", registry=r)
        self.pool_waiting = Gauge("mcp_proxy_upstream_requests_waiting",
                                  "Requests waiting for an upstream connection", registry=r)

    def watch(self, streams: Callable[[], int], legacy_sessions: Callable[[], int],
              pool: Callable[[], tuple[int, int, int]]) -> None:
        """What the gauges read at each scrape: open streams, legacy sessions, (open, idle, waiting)."""
        self.open_streams.set_function(streams)
        self.legacy_sessions.set_function(legacy_sessions)
        self.pool_open.set_function(lambda: pool()[0])
        self.pool_idle.set_function(lambda: pool()[1])
        self.pool_waiting.set_function(lambda: pool()[2])

    def begin(self, kind: str) -> tuple[RequestRecord, Token[RequestRecord]]:
        """A request to an MCP endpoint (`kind`: proxy/transport/paths.py) begins."""
        record = RequestRecord(TRANSPORTS[kind])
        return record, _CURRENT.set(record)

    def finish(self, record: RequestRecord, token: Token[RequestRecord]) -> None:
        """The request's answer is sent (or it ended otherwise): counted once, here."""
        _CURRENT.reset(token)
        elapsed = time.perf_counter() - record.start
        outcome = record.outcome or ("denied" if record.decision in ("deny", "error") else "invalid")
        self.requests.inc((record.server, record.transport, outcome))
        if record.method is not None:  # an MCP message (a GET or DELETE carries none)
            self.operations.observe((record.method, record.tool, record.error_type, record.server), elapsed)
        if record.answered:
            self.overhead.observe((record.transport,), max(0.0, record.answered - record.start - record.upstream_s))
        if record.rate_limits is not None:
            self.upstream_rate_limits(record.server, *record.rate_limits)

    def upstream_answered(self, status: int, seconds: float) -> None:
        """An upstream answer's head arrived `seconds` after its request was written."""
        record = _CURRENT.get(_NOWHERE)
        record.upstream_s += seconds
        server = record.server
        self.upstream_latency.observe((server,), seconds)
        self.upstream_statuses.inc((server, STATUS_LABELS.get(status, OTHER)))

    def tool_call(self, server: str, tool: str, decision: str) -> None:
        """A tools/call decided; `tool` is already a bounded label (the catalog's or a declared name, or other)."""
        self.tool_calls.inc((server, tool, decision))

    # --- upstream rate limits (docs/rate-limits.md) ---
    def _rate_limit_metrics(self, r: CollectorRegistry) -> None:
        self.upstream_rate_limited = Counter("mcp_proxy_upstream_rate_limited_total",
                                             "Upstream answers with HTTP 429 (never retried)", ["server"], registry=r)
        self.ratelimit_gauges = {
            "remaining": Gauge("mcp_proxy_upstream_ratelimit_remaining",
                               "Last remaining quota the upstream stated (normalized)", ["server"], registry=r),
            "limit": Gauge("mcp_proxy_upstream_ratelimit_limit", "Last quota the upstream stated (normalized)",
                           ["server"], registry=r),
            "reset_s": Gauge("mcp_proxy_upstream_ratelimit_reset_seconds",
                             "Seconds until the quota resets, as last stated by the upstream", ["server"], registry=r),
        }

    def upstream_rate_limits(self, server: str, status: int, limits: Any) -> None:
        """An upstream answer's status and its normalized rate limits (ratelimit.RateLimits or None):
        429s counted, the values it states kept as the server's last seen."""
        if status == 429:
            self.upstream_rate_limited.labels(server).inc()
        if limits is not None:
            for name, gauge in self.ratelimit_gauges.items():
                if (value := getattr(limits, name)) is not None:
                    gauge.labels(server).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
