"""/metrics after real traffic: the official SDK client through the proxy to an SDK upstream.

Allowed, hidden, made-up and timed-out tool calls, a legacy SSE session: the series they leave,
their label values (a made-up tool name never becomes one), no `_created` series, and exactly the
families docs/metrics.md lists.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.proxy_harness import start_proxy
from tests.peers.clients import sdk_client, sse_client
from tests.unit.test_metrics_doc import documented_families, exported_families

MADE_UP = "made_up_tool_5f1c"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def traffic(sdk_upstream_module, tmp_path_factory):
    """Two proxies (Streamable HTTP: read and custom tools, a 1 s upstream timeout; legacy SSE),
    driven once through the SDK's clients: their scrapes."""
    upstream = sdk_upstream_module("stateful-json")  # JSON: the answer head waits for the tool
    legacy = sdk_upstream_module("legacy-sse")
    proxy = start_proxy(tmp_path_factory.mktemp("metrics"), upstream.base, {
        "servers": [{"name": "triage", "methods": ["read", "custom"]}],
        "upstream": {"timeout_s": 1}})
    legacy_proxy = start_proxy(tmp_path_factory.mktemp("metrics-legacy"), legacy.base, {
        "servers": [{"name": "legacy", "methods": ["read"]}]})

    async def drive() -> tuple[str, str]:
        async with sdk_client(proxy.url, mode="legacy") as client:
            assert "list_all_missive_conversations" in await client.tool_names()
            assert "c-1" in await client.call_text("list_all_missive_conversations", {})
            for name in ("create_a_missive_post", MADE_UP):  # hidden by the policy; declared by nobody
                with pytest.raises(MCPError):
                    await client.call_tool(name, {"conversation": "c", "text": "t"})
            with pytest.raises(MCPError):  # the upstream does not answer within upstream.timeout_s
                await client.call_tool("sleep", {"seconds": 3})
        async with sse_client(legacy_proxy.sse_url) as client:
            assert "c-1" in await client.call_text("list_all_missive_conversations", {})
        async with httpx.AsyncClient() as http:
            await http.post(proxy.url, content=b"{not json", headers={"content-type": "application/json",
                                                                      "accept": "application/json, text/event-stream"})
            return (await http.get(f"{proxy.base}/metrics")).text, (await http.get(f"{legacy_proxy.base}/metrics")).text

    try:
        yield asyncio.run(drive())
    finally:
        proxy.stop()
        legacy_proxy.stop()


def test_requests_by_outcome(traffic):
    scraped = samples(traffic[0])
    total = "mcp_proxy_requests_total"
    assert value(scraped, total, server="triage", transport="streamable_http", outcome="forwarded") >= 4
    assert value(scraped, total, server="triage", transport="streamable_http", outcome="denied") == 2
    assert value(scraped, total, server="triage", transport="streamable_http", outcome="upstream_error") == 1
    assert value(scraped, total, server="triage", transport="streamable_http", outcome="invalid") == 1
    legacy = samples(traffic[1])
    assert value(legacy, total, server="legacy", transport="legacy_sse", outcome="forwarded") >= 3  # GET, POSTs


def test_tool_calls_by_decision_have_bounded_names(traffic):
    scraped = samples(traffic[0])
    calls = "mcp_proxy_tool_calls_total"
    assert value(scraped, calls, server="triage", gen_ai_tool_name="list_all_missive_conversations",
                 decision="allow") == 1
    assert value(scraped, calls, server="triage", gen_ai_tool_name="create_a_missive_post", decision="deny") == 1
    assert value(scraped, calls, server="triage", gen_ai_tool_name="other", decision="deny") == 1
    assert value(scraped, calls, server="triage", gen_ai_tool_name="sleep", decision="allow") == 1
    assert MADE_UP not in traffic[0]


def test_operation_duration_with_semconv_labels_and_buckets(traffic):
    scraped = samples(traffic[0])
    count = "mcp_server_operation_duration_seconds_count"
    assert value(scraped, count, mcp_method_name="tools/call", gen_ai_tool_name="list_all_missive_conversations",
                 error_type="", server="triage") == 1
    assert value(scraped, count, mcp_method_name="tools/call", gen_ai_tool_name="other", error_type="-32602",
                 server="triage") == 1
    assert value(scraped, count, mcp_method_name="tools/call", gen_ai_tool_name="sleep", error_type="504",
                 server="triage") == 1
    assert value(scraped, count, mcp_method_name="initialize", gen_ai_tool_name="", error_type="",
                 server="triage") == 1
    buckets = sorted(float(dict(labels)["le"]) for name, labels in scraped
                     if name == "mcp_server_operation_duration_seconds_bucket"
                     and dict(labels)["mcp_method_name"] == "initialize")
    assert buckets == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, float("inf")]


def test_upstream_overhead_streams_and_pool(traffic):
    scraped = samples(traffic[0])
    assert value(scraped, "mcp_proxy_upstream_responses_total", server="triage", status="200") >= 3
    assert value(scraped, "mcp_proxy_upstream_request_duration_seconds_count", server="triage") >= 3
    overhead = value(scraped, "mcp_proxy_overhead_seconds_count", transport="streamable_http")
    assert overhead >= 5
    # Upstream waits excluded: the proxy's own time stays far below the 1 s the sleep call waited.
    assert value(scraped, "mcp_proxy_overhead_seconds_sum", transport="streamable_http") < 0.5 * overhead
    assert value(scraped, "mcp_proxy_open_streams") == 0 and value(scraped, "mcp_proxy_legacy_sessions") == 0
    pool = {state: value(scraped, f"mcp_proxy_upstream_connections_{state}") for state in ("open", "idle")}
    assert pool["open"] >= pool["idle"]
    assert ("mcp_proxy_upstream_requests_waiting", frozenset()) in scraped


def test_no_created_series_and_exactly_the_documented_families(traffic):
    for text in traffic:
        assert "_created" not in text
        assert exported_families(text) == documented_families()
