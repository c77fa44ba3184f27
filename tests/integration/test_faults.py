"""Faults: upstream down or hanging, clients leaving mid-stream, and bodies the proxy must refuse."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from proxy.config import BUNDLED_POLICIES
from proxy.policy.loader import load_bundle
from tests.integration.proxy_harness import merge, start_proxy
from tests.peers.harness import ServerHandle, Upstream, eventually, free_port, start_server

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}


async def test_upstream_down_is_502_with_a_jsonrpc_error(proxy_for):
    proxy = proxy_for(f"http://127.0.0.1:{free_port()}")
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=CALL, headers=HEADERS)
        assert r.status_code == 502
        assert r.json()["id"] == 5 and r.json()["error"]["code"] == -32603
        assert (await http.get(proxy.sse_url)).status_code == 502
        ready = await http.get(f"{proxy.base}/readyz")
        assert ready.status_code == 503
        assert (await http.get(f"{proxy.base}/healthz")).status_code == 200


def _upstream_connections(proxy_pid: int, upstream_port: int) -> int:
    conns = psutil.Process(proxy_pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == upstream_port and c.status == psutil.CONN_ESTABLISHED)


async def test_client_disconnect_mid_stream_closes_the_upstream_connection(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateful-sse")
    proxy = proxy_for(upstream.base)
    pid = proxy.handle.proc.pid
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(proxy.url, json=init, headers=HEADERS)
        session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"]}
        await http.post(proxy.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "slow_progress", "arguments": {"steps": 40, "delay": 0.25},
                           "_meta": {"progressToken": "p"}}}
        async with http.stream("POST", proxy.url, json=call, headers=session) as stream:
            lines = stream.aiter_lines()
            while "notifications/progress" not in await anext(lines):
                pass
            during = _upstream_connections(pid, upstream.port)
        # The client is gone while the tool still has ~9 s to run.
        for _ in range(40):
            await asyncio.sleep(0.05)
            if _upstream_connections(pid, upstream.port) < during:
                break
        assert _upstream_connections(pid, upstream.port) < during


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}', 400, -32700),
    (b'{"jsonrpc":"2.0","id":1,"params":{}}', 400, -32600),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 2048 + b'"}}', 413, -32600),
])
async def test_refused_bodies_never_reach_the_upstream(sdk_upstream, proxy_for, body, status, code):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"limits": {"max_body_bytes": 1024}})
    upstream.clear_requests()
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, content=body, headers=HEADERS)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)

        async def chunked():  # no Content-Length: the limit must hold while streaming too
            for _ in range(4):
                yield b" " * 512
        r = await http.post(proxy.url, content=chunked(), headers=HEADERS)
        assert r.status_code == 413
    assert upstream.relayed() == []


async def test_header_body_mismatch_never_reaches_the_upstream(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base)
    upstream.clear_requests()
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "create_a_missive_post", "arguments": {"conversation": "c", "text": "t"}, "_meta": meta}}
    headers = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    async with httpx.AsyncClient() as http:
        r = await http.post(proxy.url, json=call, headers=headers)
    assert r.status_code == 400
    assert r.json() == {"jsonrpc": "2.0", "id": 9, "error": {
        "code": -32020, "message": "Header mismatch: Mcp-Name does not match params.name"}}
    assert upstream.relayed() == []


async def test_legacy_messages_need_a_known_session(sdk_upstream, proxy_for):
    upstream = sdk_upstream("legacy-sse")
    proxy = proxy_for(upstream.base)
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{proxy.base}/messages/", json=CALL, headers=HEADERS)).status_code == 400
        r = await http.post(f"{proxy.base}/messages/?session_id=deadbeef", json=CALL, headers=HEADERS)
        assert r.status_code == 404
    assert all(r["method"] != "POST" for r in upstream.requests())


# --- an upstream killed and restarted on the same port ------------------------------------------

class Upstreams:
    """SDK upstreams that can be killed (SIGKILL) and started again on the same port, sharing one
    tally file (tests/peers/sdk_server.py `tally`) so executions are counted across restarts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Upstream] = []

    def start(self, mode: str, port: int | None = None, *, reuse_port: bool = False) -> Upstream:
        """A server on `port` (a free one if None). With `reuse_port` it may join a server already
        listening there (SO_REUSEPORT): it is waited for until it listens itself."""
        port = port or free_port()
        record = self.workdir / f"{mode}-{port}.jsonl"
        args = ["tests.peers.sdk_server", "--mode", mode, "--port", str(port), *(["--reuse-port"] * reuse_port)]
        handle = start_server(args, port, {"MCP_RECORD_FILE": str(record), "MCP_TALLY_FILE": str(self.tally_file)},
                              log_dir=self.workdir)
        upstream = Upstream(mode, port, record, handle)
        self.started.append(upstream)
        deadline = time.monotonic() + 15
        while not _listens(handle.proc.pid, port):
            assert handle.proc.poll() is None and time.monotonic() < deadline, handle.stderr()
            time.sleep(0.05)
        return upstream

    @property
    def tally_file(self) -> Path:
        return self.workdir / "tally.jsonl"

    def executions(self) -> Counter[str]:
        """How often each tally key was executed, by any server process."""
        if not self.tally_file.exists():
            return Counter()
        return Counter(json.loads(line)["key"] for line in self.tally_file.read_text().splitlines() if line)

    def stop(self) -> None:
        for upstream in self.started:
            upstream.stop()


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    started = Upstreams(tmp_path)
    yield started
    started.stop()


def _listens(pid: int, port: int) -> bool:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def kill(upstream: Upstream) -> None:
    upstream.handle.proc.kill()
    upstream.handle.proc.wait()


def tally(key: str, delay: float = 0.0, rid: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "tally",
                                                                             "arguments": {"key": key, "delay": delay}}}


async def _initialize(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = await http.post(url, json=init, headers=HEADERS)
    assert r.status_code == 200, r.text
    session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"]}
    r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    assert r.status_code == 202, r.text
    return session


async def _rest(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


def _messages(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len("data:"):]) for line in lines if line.startswith("data:")]


async def test_upstream_killed_mid_stream_ends_both_streams_and_a_restart_serves_again(upstreams, proxy_for):
    upstream = upstreams.start("stateful-sse")
    proxy = proxy_for(upstream.base)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "slow_progress", "arguments": {"steps": 40, "delay": 0.25}, "_meta": {"progressToken": "p"}}}
    async with httpx.AsyncClient(timeout=10) as http:
        session = await _initialize(http, proxy.url)
        async with http.stream("GET", proxy.url, headers={**session, "accept": "text/event-stream"}) as get, \
                http.stream("POST", proxy.url, json=call, headers=session) as post:
            assert (get.status_code, post.status_code) == (200, 200)
            assert get.headers["content-type"].startswith("text/event-stream")
            lines = post.aiter_lines()
            while "notifications/progress" not in await anext(lines):
                pass
            kill(upstream)  # ~9 s of the tool left; the GET stream idle
            # Neither stream hangs: each ends (cleanly, or with a JSON-RPC error for request 2).
            after_post = await asyncio.wait_for(_rest(lines), 5)
            after_get = await asyncio.wait_for(_rest(get.aiter_lines()), 5)
        for msg in _messages(after_post):
            assert msg.get("method") == "notifications/progress" or (msg["id"] == 2 and "error" in msg), msg
        assert all("result" not in msg for msg in _messages(after_get))
        assert (await http.get(f"{proxy.base}/healthz")).status_code == 200
        # The same port again: the pool's connections to the dead process are not reused.
        upstreams.start("stateful-sse", upstream.port)
        session = await _initialize(http, proxy.url)
        r = await http.post(proxy.url, json=CALL, headers=session)
        assert r.status_code == 200, r.text
        assert [m["result"]["content"][0]["text"] for m in _messages(r.text.splitlines())] == ["x"]


async def test_upstream_killed_between_requests_fails_once_at_most_and_no_call_runs_twice(upstreams, proxy_for):
    first = upstreams.start("stateless-json", reuse_port=True)
    proxy = proxy_for(first.base)
    answers: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        async def call(key: str, delay: float = 0.0) -> int:
            answers[key] = await http.post(proxy.url, json=tally(key, delay), headers=HEADERS)
            return answers[key].status_code

        assert await call("warm") == 200  # a kept-alive connection is in the pool now
        kill(first)  # nothing listens: a clean 502, once
        assert await call("down") == 502
        assert answers["down"].json()["error"]["code"] == -32603
        second = upstreams.start("stateless-json", first.port, reuse_port=True)
        assert await call("back") == 200

        # Killed while another server already listens on the port: the pooled connection is dead; the
        # next call works (a fresh connection), or fails once with 502 (a race with the FIN).
        third = upstreams.start("stateless-json", first.port, reuse_port=True)
        kill(second)
        statuses = [await call("after-kill")]
        if statuses == [502]:
            statuses.append(await call("after-kill-again"))
        assert statuses in ([200], [502, 200]), statuses

        # Killed while executing a call sent on a kept-alive connection, another server listening:
        # 502, and the call (a POST, not idempotent) is not sent to that other server.
        in_flight = asyncio.ensure_future(call("in-flight", delay=5))
        assert await eventually(_async(lambda: upstreams.executions()["in-flight"] == 1))
        upstreams.start("stateless-json", first.port, reuse_port=True)
        kill(third)
        assert await asyncio.wait_for(in_flight, 5) == 502
        assert answers["in-flight"].json()["error"]["code"] == -32603
        assert await call("last") == 200
    executions = upstreams.executions()
    assert max(executions.values()) == 1, executions
    assert "down" not in executions
    for key, answer in answers.items():
        if answer.status_code == 200:
            assert executions[key] == 1 and answer.json()["result"]["content"][0]["text"] == "1", answer.text


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()
    return wrapped


def _local_ports(proxy_pid: int, upstream_port: int) -> set[int]:
    conns = psutil.Process(proxy_pid).net_connections(kind="tcp")
    return {c.laddr.port for c in conns
            if c.raddr and c.raddr.port == upstream_port and c.status == psutil.CONN_ESTABLISHED}


def _port_of(upstream: Upstream, tool: str) -> int:
    """The proxy-side port of the connection that carried the (last) call of `tool`."""
    calls = [r for r in upstream.relayed() if r["body"] and json.loads(r["body"]).get("params", {}).get("name") == tool]
    return int(calls[-1]["client_port"])


async def test_a_hung_exchange_is_504_at_timeout_s_and_its_connection_is_never_reused(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"upstream": {"timeout_s": 1}})
    pid = proxy.handle.proc.pid
    call = {**CALL, "params": {"name": "sleep", "arguments": {"seconds": 5}}}
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(proxy.url, json=CALL, headers=HEADERS)).status_code == 200  # one pooled connection
        start = time.monotonic()
        r = await http.post(proxy.url, json=call, headers=HEADERS)
        elapsed = time.monotonic() - start
        assert r.status_code == 504 and r.json() == {"jsonrpc": "2.0", "id": 5, "error": {
            "code": -32603, "message": "Upstream timed out"}}
        assert 0.9 < elapsed < 3
        hung = _port_of(upstream, "sleep")
        assert await eventually(_async(lambda: hung not in _local_ports(pid, upstream.port)), 2)  # closed
        r = await http.post(proxy.url, json=CALL, headers=HEADERS)
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "x"
        assert _port_of(upstream, "echo") != hung  # a fresh connection
        assert hung not in _local_ports(pid, upstream.port)


# --- the remote policy engine (OPA) unusable ----------------------------------------------------

def start_opa(workdir: Path, mode: str = "ok", port: int | None = None) -> tuple[str, ServerHandle]:
    """The OPA stand-in (tests/peers/opa_standin.py; no OPA binary installs here), bundled policies."""
    port = port or free_port()
    handle = start_server(["tests.peers.opa_standin", "--port", str(port), "--policies", BUNDLED_POLICIES,
                           "--mode", mode], port, log_dir=workdir)
    return f"http://127.0.0.1:{port}", handle


def _opa(url: str) -> dict[str, Any]:
    return {"policy": {"engine": "opa", "opa": {"url": url, "timeout_ms": 300}}}


def _engine_unavailable(r: httpx.Response, rid: int = 7) -> bool:
    return r.status_code == 503 and r.json() == {"jsonrpc": "2.0", "id": rid, "error": {
        "code": -32603, "message": "Policy engine unavailable"}}


async def test_remote_opa_down_slow_or_garbage_is_503_and_the_upstream_executes_nothing(upstreams, proxy_for,
                                                                                      tmp_path):
    """OPA killed, then back on its port in each failing mode (tests/peers/opa_standin.py), then
    sane again: every failure is a 503 with a JSON-RPC error within the time budget, nothing reaches
    the upstream meanwhile, and decisions resume once OPA answers again."""
    opa_url, opa = start_opa(tmp_path)
    port = int(opa_url.rsplit(":", 1)[1])
    handles = [opa]
    try:
        upstream = upstreams.start("stateless-json")
        proxy = proxy_for(upstream.base, _opa(opa_url))
        async with httpx.AsyncClient(timeout=10) as http:
            async def call(key: str) -> httpx.Response:
                return await http.post(proxy.url, json=tally(key), headers=HEADERS)

            assert (await call("before")).status_code == 200  # a kept-alive connection to OPA now
            opa.proc.kill()
            opa.proc.wait()
            for mode in ("down", "slow", "garbage", "error500", "undefined"):
                if mode == "slow":  # back on the same port, failing in one way after another
                    handles.append(start_opa(tmp_path, mode, port)[1])
                elif mode != "down":
                    assert (await http.put(f"{opa_url}/standin/mode", content=mode)).status_code == 200
                start = time.monotonic()
                assert _engine_unavailable(r := await call(mode)), (mode, r.text)
                assert time.monotonic() - start < 1.5  # timeout_ms bounds it, never a hang
            assert (await http.put(f"{opa_url}/standin/mode", content="ok")).status_code == 200
            assert (await call("back")).status_code == 200
        assert upstreams.executions() == Counter({"before": 1, "back": 1})
        assert not [r for r in upstream.relayed() if "tally" in r["body"] and '"before"' not in r["body"]
                    and '"back"' not in r["body"]]
    finally:
        for handle in handles:
            handle.stop()


# --- reloads under load -------------------------------------------------------------------------

SWITCH_RULE = """package mcp.authz
import rego.v1
deny contains sprintf("tool %s is switched off (%s)", [input.tool.name, data.switch.version]) if {
\tinput.message.method == "tools/call"
\tinput.tool.name in data.switch.off
}
"""
CLIENTS = 32


def _version(root: Path, name: str, off: list[str], rule: str = SWITCH_RULE) -> Path:
    """A complete policy version in its own directory: a rule file and the data it reads."""
    directory = root / name
    (directory / "switch").mkdir(parents=True)
    (directory / "switch.rego").write_text(rule)
    (directory / "switch" / "data.json").write_text(json.dumps({"off": off, "version": name}))
    return directory


def _swap(link: Path, target: Path) -> None:
    """Point `link` at `target` in one rename, as a Kubernetes ConfigMap update does."""
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    new.replace(link)


def _write(path: Path, text: str) -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.replace(path)


def _metric(text: str, name: str) -> float:
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)), 0.0)


async def test_reloads_under_load_decide_every_call_by_one_complete_version(sdk_upstream, tmp_path):
    """32 clients call `echo` in a loop while a broken policy, a broken config and then a complete
    policy that switches `echo` off are swapped in: no call is lost, every decision names the old
    or the new complete revision (never a mix), the old one decides until the new one is in force,
    and once its reload is counted no call of echo is allowed."""
    upstream = sdk_upstream("stateless-json")
    site = tmp_path / "site"
    old = _version(tmp_path / "versions", "v1", [])
    broken = _version(tmp_path / "versions", "broken", ["echo"], SWITCH_RULE.replace("if {", "if {{"))
    new = _version(tmp_path / "versions", "v2", ["echo"])
    _swap(site, old)
    paths = [BUNDLED_POLICIES, str(site)]
    old_revision = load_bundle(paths).revision
    decisions_file = tmp_path / "decisions.jsonl"
    proxy = start_proxy(tmp_path, upstream.base, {"policy": {"paths": paths, "reload_interval_s": 0.1},
                                                  "decision_log": {"sink": f"file:{decisions_file}"}})
    config_text = proxy.config_path.read_text()
    answers: list[tuple[float, float, str]] = []  # (sent, answered, "allowed" | "denied")
    failures: list[str] = []
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=CLIENTS)) as http:
            async def metrics() -> str:
                return (await http.get(f"{proxy.base}/metrics")).text

            async def client(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": f"{n}-{i}"}}}
                    sent = time.monotonic()
                    try:
                        r = await http.post(proxy.url, json=body, headers=HEADERS)
                        result = r.json()["result"]
                    except Exception as exc:  # a lost call: no answer, or not a result
                        failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    allowed = result == {"content": [{"type": "text", "text": f"{n}-{i}"}], "isError": False,
                                         "structuredContent": {"result": f"{n}-{i}"}}
                    denied = result["isError"] and "echo is switched off (v2)" in result["content"][0]["text"]
                    if r.status_code != 200 or not (allowed or denied):
                        failures.append(f"{r.status_code} {r.text}")
                    answers.append((sent, time.monotonic(), "allowed" if allowed else "denied"))

            async def reload_counted(name: str, result: str, count: float) -> bool:
                return _metric(await metrics(), f'{name}{{result="{result}"}}') >= count

            async def reloads() -> tuple[float, float, float]:
                await asyncio.sleep(0.4)
                _swap(site, broken)
                assert await eventually(lambda: reload_counted("mcp_proxy_policy_reloads_total", "failure", 1))
                _write(proxy.config_path, config_text.replace("timeout_s: 10", "timeout_s: -1"))
                assert await eventually(lambda: reload_counted("mcp_proxy_config_reloads_total", "failure", 1))
                refused = time.monotonic()  # both broken versions refused by now
                await asyncio.sleep(0.4)
                swapped = time.monotonic()
                _swap(site, new)
                assert await eventually(lambda: reload_counted("mcp_proxy_policy_reloads_total", "success", 1))
                counted = time.monotonic()
                await asyncio.sleep(0.8)
                stop.set()
                return refused, swapped, counted

            tasks = [asyncio.ensure_future(client(n)) for n in range(CLIENTS)]
            try:
                refused, swapped, counted = await asyncio.wait_for(reloads(), 20)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            text = await metrics()
    finally:
        proxy.stop()  # flushes the decision log
    assert not failures, failures[:5]
    # The old version decided until the new one was swapped in, the broken ones refused meanwhile;
    # from the moment the new one's reload was counted, echo was never allowed.
    assert all(outcome == "allowed" for _, answered, outcome in answers if answered < swapped)
    assert any(sent > refused for sent, _, _ in answers if sent < swapped)
    assert all(outcome == "denied" for sent, _, outcome in answers if sent > counted)
    assert any(sent > counted for sent, _, _ in answers)
    assert _metric(text, 'mcp_proxy_policy_reloads_total{result="failure"}') == 1
    assert _metric(text, 'mcp_proxy_policy_reloads_total{result="success"}') == 1
    assert _metric(text, 'mcp_proxy_config_reloads_total{result="failure"}') == 1

    new_revision = load_bundle(paths).revision  # site points at v2 now
    entries = [json.loads(line) for line in decisions_file.read_text().splitlines()]
    calls = [e for e in entries if e["input"]["message"]["method"] == "tools/call"]
    assert len(calls) == len(answers)  # one decision per call, none lost, none twice
    revisions = [e["labels"]["revision"] for e in calls]
    assert set(revisions) == {old_revision, new_revision}
    first_new = revisions.index(new_revision)
    assert revisions[first_new:] == [new_revision] * (len(revisions) - first_new)  # never back to the old
    assert all(e["result"]["allow"] for e in calls[:first_new])
    assert not any(e["result"]["allow"] for e in calls[first_new:])


async def test_policy_reloads_in_opa_mode_keep_one_connection_pool(upstreams, proxy_for, tmp_path):
    """A reload rebuilds the catalog, not the remote engine: the connections to OPA are not
    opened anew (and the old ones left open) on every reload."""
    opa_url, opa = start_opa(tmp_path)
    try:
        upstream = upstreams.start("stateless-json")
        proxy = proxy_for(upstream.base, merge(_opa(opa_url), {"policy": {"reload_interval_s": 0}}))
        pid, port = proxy.handle.proc.pid, int(opa_url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(4):
                answers = await asyncio.gather(*[http.post(proxy.url, json=tally(f"{n}-{i}"), headers=HEADERS)
                                                 for i in range(4)])
                assert [a.status_code for a in answers] == [200] * 4
                assert len(_local_ports(pid, port)) <= 5  # one pool: a connection per evaluation at once
                proxy.handle.proc.send_signal(signal.SIGHUP)

                async def reloaded(count: int = n + 1) -> bool:
                    text = (await http.get(f"{proxy.base}/metrics")).text
                    return _metric(text, 'mcp_proxy_policy_reloads_total{result="success"}') == count
                assert await eventually(reloaded)
        assert "Unclosed" not in proxy.handle.stderr()
    finally:
        opa.stop()
