"""The dashboard and the rules against a real Prometheus (Debian's `prometheus`) scraping a real proxy.

The demo Missive upstream (a low per-minute limit, so it answers 429s), the proxy in front of it
(a server that expires in three hours and one that never does; a site policy that makes one tool's
decision invalid, so the engine errs on it), and `prometheus` on a free loopback port scraping the
proxy's /metrics every second with deploy/prometheus/rules.yml loaded. A scripted workload through
the official SDK client: allowed, denied and failing tool calls, engine errors, a scanner guessing
URL tokens (auth failures), oversized request heads (limit rejections), a policy and a config
reload that fail (and are then fixed), and calls until the upstream answers 429. Then, through
Prometheus' HTTP API: every dashboard query (template variables substituted, `All` selected) and
every variable query returns data, every rule evaluates without error, the alert expressions the
workload makes true return data, and the 429, quota and expiry alerts fire.

The rules are loaded from a copy of rules.yml in which every `for:` is 1 s (a test cannot wait
minutes); every expression is byte-identical to the committed one (checked below).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.auth.tokens import mint_token, url_token_hmac
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client
from tests.peers.harness import REPO_ROOT, ServerHandle, free_port, start_server

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "mcp-policy-proxy.json"
JOB = "mcp-policy-proxy"  # the job name rules.yml's target alerts select
PER_MINUTE = 45  # the demo upstream's limit: the scripted calls fit, the hammering then gets 429s
# Grafana's variables as the test substitutes them: `All` (the regex .*) for instance and server.
VARIABLES = {"$__rate_interval": "10s", "$__range": "1h", "$job": JOB, "$instance": ".*", "$server": ".*"}
# Alerts whose expression the workload makes true: they return data (and, their `for:` shortened, fire).
MADE_TRUE = {"McpProxyUpstreamRateLimited", "McpProxyUpstreamRateLimitBudgetLow", "McpProxyServerExpiringSoon",
             "McpProxyPolicyEngineErrors", "McpProxyPolicyReloadFailed", "McpProxyConfigReloadFailed",
             "McpProxyAuthFailureSpike", "McpProxyLimitRejections"}
MUST_FIRE = {"McpProxyUpstreamRateLimited", "McpProxyUpstreamRateLimitBudgetLow", "McpProxyServerExpiringSoon"}
NEVER_FIRE = {"McpProxyTargetDown", "McpProxyTargetMissing", "McpProxyOverheadP99High", "McpProxyUpstream5xx",
              "McpProxyPolicyRevisionMismatch", "McpProxyServerExpired", "McpProxyDecisionLogDropped"}
ERRING_TOOL = "list_all_missive_teams"  # the site policy makes its decision invalid: an engine error
# Valid Rego, but a tools/call of ERRING_TOOL gets a second, conflicting `decision`: no valid decision.
SITE_POLICY = f"""package mcp.authz

import rego.v1

decision := {{"allow": true}} if input.tool.name == "{ERRING_TOOL}"
"""
BROKEN_POLICY = "package mcp.authz\n\nthis is not rego\n"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-11-25"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def rules_with_short_for(dst: Path) -> Path:
    """rules.yml with every `for:` set to 1s, nothing else changed."""
    text = RULES.read_text()
    short = re.sub(r"(?m)^(\s+for:) \S+$", r"\1 1s", text)
    assert short.count("for: 1s") == text.count("for: ")
    ours, theirs = (yaml.safe_load(t)["groups"] for t in (text, short))
    assert [[r["expr"] for r in g["rules"]] for g in ours] == [[r["expr"] for r in g["rules"]] for g in theirs]
    dst.write_text(short)
    return dst


def dashboard_queries() -> tuple[list[tuple[str, str]], list[str]]:
    """(panel title, expression) of every panel target, and every query variable's query."""
    board = json.loads(DASHBOARD.read_text())
    panels = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    variables = [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return panels, variables


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__range
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, expr
    return expr


def start_prometheus(workdir: Path, proxy_port: int) -> tuple[ServerHandle, str]:
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus is not installed (.ci/run installs it: apt-get install prometheus)"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_with_short_for(workdir / "rules.yml"))],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{proxy_port}"]}]}],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    handle = start_server([f"--config.file={path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                          port, log_dir=workdir, command=[prometheus])
    return handle, f"http://127.0.0.1:{port}"


class Api:
    """Prometheus' HTTP API."""

    def __init__(self, http: httpx.AsyncClient, base: str) -> None:
        self.http, self.base = http, base

    async def get(self, path: str, **params: Any) -> Any:
        answer = (await self.http.get(f"{self.base}/api/v1/{path}", params=params)).json()
        assert answer["status"] == "success", (path, params, answer)
        return answer["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    async def label_values(self, variable_query: str) -> set[str]:
        """Grafana's `label_values(selector, label)`, as its Prometheus data source asks for it."""
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable_query)
        assert match, variable_query
        series = await self.get("series", **{"match[]": substitute(match[1])})
        return {s[match[2]] for s in series if match[2] in s}


async def call(client: Any, tool: str, arguments: dict[str, Any] | None = None) -> str:
    """A tools/call whose outcome the workload does not depend on: 'ok', 'tool_error' or 'refused'."""
    try:
        result = await client.call_tool(tool, arguments or {})
    except Exception:  # an MCPError, or the transport's error for an HTTP 429/503
        return "refused"
    return "tool_error" if result.is_error else "ok"


async def scripted_round(urls: dict[str, str], base: str) -> None:
    """A slice of real use: reads, denied writes, a tool error, engine errors, a scanner guessing URL
    tokens, clients with oversized heads. Within the upstream's limit (about 15 of its requests)."""
    async with sdk_client(urls["support"]) as support, sdk_client(urls["triage"]) as triage:
        for tool in ("list_all_missive_users", "list_all_missive_shared_labels"):
            assert await call(support, tool) == "ok"
            assert await call(triage, tool) == "ok"
        assert await call(support, "list_all_missive_conversations") == "tool_error"  # no mailbox filter
        for client, tool in ((triage, "create_a_missive_post"), (support, "delete_a_missive_post_by_id")):
            assert await call(client, tool, {"conversation": "987654", "text": "hi", "id": "1"}) != "ok"
    for _ in range(2):
        async with sdk_client(urls["support"]) as client:
            assert await call(client, ERRING_TOOL) != "ok"
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(40):  # auth failures: unknown URL tokens (404)
            assert (await http.post(f"{base}/{mint_token()}/mcp", json=PING, headers=HEADERS)).status_code == 404
        for _ in range(20):  # limit rejections: request heads over limits.max_header_bytes (431)
            answer = await http.post(f"{base}/healthz", headers={"x-padding": "a" * 40_000})
            assert answer.status_code == 431


async def hammer_until_429(url: str) -> int:
    """Calls until the upstream answers 429, then a few more in each of two later scrapes (a counter
    created by its first increment is seen to rise only from its second)."""
    refused = 0
    async with sdk_client(url) as client:
        for _ in range(2 * PER_MINUTE):
            if await call(client, "list_all_missive_users") == "refused":
                refused += 1
                break
        assert refused, f"no 429 after {2 * PER_MINUTE} calls"
        for _ in range(2):
            await asyncio.sleep(1.2)
            for _ in range(4):
                refused += await call(client, "list_all_missive_users") == "refused"
    return refused


async def failed_reloads(proxy: Proxy, site: Path, metrics: httpx.AsyncClient) -> None:
    """A broken policy file and a broken config: both rejected (counted), then fixed."""
    config_text = proxy.config_path.read_text()
    (site / "broken.rego").write_text(BROKEN_POLICY)
    proxy.config_path.write_text("servers: 3\n")

    async def counted(*series: str) -> bool:  # each counted at least once (they exist from the start at 0)
        lines = (await metrics.get(f"{proxy.base}/metrics")).text.splitlines()
        values = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines if line[:1] != "#"}
        return all(values.get(s, 0) > 0 for s in series)

    deadline = time.monotonic() + 10
    while not await counted('mcp_proxy_policy_reloads_total{result="failure"}',
                            'mcp_proxy_config_reloads_total{result="failure"}'):
        assert time.monotonic() < deadline, "the broken policy and config were not both rejected"
        await asyncio.sleep(0.2)
    (site / "broken.rego").unlink()
    proxy.config_path.write_text(config_text)
    while not await counted('mcp_proxy_policy_reloads_total{result="success"}',
                            'mcp_proxy_config_reloads_total{result="success"}'):
        assert time.monotonic() < deadline, "the fixed policy and config were not reloaded"
        await asyncio.sleep(0.2)


def start_demo(workdir: Path, site: Path, port: int) -> tuple[ServerHandle, Proxy, dict[str, str]]:
    upstream_port = free_port()
    upstream = start_server(["proxy.demo.upstream", "--port", str(upstream_port), "--per-minute", str(PER_MINUTE),
                             "--per-15min", "0", "--concurrent", "0"], upstream_port, log_dir=workdir)
    key = secret()
    tokens = {name: secret() for name in ("triage", "support")}
    expires = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    servers = [
        {"name": "triage", "methods": ["read"], "tags": ["support"], "params": {"missive": True},
         "expires_at": expires, "token_hmac": url_token_hmac(key, tokens["triage"])},
        {"name": "support", "methods": ["read", "create", "update"], "tags": ["support"],
         "params": {"missive": True}, "token_hmac": url_token_hmac(key, tokens["support"])},
    ]
    try:
        proxy = start_proxy(workdir, f"http://127.0.0.1:{upstream_port}", {
            "auth": {"url_token_key": key}, "servers": servers, "decision_log": {"sink": "off"},
            "policy": {"paths": ["@bundled", str(site)], "reload_interval_s": 1}}, port=port)
    except BaseException:
        upstream.stop()
        raise
    return upstream, proxy, {name: f"{proxy.base}/{token}/mcp" for name, token in tokens.items()}


async def missing_data(api: Api, rules: list[dict[str, Any]]) -> list[str]:
    """What Prometheus does not (yet) show: an empty dashboard query, variable or made-true alert
    expression, a rule in error, an alert that must fire and does not, one that must not and does."""
    problems: list[str] = []
    panels, variable_queries = dashboard_queries()
    for title, expr in panels:
        if not await api.query(substitute(expr)):
            problems.append(f"dashboard panel {title!r}: no data for {expr}")
    for variable_query in variable_queries:
        if not await api.label_values(variable_query):
            problems.append(f"dashboard variable: no values for {variable_query}")
    for rule in rules:  # each evaluates (Api.get asserts success); those the workload makes true have data
        if "alert" in rule and not await api.query(rule["expr"]) and rule["alert"] in MADE_TRUE:
            problems.append(f"alert {rule['alert']}: its expression returns no data")
    for group in (await api.get("rules"))["groups"]:
        for rule in group["rules"]:
            if rule["health"] != "ok":
                problems.append(f"rule {rule['name']}: health {rule['health']} {rule.get('lastError')}")
    firing = {a["labels"]["alertname"] for a in (await api.get("alerts"))["alerts"] if a["state"] == "firing"}
    problems += [f"alert {name} is not firing" for name in sorted(MUST_FIRE - firing)]
    problems += [f"alert {name} fires" for name in sorted(NEVER_FIRE & firing)]
    return problems


async def run_and_check(api: Api, proxy: Proxy, urls: dict[str, str], site: Path, started: float) -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    deadline = time.monotonic() + 20
    while not await api.query(f'up{{job="{JOB}"}} == 1'):  # scraped once: the workload can begin
        assert time.monotonic() < deadline, "prometheus did not scrape the proxy"
        await asyncio.sleep(0.2)
    scraped_s = time.monotonic() - started
    reloads = asyncio.create_task(failed_reloads(proxy, site, api.http))
    await scripted_round(urls, proxy.base)
    await asyncio.sleep(1.2)  # the second round lands in a later scrape: rates see the counters rise
    await scripted_round(urls, proxy.base)
    assert await hammer_until_429(urls["support"]) >= 5
    await reloads
    workload_s = time.monotonic() - started
    problems: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        problems = await missing_data(api, rules)
        if not problems:
            break
        await asyncio.sleep(0.5)
    assert not problems, "\n".join(problems)
    print(f"\nprometheus e2e: first scrape after {scraped_s:.1f} s, workload done after {workload_s:.1f} s, "
          f"every check passed after {time.monotonic() - started:.1f} s")


async def test_dashboard_and_alerts_on_a_real_prometheus(tmp_path: Path) -> None:
    started = time.monotonic()
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.rego").write_text(SITE_POLICY)
    proxy_port = free_port()
    # Both at once: Prometheus applies its scrape targets only seconds after it starts.
    demo, prometheus = await asyncio.gather(asyncio.to_thread(start_demo, tmp_path, site, proxy_port),
                                            asyncio.to_thread(start_prometheus, tmp_path, proxy_port),
                                            return_exceptions=True)
    try:
        for started_or_not in (demo, prometheus):
            if isinstance(started_or_not, BaseException):
                raise started_or_not
        assert not isinstance(demo, BaseException) and not isinstance(prometheus, BaseException)
        async with httpx.AsyncClient(timeout=5) as http:
            await run_and_check(Api(http, prometheus[1]), demo[1], demo[2], site, started)
    finally:
        if not isinstance(prometheus, BaseException):
            prometheus[0].stop()  # first: the proxy's going away must not be scraped
        if not isinstance(demo, BaseException):
            demo[1].stop()
            demo[0].stop()
