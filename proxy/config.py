"""Typed configuration: YAML with `${ENV}` expansion and `*_file` secrets, validated strictly.

Every error names the file and the key (`config.yaml: servers[1].methods: …`) so an operator can
fix it without reading code; unknown keys are errors, because a mistyped security setting that is
silently ignored is worse than a refusal to start.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from .protocol.urls import UrlError, normalize_url
from .transport.tls import MIN_VERSIONS as MIN_TLS_VERSIONS
from .transport.tls import TlsSetupError, client_context

# The policies shipped with the proxy: the default when a config names none.
# In the repository proxy/bundled_policies links to policies/; in the wheel it is a copy.
BUNDLED_POLICIES = str((Path(__file__).parent / "bundled_policies").resolve())
BUNDLED_REF = "@bundled"  # in policy.paths: the policies shipped with the proxy, wherever it is installed

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# `*_file` keys naming a file the proxy opens itself (not a secret read into the config).
_PATH_KEYS = frozenset({"token_file", "ca_file", "cert_file", "key_file"})  # the last three: upstream.tls
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$")


class ConfigError(Exception):
    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key, self.message = source, key, message


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # processes serving the one listening socket (docs/scaling.md)


@dataclass(frozen=True)
class Cluster:
    """cluster: where each worker listens for its siblings' requests (docs/scaling.md). Worker i of
    listen.workers listens on port + i (port 0: an ephemeral port each); siblings connect to
    advertise (default: host), the port being the worker's."""

    host: str = "127.0.0.1"
    port: int = 0
    advertise: str = "127.0.0.1"


@dataclass(frozen=True)
class UpstreamTls:
    """upstream.tls (docs/upstreams.md): verification is always on; there is no switch to turn it off."""

    ca_file: str | None = None  # the CAs trusted for the upstream (PEM), instead of the default store
    cert_file: str | None = None  # the proxy's client certificate (mTLS), with key_file
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)  # key_password_file: a secret
    server_name: str | None = None  # the name checked in the certificate and sent as SNI; default: the URL's host
    min_version: str = "1.2"  # "1.2" | "1.3"


@dataclass(frozen=True)
class EgressProxy:
    """An HTTP proxy the upstream is reached through (CONNECT tunnels: proxy/transport/egress.py)."""

    host: str
    port: int
    credentials: str | None = field(default=None, repr=False)  # user:password (Basic): a secret
    source: str = "upstream.proxy"  # where it was set, for the log: upstream.proxy, HTTPS_PROXY, …


@dataclass(frozen=True)
class Egress:
    """Which upstream origins go through which proxy. The default: every one straight (the
    siblings' client of proxy/transport/cluster.py keeps it)."""

    https: EgressProxy | None = None  # for https:// upstreams
    http: EgressProxy | None = None  # for http:// upstreams
    no_proxy: tuple[str, ...] = ()  # NO_PROXY entries, lowercase ("*": every host straight)


@dataclass(frozen=True)
class Upstream:
    url: str
    sse_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    keepalive_s: float = 4.0
    max_connections: int = 256  # open connections per origin (idle and in use) per worker
    queue_timeout_s: float = 5.0  # wait for a free connection at the cap; then 503
    max_queue: int = 1024  # requests waiting for a connection; beyond, 503 at once
    max_header_bytes: int = 64 * 1024  # an upstream response's header block; larger → 502
    read_timeout_s: float = 60.0  # silence allowed inside a non-SSE body (SSE streams may idle)
    tools_ttl_s: float = 300.0  # how long the upstream's tool definitions are used without being listed again
    tls: UpstreamTls = UpstreamTls()
    proxy: Egress = Egress()  # upstream.proxy, else HTTPS_PROXY/HTTP_PROXY/NO_PROXY (parse reads them)
    oauth: UpstreamOAuth | None = None  # the proxy as an OAuth client of the upstream (proxy/upstream_oauth)
    # A stdio server instead of `url` (proxy/stdio; docs/upstreams.md "stdio servers"): url is "" in
    # the file's config, the bridge's URL in the one the proxy runs with.
    command: tuple[str, ...] = ()  # the program and its arguments (no shell); () for an HTTP upstream
    env: dict[str, str] = field(default_factory=dict, repr=False)  # over HOME, LOGNAME, PATH, SHELL, TERM, USER
    cwd: str | None = None
    max_children: int = 32  # server processes (one per session) at once; beyond, 503
    session_idle_timeout_s: float = 600.0  # a session without a request in flight this long ends


@dataclass(frozen=True)
class UpstreamOAuth:
    """upstream.oauth: the grant `upstream login` obtains and `serve` uses and refreshes (docs/missive.md)."""

    token_file: str  # where the grant is kept (mode 0600; encrypted with token_key when set)
    scopes: tuple[str, ...]
    client_id: str | None = None  # None: the proxy registers itself (RFC 7591)
    client_secret: str | None = field(default=None, repr=False)  # a pre-registered client's (client_secret_file)
    token_key: str | None = field(default=None, repr=False)  # encrypts token_file at rest (token_key_file)
    redirect_port: int = 8765  # `upstream login` listens on 127.0.0.1:<port>/callback
    refresh_margin_s: float = 60.0  # refresh this long before the access token expires (at most half its life)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_sse_event_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 32 * 1024  # a client request's header block; larger → 431
    max_streams: int = 200  # open SSE streams (GET, POST answers, legacy sessions) per worker → 503;
    # below upstream.max_connections, as each stream holds an upstream connection
    max_streams_per_principal: int = 32  # → 429
    max_legacy_sessions: int = 256  # open legacy HTTP+SSE sessions per worker → 503
    client_header_timeout_s: float = 10.0  # a client must send its request head within this → 408
    client_body_timeout_s: float = 30.0  # silence allowed while a client sends its body → 408
    shutdown_grace_s: float = 25.0  # SIGTERM: in-flight requests may finish within this, then exit


@dataclass(frozen=True)
class Server:
    name: str
    token_hmac: str | None = None
    methods: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    require_api_token_auth: bool = False
    expires_at: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # An upstream 429 told to the agent as a tool result / JSON-RPC error (docs/rate-limits.md);
    # None in the file: rate_limit.surface_to_agent decides (parse fills it in).
    surface_rate_limit: bool | None = None
    # servers[].upstream (docs/upstreams.md "One upstream per server"), resolved: a section naming
    # url or command is an upstream of its own, one naming neither tunes the top-level one's
    # limits. None: the top-level upstream as it is.
    upstream: Upstream | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RateLimit:
    surface_to_agent: bool = False  # the default of servers[].surface_rate_limit; off: 429s pass through


@dataclass(frozen=True)
class OpaSettings:
    url: str = "http://127.0.0.1:8181"
    timeout_ms: int = 250


@dataclass(frozen=True)
class Policy:
    engine: str = "embedded"
    paths: tuple[str, ...] = (BUNDLED_POLICIES,)
    query: str = "data.mcp.authz.decision"
    mode: str = "enforce"
    reload_interval_s: float = 1.0  # how often policy files are checked for changes; 0: on SIGHUP only
    decision_cache_size: int = 4096  # embedded engine: decisions memoized per policy version; 0: none
    opa: OpaSettings = OpaSettings()


@dataclass(frozen=True)
class Jwt:
    issuer: str
    jwks_url: str
    audience: str | None = None  # default: public_url (RFC 8707: the proxy's canonical URL)
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = 30.0
    jwks_cache_s: float = 300.0  # how long fetched keys are used before the JWKS is fetched again
    min_refetch_interval_s: float = 10.0  # an unknown kid refetches at most this often
    verified_cache_size: int = 4096  # verified tokens remembered (LRU) to skip the signature check; 0: none


@dataclass(frozen=True)
class Auth:
    anonymous: bool = False
    url_token_key: str | None = None
    api_tokens: tuple[dict[str, Any], ...] = ()
    jwt: Jwt | None = None
    session_key: str | None = None  # binds session ids to principals; shared by every replica
    authorization_servers: tuple[str, ...] = ()  # RFC 9728 metadata; default: the JWT issuer
    scopes_supported: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.url_token_key or self.api_tokens or self.jwt)


@dataclass(frozen=True)
class DecisionLogService:
    """decision_log.service: where decisions are shipped, OPA's way (docs/logging.md)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets (a bearer token): never printed
    timeout_s: float = 5.0
    batch_size: int = 100  # entries in one POST
    min_delay_s: float = 5.0  # between uploads (sooner when a batch is full)
    max_delay_s: float = 60.0  # the longest wait between retries after failed uploads
    buffer_size_limit_events: int = 10_000  # then the oldest waiting entries are dropped


@dataclass(frozen=True)
class Tracing:
    """tracing: OpenTelemetry traces over OTLP/HTTP (docs/tracing.md). No endpoint here and none in
    OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT: off."""

    otlp_endpoint: str | None = None  # the OTLP/HTTP traces URL (a URL without a path gets /v1/traces)
    service_name: str | None = None  # default: $OTEL_SERVICE_NAME, else mcp-policy-proxy
    sample_ratio: float = 1.0  # of the traces the proxy starts; a client's sampled flag is followed
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets (collector auth): never printed
    timeout_s: float = 10.0  # one export; also the flush at shutdown


@dataclass(frozen=True)
class Config:
    upstream: Upstream
    listen: Listen = Listen()
    public_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    limits: Limits = Limits()
    policy: Policy = Policy()
    auth: Auth = Auth()
    servers: tuple[Server, ...] = (Server(name="default", methods=("read", "write", "custom")),)
    rate_limit: RateLimit = RateLimit()
    decision_log: dict[str, Any] = field(default_factory=lambda: {"sink": "stdout", "redact_arguments": True,
                                                                  "service": None})
    tracing: Tracing = Tracing()
    cluster: Cluster | None = None  # None: no internal endpoint (one worker) or the loopback default (several)
    source: str = "<defaults>"

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.listen.host)

    @property
    def default_server(self) -> Server | None:
        """The server reached without a URL token (on /mcp and /sse), if any."""
        return next((s for s in self.servers if s.token_hmac is None), None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def derive_sse_url(url: str) -> str | None:
    """The SDK convention: `/sse` beside `/mcp` on the same upstream."""
    parts = urlsplit(url)
    if not parts.path.endswith("/mcp"):
        return None
    return urlunsplit(parts._replace(path=parts.path[:-4] + "/sse", query=""))


# --- loading ---------------------------------------------------------------------------------

def _expand(node: Any, source: str, key: str) -> Any:
    """Expand `${ENV}` in strings and resolve `<name>_file: PATH` into `<name>: <file content>`."""
    if isinstance(node, str):
        def env(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                raise ConfigError(source, key, f"environment variable {m.group(1)} is not set")
            return value
        return _ENV_REF.sub(env, node)
    if isinstance(node, list):
        return [_expand(v, source, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if not isinstance(k, str):
                raise ConfigError(source, sub, "keys must be strings")
            if k.endswith("_file") and isinstance(v, str) and k not in _PATH_KEYS:
                target = k[: -len("_file")]
                if target in node:
                    raise ConfigError(source, sub, f"give either {target} or {k}, not both")
                path = _expand(v, source, sub)
                try:
                    out[target] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(source, sub, f"cannot read secret file: {exc.strerror}") from None
            else:
                out[k] = _expand(v, source, sub)
        return out
    return node


class _Reader:
    """Typed access to one mapping of the config, naming keys in errors."""

    def __init__(self, data: Any, source: str, key: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, key, "must be a mapping")
        self.data, self.source, self.key = data, source, key
        self.used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def err(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.sub(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        value = self.data.get(name, default)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.err(name, f"must be {_article(names)}, got {type(value).__name__}")
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            raise self.err(name, "must be greater than 0")
        return value

    def url(self, name: str, required: bool = False) -> str | None:
        value = self.get(name, str)
        if value is None:
            if required:
                raise self.err(name, "is required")
            return None
        try:
            return normalize_url(value)  # non-ASCII in the path or query: percent-encoded, once
        except UrlError as exc:
            raise self.err(name, str(exc)) from None  # the value is not echoed: URLs can carry tokens

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, list, [])
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err(f"{name}[{i}]", "must be a string")
        return tuple(value)

    def child(self, name: str) -> _Reader:
        self.used.add(name)
        return _Reader(self.data.get(name), self.source, self.sub(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, never the offending text: PyYAML quotes the line, which may hold a secret."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def _article(noun: str) -> str:
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "dict": "a mapping", "list": "a list"}.get(noun, noun)


def _server(r: _Reader, top: Upstream) -> Server:
    name = r.get("name", str)
    if name is None:
        raise r.err("name", "is required")
    if not _NAME.match(name):
        raise r.err("name", "must be lowercase letters, digits, '-' or '_' (at most 64)")
    expires = r.get("expires_at", (str, datetime))
    if isinstance(expires, str):
        try:
            expires = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            raise r.err("expires_at", f"must be an ISO 8601 timestamp, got {expires!r}") from None
    if isinstance(expires, datetime) and expires.tzinfo is None:
        raise r.err("expires_at", "must carry a time zone (e.g. 2026-12-31T23:59:59Z)")
    token_hmac = r.get("token_hmac", str)
    if token_hmac is not None and not re.fullmatch(r"[0-9a-f]{64}", token_hmac):
        raise r.err("token_hmac", "must be 64 lowercase hex digits (HMAC-SHA256)")
    server = Server(
        name=name, token_hmac=token_hmac, methods=r.strings("methods"), tags=r.strings("tags"),
        require_api_token_auth=r.get("require_api_token_auth", bool, False),
        expires_at=expires.astimezone(UTC) if expires else None, params=r.get("params", dict, {}),
        surface_rate_limit=r.get("surface_rate_limit", bool),
        upstream=_server_upstream(r.child("upstream"), top) if r.data.get("upstream") is not None else None,
    )
    r.used.add("upstream")
    r.done()
    return server


# What servers[].upstream may tune without naming an upstream of its own: limits, never a credential.
_TUNABLE = ("timeout_s", "connect_timeout_s", "keepalive_s", "max_connections", "queue_timeout_s", "max_queue",
            "max_header_bytes", "read_timeout_s", "tools_ttl_s", "max_children", "session_idle_timeout_s")


def _server_upstream(r: _Reader, top: Upstream) -> Upstream:
    """servers[i].upstream: with url or command, an upstream of its own, parsed as the top-level one
    is and inheriting nothing from it (its headers, oauth, tls or proxy must never reach another
    origin); with neither, the top-level upstream with some limits changed."""
    if r.data.get("url") is not None or r.data.get("command") is not None:
        return _upstream(r, r.source)
    tuned: dict[str, Any] = {}
    for name in r.data:
        if name in _TUNABLE:
            if name in _STDIO_ONLY and not top.command:
                raise r.err(name, "applies to a stdio upstream only (upstream.command)")
            default = getattr(top, name)
            tuned[name] = r.positive(name, type(default), default)
        elif name in {f.name for f in fields(Upstream)}:
            raise r.err(name, "applies to an upstream of this server's own: name its url (or command) too; "
                              "without one, servers[].upstream only tunes the top-level upstream's limits")
    r.done()
    return replace(top, **tuned)


def _check_server_upstreams(servers: tuple[Server, ...], top: Upstream, source: str, *, several: bool) -> None:
    """A stdio upstream of a server's own needs one process (the worker group shares only the
    top-level upstream's bridge); two upstreams never share one OAuth grant file."""
    grants: dict[str, Upstream] = {top.oauth.token_file: top} if top.oauth is not None else {}
    for i, s in enumerate(servers):
        if s.upstream is None or s.upstream == top:
            continue
        if s.upstream.command and several:
            raise ConfigError(source, f"servers[{i}].upstream.command",
                              "a stdio upstream of a server's own needs listen.workers 1 and no cluster section "
                              "(the worker group shares the top-level upstream's bridge only)")
        if s.upstream.oauth is not None:
            other = grants.setdefault(s.upstream.oauth.token_file, s.upstream)
            if other != s.upstream:
                raise ConfigError(source, f"servers[{i}].upstream.oauth.token_file",
                                  "is another upstream's grant file: each upstream keeps its own")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTTP_ONLY = ("url", "sse_url", "headers", "tls", "proxy", "oauth")
_STDIO_ONLY = ("env", "cwd", "max_children", "session_idle_timeout_s")


def _stdio(r: _Reader, source: str) -> dict[str, Any]:
    """upstream.command, env, cwd and the session bounds of a stdio upstream (proxy/stdio). The
    command is not looked for here: one that cannot start is retried, and /readyz says why."""
    for name in _HTTP_ONLY:
        if r.data.get(name) is not None:
            raise r.err(name, "applies to an HTTP upstream; give either upstream.url or upstream.command (a stdio "
                              "server), not both")
    command = r.data["command"]
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and "\0" not in a for a in command):
        raise r.err("command", "must be a non-empty list of strings: the program and its arguments, e.g. "
                               "[node, server.js, stdio] (no shell runs it)")
    if not command[0].strip():
        raise r.err("command[0]", "must name the program")
    r.used.add("command")
    env = r.get("env", dict, {})
    for k, v in env.items():  # values may be secrets: never quoted
        if not _ENV_NAME.match(k):
            raise r.err(f"env.{k}", "is not an environment variable name (letters, digits, _)")
        if not isinstance(v, str) or "\0" in v:
            raise r.err(f"env.{k}", "must be a string (quote numbers and booleans)")
    cwd = r.get("cwd", str)
    base = Path(source).parent if source.endswith((".yaml", ".yml", ".json")) else Path.cwd()
    return {"command": tuple(command), "env": dict(env), "cwd": str(base / cwd) if cwd else None,
            "max_children": r.positive("max_children", int, Upstream.max_children),
            "session_idle_timeout_s": r.positive("session_idle_timeout_s", float, Upstream.session_idle_timeout_s)}


def _secret_headers(r: _Reader) -> dict[str, str]:
    headers = r.get("headers", dict, {})
    for k, v in headers.items():  # values are secrets: never quoted in an error
        if not isinstance(v, str):
            raise r.err(f"headers.{k}", "must be a string")
        if not _HEADER_NAME.match(k) or any(c in v for c in "\r\n\0"):
            raise r.err(f"headers.{k}", "is not a valid HTTP header")
    return dict(headers)


def _upstream_oauth(r: _Reader, source: str) -> UpstreamOAuth:
    token_file = r.get("token_file", str)
    if not token_file:
        raise r.err("token_file", "is required: where `upstream login` keeps the grant")
    base = Path(source).parent if source.endswith((".yaml", ".yml", ".json")) else Path.cwd()
    scopes = r.strings("scopes")
    if not scopes or any(not s or any(c.isspace() or c == '"' for c in s) for s in scopes):
        raise r.err("scopes", "must list the scopes to ask for, each one word (docs/missive.md)")
    client_id, client_secret = r.get("client_id", str), r.get("client_secret", str)
    if client_secret is not None and client_id is None:
        raise r.err("client_secret_file", "needs client_id (a registered client's secret)")
    token_key = r.get("token_key", str)
    if token_key is not None and len(token_key) < 16:
        raise r.err("token_key", "must be at least 16 characters (use a random 32-byte secret)")
    port = r.get("redirect_port", int, UpstreamOAuth.redirect_port)
    if not 1 <= port <= 65535:
        raise r.err("redirect_port", "must be between 1 and 65535")
    oauth = UpstreamOAuth(token_file=str(base / token_file), scopes=scopes, client_id=client_id or None,
                          client_secret=client_secret, token_key=token_key, redirect_port=port,
                          refresh_margin_s=r.positive("refresh_margin_s", float, UpstreamOAuth.refresh_margin_s))
    r.done()
    return oauth


def _decision_log_service(r: _Reader) -> DecisionLogService:
    url = r.url("url", required=True)
    assert url is not None
    if not url.startswith(("http://", "https://")):
        raise r.err("url", "must be an http:// or https:// URL")
    headers = _secret_headers(r)
    d = DecisionLogService
    service = DecisionLogService(
        url=url, headers=dict(headers), timeout_s=r.positive("timeout_s", float, d.timeout_s),
        batch_size=r.positive("batch_size", int, d.batch_size),
        min_delay_s=r.positive("min_delay_s", float, d.min_delay_s),
        max_delay_s=r.positive("max_delay_s", float, d.max_delay_s),
        buffer_size_limit_events=r.positive("buffer_size_limit_events", int, d.buffer_size_limit_events))
    if service.batch_size > service.buffer_size_limit_events:
        raise r.err("batch_size", "must not exceed buffer_size_limit_events")
    if service.max_delay_s < service.min_delay_s:
        raise r.err("max_delay_s", "must not be less than min_delay_s")
    r.done()
    return service


def _tracing(r: _Reader) -> Tracing:
    endpoint = r.url("otlp_endpoint")  # an http(s) URL (OTLP/HTTP: e.g. http://otel-collector:4318/v1/traces)
    if endpoint is not None and (parts := urlsplit(endpoint)).path in ("", "/"):
        endpoint = urlunsplit(parts._replace(path="/v1/traces"))  # the collector's base URL: its traces endpoint
    service_name = r.get("service_name", str)
    if service_name is not None and not service_name.strip():
        raise r.err("service_name", "must not be empty")
    ratio = r.get("sample_ratio", float, 1.0)
    if not 0.0 <= ratio <= 1.0:
        raise r.err("sample_ratio", "must be between 0 and 1 (1: every trace the proxy starts is kept)")
    tracing = Tracing(otlp_endpoint=endpoint, service_name=service_name, sample_ratio=ratio,
                      headers=_secret_headers(r), timeout_s=r.positive("timeout_s", float, Tracing.timeout_s))
    r.done()
    return tracing


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*)(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*\.?$")


def _upstream_tls(r: _Reader, source: str, urls: tuple[str, ...]) -> UpstreamTls:
    """upstream.tls: the files checked now (readable, PEM, the key the certificate's) by building the
    context once; relative paths are from the config file's directory."""
    if not r.data:
        return UpstreamTls()
    for name in ("insecure", "verify", "insecure_skip_verify", "skip_verify"):
        if name in r.data:
            raise r.err(name, "certificate verification cannot be turned off; trust a private CA with "
                              "upstream.tls.ca_file instead (docs/upstreams.md)")
    if not any(u.startswith("https://") for u in urls):
        raise ConfigError(source, r.key, "applies to https:// upstreams only, and upstream.url is not one")
    base = Path(source).parent if source.endswith((".yaml", ".yml", ".json")) else Path.cwd()
    paths: dict[str, str | None] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = r.get(name, str)
        if value is not None and not value.strip():
            raise r.err(name, "must not be empty")
        paths[name] = str(base / value) if value else None
    if bool(paths["cert_file"]) != bool(paths["key_file"]):
        given, missing = ("cert_file", "key_file") if paths["cert_file"] else ("key_file", "cert_file")
        raise r.err(missing, f"is required with {given}: a client certificate goes with its key (a file "
                             "holding both may be named twice)")
    password = r.get("key_password", str)  # key_password_file, read by _expand
    if password is not None and not paths["key_file"]:
        raise r.err("key_password_file", "applies only with cert_file and key_file")
    server_name = r.get("server_name", str)
    if server_name is not None and not (_HOSTNAME.match(server_name) or _is_ip(server_name)):
        raise r.err("server_name", "must be a host name (no scheme, no port), e.g. mcp.internal.example")
    version = str(r.get("min_version", (str, float), "1.2"))  # YAML reads 1.2 unquoted as a number
    if version not in MIN_TLS_VERSIONS:
        raise r.err("min_version", f'must be "1.2" or "1.3", got {version!r}')
    r.done()
    tls = UpstreamTls(ca_file=paths["ca_file"], cert_file=paths["cert_file"], key_file=paths["key_file"],
                      key_password=password, server_name=server_name, min_version=version)
    try:
        client_context(tls)  # proves the files now; the upstream client builds its own at start
    except TlsSetupError as exc:
        raise r.err(exc.key, exc.message) from None
    return tls


def _proxy_address(value: str) -> tuple[str, int, str | None]:
    """`http://[user:password@]host[:port][/]` (or a bare host:port) → (host, port (default 80),
    "user:password" or None). ValueError says what is wrong, never quoting the value."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid proxy URL (http://host:port)") from None
    if parts.scheme.lower() != "http":
        raise ValueError("must be an http:// URL (an HTTP proxy, through CONNECT; https:// and SOCKS proxies "
                         "are not supported)")
    if not parts.hostname:
        raise ValueError("has no host (http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be the proxy's address only (http://host:port)")
    userinfo = None
    if parts.username is not None or parts.password is not None:
        userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return parts.hostname, port or 80, userinfo


def _egress(r: _Reader) -> Egress:
    """upstream.proxy: every upstream origin through this proxy (NO_PROXY does not apply)."""
    url = r.get("url", str)
    if url is None:
        raise r.err("url", "is required: the egress proxy's address, e.g. http://proxy.corp:3128")
    try:
        host, port, userinfo = _proxy_address(url)
    except ValueError as exc:
        raise r.err("url", str(exc)) from None
    if userinfo is not None:
        raise r.err("url", "must not carry credentials: put user:password in upstream.proxy.credentials_file")
    credentials = r.get("credentials", str)  # credentials_file, read by _expand
    if credentials is not None and (":" not in credentials or any(c < " " or c == "\x7f" for c in credentials)):
        raise r.err("credentials_file", "must hold user:password, on one line")
    r.done()
    proxy = EgressProxy(host, port, credentials, "upstream.proxy")
    return Egress(https=proxy, http=proxy)


def _env_egress(source: str, urls: tuple[str | None, ...]) -> Egress:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, when upstream.proxy is unset. A lowercase variable, even
    empty, comes before its uppercase one (as urllib and curl read them); only the variables of the
    upstream URLs' schemes are read."""
    found: dict[str, EgressProxy] = {}
    for scheme in sorted({u.split("://", 1)[0] for u in urls if u}):
        name, value = _env_variable(f"{scheme}_proxy")
        if value is None:
            continue
        try:
            host, port, userinfo = _proxy_address(value)
        except ValueError as exc:
            raise ConfigError(source, "upstream.proxy", f"is unset, so {name} applies, and it {exc}") from None
        found[scheme] = EgressProxy(host, port, userinfo, name)
    no_proxy = _env_variable("no_proxy")[1] or ""
    entries = tuple(e for e in (part.strip().lower() for part in no_proxy.split(",")) if e)
    return Egress(https=found.get("https"), http=found.get("http"), no_proxy=entries)


def _env_variable(name: str) -> tuple[str, str | None]:
    if name in os.environ:
        return name, os.environ[name].strip() or None
    return name.upper(), os.environ.get(name.upper(), "").strip() or None


MAX_WORKERS = 64
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _cluster(r: _Reader, listen: Listen) -> Cluster:
    """cluster.listen `host:port` (worker i on port + i), cluster.advertise a host (default: listen's)."""
    where = r.get("listen", str, "127.0.0.1:0")
    host, colon, port_text = where.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise r.err("listen", f"must be host:port (port 0: ephemeral), got {where!r}")
    port = int(port_text)
    if port and port + listen.workers - 1 > 65535:
        raise r.err("listen", f"worker i listens on port + i: {port} + {listen.workers - 1} is above 65535")
    if port and port <= listen.port < port + listen.workers:
        raise r.err("listen", f"ports {port}..{port + listen.workers - 1} (one per worker) include listen.port")
    advertise = r.get("advertise", str)
    if advertise is None:
        if host in _WILDCARDS:
            raise r.err("advertise", f"is required when cluster.listen binds every address ({where!r}): "
                                     "the address siblings reach this proxy at, e.g. ${POD_IP}")
        advertise = host
    advertise = advertise.removeprefix("[").removesuffix("]")
    if not advertise or advertise in _WILDCARDS or any(c in advertise for c in "/?#@ ") or (
            ":" in advertise and not _is_ip(advertise)):
        raise r.err("advertise", "must be a host name or IP address siblings can connect to (no port: "
                                 "cluster.listen's is used)")
    r.done()
    return Cluster(host=host, port=port, advertise=advertise)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_shared_session_key(auth: Auth, source: str, why: str) -> None:
    """Workers and replicas check each other's session ids and sign the requests they pass each
    other with auth.session_key: a key of each process's own would break both."""
    fix = "set the same random secret (32+ characters) everywhere, e.g. session_key_file: /run/secrets/session_key"
    if not auth.session_key:
        raise ConfigError(source, "auth.session_key", f"is required with {why} (every worker and replica must share "
                                                      f"it: docs/scaling.md); {fix}")
    if len(auth.session_key) < 16:
        raise ConfigError(source, "auth.session_key", f"must be at least 16 characters with {why}; {fix}")


def _upstream(up: _Reader, source: str) -> Upstream:
    """upstream, or servers[i].upstream naming an upstream of its own (url or command)."""
    stdio = _stdio(up, source) if up.data.get("command") is not None else {}
    url = "" if stdio else up.url("url")
    if url is None:
        raise up.err("url", "is required: the upstream's Streamable HTTP URL (or upstream.command: a stdio server)")
    headers = up.get("headers", dict, {})
    for k, v in headers.items():
        if not isinstance(v, str):
            raise up.err(f"headers.{k}", "must be a string")
        if not _HEADER_NAME.match(k) or any(c in v for c in "\r\n\0"):
            raise up.err(f"headers.{k}", "is not a valid HTTP header")
    upstream = Upstream(
        url=url, sse_url=up.url("sse_url") or derive_sse_url(url),
        headers={k.lower(): v for k, v in headers.items()},
        timeout_s=up.positive("timeout_s", float, 60.0),
        connect_timeout_s=up.positive("connect_timeout_s", float, 5.0),
        keepalive_s=up.positive("keepalive_s", float, 4.0),
        max_connections=up.positive("max_connections", int, Upstream.max_connections),
        queue_timeout_s=up.positive("queue_timeout_s", float, Upstream.queue_timeout_s),
        max_queue=up.positive("max_queue", int, Upstream.max_queue),
        max_header_bytes=up.positive("max_header_bytes", int, Upstream.max_header_bytes),
        read_timeout_s=up.positive("read_timeout_s", float, Upstream.read_timeout_s),
        tools_ttl_s=up.positive("tools_ttl_s", float, 300.0),
        tls=_upstream_tls(up.child("tls"), source, (url, str(up.data.get("sse_url") or ""))),
        proxy=_egress(up.child("proxy")) if up.data.get("proxy") is not None else
        _env_egress(source, (url, str(up.data.get("sse_url") or ""))) if url else Egress(),
        oauth=_upstream_oauth(up.child("oauth"), source) if up.data.get("oauth") is not None else None,
        **stdio,
    )
    up.used.add("oauth")
    if upstream.oauth is not None and "authorization" in upstream.headers:
        raise up.err("headers.Authorization", "give either upstream.oauth or an Authorization header, not both")
    for name in () if stdio else _STDIO_ONLY:
        if up.data.get(name) is not None:
            raise up.err(name, "applies to a stdio upstream only (upstream.command)")
    up.done()
    return upstream


def parse(data: Any, source: str) -> Config:
    root = _Reader(_expand(data, source, ""), source, "")

    upstream = _upstream(root.child("upstream"), source)

    ls = root.child("listen")
    port = ls.get("port", int, 8080)
    if not 0 <= port <= 65535:
        raise ls.err("port", "must be between 0 and 65535")
    workers = ls.get("workers", int, 1)
    if not 1 <= workers <= MAX_WORKERS:
        raise ls.err("workers", f"must be between 1 and {MAX_WORKERS}")
    listen = Listen(host=ls.get("host", str, "127.0.0.1"), port=port, workers=workers)
    ls.done()
    cluster = _cluster(root.child("cluster"), listen) if root.data.get("cluster") is not None else None
    root.used.add("cluster")

    lim = root.child("limits")
    limits = Limits(**{f.name: lim.positive(f.name, type(f.default), f.default) for f in fields(Limits)})
    lim.done()

    pol = root.child("policy")
    engine = pol.get("engine", str, "embedded")
    if engine not in ("embedded", "opa"):
        raise pol.err("engine", f"must be embedded or opa, got {engine!r}")
    mode = pol.get("mode", str, "enforce")
    if mode not in ("enforce", "dry_run"):
        raise pol.err("mode", f"must be enforce or dry_run, got {mode!r}")
    opa = pol.child("opa")
    opa_settings = OpaSettings(url=opa.url("url") or OpaSettings.url,
                               timeout_ms=opa.positive("timeout_ms", int, OpaSettings.timeout_ms))
    opa.done()
    base = Path(source).parent if source.endswith((".yaml", ".yml", ".json")) else Path.cwd()
    paths = tuple(BUNDLED_POLICIES if p == BUNDLED_REF else str(base / p) for p in pol.strings("paths")) or Policy.paths
    reload_interval_s = pol.get("reload_interval_s", float, 1.0)
    if reload_interval_s < 0:
        raise pol.err("reload_interval_s", "must be 0 (SIGHUP only) or more")
    decision_cache_size = pol.get("decision_cache_size", int, Policy.decision_cache_size)
    if decision_cache_size < 0:
        raise pol.err("decision_cache_size", "must be 0 (no memo) or more")
    policy = Policy(engine=engine, paths=paths, reload_interval_s=reload_interval_s,
                    decision_cache_size=decision_cache_size,
                    query=pol.get("query", str, Policy.query), mode=mode, opa=opa_settings)
    pol.done()

    au = root.child("auth")
    api_tokens = au.get("api_tokens", list, [])
    for i, tok in enumerate(api_tokens):
        if not (isinstance(tok, dict) and isinstance(tok.get("name"), str)
                and isinstance(tok.get("sha256"), str) and re.fullmatch(r"[0-9a-fA-F]{64}", tok["sha256"])):
            raise au.err(f"api_tokens[{i}]", "must be a mapping with name and sha256 (64 hex digits)")
    jwt = None
    if au.data.get("jwt") is not None:
        jw = au.child("jwt")
        issuer, jwks_url = jw.get("issuer", str), jw.url("jwks_url", required=True)
        if not issuer:
            raise jw.err("issuer", "is required")
        algorithms = jw.strings("algorithms") or Jwt.algorithms
        bad = [a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise jw.err("algorithms", f"{bad[0]} is not allowed (tokens are verified with public keys)")
        assert jwks_url is not None
        verified_cache_size = jw.get("verified_cache_size", int, Jwt.verified_cache_size)
        if not 0 <= verified_cache_size <= 1_000_000:
            raise jw.err("verified_cache_size", "must be between 0 (no cache) and 1000000")
        jwt = Jwt(issuer=issuer, jwks_url=jwks_url, audience=jw.get("audience", str), algorithms=algorithms,
                  leeway_s=jw.get("leeway_s", float, 30.0), jwks_cache_s=jw.positive("jwks_cache_s", float, 300.0),
                  min_refetch_interval_s=jw.get("min_refetch_interval_s", float, 10.0),
                  verified_cache_size=verified_cache_size)
        jw.done()
    else:
        au.used.add("jwt")
    url_token_key = au.get("url_token_key", str)
    if url_token_key is not None and len(url_token_key) < 16:
        raise au.err("url_token_key", "must be at least 16 characters (use a random 32-byte secret)")
    auth = Auth(anonymous=au.get("anonymous", bool, False), url_token_key=url_token_key,
                api_tokens=tuple(api_tokens), jwt=jwt, session_key=au.get("session_key", str),
                authorization_servers=au.strings("authorization_servers"),
                scopes_supported=au.strings("scopes_supported"))
    au.done()
    if workers > 1 or cluster is not None:
        _check_shared_session_key(auth, source, "listen.workers > 1" if workers > 1 else "a cluster section")

    raw_servers = root.get("servers", list, None)
    if raw_servers is None:
        servers: tuple[Server, ...] = Config.servers
    else:
        if not raw_servers:
            raise root.err("servers", "must name at least one server")
        servers = tuple(_server(_Reader(s, source, f"servers[{i}]"), upstream) for i, s in enumerate(raw_servers))
        names = [s.name for s in servers]
        for i, s in enumerate(servers):
            if names.index(s.name) != i:
                raise ConfigError(source, f"servers[{i}].name", f"duplicate server name {s.name!r}")
        if sum(s.token_hmac is None for s in servers) > 1:
            raise root.err("servers", "at most one server may lack token_hmac (it is served at /mcp and /sse)")
        for i, s in enumerate(servers):
            if s.require_api_token_auth and not (auth.api_tokens or auth.jwt):
                raise ConfigError(source, f"servers[{i}].require_api_token_auth",
                                  "needs bearer credentials: configure auth.api_tokens or auth.jwt")
        if any(s.token_hmac for s in servers) and not auth.url_token_key:
            raise ConfigError(source, "auth.url_token_key", "is required when a server has a token_hmac")
        _check_server_upstreams(servers, upstream, source, several=workers > 1 or cluster is not None)

    rl = root.child("rate_limit")
    rate_limit = RateLimit(surface_to_agent=rl.get("surface_to_agent", bool, False))
    rl.done()
    servers = tuple(replace(s, surface_rate_limit=rate_limit.surface_to_agent) if s.surface_rate_limit is None else s
                    for s in servers)

    dl = root.child("decision_log")
    sink = dl.get("sink", str, "stdout")
    if sink not in ("stdout", "off") and not (sink.startswith("file:") and len(sink) > 5):
        raise dl.err("sink", f"must be stdout, off or file:PATH, got {sink!r}")
    service = _decision_log_service(dl.child("service")) if dl.data.get("service") is not None else None
    dl.used.add("service")
    decision_log = {"sink": sink, "redact_arguments": dl.get("redact_arguments", bool, True), "service": service}
    dl.done()

    tracing = _tracing(root.child("tracing"))

    public_url = root.url("public_url")
    if auth.jwt is not None and not (auth.jwt.audience or public_url):
        raise ConfigError(source, "auth.jwt.audience", "is required (or set public_url, the default audience)")
    config = Config(
        upstream=upstream, listen=listen, public_url=public_url,
        allowed_origins=root.strings("allowed_origins"), limits=limits, policy=policy, auth=auth,
        servers=servers, rate_limit=rate_limit, decision_log=decision_log, tracing=tracing, cluster=cluster,
        source=source,
    )
    root.done()
    return config


def load(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a config file (or the defaults when `path` is None) and apply CLI overrides.

    `overrides` maps dotted keys (`upstream.url`, `listen.port`) to values from the command line.
    """
    source = str(path) if path else "<command line>"
    data: Any = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(source, "", _yaml_problem(exc)) from None
        if not isinstance(data, dict):
            raise ConfigError(source, "", "the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(source, p, "must be a mapping")
        node[last] = value
    return parse(data, source)
