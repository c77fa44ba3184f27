"""deploy/: the Prometheus rules pass `promtool check rules` and their unit tests (`promtool test
rules`, one test per alert, firing and not), every expression of the rules and of the Grafana
dashboard names only metrics the proxy exports (docs/metrics.md), recording rules of rules.yml or
`up`, and the committed dashboard JSON is exactly what deploy/grafana/dashboard.py generates.

promtool comes with Debian's `prometheus` (.ci/run installs it): missing, these tests fail.
The same rules and dashboard against a real Prometheus: tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_metrics_doc import documented_families

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yml"
GENERATOR = ROOT / "deploy" / "grafana" / "dashboard.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-policy-proxy.json"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}
# PromQL words that look like metric names: keywords (aggregation modifiers take a label list and
# are removed with it before names are read).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring", "group_left",
            "group_right"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed: it comes with Debian's prometheus (apt-get install prometheus; .ci/run)"
    return subprocess.run([exe, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def variable_selectors() -> list[str]:
    """The series selectors of the dashboard's `label_values(selector, label)` variables."""
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"])
            assert match, variable["query"]
            out.append(match[1])
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small reader, enough for these expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if match[0] in KEYWORDS or text[match.end():].lstrip().startswith("("):  # a keyword, a function
            continue
        names.add(match[0])
    return names


def exported_series_names() -> set[str]:
    """Every series name /metrics may carry: documented families, histograms as _bucket/_count/_sum."""
    names = set()
    for name, kind in documented_families().items():
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for heading in re.findall(r"(?m)^#+ (.+)$", markdown):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    spec = yaml.safe_load(RULE_TESTS.read_text())
    assert spec["rule_files"] == [RULES.name]
    cases = [case for test in spec["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts without a test in which they fire"
    assert names - quiet == set(), "alerts without a test in which they do not fire"
    assert (firing | quiet) - names == set(), "tests of alerts rules.yml does not define"


def test_alerts_carry_severity_summary_description_and_a_runbook() -> None:
    documented = anchors(OPERATIONS.read_text())
    for alert in alerts():
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        notes = alert["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), alert["alert"]
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor == alert["alert"].lower(), notes["runbook"]
        assert anchor in documented, f"docs/operations.md has no heading for {alert['alert']}"


def test_expressions_read_only_exported_metrics_and_defined_recording_rules() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = exported_series_names() | recorded | {"up"}
    expressions = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]
    expressions += panel_queries() + [("a dashboard variable", s) for s in variable_selectors()]
    read: set[str] = set()
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr}"
        assert names <= known, f"{where}: {sorted(names - known)} is neither exported (docs/metrics.md) nor recorded"
        read |= names
    assert recorded <= read, f"recording rules nothing reads: {sorted(recorded - read)}"


def test_metric_names_reader() -> None:
    assert metric_names('sum by (job, le) (rate(a_bucket{x=~"5..", y="b c"}[5m])) / on (job) b offset 15m') == {
        "a_bucket", "b"}
    assert metric_names("(min by (job) (c) - time()) < 86400 > 0 and d:e:rate5m") == {"c", "d:e:rate5m"}
    assert metric_names('increase(f{g="$__range"}[$__range])') == {"f"}


def test_dashboard_queries_are_scoped_and_aggregated() -> None:
    """Every query is scoped to the chosen job and instances and sums across replicas (no raw
    per-target series), and the template variables the issue asks for exist."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "server"} <= set(variables)
    for title, expr in panel_queries():
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, title
        assert re.match(r"(sum|min|max|count|topk|sort|histogram_quantile)\b", expr), f"{title}: not aggregated"
        if "histogram_quantile" in expr:
            assert re.search(r"sum by \((\w+, )*le\)", expr), f"{title}: quantile not over sum by (le)"
        if "server" in expr.split("{", 1)[0] or any(m in expr for m in ("mcp_proxy_requests_total",
                                                                         "mcp_proxy_tool_calls_total")):
            assert 'server=~"$server"' in expr, title
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_the_committed_dashboard_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("mcp_proxy_dashboard", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run .venv/bin/python deploy/grafana/dashboard.py"


def test_the_dashboard_reads_back_through_the_sdk_model() -> None:
    """The JSON decodes into the SDK's typed dashboard model (its panels' too) and encodes back to
    the same text: nothing in it lies outside what the model knows."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # the panel and query types' decoders
    model = Dashboard.from_json(dashboard())
    assert JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n" == DASHBOARD.read_text()
