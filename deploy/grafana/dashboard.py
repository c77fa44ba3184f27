"""The Grafana dashboard of mcp-policy-proxy, built with grafana-foundation-sdk (Grafana's own typed
builders, so the JSON follows Grafana's dashboard schema).

    .venv/bin/python deploy/grafana/dashboard.py     # writes deploy/grafana/mcp-policy-proxy.json

The JSON is committed (import it as it is: docs/operations.md); tests/unit/test_deploy_rules.py
checks it is exactly what this script writes, and tests/e2e/test_prometheus.py that every query
returns data from a real Prometheus scraping a real proxy. Every query sums across workers and
replicas (one process is one target): `sum by (…)` of rates, `histogram_quantile` over
`sum by (le)`. The latency panels read the recording rules of deploy/prometheus/rules.yml
(`instance:…_bucket:rate5m`), so those rules must be loaded for them.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, GraphDrawStyle, LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    VariableModel,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).with_name("mcp-policy-proxy.json")
UID = "mcp-policy-proxy"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers: every query is scoped to the chosen job and instances; metrics that carry `server`
# to the chosen servers too. `All` is the regex `.*` (so a server configured later is included).
TARGET = 'job=~"$job", instance=~"$instance"'
SERVER = f'{TARGET}, server=~"$server"'
RATE = "[$__rate_interval]"


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table_format: bool = False
      ) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS).legend_format(legend or "__auto")
    query = query.instant() if instant else query.range()
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def quantiles(bucket_rate: str, by: str, legend: str) -> list[prometheus.Dataquery]:
    """p50 and p99 of a recorded per-target bucket rate (rules.yml), summed across targets by (by, le)."""
    group = f"{by}, le" if by else "le"
    return [q(f"histogram_quantile({p}, sum by ({group}) ({bucket_rate}))", f"p{int(p * 100)} {legend}".strip(),
              ref) for p, ref in ((0.5, "A"), (0.99, "B"))]


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12,
           no_value: str | None = None, bars: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DS)
             .height(8).span(width).min(0).fill_opacity(10).line_width(1)
             .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM).show_legend(True)))
    if bars:
        panel = panel.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
    if no_value is not None:
        panel = panel.no_value(no_value)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def single(title: str, description: str, unit: str, query: prometheus.Dataquery, *, decimals: int | None = None,
           red_above: float | None = None) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).unit(unit).datasource(DS).height(4).span(4)
             .with_target(query)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if decimals is not None:
        panel = panel.decimals(decimals)
    steps = [Threshold(value=None, color="green")]
    if red_above is not None:
        steps.append(Threshold(value=red_above, color="red"))
    return panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))


def listing(title: str, description: str, query: str, width: int, height: int = 6) -> table.Panel:
    """A table of one instant query's series (their labels and value; the time column hidden)."""
    return (table.Panel().title(title).description(description).datasource(DS).height(height).span(width)
            .show_header(True).with_target(q(query, instant=True, table_format=True))
            .with_transformation(DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})))


def overview() -> list[stat.Panel]:
    return [
        single("Requests", "MCP endpoint requests per second, all outcomes", "reqps",
               q(f"sum(rate(mcp_proxy_requests_total{{{SERVER}}}{RATE}))")),
        single("Forwarded", "Share of requests the upstream answered (the rest: denied, invalid, unauthorized, "
               "limited, upstream errors …)", "percentunit",
               q(f'sum(rate(mcp_proxy_requests_total{{{SERVER}, outcome="forwarded"}}{RATE}))'
                 f" / sum(rate(mcp_proxy_requests_total{{{SERVER}}}{RATE}))")),
        single("Proxy overhead p99", "Time spent in the proxy itself, upstream waits excluded (5 min)", "s",
               q("histogram_quantile(0.99, sum by (le) "
                 f"(instance:mcp_proxy_overhead_seconds_bucket:rate5m{{{TARGET}}}))"),
               red_above=0.05),
        single("Open streams", "SSE streams open, legacy sessions included, all replicas", "short",
               q(f"sum(mcp_proxy_open_streams{{{TARGET}}})")),
        single("Targets up", "Proxy processes Prometheus scrapes successfully", "short",
               q(f"sum(up{{{TARGET}}})")),
        single("Policy revisions", "Distinct policy revisions in force across the replicas (more than 1: they "
               "decide differently)", "short",
               q(f"count(count by (revision) (mcp_proxy_policy_bundle_info{{{TARGET}}}))"), red_above=2),
    ]


def traffic() -> list[timeseries.Panel]:
    return [
        series("Requests by outcome", "docs/metrics.md lists the outcomes", "reqps",
               q(f"sum by (outcome) (rate(mcp_proxy_requests_total{{{SERVER}}}{RATE}))", "{{outcome}}")),
        series("Requests by server and transport", "", "reqps",
               q(f"sum by (server, transport) (rate(mcp_proxy_requests_total{{{SERVER}}}{RATE}))",
                 "{{server}} {{transport}}")),
        series("MCP operations by method", "MCP requests and notifications (mcp.server.operation.duration count)",
               "ops", q("sum by (mcp_method_name) "
                        f"(rate(mcp_server_operation_duration_seconds_count{{{SERVER}}}{RATE}))",
                        "{{mcp_method_name}}")),
        series("Failed operations by error type", "JSON-RPC error codes, tool errors and HTTP statuses of failed "
               "answers (error.type)", "ops",
               q("sum by (error_type) "
                 f'(rate(mcp_server_operation_duration_seconds_count{{{SERVER}, error_type!=""}}{RATE}))',
                 "{{error_type}}"), no_value="0"),
    ]


def latency() -> list[timeseries.Panel]:
    return [
        series("Operation duration by method", "From a message's arrival until its answer is sent (5 min)", "s",
               *quantiles(f"instance:mcp_server_operation_duration_seconds_bucket:rate5m{{{SERVER}}}",
                          "mcp_method_name", "{{mcp_method_name}}")),
        series("Proxy overhead", "Time in the proxy until the answer is ready, upstream waits excluded (5 min)", "s",
               *quantiles(f"instance:mcp_proxy_overhead_seconds_bucket:rate5m{{{TARGET}}}", "", "")),
        series("Upstream latency by server", "Upstream time to response headers (5 min)", "s",
               *quantiles(f"instance:mcp_proxy_upstream_request_duration_seconds_bucket:rate5m{{{SERVER}}}",
                          "server", "{{server}}")),
        series("Policy evaluation by engine", "Time to evaluate one decision (5 min)", "s",
               *quantiles(f"instance:mcp_proxy_policy_evaluation_duration_seconds_bucket:rate5m{{{TARGET}}}",
                          "engine", "{{engine}}")),
    ]


def policy() -> list[timeseries.Panel | bargauge.Panel | table.Panel]:
    return [
        series("Decisions by server and outcome", "In dry_run, deny counts what enforcing would have blocked",
               "ops", q(f"sum by (server, outcome, mode) (rate(mcp_proxy_policy_decisions_total{{{SERVER}}}{RATE}))",
                        "{{server}} {{outcome}} ({{mode}})")),
        series("Tool calls by server, tool and decision", "tools/call requests decided", "ops",
               q(f"sum by (server, gen_ai_tool_name, decision) (rate(mcp_proxy_tool_calls_total{{{SERVER}}}{RATE}))",
                 "{{server}} {{gen_ai_tool_name}} {{decision}}")),
        (bargauge.Panel().title("Top denied tools").description("Denied tools/call requests in the time range")
         .datasource(DS).height(8).span(8).unit("short").display_mode(BarGaugeDisplayMode.BASIC)
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .with_target(q(f'topk(10, sum by (server, gen_ai_tool_name) (increase(mcp_proxy_tool_calls_total'
                        f'{{{SERVER}, decision="deny"}}[$__range])))', "{{server}} / {{gen_ai_tool_name}}",
                        instant=True)).no_value("none denied")),
        series("Policy engine errors", "Evaluations that gave no valid decision: each message denied (503)", "ops",
               q(f"sum by (engine) (rate(mcp_proxy_policy_errors_total{{{TARGET}}}{RATE}))", "{{engine}}"),
               width=8, no_value="0"),
        series("Policy and config reloads", "A failed reload keeps the previous version in force", "short",
               q(f"sum by (result) (increase(mcp_proxy_policy_reloads_total{{{TARGET}}}{RATE}))", "policy {{result}}"),
               q(f"sum by (result) (increase(mcp_proxy_config_reloads_total{{{TARGET}}}{RATE}))", "config {{result}}",
                 ref="B"), width=8, no_value="0", bars=True),
        listing("Policy revision in force", "Replicas per policy revision (content hash)",
                f"sum by (revision) (mcp_proxy_policy_bundle_info{{{TARGET}}})", width=8),
        listing("Proxy versions", "Replicas per proxy version",
                f"count by (version) (mcp_proxy_build_info{{{TARGET}}})", width=8),
        series("Decision memo hit ratio", "Share of embedded-engine decisions answered from the exact memo "
               "(policy.decision_cache_size; docs/policies.md)", "percentunit",
               q(f'sum(rate(mcp_proxy_policy_decision_cache_lookups_total{{{TARGET}, result="hit"}}{RATE})) '
                 f"/ sum(rate(mcp_proxy_policy_decision_cache_lookups_total{{{TARGET}}}{RATE}))", "hits"),
               width=8).height(6).max(1),
    ]


def auth() -> list[timeseries.Panel]:
    return [
        series("Authentication failures by reason", "Requests refused by authentication (docs/auth.md); server "
               "`unknown` when none was named", "reqps",
               q(f"sum by (server, reason) (rate(mcp_proxy_auth_failures_total{{{SERVER}}}{RATE}))",
                 "{{server}} {{reason}}"), no_value="0"),
        series("Authentication failure share", "Share of MCP requests refused by authentication", "percentunit",
               q(f"sum(rate(mcp_proxy_auth_failures_total{{{SERVER}}}{RATE}))"
                 f" / sum(rate(mcp_proxy_requests_total{{{SERVER}}}{RATE}))", "refused"), no_value="0"),
    ]


def upstream() -> list[timeseries.Panel]:
    return [
        series("Upstream answers by status", "", "reqps",
               q(f"sum by (status) (rate(mcp_proxy_upstream_responses_total{{{SERVER}}}{RATE}))", "{{status}}"),
               width=8),
        series("Upstream 429s by server", "Rate-limited upstream answers, passed to the client (never retried)",
               "reqps", q(f"sum by (server) (rate(mcp_proxy_upstream_rate_limited_total{{{SERVER}}}{RATE}))",
                          "{{server}}"), width=8, no_value="0"),
        series("Upstream quota left", "The smallest remaining quota any replica last saw, against the limit "
               "(normalized: docs/rate-limits.md)", "short",
               q(f"min by (server) (mcp_proxy_upstream_ratelimit_remaining{{{SERVER}}})", "{{server}} remaining"),
               q(f"min by (server) (mcp_proxy_upstream_ratelimit_limit{{{SERVER}}})", "{{server}} limit", ref="B"),
               width=8),
        series("Upstream quota resets in", "Seconds until the quota resets, as last stated", "s",
               q(f"max by (server) (mcp_proxy_upstream_ratelimit_reset_seconds{{{SERVER}}})", "{{server}}"),
               width=8),
        series("Upstream connections", "Pool of upstream connections, all replicas", "short",
               q(f"sum(mcp_proxy_upstream_connections_open{{{TARGET}}})", "open"),
               q(f"sum(mcp_proxy_upstream_connections_idle{{{TARGET}}})", "idle", ref="B"),
               q(f"sum(mcp_proxy_upstream_requests_waiting{{{TARGET}}})", "waiting", ref="C"), width=8),
    ]


def streams() -> list[timeseries.Panel]:
    return [
        series("Open streams and legacy sessions", "All replicas", "short",
               q(f"sum(mcp_proxy_open_streams{{{TARGET}}})", "streams"),
               q(f"sum(mcp_proxy_legacy_sessions{{{TARGET}}})", "legacy sessions", ref="B"), width=8),
        series("Limit rejections by limit", "Refused because a resource limit was reached (the config key)",
               "reqps", q(f"sum by (limit) (rate(mcp_proxy_limit_rejections_total{{{TARGET}}}{RATE}))", "{{limit}}"),
               width=8, no_value="0"),
        series("Decision-log entries dropped", "Not shipped to decision_log.service: a gap in the audit trail",
               "ops", q(f"sum(rate(mcp_proxy_decision_log_dropped_total{{{TARGET}}}{RATE}))", "dropped"), width=8),
    ]


def servers() -> list[table.Panel]:
    day = 86400
    return [
        listing("Servers expiring soon", "Time left until each server's expires_at (servers with one only), "
                "soonest first",
                f"sort(min by (server) (mcp_proxy_server_expiry_timestamp_seconds{{{SERVER}}}) - time())",
                width=24, height=8)
        .unit("s").no_value("no server has an expires_at")
        .thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(value=None, color="red"), Threshold(value=day, color="orange"),
             Threshold(value=7 * day, color="green")])),
    ]


def variables() -> list[cogbuilder.Builder[VariableModel]]:
    def query_variable(name: str, label: str, query: str, multi: bool) -> dashboard.QueryVariable:
        variable = (dashboard.QueryVariable(name).label(label).datasource(DS).query(query)
                    .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
        return variable.multi(True).include_all(True).all_value(".*") if multi else variable
    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_variable("job", "Job", "label_values(mcp_proxy_build_info, job)", multi=False),
        query_variable("instance", "Instance", 'label_values(mcp_proxy_build_info{job=~"$job"}, instance)',
                       multi=True),
        query_variable("server", "Server", 'label_values(mcp_proxy_requests_total{job=~"$job", '
                       'instance=~"$instance"}, server)', multi=True),
    ]


def build() -> dashboard.Dashboard:
    board = (dashboard.Dashboard("MCP policy proxy").uid(UID)
             .description("mcp-policy-proxy: traffic, latency, policy decisions, authentication, upstream rate "
                          "limits, streams and expiring servers (docs/operations.md)")
             .tags(["mcp", "mcp-policy-proxy"]).editable().tooltip(DashboardCursorSync.CROSSHAIR)
             .time("now-1h", "now").refresh("30s").timezone("browser").variables(variables()))
    ids = itertools.count(1)  # every panel and row its own id, in order
    for title, panels in (("Overview", overview()), ("Traffic and outcomes", traffic()), ("Latency", latency()),
                          ("Policy", policy()), ("Authentication", auth()), ("Upstream and rate limits", upstream()),
                          ("Streams, limits and the decision log", streams()), ("Servers", servers())):
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
