"""`serve --workers 2`: every transport works whichever worker a request lands on.

The real proxy (a main process and two spawned workers sharing one socket) in front of the official
SDK servers, driven by the official SDK clients, which open a new connection per request here so
that successive requests land on either worker (the kernel hands each connection to whichever
worker accepts first). Each worker's own metrics, read from its internal endpoint as a sibling
would, tell which worker served what.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack

import httpx
import psutil
import pytest
import yaml

from proxy.auth.tokens import url_token_hmac
from proxy.transport.cluster import Signer, sibling_key
from tests.integration.cluster_helpers import (
    echo,
    internal_endpoints,
    legacy,
    owner_of,
    signed,
    streamable,
    total,
    wait_for_workers,
    with_owner,
    worker_metrics,
)
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import secret
from tests.peers.harness import REPO_ROOT, eventually, free_port, start_server
from tests.unit.test_metrics_doc import documented_families, exported_families

SESSION_KEY = secret()
URL_KEY = "url-token-key-for-the-worker-tests"
GROUP = {"listen": {"workers": 2}, "auth": {"session_key": SESSION_KEY}}
REQUESTS = "mcp_proxy_requests_total"
RELAYED = "mcp_proxy_cluster_relays_total"
FAILURES = "mcp_proxy_auth_failures_total"
MAX_TRIES = 40  # requests sent until both workers were seen serving (each lands on either: ~1/2)
BATCH = 4  # requests between two looks at the workers' metrics


TOKEN = secret()  # a URL token's server beside the default one: its paths are relayed too, and never logged
ALL = ["read", "write", "custom"]


@pytest.fixture(scope="module")
def group(sdk_upstream_module, tmp_path_factory):
    """2 workers in front of the stateful SDK server (/mcp) and the legacy SSE one (/sse), with
    access logs."""
    stateful, old = sdk_upstream_module("stateful-sse"), sdk_upstream_module("legacy-sse")
    servers = [{"name": "default", "methods": ALL}, _server("tokened", TOKEN, methods=ALL)]
    proxy = start_proxy(tmp_path_factory.mktemp("workers"), stateful.base,
                        {**GROUP, "upstream": {"sse_url": f"{old.base}/sse"}, "servers": servers,
                         "auth": {**GROUP["auth"], "url_token_key": URL_KEY, "anonymous": True}},
                        log_level="info", access_log=True)
    yield proxy, old
    proxy.stop()


@pytest.fixture(scope="module")
def endpoints(group):
    """The group's workers' internal addresses, once both serve."""
    async def ready() -> list[str]:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for_workers(http, group[0].base, 2)
        return await internal_endpoints(group[0], 2)

    return asyncio.run(ready())


async def per_worker(endpoints: list[str], name: str, **labels: str) -> list[float]:
    """Each worker's `name` total. The workers are asked in random order, then left idle a moment: a
    worker still busy when the next connection arrives takes it (its loop polls first), so always
    asking the same one last would send the next requests to it alone."""
    order = random.sample(range(len(endpoints)), len(endpoints))
    values = [0.0] * len(endpoints)
    async with httpx.AsyncClient(timeout=10) as http:
        for i in order:
            values[i] = total(await worker_metrics(http, SESSION_KEY, endpoints[i]), name, **labels)
    await asyncio.sleep(0.05)
    return values


async def both_served(endpoints, before, name, **labels) -> bool:
    after = await per_worker(endpoints, name, **labels)
    return all(a > b for a, b in zip(after, before, strict=True))


async def calls_on_both_workers(url: str, client_mode: str, endpoints: list[str]) -> None:
    """SDK client calls until each worker has served some (all answered right)."""
    before = await per_worker(endpoints, REQUESTS, transport="streamable_http", outcome="forwarded")
    async with streamable(url, client_mode) as client:
        for i in range(MAX_TRIES):
            assert await echo(client, f"call {i}") == f"call {i}"
            if i % BATCH == BATCH - 1 and await both_served(endpoints, before, REQUESTS, transport="streamable_http",
                                                            outcome="forwarded"):
                return
    pytest.fail("every request landed on one worker")


@pytest.mark.parametrize("client_mode", ["legacy", "auto"])
async def test_streamable_http_sessions_work_on_either_worker(group, endpoints, client_mode):
    """A session made by one worker is used on both (legacy: initialize, a session id, GET stream,
    DELETE at the end; auto: 2026-07-28, no session). Stateless: below, with the revocations."""
    await calls_on_both_workers(group[0].url, client_mode, endpoints)


@pytest.mark.parametrize("client_mode", ["legacy", "auto"])
async def test_legacy_sse_posts_reach_their_stream_from_either_worker(group, endpoints, client_mode):
    """The session's stream lives in one worker; POSTs landing on the other are relayed to it."""
    proxy, _ = group
    sessions: list[str] = []
    before = await per_worker(endpoints, RELAYED, result="relayed")
    direct = await per_worker(endpoints, REQUESTS, transport="legacy_sse")
    async with legacy(f"{proxy.base}/{TOKEN}/sse", sessions, mode=client_mode) as client:
        owner = endpoints.index(owner_of(sessions[0]))
        for i in range(MAX_TRIES):
            assert await echo(client, f"message {i}") == f"message {i}"
            if i % BATCH != BATCH - 1:
                continue
            relayed = await per_worker(endpoints, RELAYED, result="relayed")
            served = await per_worker(endpoints, REQUESTS, transport="legacy_sse")
            by_other = relayed[1 - owner] - before[1 - owner]
            if by_other >= 2 and served[owner] - direct[owner] - by_other >= 3:  # the GET, and 2 POSTs or more
                break  # some POSTs relayed by the other worker, some taken by the owner itself
        else:
            pytest.fail("the POSTs all landed on one worker")
    # Every one of the session's requests was served (counted) by its owner, none by the other worker.
    assert served[1 - owner] == direct[1 - owner]
    assert relayed[owner] == before[owner]


async def test_a_scrape_of_either_worker_adds_up_both(group, endpoints):
    proxy, _ = group
    async with streamable(proxy.url, "legacy") as client:
        for i in range(6):
            await echo(client, str(i))
    async with httpx.AsyncClient(timeout=10) as http:
        mine = [await worker_metrics(http, SESSION_KEY, e) for e in endpoints]
        # (while the group started, a scrape could find a worker not serving yet: counted, and left out)
        missed = total((await http.get(f"{proxy.base}/metrics")).text, "mcp_proxy_cluster_scrape_failures_total")
        for _ in range(4):  # whichever worker serves the scrape
            merged = (await http.get(f"{proxy.base}/metrics")).text
            for name, labels in ((REQUESTS, {"transport": "streamable_http"}),
                                 ("mcp_server_operation_duration_seconds_count", {"mcp_method_name": "tools/call"}),
                                 ("mcp_proxy_policy_decisions_total", {})):
                assert total(merged, name, **labels) == sum(total(m, name, **labels) for m in mine) > 0, name
            assert total(merged, "mcp_proxy_build_info") == 1  # the same in every worker: not summed
            assert total(merged, "mcp_proxy_cluster_workers_scraped") == 2
            # docs/metrics.md lists exactly what the group exports: every proxy's families plus its own.
            assert exported_families(merged) == {**documented_families(), **documented_families(groups=True)}
            assert total(merged, "mcp_proxy_cluster_scrape_failures_total") == missed


async def test_a_request_on_the_internal_endpoint_must_be_signed_by_a_sibling(group, endpoints):
    """Forged, stale, replayed-for-another-body and foreign-key signatures: 403, counted, and
    nothing reaches the session or the upstream."""
    proxy, old = group
    sessions: list[str] = []
    async with legacy(proxy.sse_url, sessions, keepalive=True) as client, httpx.AsyncClient(timeout=10) as http:
        await echo(client, "before")
        owner = owner_of(sessions[0])
        target = f"/messages/?session_id={sessions[0]}"
        body = json.dumps({"jsonrpc": "2.0", "id": 4242, "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "forged"}}}).encode()
        stale = Signer(sibling_key(SESSION_KEY), clock=lambda: time.time() - 120).sign("POST", target, body)
        forgeries = {
            "missing": {},
            "malformed": {"x-mcp-proxy-sibling": "yes"},
            "stale": {"x-mcp-proxy-sibling": stale},
            "forged": signed(SESSION_KEY, "POST", target, b"{}"),  # a signature of another body
        }
        forgeries["foreign key"] = signed("another-proxy-group-key", "POST", target, body)
        refused_before = total((await http.get(f"{proxy.base}/metrics")).text, "mcp_proxy_cluster_refusals_total")
        for name, headers in forgeries.items():
            r = await http.post(f"http://{owner}{target}", content=body,
                                headers={**headers, "content-type": "application/json"})
            assert r.status_code == 403, (name, r.status_code, r.text)
        # Neither is anything but relayed legacy POSTs and metrics served there, signed or not.
        r = await http.post(f"http://{owner}/mcp", content=body, headers=signed(SESSION_KEY, "POST", "/mcp", body))
        assert r.status_code == 404
        assert (await http.get(f"{proxy.base}/_cluster/metrics")).status_code == 404  # not on the public port
        assert await echo(client, "after") == "after"  # the session goes on, and only its own answers came
        merged = (await http.get(f"{proxy.base}/metrics")).text
    assert total(merged, "mcp_proxy_cluster_refusals_total") - refused_before == len(forgeries)
    assert not any("forged" in r["body"] for r in old.requests())


async def test_a_session_id_naming_another_owner_is_never_relayed(group, endpoints):
    """The owner is under the session id's tag: a client pointing it at an address of its choice
    (here a listening socket) gets 404, and nothing connects there."""
    proxy, _ = group
    trap = socket.create_server(("127.0.0.1", 0))
    trap.setblocking(False)
    sessions: list[str] = []
    try:
        async with legacy(proxy.sse_url, sessions, keepalive=True) as client, httpx.AsyncClient(timeout=5) as http:
            await echo(client, "x")
            forged = with_owner(sessions[0], f"127.0.0.1:{trap.getsockname()[1]}")
            for _ in range(6):  # on either worker
                r = await http.post(f"{proxy.base}/messages/?session_id={forged}", json={"jsonrpc": "2.0", "id": 1,
                                    "method": "ping"}, headers={"connection": "close"})
                assert r.status_code == 404
        with pytest.raises(BlockingIOError):
            trap.accept()
    finally:
        trap.close()


def _server(name: str, token: str, **extra) -> dict:
    return {"name": name, "token_hmac": url_token_hmac(URL_KEY, token), "methods": ["read"], **extra}


async def _open_stream(stack: AsyncExitStack, url: str) -> tuple[str, asyncio.Future]:
    """A legacy session on a fresh connection: (its owner, a future done when its stream ends)."""
    http = await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)))
    stream = await stack.enter_async_context(http.stream("GET", url))
    assert stream.status_code == 200
    lines = stream.aiter_lines()
    assert (await anext(lines)).startswith("event: endpoint")
    session_id = (await anext(lines)).partition("session_id=")[2].strip()

    async def drain() -> None:
        async for _ in lines:
            pass

    ended = asyncio.ensure_future(drain())

    async def stop() -> None:  # before its stream is closed (the stack unwinds in reverse)
        ended.cancel()
        await asyncio.gather(ended, return_exceptions=True)

    stack.push_async_callback(stop)
    return owner_of(session_id), ended


async def _streams_in_both(stack: AsyncExitStack, url: str, endpoints: list[str]) -> list[asyncio.Future]:
    """One open legacy stream held by each worker."""
    held: dict[str, asyncio.Future] = {}
    for _ in range(MAX_TRIES // 2):
        owner, ended = await _open_stream(stack, url)
        held.setdefault(owner, ended)
        if len(held) == len(endpoints):
            return list(held.values())
    pytest.fail("every stream landed on one worker")


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_revocation_and_expiry_take_effect_in_every_worker(sdk_upstream_module, tmp_path):
    """A reload that removes a server ends its streams in both workers, and both refuse it; a
    server's expiry ends its streams in both workers, and both refuse it from then on. (And a
    stateless upstream behind two workers, in both client modes.)"""
    stateless, old = sdk_upstream_module("stateless-json"), sdk_upstream_module("legacy-sse")
    gone, expiring, keep = secret(), secret(), secret()
    servers = [_server("gone", gone), _server("keep", keep, methods=["read", "write", "custom"]),
               _server("expiring", expiring)]
    config = {"listen": {"host": "127.0.0.1", "port": free_port()}, "auth": {"session_key": SESSION_KEY,
              "url_token_key": URL_KEY}, "policy": {"reload_interval_s": 0.2}, "servers": servers,
              "upstream": {"url": f"{stateless.base}/mcp", "sse_url": f"{old.base}/sse", "timeout_s": 10}}
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(config))
    port = config["listen"]["port"]
    handle = start_server(["proxy", "serve", "--config", str(path), "--workers", "2", "--log-level", "info"], port,
                          log_dir=tmp_path)  # --workers on the command line
    proxy = Proxy(port, handle, path)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for_workers(http, proxy.base, 2)
        endpoints = await internal_endpoints(proxy, 2)
        async with AsyncExitStack() as stack:
            revoked = await _streams_in_both(stack, f"{proxy.base}/{gone}/sse", endpoints)
            # One reload: "gone" removed, "expiring" given an expiry a few seconds ahead.
            expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=4)
            servers[2]["expires_at"] = _stamp(expires)
            config["servers"] = [s for s in servers if s["name"] != "gone"]
            path.write_text(yaml.safe_dump(config))
            await asyncio.wait_for(asyncio.gather(*revoked), 5)  # both workers reloaded, and ended theirs
            expiring_streams = await _streams_in_both(stack, f"{proxy.base}/{expiring}/sse", endpoints)
            await asyncio.wait_for(asyncio.gather(*expiring_streams), 10)  # at its expiry, in both
            assert dt.datetime.now(dt.UTC) >= expires
        await _refused_by_both(proxy.base, endpoints, gone, 404, "unknown_url_token")
        await _refused_by_both(proxy.base, endpoints, expiring, 401, "server_expired")
        for client_mode in ("legacy", "auto"):
            await calls_on_both_workers(f"{proxy.base}/{keep}/mcp", client_mode, endpoints)
    finally:
        proxy.stop()


async def _refused_by_both(base: str, endpoints: list[str], token: str, status: int, reason: str) -> None:
    before = await per_worker(endpoints, FAILURES, reason=reason)
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for i in range(MAX_TRIES):
            r = await http.post(f"{base}/{token}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                headers={"accept": "application/json, text/event-stream"})
            assert r.status_code == status
            if i % BATCH == BATCH - 1 and await both_served(endpoints, before, FAILURES, reason=reason):
                return
    pytest.fail("every refusal came from one worker")


def _workers(proxy: Proxy) -> list[psutil.Process]:
    return [p for p in psutil.Process(proxy.handle.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


async def test_a_dead_worker_is_replaced_and_sigterm_drains_the_group_to_exit_0(sdk_upstream_module, tmp_path):
    old = sdk_upstream_module("legacy-sse")
    proxy = start_proxy(tmp_path, old.base, {**GROUP, "limits": {"shutdown_grace_s": 2}}, log_level="info")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for_workers(http, proxy.base, 2)
            endpoints = await internal_endpoints(proxy, 2)
            workers = _workers(proxy)
            assert len(workers) == 2
            sessions: list[str] = []
            with pytest.raises(Exception):  # noqa: B017  # the SDK client's error when its stream is cut
                async with legacy(proxy.sse_url, sessions, keepalive=True) as client:
                    await echo(client, "x")
                    port = int(owner_of(sessions[0]).rpartition(":")[2])
                    [owner] = [w for w in workers if any(c.laddr.port == port for c in w.net_connections("tcp"))]
                    owner.send_signal(signal.SIGKILL)
                    await echo(client, "y")  # its stream is gone with its worker
            async def replaced() -> bool:
                now = _workers(proxy)
                return len(now) == 2 and owner.pid not in {w.pid for w in now}
            assert await eventually(replaced, timeout=15)
            await wait_for_workers(http, proxy.base, 2)
            # The address the session named now belongs to the new worker: the session is unknown there.
            for _ in range(4):
                r = await http.post(f"{proxy.base}/messages/?session_id={sessions[0]}", headers={"connection": "close"},
                                    json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
                assert r.status_code == 404
            assert owner_of(sessions[0]) in endpoints
        survivors = _workers(proxy)
        proxy.handle.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.handle.proc.wait, 10)
        assert code == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in survivors)
        assert "exited with -9; starting it again" in proxy.handle.stderr()
    finally:
        proxy.stop()


def test_several_workers_refuse_to_start_without_a_shared_session_key(tmp_path):
    done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--workers", "2", "--upstream",
                           "http://127.0.0.1:9/mcp"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "auth.session_key: is required with listen.workers > 1" in done.stderr
    assert "session_key_file" in done.stderr  # the fix


def test_a_group_whose_workers_cannot_start_stops_with_1(tmp_path):
    """A worker failing before it serves (here: its decision log file cannot be opened) stops the
    whole group, rather than being started again and again."""
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({"auth": {"session_key": SESSION_KEY},
                                    "decision_log": {"sink": f"file:{tmp_path}/missing-dir/decisions.jsonl"}}))
    done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(path), "--workers", "2",
                           "--upstream", "http://127.0.0.1:9/mcp", "--port", str(free_port())],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "before it served: stopping" in done.stderr
