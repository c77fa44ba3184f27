"""Traces (proxy/observe/tracing.py, docs/tracing.md), in process: W3C parsing, the `_meta` rewrite,
span names and attributes, when tracing is on, and a whole request's spans through an in-memory
exporter. Off is a no-op: no span, nothing rewritten, the SDK not even imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.config import ConfigError, Server, load
from proxy.enforce.pipeline import Channel
from proxy.observe import log_context, tracing
from proxy.observe.metrics import RequestRecord
from proxy.protocol import jsonrpc
from proxy.protocol.jsonrpc import parse_client_body

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SCOPE = {"type": "http", "http_version": "1.1", "client": ("127.0.0.1", 50000), "query_string": b""}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def channel(transport: str = "streamable_http") -> Channel:
    return Channel(transport, Server(name="support"), "POST", "2025-06-18")


@pytest.fixture(autouse=True)
def no_request_left() -> Iterator[None]:
    yield
    tracing._REQUEST.set(None)
    log_context.TRACE_ID.set("")


# --- W3C carriers ---
def test_header_carrier_takes_the_first_traceparent_and_every_tracestate():
    headers = [("traceparent", PARENT), ("tracestate", "a=1"), ("traceparent", "00-x"), ("tracestate", "b=2")]
    assert tracing.header_carrier(headers) == {"traceparent": PARENT, "tracestate": "a=1,b=2"}
    assert tracing.header_carrier([("tracestate", "a=1")]) is None


@pytest.mark.parametrize("value", [None, 5, "", ["00-…"], "x" * 513])
def test_a_traceparent_that_cannot_be_one_is_ignored(value):
    assert tracing.carrier(value, "a=1") is None
    assert tracing.meta_carrier({"_meta": {"traceparent": value}}) is None


def test_meta_carrier_reads_params_meta_only_when_it_is_an_object():
    assert tracing.meta_carrier({"_meta": {"traceparent": PARENT, "tracestate": 3}}) == {"traceparent": PARENT}
    assert tracing.meta_carrier({"_meta": "00-…"}) is None
    assert tracing.meta_carrier({}) is None


# --- the `_meta` rewrite: before the decision, so what is decided is what is forwarded ---
def test_rewrite_adds_params_and_meta_and_re_encodes():
    msg = parse_client_body(body({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    assert tracing.rewrite_meta(msg, PARENT, "")
    assert msg.data["params"] == {"_meta": {"traceparent": PARENT}}
    assert msg.encode() == jsonrpc.encode(msg.data)


def test_rewrite_replaces_the_clients_values_in_any_spelling():
    message = {**CALL, "params": {**CALL["params"], "_meta": {"TraceParent": "00-1-2-01", "tracestate": "x=1",
                                                              "progressToken": 3}}}
    msg = parse_client_body(body(message))
    assert tracing.rewrite_meta(msg, PARENT, "a=1")
    assert msg.data["params"]["_meta"] == {"progressToken": 3, "traceparent": PARENT, "tracestate": "a=1"}
    assert json.loads(msg.encode())["params"]["_meta"]["traceparent"] == PARENT


@pytest.mark.parametrize("message", [
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "Params": {}},  # adding `params` would make case twins
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_Meta": {}}},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": "not an object"}},
])
def test_rewrite_leaves_what_it_cannot_change_unambiguously(message):
    msg = parse_client_body(body(message))
    before = msg.encode()
    assert not tracing.rewrite_meta(msg, PARENT, "")
    assert msg.encode() == before


# --- names and attributes ---
@pytest.mark.parametrize(("method", "params", "tool", "name"), [
    ("tools/call", {"name": "echo"}, "echo", "tools/call echo"),
    ("tools/call", {"name": "made_up"}, "other", "tools/call"),  # not declared: no client-chosen span names
    ("tools/call", {"name": "echo"}, "", "tools/call"),  # not decided (yet)
    ("prompts/get", {"name": "summary"}, "", "prompts/get summary"),
    ("resources/read", {"uri": "file:///x"}, "", "resources/read"),  # the conventions: no URI by default
    ("initialize", {}, "", "initialize"),
    ("x-vendor/whatever", {"name": "y"}, "", "other"),
    (None, {}, "", "other"),
])
def test_span_names_are_bounded(method, params, tool, name):
    assert tracing.span_name(method, params, tool) == name


def test_tools_call_attributes():
    msg = parse_client_body(body({**CALL, "params": {**CALL["params"], "name": "t" * 128}}))
    attributes = tracing.message_attributes(msg, channel(), "sid-1")
    assert attributes == {
        "mcp.method.name": "tools/call", "jsonrpc.request.id": "7", "mcp.protocol.version": "2025-06-18",
        "mcp.session.id": tracing.session_digest("sid-1"), "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "t" * 128, "network.transport": "tcp", "network.protocol.name": "http",
        "mcp_proxy.server": "support", "mcp_proxy.transport": "streamable_http"}
    assert "sid-1" not in json.dumps(attributes)


def test_resource_prompt_and_notification_attributes():
    read = parse_client_body(body({"jsonrpc": "2.0", "id": "r", "method": "resources/read",
                                   "params": {"uri": "file:///" + "u" * 5000}}))
    attributes = tracing.message_attributes(read, channel("legacy_sse"), None)
    assert len(attributes["mcp.resource.uri"]) == tracing.MAX_URI and "mcp.session.id" not in attributes
    prompt = parse_client_body(body({"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"name": "p"}}))
    assert tracing.message_attributes(prompt, channel(), None)["gen_ai.prompt.name"] == "p"
    note = parse_client_body(body({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    assert "jsonrpc.request.id" not in tracing.message_attributes(note, channel(), None)


@pytest.mark.parametrize(("error_type", "decision", "attributes", "failed"), [
    ("", "allow", {}, False),
    ("-32603", "allow", {"error.type": "-32603", "rpc.response.status_code": "-32603"}, True),
    ("502", None, {"error.type": "502"}, True),
    ("tool_error", "allow", {"error.type": "tool_error"}, True),  # the upstream's tool failed
    ("tool_error", "deny", {"error.type": "tool_error"}, False),  # a denial is the outcome, not a failure
    ("-32602", "deny", {"error.type": "-32602", "rpc.response.status_code": "-32602"}, False),
    ("-32603", "error", {"error.type": "-32603", "rpc.response.status_code": "-32603"}, True),  # engine failed
])
def test_errors_and_span_status(error_type, decision, attributes, failed):
    assert tracing.error_attributes(error_type) == attributes
    assert tracing.failed(error_type, decision) is failed


# --- on or off ---
@pytest.mark.parametrize(("config", "environ", "on"), [
    ({}, {}, False),
    ({"otlp_endpoint": "http://c:4318/v1/traces"}, {}, True),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"otlp_endpoint": "http://c:4318/v1/traces"}, {"OTEL_SDK_DISABLED": "true"}, False),
])
def test_tracing_is_on_only_when_configured(config, environ, on):
    settings = load(None, {"upstream.url": "http://127.0.0.1/mcp", "tracing": config}).tracing
    assert tracing.settings_endpoint(settings, environ)[0] is on


def test_tracing_config_keys():
    config = load(None, {"upstream.url": "http://127.0.0.1/mcp", "tracing": {
        "otlp_endpoint": "http://collector:4318", "service_name": "edge-proxy", "sample_ratio": 0.25,
        "headers": {"Authorization": "Bearer otlp-secret"}, "timeout_s": 3}})
    tr = config.tracing
    assert tr.otlp_endpoint == "http://collector:4318/v1/traces"  # a base URL: its traces endpoint
    assert (tr.service_name, tr.sample_ratio, tr.timeout_s) == ("edge-proxy", 0.25, 3.0)
    assert "otlp-secret" not in repr(config)


@pytest.mark.parametrize(("tracing_config", "key", "fragment"), [
    ({"otlp_endpoint": "grpc://collector:4317"}, "tracing.otlp_endpoint", "http(s) URL"),
    ({"otlp_endpoint": "http://collector:4318", "sample_ratio": 1.5}, "tracing.sample_ratio", "between 0 and 1"),
    ({"otlp_endpoint": "http://collector:4318", "headers": {"Authorization": 5}}, "tracing.headers.Authorization",
     "must be a string"),
    ({"otlp_endpoint": "http://collector:4318", "timeout_s": 0}, "tracing.timeout_s", "greater than 0"),
    ({"otlp_endpiont": "http://collector:4318"}, "tracing.otlp_endpiont", "unknown key"),
])
def test_tracing_config_errors_name_the_key(tracing_config, key, fragment):
    with pytest.raises(ConfigError) as err:
        load(None, {"upstream.url": "http://127.0.0.1/mcp", "tracing": tracing_config})
    assert err.value.key == key and fragment in err.value.message


def test_off_the_hooks_do_nothing():
    msg = parse_client_body(body({**CALL, "params": {**CALL["params"], "_meta": {"traceparent": PARENT}}}))
    before = msg.encode()
    tracing.message_arrived(msg, channel(), [("traceparent", PARENT)])
    assert tracing.current() is None and msg.encode() == before  # the client's _meta goes as it came
    assert tracing.decided("d", "allow", {"direction": "client_to_server"}, 1, {}, None) is None
    assert log_context.TRACE_ID.get() == ""


def test_off_the_sdk_is_never_imported():
    code = ("import sys; from proxy.app import create_app; from proxy.config import load; "
            "app = create_app(load(None, {'upstream.url': 'http://127.0.0.1:9/mcp', 'decision_log.sink': 'off'})); "
            "assert app.tracing is None; assert 'opentelemetry.sdk' not in sys.modules, 'sdk imported'")
    env = {"PATH": "/usr/bin:/bin"}  # no OTEL_* variables
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr


# --- a whole request, through an in-memory exporter ---
def traced(ratio: float = 1.0) -> tuple[tracing.Tracing, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    config = load(None, {"upstream.url": "http://127.0.0.1/mcp",
                         "tracing": {"otlp_endpoint": "http://127.0.0.1:9/v1/traces", "sample_ratio": ratio}})
    return tracing.Tracing(config.tracing, config.tracing.otlp_endpoint, {}, exporter=memory), memory


class Answer:
    status = 200


def exchange(trace: tracing.RequestTrace, headers: dict[str, str]) -> dict[str, str]:
    sent: dict[str, str] = {}

    async def send(method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
        sent.update(headers)
        return Answer()

    asyncio.run(trace.upstream(send, "POST", "http://upstream.internal:3000/mcp", headers, b"{}"))
    return sent


def test_a_traced_tools_call():
    t, memory = traced()
    trace = t.begin(SCOPE)
    assert tracing.current() is trace
    meta_parent = f"00-{OTHER_TRACE}-00f067aa0ba902b7-01"
    msg = parse_client_body(body({**CALL, "params": {**CALL["params"], "_meta": {"traceparent": meta_parent}}}))
    headers = [("traceparent", PARENT), ("mcp-session-id", "abc.def")]
    tracing.message_arrived(msg, channel(), headers)
    decision = {"kind": "request", "direction": "client_to_server", "method": "tools/call"}
    ids = tracing.decided("dec-1", "allow", decision, 250_000, {"revision": "r1"}, None)
    client_headers = {"traceparent": PARENT, "tracestate": "client=1", "authorization": "Bearer up"}
    sent = exchange(trace, client_headers)
    record = RequestRecord("streamable_http")
    record.tool, record.decision = "echo", "allow"
    trace.end(record)
    t.provider.force_flush()
    spans = {s.name: s for s in memory.get_finished_spans()}
    server, policy, client = spans["tools/call echo"], spans["policy.evaluate"], spans["POST"]

    # the `_meta` context (the client's MCP span) is the parent; the header's is a link
    assert f"{server.context.trace_id:032x}" == OTHER_TRACE and server.parent.span_id == 0x00F067AA0BA902B7
    assert [f"{link.context.trace_id:032x}" for link in server.links] == [TRACE]
    assert server.kind is SpanKind.SERVER and server.start_time == trace.start_ns
    assert (policy.parent.span_id, client.parent.span_id) == (server.context.span_id, server.context.span_id)
    assert (policy.kind, client.kind) == (SpanKind.INTERNAL, SpanKind.CLIENT)
    assert policy.end_time - policy.start_time == 250_000
    # the decision: on both spans, and (trace id, span id) for the decision log
    assert server.attributes["mcp_proxy.decision_id"] == policy.attributes["mcp_proxy.decision_id"] == "dec-1"
    assert ids == (OTHER_TRACE, f"{policy.context.span_id:016x}")
    assert server.attributes["mcp.session.id"] == tracing.session_digest("abc.def")
    assert server.status.status_code is StatusCode.UNSET
    assert dict(client.attributes) == {"http.request.method": "POST", "server.address": "upstream.internal",
                                       "server.port": 3000, "http.response.status_code": 200}
    assert log_context.TRACE_ID.get() == OTHER_TRACE
    # what the upstream is sent: the SERVER span in `_meta`, the CLIENT span in the header
    assert json.loads(msg.encode())["params"]["_meta"] == {
        "traceparent": f"00-{OTHER_TRACE}-{server.context.span_id:016x}-01"}
    assert sent["traceparent"] == f"00-{OTHER_TRACE}-{client.context.span_id:016x}-01"
    assert "tracestate" not in sent and sent["authorization"] == "Bearer up"
    assert client_headers["traceparent"] == PARENT  # the caller's dict is not changed
    assert server.resource.attributes["service.name"] == "mcp-policy-proxy"


def test_a_denied_call_is_an_outcome_and_an_undeclared_tool_no_span_name():
    t, memory = traced()
    trace = t.begin(SCOPE)
    msg = parse_client_body(body({**CALL, "params": {"name": "made_up_tool", "arguments": {}}}))
    tracing.message_arrived(msg, channel(), [])
    tracing.decided("dec-2", "deny", {"kind": "request", "direction": "client_to_server"}, 0, {"revision": "r"},
                    "unknown_tool")
    record = RequestRecord("streamable_http")
    record.tool, record.decision, record.error_type = "other", "deny", "-32602"
    trace.end(record)
    t.provider.force_flush()
    spans = {s.name: s for s in memory.get_finished_spans()}
    server, policy = spans["tools/call"], spans["policy.evaluate"]
    assert server.attributes["mcp_proxy.decision"] == "deny" and server.attributes["error.type"] == "-32602"
    assert server.attributes["rpc.response.status_code"] == "-32602"
    assert server.attributes["gen_ai.tool.name"] == "made_up_tool"
    assert server.status.status_code is StatusCode.UNSET
    assert policy.attributes["mcp_proxy.refused_by_proxy"] == "unknown_tool"
    assert "POST" not in spans  # nothing was forwarded


def test_a_malformed_traceparent_starts_a_new_trace():
    t, memory = traced()
    trace = t.begin(SCOPE)
    msg = parse_client_body(body({**CALL, "params": {**CALL["params"], "_meta": {"traceparent": "00-zz-01"}}}))
    tracing.message_arrived(msg, channel(), [("traceparent", "garbage"), ("tracestate", "=,=")])
    trace.end(RequestRecord("streamable_http"))
    t.provider.force_flush()
    (server,) = memory.get_finished_spans()
    assert server.parent is None and not server.links
    assert json.loads(msg.encode())["params"]["_meta"]["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"


def test_unsampled_requests_propagate_without_spans():
    t, memory = traced(ratio=0.0)
    trace = t.begin(SCOPE)
    msg = parse_client_body(body(CALL))
    tracing.message_arrived(msg, channel(), [])
    ids = tracing.decided("dec-3", "allow", {"kind": "request", "direction": "client_to_server"}, 5, {}, None)
    sent = exchange(trace, {})
    trace.end(RequestRecord("streamable_http"))
    t.provider.force_flush()
    assert memory.get_finished_spans() == ()
    meta = json.loads(msg.encode())["params"]["_meta"]["traceparent"]
    assert int(meta[-2:], 16) & 1 == 0 and sent["traceparent"] == meta  # "not sampled": the SERVER span's context
    assert ids is not None and meta.split("-")[1] == ids[0]


def test_a_sampled_clients_trace_is_kept_whatever_the_ratio():
    t, memory = traced(ratio=0.0)
    trace = t.begin(SCOPE)
    tracing.message_arrived(parse_client_body(body(CALL)), channel(), [("traceparent", PARENT)])
    trace.end(RequestRecord("streamable_http"))
    t.provider.force_flush()
    assert [f"{s.context.trace_id:032x}" for s in memory.get_finished_spans()] == [TRACE]


def test_a_request_without_a_message_forwards_the_clients_headers():
    t, _ = traced()
    trace = t.begin(SCOPE)  # a GET stream: no message, no span
    assert exchange(trace, {"traceparent": PARENT}) == {"traceparent": PARENT}
    assert tracing.decided("d", "allow", {}, 1, {}, None) is None
