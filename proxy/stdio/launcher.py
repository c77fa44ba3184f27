"""The proxy's side of a stdio upstream: the bridge process, started, restarted and stopped here,
and the upstream the proxy's client is pointed at instead of `upstream.command`.

The proxy binds the bridge's listening socket itself (127.0.0.1, an ephemeral port) and hands it
down, so the upstream URL is known before the bridge runs and stays the same across its restarts:
connections made while it (re)starts wait in the socket's backlog. The bridge runs in a session
of its own (a terminal's Ctrl-C reaches the proxy only, which drains first, then stops it with
SIGTERM; the bridge ends its server processes); one that exits is started again after a pause
that doubles from 0.5 s up to 30 s while it keeps exiting; one whose proxy is gone stops by itself.

Every request to the bridge carries a secret of this start (`Authorization: Bearer …`, as
`upstream.headers` would): it and `upstream.env` go to the bridge on its stdin, never on a
command line.

With several workers (listen.workers > 1, or a cluster section) the main process starts one bridge
for the group (`shared_bridge`, before the workers), and each worker finds it in BRIDGE_ENV: a
Streamable HTTP session lives in the bridge, and any worker may carry any of its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ..config import Config, Egress, Upstream, UpstreamTls
from ..observe import logging_setup
from .settings import BridgeSettings

log = logging.getLogger("mcp_policy_proxy.stdio")

BRIDGE_ENV = "MCP_POLICY_PROXY_STDIO_BRIDGE"  # a worker's way to the group's bridge: {"port", "secret"}
RESTART_DELAY_S = (0.5, 30.0)
STEADY_S = 30.0  # a bridge that ran this long exited for a reason of its own: the next start waits least
STOP_TIMEOUT_S = 10.0  # the bridge ends its server processes (about 4 s at most each, all at once)
_READY_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    port: int
    secret: str = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def upstream(self, configured: Upstream) -> Upstream:
        """`configured` (a stdio upstream) as the proxy's client reaches it: the bridge's URLs, its
        secret as the proxy's upstream credential, straight (no egress proxy, no TLS: loopback)."""
        return replace(configured, url=f"{self.base}/mcp", sse_url=f"{self.base}/sse",
                       headers={"authorization": f"Bearer {self.secret}"}, tls=UpstreamTls(), proxy=Egress(),
                       oauth=None)

    def export(self) -> str:
        return json.dumps({"port": self.port, "secret": self.secret})

    @classmethod
    def imported(cls, text: str) -> Endpoint:
        data = json.loads(text)
        return cls(int(data["port"]), str(data["secret"]))


class Bridge:
    """A stdio upstream's bridge, as one proxy process sees it: owned (started and stopped here)
    or the worker group's (`process` None: started by the main process)."""

    def __init__(self, config: Config, endpoint: Endpoint, process: _BridgeProcess | None) -> None:
        self.configured = config.upstream
        self.endpoint = endpoint
        self.upstream = endpoint.upstream(config.upstream)
        self.program = config.upstream.command[0]
        self._process = process

    def bridged(self, config: Config) -> Config:
        """`config` with the bridge as its upstream, when its upstream is this bridge's; as it is
        otherwise (a reload that changed upstream.*: that takes a restart, app.py says so)."""
        return replace(config, upstream=self.upstream) if config.upstream == self.configured else config

    @property
    def owned(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        if self._process is not None:
            self._process.start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    async def readiness(self) -> str | None:
        """None when the bridge answers that the command starts and answers; else why not."""
        request = (f"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1:{self.endpoint.port}\r\n"
                   f"authorization: Bearer {self.endpoint.secret}\r\nconnection: close\r\n\r\n").encode()
        data = b""
        try:
            async with asyncio.timeout(_READY_TIMEOUT_S):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.endpoint.port)
                try:
                    writer.write(request)
                    while len(data) < 65536 and (chunk := await reader.read(65536)):
                        data += chunk
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return f"upstream.command {self.program!r}: the stdio bridge is not answering (starting?)"
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
        if status == b"200":
            return None
        try:
            reason = json.loads(body)["reason"]
        except (ValueError, KeyError, TypeError):
            reason = None
        return str(reason) if reason else f"upstream.command {self.program!r}: the stdio bridge answered {status!r}"


class _BridgeProcess:
    """The bridge process, supervised by a thread (so a worker group's main process, which runs no
    event loop, can own one too)."""

    def __init__(self, config: Config, endpoint: Endpoint, sock: socket.socket) -> None:
        self._config, self._endpoint, self._sock = config, endpoint, sock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def settings(self) -> BridgeSettings:
        up, limits = self._config.upstream, self._config.limits
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        return BridgeSettings(
            command=up.command, env=dict(up.env), cwd=up.cwd, secret=self._endpoint.secret,
            max_children=up.max_children, idle_timeout_s=up.session_idle_timeout_s, start_timeout_s=up.timeout_s,
            max_message_bytes=limits.max_sse_event_bytes, max_body_bytes=2 * limits.max_body_bytes,
            log_format=logging_setup.current_format(),
            log_level=level if level in ("debug", "info", "warning", "error", "critical") else "info")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, args=(self.settings().encode(),),
                                            name="stdio-bridge", daemon=True)
            self._thread.start()

    def _supervise(self, settings: bytes) -> None:
        delay = RESTART_DELAY_S[0]
        fd = self._sock.fileno()
        env = {k: v for k, v in os.environ.items() if k != BRIDGE_ENV}
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    process = subprocess.Popen([sys.executable, "-m", "proxy.stdio", str(fd)], stdin=subprocess.PIPE,
                                               pass_fds=(fd,), env=env, start_new_session=True)
                except OSError as exc:
                    log.error("the stdio bridge cannot be started: %s", exc.strerror)
                    process = None
                self._process = process
            if process is not None:
                assert process.stdin is not None
                with contextlib.suppress(OSError):  # gone at once: its exit says so below
                    process.stdin.write(settings)
                    process.stdin.close()
                log.info("stdio upstream %r: bridge process %d serving on 127.0.0.1:%d",
                         self._config.upstream.command[0], process.pid, self._endpoint.port)
                code = process.wait()
                if self._stopping.is_set():
                    return
                if time.monotonic() - started > STEADY_S:
                    delay = RESTART_DELAY_S[0]
                log.error("the stdio bridge (pid %d) exited with %s; starting it again in %.1f s", process.pid, code,
                          delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_DELAY_S[1])

    def stop(self) -> None:
        """SIGTERM to the bridge (which ends its server processes), SIGKILL after STOP_TIMEOUT_S."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("the stdio bridge (pid %d) did not stop within %g s: killed", process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(1.0)
        self._sock.close()


def bridge_for(config: Config) -> Bridge | None:
    """The bridge of a stdio upstream (None for an HTTP one): the worker group's, when the main
    process started one (BRIDGE_ENV), else one of this process's own, not started yet."""
    if not config.upstream.command:
        return None
    if shared := os.environ.get(BRIDGE_ENV):
        return Bridge(config, Endpoint.imported(shared), None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    endpoint = Endpoint(sock.getsockname()[1], secrets.token_urlsafe(32))
    return Bridge(config, endpoint, _BridgeProcess(config, endpoint, sock))


@contextlib.contextmanager
def shared_bridge(config: Config) -> Iterator[None]:
    """For a worker group: one bridge, started before the workers and stopped after them."""
    bridge = bridge_for(config)
    if bridge is None or not bridge.owned:
        yield
        return
    bridge.start()
    os.environ[BRIDGE_ENV] = bridge.endpoint.export()  # the workers, spawned from here, inherit it
    try:
        yield
    finally:
        os.environ.pop(BRIDGE_ENV, None)
        bridge.stop()
