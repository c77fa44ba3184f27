"""docs/metrics.md lists exactly what /metrics exports: every family, with its type, and no other.

The integration test (tests/integration/test_metrics.py) compares the same table with a real
proxy's scrape after traffic; this one with a fresh registry, fast.
"""

from __future__ import annotations

import re
import timeit
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy.observe.metrics import OPERATION_BUCKETS, Metrics, error_type_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z_:][a-z0-9_:]*)` \| (?P<type>counter|gauge|histogram)\b")


GROUPS_HEADING = "### Worker groups"


def documented_families(groups: bool = False) -> dict[str, str]:
    """{metric name: type} from the rows of docs/metrics.md's tables that name a metric: those every
    proxy exports, or (`groups`) those only a worker group adds (its own section)."""
    before, _, after = DOC.read_text().partition(GROUPS_HEADING)
    lines = after.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = lines[start:end]  # the section's one table
    text = table if groups else [*before.splitlines(), *lines[:start], *lines[end:]]
    rows = [m for m in (_ROW.match(line) for line in text) if m]
    names = [m["name"] for m in rows]
    assert len(names) == len(set(names)), f"a metric documented twice: {sorted(n for n in names if names.count(n) > 1)}"
    return {m["name"]: m["type"] for m in rows}


def exported_families(text: str) -> dict[str, str]:
    """{metric name: type} of a scrape (a counter by its name with `_total`, as exposed)."""
    return {f.name + ("_total" if f.type == "counter" else ""): f.type for f in text_string_to_metric_families(text)}


def test_the_doc_lists_exactly_the_exported_families():
    text = Metrics().render().decode()
    assert exported_families(text) == documented_families()


def test_no_created_series():
    metrics = Metrics()
    record, token = metrics.begin("mcp")
    record.method, record.server = "tools/call", "s"
    metrics.upstream_answered(200, 0.01)
    metrics.tool_call("s", "other", "deny")
    metrics.finish(record, token)
    text = metrics.render().decode()
    assert "_created" not in text
    assert 'mcp_proxy_upstream_responses_total{server="s",status="200"} 1.0' in text


def test_semconv_buckets():
    assert OPERATION_BUCKETS == (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


def test_error_type_is_bounded():
    assert error_type_of({"error": {"code": -32602}}) == "-32602"
    assert error_type_of({"error": {"code": 12345}}) == "_OTHER"
    assert error_type_of({"error": {"code": [1]}}) == "_OTHER"
    assert error_type_of({"result": {"isError": True}}) == "tool_error"
    assert error_type_of({"result": {}}) == "" and error_type_of(None) == ""


def test_the_per_request_cost_is_a_few_microseconds():
    """begin + two upstream answers + a tool call + finish (what a forwarded tools/call costs)."""
    metrics = Metrics()

    def one() -> None:
        record, token = metrics.begin("mcp")
        record.server, record.method, record.tool, record.outcome = "s", "tools/call", "echo", "forwarded"
        metrics.upstream_answered(200, 0.001)
        metrics.tool_call("s", "echo", "allow")
        record.answered = record.start + 0.002
        metrics.finish(record, token)

    n = 20_000
    per_call = min(timeit.repeat(one, number=n, repeat=3)) / n
    print(f"instrumentation per request: {per_call * 1e6:.2f} µs")
    assert per_call < 100e-6  # generous: a loaded CI box; measured ~5 µs
