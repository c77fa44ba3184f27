"""OpenTelemetry traces (docs/tracing.md): every line of OTel code the proxy has is in this module.

One SERVER span per client message (request or notification), named `{mcp.method.name} {target}`
with the MCP semantic conventions' attributes; children: an INTERNAL span per policy decision and a
CLIENT span per upstream exchange. The W3C context comes from `params._meta.traceparent` (the MCP
convention: the client's MCP span), else from the `traceparent` header; the proxy passes its own
on in both places. `_meta` is rewritten when the message arrives, before it is decided: the policy
decides on exactly what the upstream will be sent.

Off (no `tracing.otlp_endpoint`, no OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT) nothing here runs per
request: the app begins no RequestTrace, so every hook finds None in its context variable and
returns; the SDK is not even imported. On, everything that can be is built once (`Tracing`).

Hooks, one place each: ProxyApp.__call__ (begin, end), transport/intake.py (the message),
enforce/enforcer.py `_record` (each decision), transport/upstream.py `UpstreamClient.send` (each
exchange), the app's lifespan (the flush at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .. import __version__
from ..config import Config
from ..config import Tracing as TracingSettings
from ..protocol import jsonrpc
from ..protocol.jsonrpc import Kind, Message
from . import log_context
from .metrics import MCP_METHODS, OTHER, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Span, SpanContext

    from ..enforce.pipeline import Channel

log = logging.getLogger("mcp_policy_proxy.tracing")

DEFAULT_SERVICE = "mcp-policy-proxy"
# Attribute values a client chose are cut to these (the enforcer refuses longer names anyway).
MAX_NAME = 128
MAX_URI = 1024
MAX_ATTRIBUTE = 1024  # the SDK's limit for any string attribute: a safety net beneath the above
# What a W3C header may be (its parsers' limits): longer ones are ignored without a log line.
MAX_TRACEPARENT = 512
MAX_TRACESTATE = 512
_CARRIER_KEYS = frozenset({"traceparent", "tracestate"})

# --- attribute names: the MCP semantic conventions, then the proxy's own ---
METHOD = "mcp.method.name"
PROTOCOL_VERSION = "mcp.protocol.version"
SESSION = "mcp.session.id"
REQUEST_ID = "jsonrpc.request.id"
OPERATION = "gen_ai.operation.name"
TOOL = "gen_ai.tool.name"
PROMPT = "gen_ai.prompt.name"
RESOURCE = "mcp.resource.uri"
ERROR_TYPE = "error.type"
RPC_STATUS = "rpc.response.status_code"
TRANSPORT = "network.transport"
PROTOCOL_NAME = "network.protocol.name"
CLIENT_ADDRESS = "client.address"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
PROXY_SERVER = "mcp_proxy.server"
PROXY_TRANSPORT = "mcp_proxy.transport"
DECISION_ID = "mcp_proxy.decision_id"
DECISION = "mcp_proxy.decision"
POLICY_ENGINE = "mcp_proxy.policy.engine"
POLICY_REVISION = "mcp_proxy.policy.revision"
POLICY_MODE = "mcp_proxy.policy.mode"
DIRECTION = "mcp_proxy.direction"
REFUSED = "mcp_proxy.refused_by_proxy"

POLICY_SPAN = "policy.evaluate"
# Methods whose `params.uri` names a resource (the conventions' mcp.resource.uri).
_RESOURCE_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
# The SDK's own loggers would print what clients sent (a malformed tracestate member) and the
# exporter's failures with their URLs: the first are silenced, the second reported by _Exporter.
_QUIET_LOGGERS = ("opentelemetry.trace", "opentelemetry.exporter", "urllib3")

T = TypeVar("T")
_REQUEST: ContextVar[RequestTrace | None] = ContextVar("mcp_proxy_trace", default=None)


def current() -> RequestTrace | None:
    """The request being traced in this context, or None (always None with tracing off)."""
    return _REQUEST.get()


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _hex(span_context: SpanContext) -> tuple[str, str]:
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def traceparent_of(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def session_digest(session_id: str) -> str:
    """What `mcp.session.id` holds: a digest, never the id (a client's session id is a bearer value
    on its own; docs/tracing.md). The same session gives the same digest on every replica."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def carrier(traceparent: Any, tracestate: Any) -> dict[str, str] | None:
    """A W3C carrier of the two values if they can be one (strings of sane length), else None:
    anything else a client sent is ignored, never an error and never a log line."""
    if not isinstance(traceparent, str) or not traceparent or len(traceparent) > MAX_TRACEPARENT:
        return None
    out = {"traceparent": traceparent}
    if isinstance(tracestate, str) and tracestate and len(tracestate) <= MAX_TRACESTATE:
        out["tracestate"] = tracestate
    return out


def header_carrier(headers: Iterable[tuple[str, str]]) -> dict[str, str] | None:
    """The request's `traceparent` (the first) and `tracestate` (every field, joined: RFC 9110)."""
    traceparent: str | None = None
    states: list[str] = []
    for name, value in headers:
        if name == "traceparent":
            if traceparent is None:
                traceparent = value
        elif name == "tracestate":
            states.append(value)
    return carrier(traceparent, ",".join(states) if states else None)


def meta_carrier(params: Mapping[str, Any]) -> dict[str, str] | None:
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return None
    return carrier(meta.get("traceparent"), meta.get("tracestate"))


def _has_twin(obj: dict[str, Any], key: str) -> bool:
    """Another key of `obj` that is `key` under case folding: adding `key` would make the message
    mean two things to decoders that match keys case-insensitively (jsonrpc.case_twins)."""
    folded = key.casefold()
    return any(k != key and k.casefold() == folded for k in obj)


def rewrite_meta(msg: Message, traceparent: str, tracestate: str) -> bool:
    """Put the proxy's context into `params._meta` and re-encode the message (what is decided is
    what is forwarded). The client's values (in any case spelling) are replaced. False, and the
    message left as it is, where a key would get a case twin or `_meta` is no object."""
    data = msg.data
    params = data.get("params")
    if params is None:
        if _has_twin(data, "params"):
            return False
        params = data["params"] = {}
    if not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    if meta is None:
        if _has_twin(params, "_meta"):
            return False
        meta = params["_meta"] = {}
    if not isinstance(meta, dict):
        return False
    for key in [k for k in meta if k.casefold() in _CARRIER_KEYS]:
        del meta[key]
    meta["traceparent"] = traceparent
    if tracestate:
        meta["tracestate"] = tracestate
    msg.canonical = jsonrpc.encode(data)
    return True


def _target(method: str, params: Mapping[str, Any], tool_label: str) -> str | None:
    """The span name's target: a low-cardinality name (conventions: the tool or prompt; never the
    resource URI). A tool only when it is one the upstream declares or the catalog names (the
    metric label: anything else a client invents is `other`, and the name stays the method)."""
    if method == "tools/call":
        return tool_label if tool_label and tool_label != OTHER else None
    if method == "prompts/get":
        name = params.get("name")
        return _cut(name, MAX_NAME) if isinstance(name, str) and name else None
    return None


def span_name(method: str | None, params: Mapping[str, Any], tool_label: str = "") -> str:
    """`{mcp.method.name} {target}`, bounded: a method MCP does not define is `other`."""
    method = method or ""
    label = method if method in MCP_METHODS else OTHER
    target = _target(method, params, tool_label) if label != OTHER else None
    return f"{label} {target}" if target else label


def message_attributes(msg: Message, channel: Channel, session: str | None) -> dict[str, Any]:
    """The SERVER span's attributes known when the message arrives (conventions, then the proxy's)."""
    method = msg.method or ""
    params = msg.params
    attributes: dict[str, Any] = {METHOD: _cut(method, MAX_NAME), TRANSPORT: "tcp", PROTOCOL_NAME: "http",
                                  PROXY_SERVER: channel.server.name, PROXY_TRANSPORT: channel.transport}
    if msg.kind is Kind.REQUEST:
        attributes[REQUEST_ID] = _cut(str(msg.id), MAX_NAME)
    version = channel.revision(msg)
    if isinstance(version, str):
        attributes[PROTOCOL_VERSION] = _cut(version, 32)
    if session:
        attributes[SESSION] = session_digest(session)
    name = params.get("name")
    if method == "tools/call":
        attributes[OPERATION] = "execute_tool"
        if isinstance(name, str):
            attributes[TOOL] = _cut(name, MAX_NAME)
    elif method == "prompts/get" and isinstance(name, str):
        attributes[PROMPT] = _cut(name, MAX_NAME)
    elif method in _RESOURCE_METHODS and isinstance(uri := params.get("uri"), str):
        attributes[RESOURCE] = _cut(uri, MAX_URI)
    return attributes


def error_attributes(error_type: str) -> dict[str, str]:
    """error.type, and rpc.response.status_code when it is a JSON-RPC error code."""
    if not error_type:
        return {}
    attributes = {ERROR_TYPE: error_type}
    if error_type.startswith("-") and error_type[1:].isdigit():
        attributes[RPC_STATUS] = error_type
    return attributes


def failed(error_type: str, decision: str | None) -> bool:
    """Whether the SERVER span's status is ERROR: the answer is an error (error.type, as the
    conventions say), except where the policy denied: a denial is the outcome the proxy exists
    for, recorded in mcp_proxy.decision, not a failure of the proxy or the upstream."""
    return bool(error_type) and decision != "deny"


def _session_of(channel: Channel, headers: Iterable[tuple[str, str]], scope: Mapping[str, Any]) -> str | None:
    if channel.transport == "legacy_sse":  # the proxy's own session id, in the POST's query
        query = scope.get("query_string", b"").decode("latin-1")
        return next((v for k, v in parse_qsl(query) if k == "session_id"), None)
    return next((v for n, v in headers if n == "mcp-session-id"), None)


class RequestTrace:
    """One MCP HTTP request being traced: its SERVER span once its message is known.

    A span the sampler dropped has no children: the policy and upstream spans of an unsampled
    trace would be dropped too (parent-based sampling), so they are never made, and the upstream
    is sent the SERVER span's context (its flags say "not sampled")."""

    __slots__ = ("context", "error_type", "recording", "scope", "span", "start_ns", "tool_call", "tracing")

    def __init__(self, tracing: Tracing, scope: Mapping[str, Any]) -> None:
        self.tracing = tracing
        self.scope = scope
        self.start_ns = time.time_ns()  # the span begins with the request, its body still unread
        self.span: Span | None = None
        self.context: Context | None = None  # the SERVER span's, parent of every child
        self.recording = False
        self.error_type = ""  # a refusal before any decision (a routing-header mismatch)
        self.tool_call = False

    def message(self, msg: Message, channel: Channel, headers: list[tuple[str, str]]) -> None:
        """The request's message is parsed: its SERVER span starts (dated from the request's start),
        and its `_meta` carries the span's context from now on, before the message is decided."""
        if msg.kind is Kind.RESPONSE or self.span is not None:
            return  # a client's answer is part of the server's operation, not an operation of its own
        t = self.tracing
        parent, links = t.parents(meta_carrier(msg.params), header_carrier(headers))
        span = t.tracer.start_span(span_name(msg.method, msg.params), context=parent, kind=t.server_kind,
                                   links=links, start_time=self.start_ns)
        self.span, self.context, self.tool_call = span, t.in_context(span), msg.method == "tools/call"
        if span.is_recording():
            self.recording = True
            attributes = message_attributes(msg, channel, _session_of(channel, headers, self.scope))
            if client := self.scope.get("client"):
                attributes[CLIENT_ADDRESS] = client[0]
            span.set_attributes(attributes)
        span_context = span.get_span_context()
        log_context.TRACE_ID.set(f"{span_context.trace_id:032x}")  # for the access line
        rewrite_meta(msg, traceparent_of(span_context), span_context.trace_state.to_header())

    def refused(self, code: int) -> None:
        """The message was refused before any decision (a ProtocolError)."""
        self.error_type = str(code)

    def decided(self, decision_id: str, outcome: str, message: Mapping[str, Any], eval_ns: int,
                labels: Mapping[str, str], refusal: str | None) -> tuple[str, str] | None:
        """A decision taken for this request: its INTERNAL span, dated back over the evaluation, and
        (trace_id, span_id) for its decision-log entry. The message's own decision (not a
        tools/list page's, nor a server request's) is noted on the SERVER span too."""
        span, parent = self.span, self.context
        if span is None or parent is None:
            return None
        if not self.recording:
            return _hex(span.get_span_context())
        t = self.tracing
        end = time.time_ns()
        # (The engine and the mode cannot change without a restart: they are the resource's attributes.)
        attributes = {DECISION_ID: decision_id, DECISION: outcome, POLICY_REVISION: labels.get("revision", ""),
                      DIRECTION: message.get("direction", "")}
        if refusal:
            attributes[REFUSED] = refusal
        child = t.tracer.start_span(POLICY_SPAN, context=parent, kind=t.internal_kind, attributes=attributes,
                                    start_time=end - eval_ns)
        if outcome == "error":
            child.set_status(t.error_status("the policy engine gave no valid decision"))
        child.end(end_time=end)
        if message.get("direction") == "client_to_server" and message.get("kind") != "response":
            span.set_attributes({DECISION_ID: decision_id, DECISION: outcome})
        return _hex(child.get_span_context())

    async def upstream(self, send: Callable[..., Awaitable[T]], method: str, url: str, headers: dict[str, str],
                       body: bytes | None) -> T:
        """One upstream exchange (until its answer's head) as a CLIENT span; the request carries the
        span's context in `traceparent`/`tracestate` instead of whatever the client sent."""
        server = self.span
        if server is None:  # no message (a GET stream, a DELETE): the client's headers go as they came
            return await send(method, url, headers, body)
        t = self.tracing
        span: Span | None = None
        if self.recording:
            address, port = t.server_of(url)
            span = t.tracer.start_span(method, context=self.context, kind=t.client_kind, attributes={
                HTTP_METHOD: method, SERVER_ADDRESS: address, SERVER_PORT: port})
        span_context = (span or server).get_span_context()
        headers = {n: v for n, v in headers.items() if n not in _CARRIER_KEYS}  # the caller's dict stays as it is
        headers["traceparent"] = traceparent_of(span_context)
        if tracestate := span_context.trace_state.to_header():
            headers["tracestate"] = tracestate
        if span is None:
            return await send(method, url, headers, body)
        try:
            response = await send(method, url, headers, body)
        except BaseException as exc:
            code = getattr(exc, "status", None)  # an UpstreamError's 502, 503, 504
            span.set_attribute(ERROR_TYPE, str(code) if isinstance(code, int) else type(exc).__qualname__)
            span.set_status(t.error_status(None))
            span.end()
            raise
        status = getattr(response, "status", 0)
        span.set_attribute(HTTP_STATUS, status)
        if status >= 500:
            span.set_attribute(ERROR_TYPE, str(status))
            span.set_status(t.error_status(None))
        span.end()
        return response

    def end(self, record: RequestRecord) -> None:
        """The request is answered (its stream, if any, ended): the SERVER span ends, named and
        marked with what the request's record says of its answer."""
        span = self.span
        if span is None or not self.recording:
            return
        attributes = error_attributes(record.error_type or self.error_type)
        if attributes:
            span.set_attributes(attributes)
            if failed(attributes[ERROR_TYPE], record.decision):
                span.set_status(self.tracing.error_status(None))
        if self.tool_call and record.tool:  # the bounded tool label is known once the call was decided
            span.update_name(span_name("tools/call", {}, record.tool))
        span.end()


class _Exporter:
    """The OTLP exporter, its failures reported once (and its recovery once) by the collector's
    origin alone: never its path, query or headers, which may hold credentials. A failure never
    reaches a request: spans are exported by the SDK's worker thread, off the event loop."""

    def __init__(self, inner: Any, origin: str) -> None:
        self._inner, self._origin = inner, origin
        self._failing = False

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._inner.export(spans)
        except Exception:  # the SDK's own error, whatever it says, is not printed
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._failing:
                self._failing = False
                log.warning("trace export to %s works again", self._origin)
        elif not self._failing:
            self._failing = True
            log.warning("trace export to %s failed; spans are dropped until it works again", self._origin)
        return result

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def settings_endpoint(settings: TracingSettings, environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """(on, the endpoint to pass the exporter: None lets it read OTEL_EXPORTER_OTLP_* itself)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, None
    if settings.otlp_endpoint:
        return True, settings.otlp_endpoint
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False, None
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")), None


def _env_endpoint(environ: Mapping[str, str]) -> str:
    """The URL the exporter resolves from the environment (the SDK's own rule)."""
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    return environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").removesuffix("/") + "/v1/traces"


class Tracing:
    """The tracer provider, exporter, sampler and propagator, built once at start; `begin` per request."""

    def __init__(self, settings: TracingSettings, endpoint: str | None, environ: Mapping[str, str],
                 resource_attributes: Mapping[str, str] | None = None, exporter: Any = None) -> None:
        """`exporter`: the SpanExporter in place of OTLP/HTTP (tests)."""
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode, get_current_span, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.url = endpoint or _env_endpoint(environ)
        self.origin = _origin(self.url)
        self.timeout_s = settings.timeout_s
        # service.name: the config's, else OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES (the SDK reads
        # them), else ours.
        attributes = {"service.version": __version__, **(resource_attributes or {})}
        if settings.service_name:
            attributes["service.name"] = settings.service_name
        resource = Resource.create(attributes)
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE}))
        self.provider: TracerProvider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE), shutdown_on_exit=False)
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=endpoint, headers=settings.headers or None, timeout=settings.timeout_s)
        self.processor: BatchSpanProcessor = BatchSpanProcessor(_Exporter(exporter, self.origin))  # type: ignore[arg-type]
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("mcp-policy-proxy", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._root = Context()
        self._current_span, self._link, self._in_context = get_current_span, Link, set_span_in_context
        self.server_kind, self.client_kind, self.internal_kind = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
        self._status, self._error = Status, StatusCode.ERROR
        self._servers: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> Tracing | None:
        """None when tracing is off (docs/tracing.md: the config, else the OTEL_* environment)."""
        environ = os.environ if environ is None else environ
        settings = config.tracing
        on, endpoint = settings_endpoint(settings, environ)
        if not on:
            return None
        url = endpoint or _env_endpoint(environ)
        if urlsplit(url).scheme not in ("http", "https"):
            log.warning("tracing is off: the OTLP endpoint in the environment is no http(s) URL")
            return None
        policy = {POLICY_ENGINE: config.policy.engine, POLICY_MODE: config.policy.mode}
        tracing = cls(settings, endpoint, environ, policy)
        log.info("tracing: spans exported to %s (OTLP/HTTP)", tracing.origin)
        return tracing

    # --- per request ---
    def begin(self, scope: Mapping[str, Any]) -> RequestTrace:
        trace = RequestTrace(self, scope)
        _REQUEST.set(trace)
        return trace

    def parents(self, meta: dict[str, str] | None, header: dict[str, str] | None) -> tuple[Context, list[Any]]:
        """The SERVER span's parent: the context in `_meta` (the client's MCP span), else the header's
        (its HTTP span); with both, the header's is a link (the conventions' "ambient context")."""
        from_meta = self._extract(meta)
        from_header = self._extract(header)
        if from_meta is None:
            return (from_header or self._root), []
        if from_header is not None:
            linked = self._current_span(from_header).get_span_context()
            if linked != self._current_span(from_meta).get_span_context():
                return from_meta, [self._link(linked)]
        return from_meta, []

    def _extract(self, carrier: dict[str, str] | None) -> Context | None:
        if carrier is None:
            return None
        context = self._propagator.extract(carrier, self._root)
        return context if self._current_span(context).get_span_context().is_valid else None

    def in_context(self, span: Span) -> Context:
        return self._in_context(span, self._root)

    def error_status(self, description: str | None) -> Any:
        return self._status(self._error, description)

    def server_of(self, url: str) -> tuple[str, int]:
        """(server.address, server.port) of an upstream URL, parsed once per URL."""
        known = self._servers.get(url)
        if known is None:
            parts = urlsplit(url)
            known = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            if len(self._servers) < 1024:
                self._servers[url] = known
        return known

    # --- at shutdown ---
    async def aclose(self) -> None:
        """What is queued is exported within `timeout_s` (in a thread: the SDK's shutdown blocks),
        then the exporter is closed; past the bound the process exits without waiting."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut() -> None:
            try:
                self.provider.shutdown()
            except Exception:
                log.warning("trace export at shutdown failed")
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut, name="mcp-proxy-trace-flush", daemon=True).start()
        try:
            await asyncio.wait_for(done, self.timeout_s)
        except TimeoutError:
            log.warning("trace export at shutdown did not end within tracing.timeout_s; the rest is dropped")


# --- the hooks the other modules call (each one a context-variable look-up when tracing is off) ---
def message_arrived(msg: Message, channel: Channel, headers: list[tuple[str, str]]) -> None:
    if (trace := _REQUEST.get()) is not None:
        trace.message(msg, channel, headers)


def message_refused(code: int) -> None:
    if (trace := _REQUEST.get()) is not None:
        trace.refused(code)


def decided(decision_id: str, outcome: str, message: Mapping[str, Any], eval_ns: int, labels: Mapping[str, str],
            refusal: str | None) -> tuple[str, str] | None:
    trace = _REQUEST.get()
    return None if trace is None else trace.decided(decision_id, outcome, message, eval_ns, labels, refusal)
