"""What run.py measures: the servers (targets), the paths (rows), the requests and the targets to meet.

A *target* is a server process: the upstream (``fast_upstream.py``), nginx, or one proxy with its
own generated config. A *path* is one row of the report: a request kind sent to one target by one
client, under the ``repeat`` and/or ``vary`` workload. The added latency of a path is its
1-connection percentile minus that of the same request sent straight to the upstream by the same
client in the same round (a *baseline*, measured automatically).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from loadgen import Spec

HERE = Path(__file__).resolve().parent
ALLOW_ALL = HERE / "policies" / "allow_all"
WORKLOADS = ("repeat", "vary")
CONNECTIONS = 32  # the load phase: wrk's connections, the asyncio client's connections or sessions
PROXY_CMD = "{python} -m proxy serve --config {config}"
FLOOR_CMD = "{python} " + str(HERE / "floor_proxy.py") + " --port {port} --upstream {upstream}"
VARY_START = 1_700_000_000  # the vary counter's first value (plausible as the Missive call's `until`)


@dataclass(frozen=True)
class Proxy:
    """One proxy process: its upstream endpoint, its policy, its one server."""

    name: str
    about: str
    upstream_path: str  # /mcp (echo tools), /missive/mcp (37 tools), /sixty/mcp (60 tools)
    server: dict[str, Any]
    allow_all: bool = False  # benchmarks/policies/allow_all instead of the bundled policy
    jwt: bool = False  # the server has a URL token and requires a JWT (auth.jwt against the upstream's JWKS)
    floor: bool = False  # not the proxy: floor_proxy.py, the HTTP stack alone (FLOOR_CMD, never --proxy-cmd)


READ_ONLY = {"name": "readonly", "methods": ["read"]}
SUPPORT = {"name": "support", "methods": ["read", "create", "update"], "tags": ["support"],
           "params": {"missive": True}}  # proxy/demo_launcher.py's `support` server
PROXIES = {
    p.name: p
    for p in (
        Proxy("floor", "floor_proxy.py: the proxy's HTTP server and upstream client, no logic", "/mcp",
              {"name": "default"}, floor=True),
        Proxy("no_policy", "allow-all policy, one server, echo tools", "/mcp", {"name": "default"}, allow_all=True),
        Proxy("no_policy_37", "allow-all policy, 37 Missive tools", "/missive/mcp", {"name": "default"},
              allow_all=True),
        Proxy("no_policy_60", "allow-all policy, 60 tools", "/sixty/mcp", {"name": "default"}, allow_all=True),
        Proxy("default_policy", "bundled policy, read-only server, echo tools", "/mcp", READ_ONLY),
        Proxy("default_policy_60", "bundled policy, read-only server, 60 tools", "/sixty/mcp", READ_ONLY),
        Proxy("missive", "bundled policy + Missive pack, demo `support` server, 37 Missive tools", "/missive/mcp",
              SUPPORT),
        Proxy("jwt", "bundled policy, read-only server at /mcp/<URL token> requiring an RS256 JWT", "/mcp",
              {**READ_ONLY, "require_api_token_auth": True}, jwt=True),
    )
}


@dataclass(frozen=True)
class Request:
    """A JSON-RPC message kind: its body per workload and what the answer must carry."""

    name: str
    upstream_path: str
    method: str
    tool: str | None = None
    answer: str = "json"
    tools: int | None = None  # tools/list: tools the upstream declares

    def body(self, workload: str) -> str:
        if self.method == "tools/list":
            return '{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{}}'
        if self.tool == "list_all_missive_conversations":  # allowed on `support`: one mailbox filter
            until = "{n}" if workload == "vary" else str(VARY_START)
            args = '{"inbox":true,"limit":25,"until":' + until + "}"
        else:
            args = '{"text":' + ('"{n}"' if workload == "vary" else '"hi"') + "}"
        return ('{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{"name":"' + str(self.tool)
                + '","arguments":' + args + "}}")

    def expect_text(self, workload: str) -> Any:
        if self.method != "tools/call":
            return None
        if self.tool == "list_all_missive_conversations":  # the upstream answers with the arguments it got
            return lambda n: orjson.dumps({"inbox": True, "limit": 25,
                                           "until": n if workload == "vary" else VARY_START}).decode()
        return (lambda n: str(n)) if workload == "vary" else (lambda n: "hi")


REQUESTS = {
    r.name: r
    for r in (
        Request("echo", "/mcp", "tools/call", "echo"),
        Request("echo_sse", "/mcp", "tools/call", "echo_sse", answer="sse"),
        Request("missive", "/missive/mcp", "tools/call", "list_all_missive_conversations"),
        Request("tools_list_37", "/missive/mcp", "tools/list", tools=37),
        Request("tools_list_60", "/sixty/mcp", "tools/list", tools=60),
    )
}


@dataclass(frozen=True)
class Row:
    """One row: a request kind sent to a target by a client.

    client ``wrk``: the Python sequential client at 1 connection, wrk at 32 (the asyncio client
    without wrk); ``python``: the asyncio client at both; ``legacy``: the asyncio legacy HTTP+SSE
    client (sessions instead of connections)."""

    name: str
    target: str  # "upstream", "nginx" or a key of PROXIES
    request: str
    about: str
    client: str = "wrk"
    workloads: tuple[str, ...] = WORKLOADS
    load: bool = True  # measured at 32 connections too (baselines: 1 connection only)
    expect_tools: int | None = None  # tools/list through a filtering proxy: the tools left visible
    needs: tuple[str, ...] = field(default=())  # other paths its figures are computed from
    floor: str = "nginx"  # the path its CPU per request is divided by
    prefix: str = ""  # before the upstream's path (nginx: the location)

    @property
    def baseline(self) -> str | None:
        """The path its added latency is measured against: the same request and client, direct."""
        return None if self.target == "upstream" else baseline_name(self.request, self.client)


def baseline_name(request: str, client: str) -> str:
    return "direct" if (request, client) == ("echo", "wrk") else f"direct[{request},{client}]"


PATHS: dict[str, Row] = {
    p.name: p
    for p in (
        Row("direct", "upstream", "echo", "fast_upstream.py itself"),
        Row("nginx", "nginx", "echo", "nginx in front of the upstream: the floor"),
        Row("nginx_sse", "nginx", "echo_sse", "nginx relaying the SSE answer, proxy_buffering off",
            prefix="/unbuffered"),
        Row("floor", "floor", "echo", "floor_proxy.py: uvicorn + the proxy's upstream client relaying bytes",
            needs=("nginx",)),
        Row("no_policy", "no_policy", "echo", "the proxy, allow-all policy", needs=("nginx", "floor")),
        Row("default_policy", "default_policy", "echo", "bundled policy, read-only server", needs=("nginx", "floor")),
        Row("missive", "missive", "missive", "Missive pack: list_all_missive_conversations {inbox, limit, until}",
            needs=("nginx", "floor")),
        Row("jwt", "jwt", "echo", "URL token + RS256 JWT, bundled policy", needs=("nginx", "floor")),
        Row("sse", "default_policy", "echo_sse", "the default_policy proxy, the upstream answering text/event-stream",
            needs=("nginx_sse", "default_policy"), floor="nginx_sse"),
        Row("streamable_py", "default_policy", "echo", "the default_policy proxy, Streamable HTTP, asyncio client",
            client="python", needs=("nginx",)),
        Row("legacy_sse", "default_policy", "echo", "the default_policy proxy, legacy HTTP+SSE, asyncio client",
            client="legacy", needs=("nginx", "streamable_py")),
        Row("tools_list_37", "missive", "tools_list_37", "tools/list of 37 Missive tools, filtered (support)",
            workloads=("repeat",), expect_tools=22, needs=("tools_list_37_unfiltered",)),
        Row("tools_list_37_unfiltered", "no_policy_37", "tools_list_37", "tools/list of 37, allow-all policy",
            workloads=("repeat",)),
        Row("tools_list_60", "default_policy_60", "tools_list_60", "tools/list of 60 tools, filtered (read-only)",
            workloads=("repeat",), expect_tools=24, needs=("tools_list_60_unfiltered",)),
        Row("tools_list_60_unfiltered", "no_policy_60", "tools_list_60", "tools/list of 60, allow-all policy",
            workloads=("repeat",)),
    )
}


def select(names: list[str] | None, workloads: tuple[str, ...]) -> list[Row]:
    """The paths to run: the chosen ones, what their figures need, and their baselines (1 connection
    only, unless chosen themselves), restricted to ``workloads``."""
    wanted: list[str] = []
    todo = list(names or PATHS)
    while todo:
        name = todo.pop(0)
        if name not in wanted:
            wanted.append(name)
            todo += PATHS[name].needs
    chosen = [PATHS[n] for n in PATHS if n in wanted]
    baselines: dict[str, Row] = {}
    for path in chosen:
        base = path.baseline
        if base and base not in wanted:
            known = baselines.get(base)
            loads = tuple(w for w in WORKLOADS if w in path.workloads or (known and w in known.workloads))
            baselines[base] = Row(base, "upstream", path.request, f"{path.request} straight to the upstream "
                                  f"({path.client} client)", client=path.client, load=False, workloads=loads)
    out = [*baselines.values(), *chosen]
    return [replace(p, workloads=tuple(w for w in p.workloads if w in workloads)) for p in out
            if any(w in workloads for w in p.workloads)]


def spec(path: Row, workload: str, tokens: list[str], counter_start: int) -> Spec:
    """What the client sends on ``path`` under ``workload`` and how each answer is checked."""
    req = REQUESTS[path.request]
    target_path = path.prefix + req.upstream_path
    if path.target in PROXIES:
        target_path = f"/mcp/{tokens[0]}" if PROXIES[path.target].jwt else "/mcp"
    if path.client == "legacy":
        target_path = "/sse"
    bearer: tuple[str, ...] = ()
    if path.target in PROXIES and PROXIES[path.target].jwt:
        bearer = tuple(tokens[1:]) if workload == "vary" else (tokens[1],)
    return Spec(
        target_path,
        req.body(workload),
        tokens=bearer,
        answer=req.answer,
        expect_text=req.expect_text(workload),
        expect_tools=path.expect_tools if path.expect_tools is not None else req.tools,
        counter_start=counter_start,
    )


def proxy_config(proxy: Proxy, port: int, upstream_port: int, *, decision_log: str,
                 jwt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML config (as a dict) of one proxy process."""
    upstream: dict[str, Any] = {"url": f"http://127.0.0.1:{upstream_port}{proxy.upstream_path}"}
    if proxy.upstream_path == "/mcp":
        upstream["sse_url"] = f"http://127.0.0.1:{upstream_port}/sse"
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": upstream,
        # One anonymous principal opens 32 legacy sessions per run, while the previous run's may
        # still hold their slots for a moment after the client closed them.
        "limits": {"max_streams_per_principal": 128},
        "decision_log": {"sink": "off" if decision_log == "off" else f"file:{decision_log}"},
        "servers": [dict(proxy.server)],
    }
    if proxy.allow_all:
        config["policy"] = {"paths": [str(ALLOW_ALL)]}
    if proxy.jwt and jwt is not None:
        public = f"http://127.0.0.1:{port}"
        config["public_url"] = public
        config["auth"] = {
            "url_token_key": jwt["url_token_key"],
            "jwt": {"issuer": jwt["issuer"], "jwks_url": f"http://127.0.0.1:{upstream_port}/jwks.json",
                    "audience": public, "algorithms": ["RS256"]},
        }
        config["servers"][0]["token_hmac"] = jwt["token_hmac"]
    return config


class JwtSetup:
    """An RSA key, its JWKS, a URL token and bearer JWTs (one for repeat, a pool rotated by vary)."""

    ISSUER = "https://idp.bench.invalid"

    def __init__(self, pool: int) -> None:
        import jwt as pyjwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        import proxy.auth.tokens as tokens

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = orjson.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.jwks = orjson.dumps({"keys": [{**jwk, "kid": "bench-1", "alg": "RS256", "use": "sig"}]})
        self.url_token_key = tokens.mint_token()
        self.url_token = tokens.mint_token()
        self.token_hmac = tokens.url_token_hmac(self.url_token_key, self.url_token)
        self._key, self._pool, self._encode = key, pool, pyjwt.encode

    def bearer_tokens(self, audience: str) -> list[str]:
        """[the URL token, then pool + 1 JWTs for ``audience``, an hour ahead, each with its own jti]."""
        now = int(time.time())
        claims = {"iss": self.ISSUER, "aud": audience, "sub": "bench-agent", "scope": "mcp:read",
                  "iat": now, "exp": now + 3600}
        jwts = [self._encode({**claims, "jti": f"bench-{i}"}, self._key, algorithm="RS256",
                             headers={"kid": "bench-1"}) for i in range(self._pool + 1)]
        return [self.url_token, *jwts]

    def settings(self) -> dict[str, Any]:
        return {"url_token_key": self.url_token_key, "token_hmac": self.token_hmac, "issuer": self.ISSUER}
