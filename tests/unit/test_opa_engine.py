"""OpaEngine (proxy/policy/opa.py) against the OPA stand-in (tests/peers/opa_standin.py) and against
small in-process HTTP peers for answers the stand-in does not give: the value it returns, how it
fails closed, that it keeps its connections, and that it decides as regorus does."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

os.environ["RUST_BACKTRACE"] = "0"  # before anything imports regorus

import psutil
import pytest
import regorus
from aiohttp import web

from proxy.policy.engine import PolicyError, to_decision
from proxy.policy.opa import OpaEngine
from tests.peers.harness import ServerHandle, free_port, start_server

POLICY = """\
package mcp.authz

import rego.v1

default decision := {"allow": false, "reasons": ["no message"], "visible_tools": []}

decision := {"allow": count(deny) == 0, "reasons": sort(deny), "visible_tools": sort(visible)} if input.message

# no default: undefined for anonymous principals
strict := decision if input.principal.authenticated

deny contains "this server is blocked" if input.server.name in data.mcp.servers.blocked

deny contains sprintf("%s access is not allowed", [input.tool.access]) if {
	input.tool
	not input.tool.access in data.mcp.config.allowed_access
}

visible contains input.tool.name if input.tool.access in data.mcp.config.allowed_access

visible contains t.name if {
	some t in input.tools
	t.access in data.mcp.config.allowed_access
}
"""
CONFIG_JSON = '{"allowed_access": ["read"]}\n'
SERVERS_YAML = "blocked: [evil]\n"

SECRET = "s3cr3t-argument-value"


def message(method: str = "tools/call", *, server: str = "local", authenticated: bool = True,
            tool: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1, "time": "2026-11-23T20:00:00Z",
        "server": {"name": server, "methods": ["read"], "tags": [], "require_api_token_auth": False,
                   "expires_at": None, "params": {}},
        "principal": {"authenticated": authenticated, "via": ["jwt"] if authenticated else [],
                      "subject": "agent-7" if authenticated else None, "claims": {}, "scopes": []},
        "transport": {"kind": "streamable_http", "protocol_version": "2025-11-25", "http_method": "POST",
                      "origin": None},
        "message": {"kind": "response" if tools is not None else "request", "direction": "client_to_server",
                    "method": method, "name": tool["name"] if tool else None},
    }
    if tool is not None:
        doc["tool"] = tool
    if tools is not None:
        doc["tools"] = tools
    return doc


READ_TOOL = {"name": "list_all_posts", "method": "list", "access": "read", "tags": [], "annotations": {},
             "arguments": {"q": SECRET}}
WRITE_TOOL = {"name": "create_a_post", "method": "create", "access": "write", "tags": [], "annotations": {},
              "arguments": {"text": SECRET}}
CASES: dict[str, dict[str, Any]] = {
    "read call": message(tool=READ_TOOL),
    "write call": message(tool=WRITE_TOOL),
    "blocked server": message(server="evil", tool=READ_TOOL),
    "anonymous": message(authenticated=False, tool=READ_TOOL),
    "tools/list page": message("tools/list", tools=[{k: v for k, v in t.items() if k != "arguments"}
                                                    for t in (READ_TOOL, WRITE_TOOL)]),
    "ping": message("ping"),
    "empty input": {},
}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policies")
    (root / "authz.rego").write_text(POLICY)
    (root / "mcp" / "config").mkdir(parents=True)
    (root / "mcp" / "config" / "data.json").write_text(CONFIG_JSON)
    (root / "mcp" / "servers").mkdir(parents=True)
    (root / "mcp" / "servers" / "data.yaml").write_text(SERVERS_YAML)
    return root


StandIn = Callable[..., str]


@pytest.fixture(scope="module")
def standin(policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """`standin(mode="ok", revision=None) -> base URL`: one stand-in per (mode, revision) per module."""
    logs = tmp_path_factory.mktemp("opa-standin-logs")
    started: dict[tuple[str, str | None], tuple[ServerHandle, str]] = {}

    def _get(mode: str = "ok", revision: str | None = None) -> str:
        if (mode, revision) not in started:
            port = free_port()
            args = ["tests.peers.opa_standin", "--port", str(port), "--policies", str(policy_dir), "--mode", mode]
            if revision is not None:
                args += ["--bundle-revision", revision]
            started[mode, revision] = (start_server(args, port, log_dir=logs), f"http://127.0.0.1:{port}")
        return started[mode, revision][1]

    yield _get
    for handle, _ in started.values():
        handle.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., OpaEngine]]:
    """`engines(url, query=…, timeout_ms=…) -> OpaEngine`, closed at teardown."""
    made: list[OpaEngine] = []

    def _make(url: str, query: str = "data.mcp.authz.decision", timeout_ms: int = 250) -> OpaEngine:
        made.append(OpaEngine(url, query, timeout_ms))
        return made[-1]

    yield _make
    for engine in made:
        await engine.close()


async def denies(call: Awaitable[Any], within_s: float) -> PolicyError:
    start = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        await call
    elapsed = time.perf_counter() - start
    assert elapsed < within_s, f"took {elapsed:.3f} s"
    message = str(info.value)
    assert SECRET not in message and "127.0.0.1" not in message, message
    return info.value


# --- the value --------------------------------------------------------------------------------------


async def test_ok_returns_the_raw_result(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    engine = engines(standin())
    assert engine.name == "opa"
    assert await engine.evaluate(CASES["read call"]) == {
        "allow": True, "reasons": [], "visible_tools": ["list_all_posts"]}
    assert await engine.evaluate(CASES["write call"]) == {
        "allow": False, "reasons": ["write access is not allowed"], "visible_tools": []}
    assert engine.revision == "remote"  # OPA serving plain files reports no bundle revision


async def test_query_maps_to_the_data_api_path(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    assert await engines(standin(), "data.mcp.config.allowed_access").evaluate({}) == ["read"]
    assert await engines(standin(), "data.mcp").evaluate({}) == {
        "config": {"allowed_access": ["read"]}, "servers": {"blocked": ["evil"]},
        "authz": {"decision": {"allow": False, "reasons": ["no message"], "visible_tools": []},
                  "deny": [], "visible": []}}  # partial sets are never undefined, and JSON has no sets


async def test_revision_comes_from_bundle_provenance(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    engine = engines(standin(revision="bundle-rev-42"))
    assert engine.revision == "remote"
    await engine.evaluate(CASES["ping"])
    assert engine.revision == "bundle-rev-42"


# --- failing closed ---------------------------------------------------------------------------------


async def test_nothing_listening_denies_quickly(engines: Callable[..., OpaEngine]) -> None:
    error = await denies(engines(f"http://127.0.0.1:{free_port()}").evaluate(CASES["read call"]), 0.5)
    assert "unreachable" in str(error)


async def test_slow_opa_times_out(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    error = await denies(engines(standin("slow"), timeout_ms=200).evaluate(CASES["read call"]), 0.5)
    assert str(error) == "OPA did not answer within 200 ms"


@pytest.mark.parametrize(("mode", "text"), [("garbage", "not JSON"), ("error500", "HTTP 500"),
                                            ("undefined", "undefined")])
async def test_bad_answers_deny(standin: StandIn, engines: Callable[..., OpaEngine], mode: str, text: str) -> None:
    error = await denies(engines(standin(mode)).evaluate(CASES["read call"]), 0.5)
    assert text in str(error)


async def test_undefined_query_denies(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    await denies(engines(standin(), "data.mcp.authz.strict").evaluate(CASES["anonymous"]), 0.5)
    await denies(engines(standin(), "data.mcp.authz.no_such_rule").evaluate(CASES["read call"]), 0.5)


async def test_input_json_cannot_encode_denies(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    await denies(engines(standin()).evaluate({"tool": {"arguments": {SECRET: object()}}}), 0.5)


Handler = Callable[[web.Request], Awaitable[web.Response]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[str, Handler], Awaitable[str]]]:
    """`await serve(route, handler) -> base URL`: an in-process HTTP server answering POSTs to
    `route` with `handler`; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def _serve(route: str, handler: Handler) -> str:
        app = web.Application()
        app.router.add_post(route, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield _serve
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def peer(serve: Callable[[str, Handler], Awaitable[str]]) -> Callable[[web.Response], Awaitable[str]]:
    """`await peer(response) -> base URL`: a server answering every POST with `response`; the base
    URL has a path prefix, `/opa`."""

    async def _peer(response: web.Response) -> str:
        async def handler(request: web.Request) -> web.Response:
            assert request.path == "/opa/v1/data/mcp/authz/decision"
            assert (await request.json())["input"] == CASES["ping"]
            return response

        return await serve("/{tail:.*}", handler) + "/opa/"

    return _peer


@pytest.mark.parametrize(("response", "text"), [
    (lambda: web.Response(text="<html>gateway</html>", content_type="text/html"), "not JSON"),
    (lambda: web.Response(text="[1, 2]", content_type="application/json"), "not an object"),
    (lambda: web.Response(text="null", content_type="application/json"), "not an object"),
    (lambda: web.Response(status=204), "HTTP 204"),
    (lambda: web.json_response({"result": {"allow": True}}, status=201), "HTTP 201"),
    # a gateway's redirect: followed, a POST would become a GET without the input
    (lambda: web.Response(status=302, headers={"Location": "/v1/data/mcp/authz/decision"}), "HTTP 302"),
    (lambda: web.Response(status=307, headers={"Location": "/v1/data/mcp/authz/decision"}), "HTTP 307"),
    (lambda: web.json_response({"code": "internal_error", "message": "eval_conflict_error"}, status=500), "HTTP 500"),
    (lambda: web.json_response({"code": "invalid_parameter"}, status=400), "HTTP 400"),
    (lambda: web.json_response({"warning": {"code": "api_usage_warning"}}), "undefined"),
])
async def test_odd_answers_deny(peer: Callable[[web.Response], Awaitable[str]], engines: Callable[..., OpaEngine],
                                response: Callable[[], web.Response], text: str) -> None:
    error = await denies(engines(await peer(response())).evaluate(CASES["ping"]), 0.5)
    assert text in str(error)


async def test_path_prefix_and_multi_bundle_provenance(peer: Callable[[web.Response], Awaitable[str]],
                                                       engines: Callable[..., OpaEngine]) -> None:
    provenance = {"version": "1.0.0", "bundles": {"b": {"revision": "2"}, "a": {"revision": "1"}}}
    engine = engines(await peer(web.json_response({"result": False, "provenance": provenance})))
    assert await engine.evaluate(CASES["ping"]) is False
    assert engine.revision == "a:1,b:2"


async def test_a_timeout_leaves_the_engine_usable(serve: Callable[[str, Handler], Awaitable[str]],
                                                  engines: Callable[..., OpaEngine]) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1)
        return web.json_response({"result": calls})

    engine = engines(await serve("/v1/data/mcp/authz/decision", handler), timeout_ms=100)
    await denies(engine.evaluate(CASES["ping"]), 0.3)
    assert await engine.evaluate(CASES["ping"]) == 2


async def test_a_kept_alive_connection_closed_by_opa_is_retried_once(engines: Callable[..., OpaEngine]) -> None:
    """Each connection answers its first request and drops its second unanswered, as a server does
    that closes an idle connection just as the client reuses it."""
    connections = answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, answered
        connections += 1
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if n == 1:
                    break
                answered += 1
                body = b'{"result": %d}' % answered
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        engine = engines(f"http://127.0.0.1:{port}")
        assert await engine.evaluate(CASES["ping"]) == 1
        assert await engine.evaluate(CASES["ping"]) == 2  # the first connection dropped it: sent again
        assert connections == 2
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("url", "query"), [
    ("127.0.0.1:8181", "data.mcp.authz.decision"),
    ("ftp://127.0.0.1:8181", "data.mcp.authz.decision"),
    ("http://user:pw@127.0.0.1:8181", "data.mcp.authz.decision"),
    ("http://127.0.0.1:port", "data.mcp.authz.decision"),
    ("http://127.0.0.1:8181", "mcp.authz.decision"),
    ("http://127.0.0.1:8181", "data"),
    ("http://127.0.0.1:8181", 'data.mcp["authz"].decision'),
])
def test_bad_configuration_is_refused(url: str, query: str) -> None:
    with pytest.raises(ValueError):
        OpaEngine(url, query)


# --- the hot path -----------------------------------------------------------------------------------


def _local_ports(server_port: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED}


async def test_connections_are_kept_and_reused(standin: StandIn, engines: Callable[..., OpaEngine]) -> None:
    url = standin()
    port = int(url.rsplit(":", 1)[1])
    engine = engines(url)
    expected = await engine.evaluate(CASES["read call"])
    for _ in range(20):
        assert await engine.evaluate(CASES["read call"]) == expected
    assert len(_local_ports(port)) == 1  # one after another: a single kept-alive connection

    first: set[int] = set()
    for batch in range(3):
        results = await asyncio.gather(*(engine.evaluate(CASES["read call"]) for _ in range(50)))
        assert results == [expected] * 50
        if batch == 0:
            first = _local_ports(port)
            assert 1 <= len(first) <= 50
        else:
            assert _local_ports(port) <= first  # later batches open no new connection

    await engine.close()
    assert _local_ports(port) == set()
    assert await engine.evaluate(CASES["read call"]) == expected  # a closed engine reopens


# --- same decisions as regorus ----------------------------------------------------------------------


def _regorus(query: str, input: dict[str, Any]) -> Any:
    engine = regorus.Engine()
    engine.add_policy("authz.rego", POLICY)
    engine.add_data({"mcp": {"config": {"allowed_access": ["read"]}, "servers": {"blocked": ["evil"]}}})
    engine.set_input(input)
    return engine.eval_rule(query)


@pytest.mark.parametrize("query", ["data.mcp.authz.decision", "data.mcp.authz.strict"])
async def test_same_decisions_as_regorus(standin: StandIn, engines: Callable[..., OpaEngine], query: str) -> None:
    engine = engines(standin(), query)
    undefined = 0
    for case, input in CASES.items():
        direct = _regorus(query, input)
        if direct is None:  # undefined in regorus: OPA has no result either
            undefined += 1
            with pytest.raises(PolicyError):
                await engine.evaluate(input)
            continue
        remote = await engine.evaluate(input)
        assert remote == direct, case
        assert to_decision(remote) == to_decision(direct), case
    assert undefined == (0 if query.endswith("decision") else 2)  # "anonymous" and "empty input"
