"""Prometheus metrics (prefix `mcp_proxy_`), one registry per app, served at /metrics.

Labels are bounded: server names come from config, outcomes and engines from fixed sets. Label
children are cached, so counting on the hot path is an increment, not a lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from ..config import Server

EVAL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = Counter("mcp_proxy_policy_decisions_total", "Policy decisions, by outcome",
                                 ["server", "outcome", "mode"], registry=r)
        self.evaluation = Histogram("mcp_proxy_policy_evaluation_duration_seconds", "Time to evaluate one decision",
                                    ["engine"], buckets=EVAL_BUCKETS, registry=r)
        self.errors = Counter("mcp_proxy_policy_errors_total", "Evaluations that gave no valid decision (denied)",
                              ["engine"], registry=r)
        self.reloads = Counter("mcp_proxy_policy_reloads_total", "Policy reloads, by result", ["result"], registry=r)
        self.bundle = Gauge("mcp_proxy_policy_bundle_info", "The policy revision in force", ["revision"], registry=r)
        Gauge("mcp_proxy_build_info", "Version of the proxy", ["version"], registry=r).labels(__version__).set(1)
        self.auth_failures = Counter("mcp_proxy_auth_failures_total", "Requests refused by authentication",
                                     ["server", "reason"], registry=r)
        self.server_expiry = Gauge("mcp_proxy_server_expiry_timestamp_seconds", "When a server's access ends",
                                   ["server"], registry=r)
        self.config_reloads = Counter("mcp_proxy_config_reloads_total", "Config reloads, by result", ["result"],
                                      registry=r)
        # `limit` names the config key that refused (limits.max_streams, upstream.max_connections, …).
        self.limit_rejections = Counter("mcp_proxy_limit_rejections_total",
                                        "Requests refused because a resource limit was reached", ["limit"],
                                        registry=r)
        self._decision_children: dict[tuple[str, str, str], Counter] = {}

    def decision(self, server: str, outcome: str, mode: str) -> None:
        key = (server, outcome, mode)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()

    def servers(self, servers: tuple[Server, ...]) -> None:
        self.server_expiry.clear()
        for server in servers:
            if server.expires_at is not None:
                self.server_expiry.labels(server.name).set(server.expires_at.timestamp())

    def auth_failure(self, server: str, reason: str) -> None:
        self.auth_failures.labels(server, reason).inc()

    def limit_rejected(self, limit: str) -> None:
        self.limit_rejections.labels(limit).inc()

    def policy_in_force(self, revision: str) -> None:
        self.bundle.clear()
        self.bundle.labels(revision).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
