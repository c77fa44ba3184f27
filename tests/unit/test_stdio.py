"""stdio upstreams, piece by piece: the config keys, the bridge's settings and endpoint, how a
server's messages are related to the client's requests, and one server process's pipes (with a
small Python program standing in for a server: no SDK, so each start costs milliseconds)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap

import mcp_types as types
import psutil
import pytest

from proxy.config import ConfigError, load
from proxy.stdio.child import Child, MessageTooLarge, StartFailed
from proxy.stdio.launcher import Bridge, Endpoint
from proxy.stdio.pump import _Waiting
from proxy.stdio.settings import BridgeSettings


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_stdio_upstream_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVER_TOKEN", "from-the-environment")
    monkeypatch.setenv("HTTPS_PROXY", "http://egress.invalid:3128")  # an HTTP upstream's business only
    (tmp_path / "key").write_text("from-a-file\n")
    config = load(write(tmp_path, f"""
        upstream:
          command: [node, server.js, stdio]
          env: {{API_TOKEN: "${{SERVER_TOKEN}}", OTHER_file: {tmp_path / "key"}, MODE: "1"}}
          cwd: servers/missive
          max_children: 4
          session_idle_timeout_s: 30
    """))
    up = config.upstream
    assert up.command == ("node", "server.js", "stdio") and up.url == "" and up.sse_url is None
    assert up.env == {"API_TOKEN": "from-the-environment", "OTHER": "from-a-file", "MODE": "1"}
    assert up.cwd == str(tmp_path / "servers/missive")  # beside the config file, as other paths
    assert (up.max_children, up.session_idle_timeout_s) == (4, 30.0)
    assert up.proxy.https is None and up.proxy.http is None
    assert "from-the-environment" not in repr(up)


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("upstream: {command: 'node server.js'}", "upstream.command", "must be a non-empty list of strings"),
    ("upstream: {command: []}", "upstream.command", "must be a non-empty list"),
    ("upstream: {command: [node, 3]}", "upstream.command", "must be a non-empty list of strings"),
    ("upstream: {command: ['  ']}", "upstream.command[0]", "must name the program"),
    ("upstream: {command: [node], url: 'http://h/mcp'}", "upstream.url", "either upstream.url or upstream.command"),
    ("upstream: {command: [node], headers: {A: b}}", "upstream.headers", "applies to an HTTP upstream"),
    ("upstream: {command: [node], oauth: {token_file: t}}", "upstream.oauth", "applies to an HTTP upstream"),
    ("upstream: {url: 'http://h/mcp', env: {A: b}}", "upstream.env", "applies to a stdio upstream only"),
    ("upstream: {url: 'http://h/mcp', cwd: /tmp}", "upstream.cwd", "applies to a stdio upstream only"),
    ("upstream: {command: [node], env: {A-B: x}}", "upstream.env.A-B", "is not an environment variable name"),
    ("upstream: {command: [node], env: {A: 1}}", "upstream.env.A", "must be a string"),
    ("upstream: {command: [node], env: [A]}", "upstream.env", "must be a mapping"),
    ("upstream: {command: [node], max_children: 0}", "upstream.max_children", "greater than 0"),
    ("upstream: {command: [node], session_idle_timeout_s: -1}", "upstream.session_idle_timeout_s", "greater than 0"),
    ("upstream: {command: [node], comand: [x]}", "upstream.comand", "unknown key"),
    ("upstream: {}", "upstream.url", "or upstream.command"),
])
def test_invalid_stdio_config_names_the_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert fragment in str(err.value)


def test_upstream_flag_and_command_conflict(tmp_path):
    path = write(tmp_path, "upstream: {command: [node, s.js]}")
    with pytest.raises(ConfigError, match=r"upstream\.url: applies to an HTTP upstream"):
        load(path, {"upstream.url": "http://127.0.0.1/mcp"})


def test_settings_travel_whole():
    settings = BridgeSettings(command=("node", "s.js"), env={"K": "v"}, cwd="/srv", secret="s" * 40, max_children=3)
    assert BridgeSettings.decode(settings.encode()) == settings
    assert "s" * 40 not in repr(settings) and "'v'" not in repr(settings)


def test_bridged_config_and_reloads(tmp_path):
    config = load(write(tmp_path, "upstream: {command: [node, s.js], timeout_s: 7}"))
    bridge = Bridge(config, Endpoint(4711, "the-secret"), None)
    running = bridge.bridged(config)
    up = running.upstream
    assert (up.url, up.sse_url) == ("http://127.0.0.1:4711/mcp", "http://127.0.0.1:4711/sse")
    assert up.headers == {"authorization": "Bearer the-secret"} and up.timeout_s == 7
    assert bridge.bridged(load(config.source)).upstream == up  # a reload of the same file: the same upstream
    changed = load(write(tmp_path, "upstream: {command: [node, other.js]}"))
    assert bridge.bridged(changed).upstream.url == ""  # another command: app.py keeps the running one
    assert Endpoint.imported(bridge.endpoint.export()) == bridge.endpoint


def _request(rid, method="tools/call", token=None):
    params = {"_meta": {"progressToken": token}} if token is not None else {}
    return types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params)


def test_server_messages_are_related_to_the_right_request():
    waiting = _Waiting()
    assert waiting.relate(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message")) is None
    waiting.add(_request(1, token="t1"), None)
    waiting.add(_request("two", token=2), None)
    progress = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress",
                                         params={"progressToken": "t1", "progress": 1})
    assert waiting.relate(progress) == 1
    sampling = types.JSONRPCRequest(jsonrpc="2.0", id=9, method="sampling/createMessage", params={})
    assert waiting.relate(sampling) == "two"  # the latest request still unanswered
    changed = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
    assert waiting.relate(changed) is None  # the session's: the GET stream
    unknown = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"progressToken": 5})
    assert waiting.relate(unknown) is None


SERVER = r"""
import os, subprocess, sys, time
print("starting with " + os.environ.get("TOKEN", "-"), file=sys.stderr, flush=True)
print("x" * 5000, file=sys.stderr, flush=True)
sys.stdout.write("not a message\n\n")
sys.stdout.write('{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": 1}}\n')
sys.stdout.flush()
if os.environ.get("MODE") == "flood":
    sys.stdout.write("{" + "x" * 100000 + "\n")
    sys.stdout.flush()
if os.environ.get("MODE") == "linger":  # a grandchild holding the pipes, and a server ignoring EOF
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
for line in sys.stdin:
    sys.stdout.write(line)
    sys.stdout.flush()
"""


def _settings(mode: str = "", **kwargs) -> BridgeSettings:
    return BridgeSettings(command=(sys.executable, "-c", SERVER), env={"TOKEN": "a-secret-token-value", "MODE": mode},
                          max_message_bytes=64 * 1024, **kwargs)


async def test_child_pipes_and_log(caplog):
    caplog.set_level(logging.INFO, logger="mcp_policy_proxy.stdio")
    child = await Child.start(_settings(), "abcd1234")
    messages = child.messages()
    first = await anext(messages)
    assert isinstance(first, types.JSONRPCNotification) and first.method == "notifications/message"
    await child.send(_request(5, method="ping"))
    echoed = await anext(messages)
    assert isinstance(echoed, types.JSONRPCRequest) and echoed.id == 5
    await child.stop()
    assert child.returncode is not None
    text = caplog.text
    assert "stdio abcd1234: starting with [redacted]" in text and "a-secret-token-value" not in text
    assert "x" * 2000 + "…" in text and "x" * 2001 not in text  # a stderr line is cut
    assert "no JSON-RPC message (14 bytes): dropped" in text and "not a message" not in text


async def test_child_line_over_the_bound():
    child = await Child.start(_settings("flood"), "flood")
    with pytest.raises(MessageTooLarge):
        async for _ in child.messages():
            pass
    await child.stop()


async def test_child_stop_reaches_the_whole_group(monkeypatch):
    monkeypatch.setattr("proxy.stdio.child._EXIT_WAIT_S", 0.3)
    child = await Child.start(_settings("linger"), "linger")
    server = psutil.Process(child.process.pid)
    for _ in range(50):  # its grandchild runs
        if server.children():
            break
        await asyncio.sleep(0.05)
    grandchildren = server.children()
    assert grandchildren
    await child.stop()  # stdin closed (ignored), SIGTERM (ignored), SIGKILL to the group
    assert child.returncode == -9
    _, alive = psutil.wait_procs(grandchildren, timeout=2)
    assert not alive


async def test_child_that_cannot_start(tmp_path):
    with pytest.raises(StartFailed, match="'/nonexistent/server' cannot be started: No such file"):
        await Child.start(BridgeSettings(command=("/nonexistent/server",)), "x")
    with pytest.raises(StartFailed, match=r"upstream\.cwd .* is not a directory"):
        await Child.start(BridgeSettings(command=(sys.executable,), cwd=str(tmp_path / "missing")), "x")


EXITING = r"""
import subprocess, sys
sys.stdin.readline()  # the client's request
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # it inherits stdout: no EOF at exit
sys.stdout.write('{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": 1}}\n')
sys.stdout.flush()
sys.exit(5)
"""


async def test_session_ends_when_its_server_exits():
    """Even when a process the server started keeps its stdout open: the waiting request is told,
    the transport's stream closes, and what the server left behind is ended with it."""
    import anyio
    from mcp.shared.message import SessionMessage

    from proxy.stdio.health import Health
    from proxy.stdio.pump import pump

    settings = BridgeSettings(command=(sys.executable, "-c", EXITING), start_timeout_s=10)
    health = Health(settings)
    child = await Child.start(settings, "exiting")
    to_pump, read_stream = anyio.create_memory_object_stream(0)
    write_stream, from_pump = anyio.create_memory_object_stream(10)
    received = []
    with anyio.fail_after(8):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, child, health, read_stream, write_stream)
            await to_pump.send(SessionMessage(_request(1)))
            async for message in from_pump:
                received.append(message.message)
    notification, error = received
    assert notification.method == "notifications/message"
    assert error.id == 1 and "exited with status 5; the session ended" in error.error.message
    assert health.ready and health.problem is None  # it answered: the command works
    for _ in range(40):  # its group is gone, the sleeper too (SIGTERM once the server exited)
        members = [p for p in psutil.process_iter() if _group(p) == child.process.pid]
        if all(p.status() == psutil.STATUS_ZOMBIE for p in members):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"still running: {members}")


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None
