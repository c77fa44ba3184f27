"""`mcp-policy-proxy demo` itself, as a user runs it: the banner's URLs work with the official SDK
client (Streamable HTTP and legacy SSE), and Ctrl-C — SIGINT to the terminal's process group —
or a SIGTERM to the launcher stops the proxy and the demo upstream, even with a stream open."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.leakcheck import secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import REPO_ROOT, _port_open, free_port

STARTUP_TIMEOUT = 30.0


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    banner: str
    urls: dict[str, str]
    upstream_port: int
    port: int

    def wait_closed(self, timeout: float = 10.0) -> int:
        """The launcher's exit code, once both ports are closed."""
        code = self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while _port_open(self.upstream_port) or _port_open(self.port):
            assert time.monotonic() < deadline, "a demo process still listens after the launcher exited"
            time.sleep(0.05)
        return code


def _start(port: int, stderr: Path, command: list[str] | None = None, env: dict[str, str] | None = None) -> Demo:
    """Run the console script (or `command`) in its own process group (as a shell job is) and read
    its banner."""
    script = Path(sys.executable).with_name("mcp-policy-proxy")
    with stderr.open("w") as err:
        proc = subprocess.Popen([*(command or [str(script), "demo"]), "--port", str(port)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "Ctrl-C" not in "".join(lines):
        assert time.monotonic() < deadline and proc.poll() is None, stderr.read_text()
        lines.append(proc.stdout.readline())
    banner = "".join(lines)
    urls: dict[str, str] = {}
    for name in ("triage", "support", "admin"):
        match = re.search(rf"^  {name} .*\n\s+(http://\S+/(\S+)/mcp)\n\s+token (\S+) ", banner, re.MULTILINE)
        assert match and match.group(2) == match.group(3), banner
        urls[name] = match.group(1)
        secret(match.group(2))
    upstream = re.search(r"demo upstream \(no policy, no auth\): http://127\.0\.0\.1:(\d+)/mcp", banner)
    assert upstream, banner
    while not _port_open(port):
        assert time.monotonic() < deadline and proc.poll() is None, stderr.read_text()
        time.sleep(0.05)
    return Demo(proc, banner, urls, int(upstream.group(1)), port)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = _start(free_port(), tmp_path / "demo.stderr")
    yield running
    if running.proc.poll() is None:
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait()


async def test_banner_urls_work_and_ctrl_c_stops_everything(demo: Demo, tmp_path: Path) -> None:
    assert "mcp-remote" in demo.banner and "MCP Inspector" in demo.banner and "ChatGPT" in demo.banner
    async with sdk_client(demo.urls["triage"]) as client:
        names = await client.tool_names()
        assert "list_all_missive_conversations" in names and "create_a_missive_post" not in names
    async with sdk_client(demo.urls["support"]) as client:
        assert "create_a_missive_draft" in await client.tool_names()
    # Ctrl-C while a legacy SSE client holds its GET stream open.
    async with sse_client(demo.urls["admin"].removesuffix("/mcp") + "/sse") as client:
        assert await client.tool_names()
        os.killpg(demo.proc.pid, signal.SIGINT)
        code = await asyncio.to_thread(demo.wait_closed)
    assert code == 0
    errors = (tmp_path / "demo.stderr").read_text()
    assert "Traceback" not in errors, errors


async def test_sigterm_to_the_launcher_stops_the_upstream_too(demo: Demo, tmp_path: Path) -> None:
    """`kill <pid>` (or a container stop) reaches only the launcher: it must stop its child."""
    demo.proc.terminate()
    assert await asyncio.to_thread(demo.wait_closed) == 0
    assert "Traceback" not in (tmp_path / "demo.stderr").read_text()


async def test_demo_script_needs_no_node_and_prints_each_decision(tmp_path: Path) -> None:
    """scripts/demo.sh with a PATH holding only what the script itself runs (no node, no npm):
    it starts, prints where /metrics is, and one line per decision, allow and deny, with the reason."""
    venv = Path(sys.executable).parent.parent
    stamp = venv / f".installed-{hashlib.sha256((REPO_ROOT / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        pytest.skip("this venv was not installed by scripts/venv.sh for the current pyproject.toml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sha256sum", "cut"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    path = str(bin_dir)
    assert shutil.which("node", path=path) is None and shutil.which("npm", path=path) is None
    env = {"PATH": path, "HOME": str(tmp_path), "VENV": str(venv), "LANG": "C.UTF-8"}
    port = free_port()
    demo = _start(port, tmp_path / "demo.stderr", ["bash", "scripts/demo.sh"], env)
    try:
        assert f"Metrics (Prometheus text): http://127.0.0.1:{port}/metrics" in demo.banner
        async with httpx.AsyncClient() as http:
            metrics = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200 and "mcp_proxy_" in metrics.text
        async with sdk_client(demo.urls["triage"]) as client:
            assert "create_a_missive_post" not in await client.tool_names()
            await client.call_text("get_single_missive_conversation_by_id", {"id": "987654"})
            with pytest.raises(MCPError):
                await client.call_tool("create_a_missive_post", {"conversation": "987654", "text": "Summary"})
        await asyncio.sleep(1)  # the decision log is written every half second
        os.killpg(demo.proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(demo.wait_closed) == 0
    finally:
        if demo.proc.poll() is None:
            os.killpg(demo.proc.pid, signal.SIGKILL)
            demo.proc.wait()
    assert demo.proc.stdout is not None
    lines = demo.proc.stdout.read().splitlines()
    assert any(re.search(r"triage +tools/call get_single_missive_conversation_by_id +allow$", line)
               for line in lines), lines
    assert any(re.search(r"triage +tools/list \(answer\) +allow  \d+ of 37 tools visible", line) for line in lines)
    denied = [line for line in lines if re.search(r"triage +tools/call create_a_missive_post +DENY  ", line)]
    assert denied and "create is not among the methods of server triage" in denied[0], lines
    assert not any("{" in line for line in lines)  # lines, not JSON
    errors = (tmp_path / "demo.stderr").read_text()
    assert "Traceback" not in errors and "npm" not in errors, errors


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        script = Path(sys.executable).with_name("mcp-policy-proxy")
        done = subprocess.run([str(script), "demo", "--port", str(port)], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=30)
    assert done.returncode == 2
    assert f"127.0.0.1:{port} is in use" in done.stderr and "--port" in done.stderr


def test_decision_lines_say_what_was_decided_and_why() -> None:
    from proxy.demo_launcher import format_decision

    entry = {"timestamp": "2026-01-01T09:30:00Z", "labels": {"mode": "enforce"},
             "input": {"server": {"name": "support"},
                       "message": {"kind": "request", "method": "tools/call", "name": "create_a_missive_draft"}},
             "result": {"allow": False, "reasons": ["sending is left to a human"], "visible_tools": []}}
    assert re.fullmatch(r"09:30:00 support +tools/call create_a_missive_draft +DENY  sending is left to a human",
                        format_decision(entry))
    failed = {**entry, "result": {"error": "OPA did not answer within 250 ms"}}
    assert format_decision(failed).endswith("ERROR  policy engine unavailable: OPA did not answer within 250 ms")
    dry = {**entry, "labels": {"mode": "dry_run"}}
    assert "DENY (dry run: not enforced)  sending" in format_decision(dry)
    assert format_decision({}).split() == ["?", "?", "DENY"]  # never raises on an odd entry
