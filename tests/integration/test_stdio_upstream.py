"""stdio upstreams (`upstream.command`): the real proxy in front of stdio servers, through its bridge.

The official SDK's stdio server (tests/peers/stdio_server.py) and the TypeScript reference server
(`server-everything stdio`), driven by the official SDK clients over Streamable HTTP and legacy
SSE: the same pipeline and policies as for an HTTP upstream, one server process per session,
server→client requests and notifications delivered to the client whose session it is, a crash
ending its session only, a command that cannot start reported by /readyz and retried, stderr in
the proxy's log (secrets redacted), and a bridge nobody but the proxy can use.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from mcp.shared.exceptions import MCPError
from mcp_types import CreateMessageResult, ElicitResult, TextContent

from proxy.auth.tokens import url_token_hmac
from tests.integration.cluster_helpers import internal_endpoints, streamable, total, worker_metrics
from tests.integration.proxy_harness import Proxy, merge
from tests.leakcheck import secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import REPO_ROOT, TS_EVERYTHING, eventually, free_port, start_server

PEER = [sys.executable, "-m", "tests.peers.stdio_server"]
ENV_SECRET = secret()  # in upstream.env: the server may print it, the log never shows it
URL_KEY = "url-token-key-for-the-stdio-tests"
TRIAGE = secret()  # the URL token of a read-only server beside the default one
READ_TOOLS = {"list_all_missive_conversations", "get_single_missive_conversation_by_id"}
JSON_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}
_BRIDGE_PORT = re.compile(r"bridge process \d+ serving on 127\.0\.0\.1:(\d+)")


def start_stdio_proxy(workdir: Path, upstream: dict[str, Any], extra: dict[str, Any] | None = None,
                      env: dict[str, str] | None = None) -> Proxy:
    port = free_port()
    config = merge({"listen": {"host": "127.0.0.1", "port": port}, "upstream": {"timeout_s": 10, **upstream}},
                   extra or {})
    path = workdir / f"proxy-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    handle = start_server(["proxy", "serve", "--config", str(path), "--log-level", "info"], port, env, log_dir=workdir)
    return Proxy(port, handle, path)


async def readyz(proxy: Proxy) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"{proxy.base}/readyz")


async def wait_ready(proxy: Proxy, timeout: float = 20.0) -> None:
    async def ready() -> bool:
        return (await readyz(proxy)).status_code == 200

    assert await eventually(ready, timeout=timeout, interval=0.2), (await readyz(proxy)).text


def bridge_port(proxy: Proxy) -> int:
    match = _BRIDGE_PORT.search(proxy.handle.stderr())
    assert match is not None, proxy.handle.stderr()
    return int(match.group(1))


@pytest.fixture(scope="module")
def peer_proxy(tmp_path_factory):
    """The SDK stdio peer behind one proxy: the default server (every tool) on /mcp and /sse, and a
    read-only one on /<TRIAGE>/mcp."""
    workdir = tmp_path_factory.mktemp("stdio")
    proxy = start_stdio_proxy(workdir, {"command": PEER, "cwd": str(REPO_ROOT), "env": {"PEER_TOKEN": ENV_SECRET}}, {
        "auth": {"anonymous": True, "url_token_key": URL_KEY}, "limits": {"max_sse_event_bytes": 1 << 20},
        "servers": [{"name": "full", "methods": ["read", "write", "custom"]},
                    {"name": "triage", "token_hmac": url_token_hmac(URL_KEY, TRIAGE), "methods": ["read"]}]},
        env={"PROXY_ONLY": "the proxy's own environment"})
    asyncio.run(wait_ready(proxy))
    yield proxy
    proxy.stop()


async def sampling(context, params):
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text="sampled!"), model="test")


async def elicitation(context, params):
    return ElicitResult(action="accept", content={"answer": "forty-two"})


async def test_streamable_http_session(peer_proxy):
    """The SDK client probes revision 2026-07-28 first, is refused (400), and falls back to the
    handshake: a session, served by one server process, with every kind of server→client message."""
    logged, progress = [], []

    async def on_log(params):
        logged.append(params.data)

    async def on_progress(value, total_, message):
        progress.append((value, total_, message))

    async with sdk_client(peer_proxy.url, sampling_callback=sampling, elicitation_callback=elicitation,
                          logging_callback=on_log) as client:
        assert client.session_id and client.protocol_version == "2025-11-25"
        assert {"echo", "whoami", "ask_sampling", "create_a_missive_post"} <= set(await client.tool_names())
        assert await client.call_text("echo", {"text": "über"}) == "über"
        assert await client.call_text("ask_sampling", {"prompt": "hi"}) == "sampled!"
        assert await client.call_text("ask_elicitation", {"question": "why?"}) == "accept:forty-two"
        result = await client.call_tool("progress_and_log", {"text": "a log line"}, progress=on_progress)
        assert not result.is_error
        assert progress == [(1, 2, "half way")] and logged == ["a log line"]
        first = await client.call_text("whoami")
        with pytest.raises(MCPError):  # timed out: the client sends notifications/cancelled
            await client.call_tool("sleep", {"seconds": 5}, timeout=0.3)
        assert await client.call_text("whoami") == first  # the same process for the whole session
        # upstream.env over a minimal environment (never the proxy's own), in upstream.cwd
        seen = await client.call_text("environment", {"names": ["PEER_TOKEN", "PROXY_ONLY", "HOME"]})
        assert seen == f"PEER_TOKEN=set PROXY_ONLY=unset HOME=set cwd={REPO_ROOT}"


async def test_sessionless_request_is_refused_with_a_reason(peer_proxy):
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}
    async with httpx.AsyncClient() as http:
        response = await http.post(peer_proxy.url, json=body, headers={
            **JSON_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"})
    assert response.status_code == 400
    error = response.json()
    assert error["id"] == 7 and "served in sessions" in error["error"]["message"]


async def test_legacy_sse_session(peer_proxy):
    progress = []

    async def on_progress(value, total_, message):
        progress.append(value)

    async with sse_client(peer_proxy.sse_url, sampling_callback=sampling) as client:
        assert await client.call_text("echo", {"text": "old"}) == "old"
        assert await client.call_text("ask_sampling", {"prompt": "hi"}) == "sampled!"
        await client.call_tool("slow_progress", {"steps": 2, "delay": 0.05}, progress=on_progress)
        assert progress == [1, 2]


async def test_two_clients_get_separate_servers(peer_proxy):
    async with (sdk_client(peer_proxy.url, mode="legacy") as a, sse_client(peer_proxy.sse_url) as b,
                sdk_client(peer_proxy.url, mode="legacy") as c):
        pids = await asyncio.gather(*(client.call_text("whoami") for client in (a, b, c)))
        assert len(set(pids)) == 3
        assert await a.call_text("remember", {"value": "only a's"}) == "kept"
        assert await b.call_text("recall") == "" and await c.call_text("recall") == ""
        assert await a.call_text("recall") == "only a's"


async def test_policy_applies(peer_proxy):
    """A read-only server sees the read tools only, and cannot call any other."""
    url = f"{peer_proxy.base}/{TRIAGE}/mcp"
    async with sdk_client(url, mode="legacy") as client:
        assert set(await client.tool_names()) == READ_TOOLS
        assert "c-1" in await client.call_text("list_all_missive_conversations", {})
        for name in ("create_a_missive_post", "crash"):
            with pytest.raises(MCPError) as err:
                await client.call_tool(name, {"conversation": "c", "text": "t"})
            assert (err.value.error.code, err.value.error.message) == (-32602, f"Unknown tool: {name}")


async def test_crash_ends_its_session_only(peer_proxy):
    async with sdk_client(peer_proxy.url, mode="legacy", terminate_on_close=False) as doomed, \
            sdk_client(peer_proxy.url, mode="legacy") as bystander:
        before = await bystander.call_text("whoami")
        with pytest.raises(MCPError) as err:
            await doomed.call_tool("crash", {"code": 3})
        assert "exited with status 3" in err.value.error.message
        gone = doomed.session_id
        async with httpx.AsyncClient() as http:
            list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            response = await http.post(peer_proxy.url, json=list_tools, headers={
                **JSON_HEADERS, "mcp-session-id": gone, "mcp-protocol-version": "2025-11-25"})
        assert response.status_code == 404  # the client initializes anew (MCP's session-not-found)
        assert await bystander.call_text("whoami") == before
    async with sdk_client(peer_proxy.url, mode="legacy") as again:
        assert await again.call_text("echo", {"text": "back"}) == "back"
    async with sse_client(peer_proxy.sse_url) as legacy:  # a legacy session's stream ends with it
        with pytest.raises(MCPError) as err:
            await legacy.call_tool("crash", {"code": 4})
        assert "exited with status 4" in err.value.error.message


async def test_message_over_the_bound_ends_the_session(peer_proxy):
    async with sdk_client(peer_proxy.url, mode="legacy", terminate_on_close=False) as client:
        assert len(await client.call_text("big", {"size": 1000})) == 1000
        with pytest.raises(MCPError) as err:
            await client.call_tool("big", {"size": 1_100_000})
        assert f"sent a message over {1 << 20} bytes" in err.value.error.message


async def test_stderr_and_stdout_noise_reach_the_log(peer_proxy):
    async with sdk_client(peer_proxy.url, mode="legacy") as client:
        assert await client.call_text("shout", {"text": f"token is {ENV_SECRET}"}) == "shouted"

    async def logged() -> bool:
        return "shout: token is [redacted]" in peer_proxy.handle.stderr()

    assert await eventually(logged), peer_proxy.handle.stderr()
    log = peer_proxy.handle.stderr()
    assert re.search(r"stdio [0-9a-f]{8}: stdio peer starting \(pid \d+\)", log)
    assert "wrote a line to stdout that is no JSON-RPC message (36 bytes): dropped" in log
    assert "this line is not a JSON-RPC message" not in log  # its size only, never its content
    assert ENV_SECRET not in log


async def test_bridge_needs_the_proxys_secret(peer_proxy):
    base = f"http://127.0.0.1:{bridge_port(peer_proxy)}"
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"authorization": "Bearer guess"}, {"authorization": f"Bearer {ENV_SECRET}"}):
            assert (await http.get(f"{base}/readyz", headers=headers)).status_code == 401
            response = await http.post(f"{base}/mcp", json=INITIALIZE, headers={**JSON_HEADERS, **headers})
            assert response.status_code == 401
            assert (await http.get(f"{base}/sse", headers=headers)).status_code == 401


async def test_missing_command(tmp_path):
    """/readyz says which command cannot start; clients get 503 with a JSON-RPC error; the proxy
    keeps trying, with growing pauses."""
    proxy = start_stdio_proxy(tmp_path, {"command": ["/nonexistent/mcp-server-x", "--stdio"]})
    try:
        async def reported() -> bool:
            return "cannot start" in (await readyz(proxy)).text

        assert await eventually(reported, timeout=15)
        ready = await readyz(proxy)
        assert ready.status_code == 503
        assert "/nonexistent/mcp-server-x" in ready.json()["reason"] and "No such file" in ready.json()["reason"]
        async with httpx.AsyncClient() as http:
            response = await http.post(proxy.url, json=INITIALIZE, headers=JSON_HEADERS)
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
            error = response.json()
            assert error["id"] == 1 and error["error"]["code"] == -32603
            assert "/nonexistent/mcp-server-x" in error["error"]["message"]
            assert (await http.get(proxy.sse_url)).status_code == 503
        await asyncio.sleep(1.2)  # the first probe fails at once, the next 0.5 s later
        pauses = [float(p) for p in re.findall(r"cannot start: .*?; retrying in ([\d.]+) s", proxy.handle.stderr())]
        assert len(pauses) >= 2 and pauses[1] > pauses[0], proxy.handle.stderr()
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def ts_proxy(tmp_path_factory):
    if not TS_EVERYTHING.exists():
        pytest.skip("server-everything is not installed (NODE_PEERS=1 scripts/venv.sh)")
    proxy = start_stdio_proxy(tmp_path_factory.mktemp("stdio-ts"), {
        "command": ["node", str(TS_EVERYTHING), "stdio"], "max_children": 2, "session_idle_timeout_s": 1.5})
    asyncio.run(wait_ready(proxy))
    yield proxy
    proxy.stop()


async def test_ts_reference_server(ts_proxy):
    arrivals = []

    async def on_progress(value, total_, message):
        arrivals.append(time.monotonic())

    async with sdk_client(ts_proxy.url, sampling_callback=sampling) as client:
        assert client.session_id
        assert {"echo", "get-sum", "trigger-sampling-request"} <= set(await client.tool_names())
        assert await client.call_text("echo", {"message": "ts"}) == "Echo: ts"
        assert "sampled!" in str((await client.call_tool("trigger-sampling-request", {"prompt": "hi"})).content)
        await client.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 2}, progress=on_progress)
        assert len(arrivals) == 2
    async with sse_client(ts_proxy.sse_url, sampling_callback=sampling) as client:
        # Listed first: each new server process announces tools/list_changed as it starts, which makes
        # the proxy's tool inventory stale (a call right away would have the proxy list them itself).
        assert "trigger-sampling-request" in await client.tool_names()
        assert await client.call_text("echo", {"message": "old"}) == "Echo: old"
        assert "sampled!" in str((await client.call_tool("trigger-sampling-request", {"prompt": "hi"})).content)


async def test_max_children(ts_proxy):
    """Two sessions, two processes: a third session is refused until one ends. (The proxy's own
    tool listings take a process too, for a moment: these sessions call no tool.)"""
    async with sse_client(ts_proxy.sse_url) as a, sse_client(ts_proxy.sse_url) as b:
        assert a.session_id != b.session_id
        # (A request each: the SDK's SSE client fails if a message, here the list_changed the server
        # sends as it starts, arrives while it closes.)
        assert await a.tool_names() == await b.tool_names()
        async with httpx.AsyncClient() as http:
            response = await http.post(ts_proxy.url, json=INITIALIZE, headers=JSON_HEADERS)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert "upstream.max_children" in response.json()["error"]["message"]

    async def room_again() -> bool:  # once the closed sessions' processes have ended
        async with httpx.AsyncClient() as http:
            return (await http.post(ts_proxy.url, json=INITIALIZE, headers=JSON_HEADERS)).status_code == 200

    assert await eventually(room_again, timeout=10, interval=0.3)


async def test_idle_session_ends(ts_proxy):
    """A session without any request in flight (no GET stream either) ends after
    upstream.session_idle_timeout_s, its process too."""
    async with httpx.AsyncClient() as http:
        opened = await http.post(ts_proxy.url, json=INITIALIZE, headers=JSON_HEADERS)
        assert opened.status_code == 200
        session = {**JSON_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"],
                   "mcp-protocol-version": "2025-11-25"}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(ts_proxy.url, json=initialized, headers=session)).status_code == 202
        await asyncio.sleep(2.5)
        list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        assert (await http.post(ts_proxy.url, json=list_tools, headers=session)).status_code == 404
    assert "(upstream.session_idle_timeout_s): the session ended" in ts_proxy.handle.stderr()


async def test_bridge_restarts(ts_proxy):
    """A bridge that dies is started again; the server processes of its sessions end with it (their
    stdin closes); new sessions work once it is back."""
    bridge = next(p for p in psutil.Process(ts_proxy.handle.proc.pid).children()
                  if "proxy.stdio" in " ".join(p.cmdline()))
    async with sse_client(ts_proxy.sse_url) as client:
        assert await client.tool_names()
        servers = bridge.children()
        assert servers
        bridge.kill()
        _, alive = psutil.wait_procs(servers, timeout=5)
        assert not alive

    async def restarted() -> bool:
        return "exited with -9; starting it again in 0.5 s" in ts_proxy.handle.stderr()

    assert await eventually(restarted, timeout=5)
    await wait_ready(ts_proxy)
    async with sse_client(ts_proxy.sse_url) as client:
        assert "echo" in await client.tool_names()


async def test_workers_share_one_bridge(tmp_path):
    """With two workers a session's requests land on either (a new connection each); one bridge,
    started by the main process, holds the session for both: a bridge per worker would answer half
    of them 404."""
    if not TS_EVERYTHING.exists():
        pytest.skip("server-everything is not installed (NODE_PEERS=1 scripts/venv.sh)")
    proxy = start_stdio_proxy(tmp_path, {"command": ["node", str(TS_EVERYTHING), "stdio"]},
                              {"listen": {"workers": 2}, "auth": {"session_key": secret()}})
    try:
        await wait_ready(proxy)
        endpoints = await internal_endpoints(proxy, 2)
        async with streamable(proxy.url, "legacy") as client:
            for _ in range(8):  # (tools/list: a call would make each worker list the tools itself first)
                assert "get-sum" in {tool.name for tool in (await client.list_tools()).tools}
        assert len(_BRIDGE_PORT.findall(proxy.handle.stderr())) == 1
        session_key = yaml.safe_load(proxy.config_path.read_text())["auth"]["session_key"]
        async with httpx.AsyncClient() as http:
            served = [total(await worker_metrics(http, session_key, e), "mcp_proxy_requests_total") for e in endpoints]
        assert all(count > 0 for count in served), served
    finally:
        proxy.stop()
