"""Process helpers for integration tests: free ports, subprocess servers, SDK upstreams."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
STREAMABLE_MODES = ("stateful-sse", "stateful-json", "stateless-json")
SDK_MODES = (*STREAMABLE_MODES, "legacy-sse")


_EGRESS_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})

def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerHandle:
    """A server subprocess started by :func:`start_server`."""

    proc: subprocess.Popen[bytes]
    port: int
    args: list[str]
    stderr_path: Path
    _stderr: IO[bytes] = field(repr=False)

    def stdout(self) -> str:
        """Everything the process wrote to stdout so far (uvicorn's access log, decision logs)."""
        path = self.stderr_path.with_suffix(".stdout")
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def start_server(
    args: list[str],
    port: int,
    env: dict[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
    command: list[str] | None = None,
) -> ServerHandle:
    """Run ``sys.executable -m <args…>`` (or ``command + args``) from the repo root and wait until
    `port` accepts connections.

    `env` is added to the current environment. Raises RuntimeError (with the process's stderr) if
    it exits or the port is not open within `timeout` seconds. The caller must ``stop()`` it.
    """
    # Servers here talk to loopback peers: a proxy the machine names for the registries is not for
    # them (a test that means one passes it in `env`).
    inherited = {k: v for k, v in os.environ.items() if k.lower() not in _EGRESS_VARS}
    full_env = {**inherited, **(env or {})}
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    stderr_path = log_dir / f"server-{port}-{time.monotonic_ns()}.stderr"
    # A file, not a pipe (a full pipe would block the server); closed by ServerHandle.stop().
    stderr = open(stderr_path, "wb")  # noqa: SIM115
    cmd = [*(command or [sys.executable, "-m"]), *args]
    with open(stderr_path.with_suffix(".stdout"), "wb") as stdout:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=stdout, stderr=stderr)
    handle = ServerHandle(proc=proc, port=port, args=cmd, stderr_path=stderr_path, _stderr=stderr)
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if proc.poll() is not None:
            handle.stop()
            raise RuntimeError(f"{cmd} exited with {proc.returncode}:\n{handle.stderr()}")
        if time.monotonic() > deadline:
            handle.stop()
            raise RuntimeError(f"{cmd} did not open port {port} within {timeout}s:\n{handle.stderr()}")
        time.sleep(0.05)
    return handle


@dataclass
class Upstream:
    """An official-SDK MCP server subprocess (see tests/peers/sdk_server.py)."""

    mode: str
    port: int
    record_file: Path
    handle: ServerHandle

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint: ``…/mcp`` (Streamable HTTP) or ``…/sse`` (legacy-sse)."""
        return f"{self.base}/sse" if self.mode == "legacy-sse" else f"{self.base}/mcp"

    def requests(self) -> list[dict[str, Any]]:
        """The recorded HTTP requests: dicts with ts, method, path, query, headers, body."""
        if not self.record_file.exists():
            return []
        with self.record_file.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def relayed(self) -> list[dict[str, Any]]:
        """The recorded requests the proxy relayed from clients (not its own tool listings)."""
        return [r for r in self.requests()
                if not r["headers"].get("user-agent", "").startswith("mcp-policy-proxy/")]

    def clear_requests(self) -> None:
        """Forget what was recorded so far (the server appends, so truncating is safe)."""
        self.record_file.write_text("")

    def stop(self) -> None:
        """Stop the server process."""
        self.handle.stop()


def start_sdk_upstream(mode: str, workdir: Path, env: dict[str, str] | None = None) -> Upstream:
    """Start ``tests.peers.sdk_server`` in `mode` on a free port, recording into `workdir`."""
    if mode not in SDK_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {SDK_MODES}")
    port = free_port()
    record_file = workdir / f"{mode}-{port}.jsonl"
    handle = start_server(
        ["tests.peers.sdk_server", "--mode", mode, "--port", str(port)],
        port,
        env={"MCP_RECORD_FILE": str(record_file), **(env or {})},
        log_dir=workdir,
    )
    return Upstream(mode=mode, port=port, record_file=record_file, handle=handle)


NODE_PEERS = REPO_ROOT / "tests" / "peers" / "node"
TS_EVERYTHING = NODE_PEERS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def start_ts_everything(transport: str, workdir: Path) -> tuple[int, ServerHandle]:
    """The TypeScript SDK's reference server (npm `@modelcontextprotocol/server-everything`).

    `transport` is `streamableHttp` (`/mcp`) or `sse` (`/sse`, `/message?sessionId=…`); it is made
    to listen on 127.0.0.1 only by `node -r loopback.cjs`. Needs `npm ci` in tests/peers/node
    (scripts/venv.sh runs it).
    """
    port = free_port()
    node = shutil.which("node")
    if node is None or not TS_EVERYTHING.exists():
        raise RuntimeError(f"node or {TS_EVERYTHING} is missing: run `npm ci --prefix {NODE_PEERS}`")
    handle = start_server([str(NODE_PEERS / "loopback.cjs"), str(TS_EVERYTHING), transport], port,
                          {"PORT": str(port)}, log_dir=workdir, command=[node, "-r"])
    return port, handle


async def soon(check: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll the plain predicate `check` until it is true (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def eventually(check: Any, timeout: float = 5.0, interval: float = 0.1) -> bool:
    """Poll the async predicate `check` until it is true (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False
