"""Traces through the real proxy (issue 11 point 4; docs/tracing.md).

An OTLP/HTTP collector on loopback (aiohttp, in the test's loop, decoding each
ExportTraceServiceRequest with opentelemetry-proto), the proxy as a subprocess with a short batch
delay, the official SDK client, and the SDK upstream, which records the headers and bodies it was
sent: so the `traceparent` header and `params._meta.traceparent` that reached the upstream are
checked against the spans exported, the decision log and the access line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import Proxy, merge, start_proxy
from tests.leakcheck import leaked, secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import free_port, soon

SERVER, INTERNAL, CLIENT = 2, 1, 3  # OTLP span kinds
COLLECTOR_AUTH = secret("Bearer collector-credential-" + "9c1f5e7a2b4d6f80")
KEY = "url-token-key-for-tracing-0123456789"
URL_TOKEN = secret()
API_TOKEN = secret()
UPSTREAM_CREDENTIAL = "Bearer upstream-credential"  # tests/integration/proxy_harness.py
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"  # the client's MCP span
HTTP_TRACE, HTTP_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"  # the client's HTTP span


def value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector:
    """POST /v1/traces (OTLP/HTTP, protobuf): every span exported, flattened."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "name": span.name, "kind": span.kind, "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        "status": span.status.code, "resource": resource,
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]

    def children(self, span: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["parent"] == span["span_id"] and name in (None, s["name"])]

    async def until(self, check: Any, timeout: float = 5.0) -> bool:
        return await soon(check, timeout)


@pytest.fixture
async def collector() -> Any:
    c = Collector()
    await c.start()
    yield c
    await c.stop()


def traced_proxy(workdir: Path, upstream_base: str, collector: Collector, extra: dict[str, Any] | None = None,
                 delay_ms: int = 50) -> Proxy:
    config = merge({"tracing": {"otlp_endpoint": collector.url, "headers": {"Authorization": COLLECTOR_AUTH}}},
                   extra or {})
    return start_proxy(workdir, upstream_base, config, env={"OTEL_BSP_SCHEDULE_DELAY": str(delay_ms)},
                       log_level="info", access_log=True)


def stdout_lines(proxy: Proxy) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proxy.handle.stdout().splitlines() if line.startswith("{")]


def decisions(proxy: Proxy) -> list[dict[str, Any]]:
    return [e for e in stdout_lines(proxy) if e.get("type") == "openpolicyagent.org/decision_logs"]


def access_lines(proxy: Proxy) -> list[dict[str, Any]]:
    return [e for e in stdout_lines(proxy) if e.get("logger") == "uvicorn.access"]


def sent_calls(upstream: Any, tool: str) -> list[dict[str, Any]]:
    """The upstream's record of the tools/call requests for `tool` it was sent, with parsed bodies."""
    out = []
    for r in upstream.relayed():
        message = json.loads(r["body"]) if r["body"].startswith("{") else None
        if message and message.get("method") == "tools/call" and message["params"].get("name") == tool:
            out.append({**r, "message": message})
    return out


def client_span() -> Any:
    """The client's MCP span as the SDK client sees it: it injects its context into `params._meta`."""
    context = SpanContext(int(CLIENT_TRACE, 16), int(CLIENT_SPAN, 16), is_remote=False, trace_flags=TraceFlags(1))
    return use_span(NonRecordingSpan(context))


async def settle(proxy: Proxy) -> None:
    await asyncio.sleep(0.7)  # the decision log's stdout sink writes every 0.5 s


async def test_a_tool_call_continues_the_clients_trace(sdk_upstream_module, collector, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    upstream.clear_requests()
    proxy = traced_proxy(tmp_path, upstream.base, collector)
    async with sdk_client(proxy.url, mode="legacy", headers={"traceparent": f"00-{HTTP_TRACE}-{HTTP_SPAN}-01"}) as c:
        with client_span():
            assert await c.call_text("echo", {"text": "traced"}) == "traced"
        session = c.session_id
    assert await collector.until(lambda: collector.named("tools/call echo") and collector.named("policy.evaluate"))
    await settle(proxy)
    (server,) = collector.named("tools/call echo")

    # the parent is the client's MCP span (from `_meta`); its HTTP span (the header's) is a link
    assert (server["kind"], server["trace_id"], server["parent"]) == (SERVER, CLIENT_TRACE, CLIENT_SPAN)
    assert server["links"] == [(HTTP_TRACE, HTTP_SPAN)]
    attributes = server["attributes"]
    assert {k: attributes[k] for k in ("mcp.method.name", "gen_ai.tool.name", "gen_ai.operation.name",
                                       "mcp_proxy.server", "mcp_proxy.transport", "mcp_proxy.decision",
                                       "network.transport")} == {
        "mcp.method.name": "tools/call", "gen_ai.tool.name": "echo", "gen_ai.operation.name": "execute_tool",
        "mcp_proxy.server": "default", "mcp_proxy.transport": "streamable_http", "mcp_proxy.decision": "allow",
        "network.transport": "tcp"}
    assert attributes["jsonrpc.request.id"].isdigit() and attributes["mcp.protocol.version"]
    assert attributes["mcp.session.id"] == hashlib.sha256(session.encode()).hexdigest()[:32] != session
    assert "error.type" not in attributes and server["status"] == 0
    assert server["resource"]["service.name"] == "mcp-policy-proxy"
    assert server["resource"]["mcp_proxy.policy.engine"] == "embedded"

    # children: the policy decision and the upstream exchange
    (policy,) = [p for p in collector.children(server, "policy.evaluate")
                 if p["attributes"]["mcp_proxy.direction"] == "client_to_server"]
    assert policy["kind"] == INTERNAL and policy["attributes"]["mcp_proxy.decision_id"] == \
        attributes["mcp_proxy.decision_id"]
    (exchange,) = [s for s in collector.children(server, "POST") if s["start"] > policy["start"]]
    assert exchange["kind"] == CLIENT and exchange["attributes"]["http.response.status_code"] == 200
    assert exchange["attributes"]["server.port"] == upstream.port
    assert server["start"] <= policy["start"] <= exchange["start"] <= exchange["end"] <= server["end"]

    # what the upstream was sent: the SERVER span in `_meta`, the CLIENT span in the header
    (call,) = sent_calls(upstream, "echo")
    assert call["message"]["params"]["_meta"]["traceparent"] == f"00-{CLIENT_TRACE}-{server['span_id']}-01"
    assert call["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{exchange['span_id']}-01"

    # the decision log names the trace and the decision's span; the access line the trace
    (entry,) = [e for e in decisions(proxy) if e["decision_id"] == attributes["mcp_proxy.decision_id"]]
    assert (entry["trace_id"], entry["span_id"]) == (CLIENT_TRACE, policy["span_id"])
    keys = list(entry)
    assert keys[keys.index("decision_id"):][:3] == ["decision_id", "trace_id", "span_id"]  # where OPA puts them
    (line,) = [a for a in access_lines(proxy) if attributes["mcp_proxy.decision_id"] in a["decision_ids"]]
    assert line["trace_id"] == CLIENT_TRACE
    assert all(h.get("authorization") == COLLECTOR_AUTH for h in collector.headers)


async def test_a_denied_call_is_traced_as_an_outcome(sdk_upstream_module, collector, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    upstream.clear_requests()
    proxy = traced_proxy(tmp_path, upstream.base, collector, {"servers": [{"name": "triage", "methods": ["read"]}]})
    async with sdk_client(proxy.url, mode="legacy") as c:
        with pytest.raises(MCPError) as err:
            await c.call_tool("create_a_missive_post", {"conversation": "c-1", "text": "x"})
    assert err.value.error.code == -32602
    assert await collector.until(lambda: collector.named("tools/call create_a_missive_post"))
    await settle(proxy)
    (server,) = collector.named("tools/call create_a_missive_post")
    attributes = server["attributes"]
    assert (attributes["mcp_proxy.decision"], attributes["error.type"], attributes["rpc.response.status_code"]) == \
        ("deny", "-32602", "-32602")
    assert server["status"] == 0  # UNSET: a denial is what the proxy is for, not a failure
    assert server["parent"] == "" and server["links"] == []  # the client sent no context: a new trace
    (policy,) = [p for p in collector.children(server, "policy.evaluate")
                 if p["attributes"]["mcp_proxy.decision_id"] == attributes["mcp_proxy.decision_id"]]
    assert policy["attributes"]["mcp_proxy.decision"] == "deny"
    assert sent_calls(upstream, "create_a_missive_post") == []
    (entry,) = [e for e in decisions(proxy) if e["decision_id"] == attributes["mcp_proxy.decision_id"]]
    assert entry["trace_id"] == server["trace_id"] and entry["result"]["allow"] is False


async def test_legacy_sse_messages_are_traced_the_same_way(sdk_upstream_module, collector, tmp_path):
    upstream, legacy = sdk_upstream_module("stateful-json"), sdk_upstream_module("legacy-sse")
    legacy.clear_requests()
    proxy = traced_proxy(tmp_path, upstream.base, collector, {"upstream": {"sse_url": f"{legacy.base}/sse"}})
    async with sse_client(proxy.sse_url) as c:
        with client_span():
            assert await c.call_text("echo", {"text": "over sse"}) == "over sse"
        session = c.session_id
    assert await collector.until(lambda: collector.named("tools/call echo"))
    (server,) = collector.named("tools/call echo")
    assert (server["trace_id"], server["parent"]) == (CLIENT_TRACE, CLIENT_SPAN)
    assert server["attributes"]["mcp_proxy.transport"] == "legacy_sse"
    assert server["attributes"]["mcp.session.id"] == hashlib.sha256(session.encode()).hexdigest()[:32]
    (policy,) = [p for p in collector.children(server, "policy.evaluate")
                 if p["attributes"]["mcp_proxy.direction"] == "client_to_server"]
    (exchange,) = [s for s in collector.children(server, "POST") if s["start"] > policy["start"]]  # (not a listing)
    (call,) = sent_calls(legacy, "echo")
    assert call["message"]["params"]["_meta"]["traceparent"] == f"00-{CLIENT_TRACE}-{server['span_id']}-01"
    assert call["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{exchange['span_id']}-01"


async def test_no_secret_reaches_the_collector(sdk_upstream_module, collector, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    proxy = traced_proxy(tmp_path, upstream.base, collector, {
        "auth": {"url_token_key": KEY, "api_tokens": [{"name": "ci", "sha256": hashlib.sha256(
            API_TOKEN.encode()).hexdigest()}]},
        "servers": [{"name": "guarded", "token_hmac": url_token_hmac(KEY, URL_TOKEN), "methods": ["read"],
                     "require_api_token_auth": True}]})
    url = f"{proxy.base}/{URL_TOKEN}/mcp"
    async with sdk_client(url, mode="legacy", headers={"authorization": f"Bearer {API_TOKEN}"}) as c:
        assert "c-1" in await c.call_text("list_all_missive_conversations", {})
        session = c.session_id
    assert await collector.until(lambda: collector.named("tools/call list_all_missive_conversations"))
    await asyncio.sleep(0.3)
    exported = b"".join(collector.bodies).decode("latin-1")
    assert not leaked(exported, [URL_TOKEN, API_TOKEN, COLLECTOR_AUTH, session])
    assert "upstream-credential" not in exported and UPSTREAM_CREDENTIAL not in exported
    assert collector.named("tools/call list_all_missive_conversations")[0]["attributes"]["mcp_proxy.server"] == \
        "guarded"


async def test_off_the_proxy_passes_the_clients_context_through(sdk_upstream_module, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    upstream.clear_requests()
    proxy = start_proxy(tmp_path, upstream.base, log_level="info", access_log=True)
    header = f"00-{HTTP_TRACE}-{HTTP_SPAN}-01"
    async with sdk_client(proxy.url, mode="legacy", headers={"traceparent": header, "tracestate": "vendor=1"}) as c:
        with client_span():
            await c.call_text("echo", {"text": "untraced"})
    await settle(proxy)
    (call,) = sent_calls(upstream, "echo")
    assert call["message"]["params"]["_meta"] == {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    assert (call["headers"]["traceparent"], call["headers"]["tracestate"]) == (header, "vendor=1")
    assert decisions(proxy) and not any("trace_id" in e for e in decisions(proxy))
    assert access_lines(proxy) and {a["trace_id"] for a in access_lines(proxy)} == {""}


async def test_spans_are_flushed_at_shutdown(sdk_upstream_module, collector, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    proxy = traced_proxy(tmp_path, upstream.base, collector, delay_ms=60_000)  # no batch before the stop
    async with sdk_client(proxy.url, mode="legacy") as c:
        await c.call_text("echo", {"text": "last words"})
    await asyncio.sleep(0.3)
    assert collector.spans == []
    await asyncio.to_thread(proxy.stop)  # SIGTERM: the drain, then the flush
    assert collector.named("tools/call echo")
    assert proxy.handle.proc.returncode == 0


async def test_a_collector_that_is_down_changes_nothing_for_clients(sdk_upstream_module, tmp_path):
    upstream = sdk_upstream_module("stateful-json")
    dead = f"http://127.0.0.1:{free_port()}/v1/traces?api_key={(key := secret())}"
    proxy = start_proxy(tmp_path, upstream.base, {"tracing": {"otlp_endpoint": dead, "timeout_s": 1}},
                        env={"OTEL_BSP_SCHEDULE_DELAY": "50"}, log_level="info")
    async with sdk_client(proxy.url, mode="legacy") as c:
        for i in range(3):
            assert await c.call_text("echo", {"text": f"#{i}"}) == f"#{i}"
            await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.to_thread(proxy.stop)
    assert time.monotonic() - started < 5  # the flush at shutdown is bounded (tracing.timeout_s)
    failures = [e["msg"] for e in map(json.loads, proxy.handle.stderr().splitlines())
                if "trace export" in e["msg"]]
    port = dead.split(":")[2].split("/")[0]
    assert failures[0] == f"trace export to http://127.0.0.1:{port} failed; spans are dropped until it works again"
    assert len([f for f in failures if "failed;" in f]) == 1  # once, not per batch
    assert not leaked(proxy.handle.stderr() + proxy.handle.stdout(), [key]) and "/v1/traces" not in \
        proxy.handle.stderr()
