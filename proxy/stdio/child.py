"""One stdio server process (in the bridge): messages to its stdin and from its stdout, one JSON
line each, its stderr into the log.

The SDK's stdio client transport (mcp.client.stdio) is not used for the pipes: it reads stdout
lines without bound and logs a line it cannot parse with a traceback that quotes it. Here a line
is bounded (`max_message_bytes`: beyond it the session ends, as the proxy ends an SSE stream
whose event is too large), a line that is no JSON-RPC message is logged by its size only and
dropped (the MCP spec allows only messages on stdout), and stderr lines are logged one by one,
cut to a bounded length, stripped of control characters and of the configured secrets, at most
`_STDERR_LINES_PER_S` a second. The process runs in a session of its own, so ending it reaches
whatever it started (the spec's sequence: close stdin, wait, SIGTERM, SIGKILL to the group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator

import mcp_types as types
from mcp.client.stdio import get_default_environment
from pydantic import ValidationError

from .settings import BridgeSettings

log = logging.getLogger("mcp_policy_proxy.stdio")

_EXIT_WAIT_S = 2.0  # after stdin closes, then again after SIGTERM (the SDK's own pauses)
_LEFTOVER_WAIT_S = 1.0  # for what it started to go after SIGTERM, then SIGKILL
_STDERR_LINE = 2000  # characters of one stderr line in the log
_STDERR_LINES_PER_S = 100
_CONTROL = {c: "\ufffd" for c in (*range(0x20), 0x7F) if c != 0x09}
_SECRET_MIN = 8  # shorter values are too common to redact


class MessageTooLarge(Exception):
    pass


class StartFailed(Exception):
    """The command could not be started at all (no such program, not executable, bad cwd)."""


class Child:
    def __init__(self, process: asyncio.subprocess.Process, label: str, secrets: tuple[str, ...]) -> None:
        self.process, self.label, self._secrets = process, label, secrets
        self._write_lock = asyncio.Lock()
        self._stopping: asyncio.Future[None] | None = None
        self._stderr = asyncio.ensure_future(self._log_stderr())  # ends with stderr (at exit, mostly)

    @classmethod
    async def start(cls, settings: BridgeSettings, label: str) -> Child:
        if settings.cwd is not None and not os.path.isdir(settings.cwd):
            raise StartFailed(f"upstream.cwd {settings.cwd!r} is not a directory")
        try:
            process = await asyncio.create_subprocess_exec(
                *settings.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=get_default_environment() | settings.env, cwd=settings.cwd,
                limit=settings.max_message_bytes, start_new_session=True)
        except OSError as exc:
            raise StartFailed(f"{settings.program!r} cannot be started: {exc.strerror or type(exc).__name__}"
                              ) from None
        secrets = tuple(v for v in (*settings.env.values(), settings.secret) if len(v) >= _SECRET_MIN)
        log.info("stdio %s: server process %d started", label, process.pid)
        return cls(process, label, secrets)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def send(self, message: types.JSONRPCMessage) -> None:
        """One message on stdin; waits while the server does not read (its pipe is full)."""
        assert self.process.stdin is not None
        line = message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
        async with self._write_lock:
            self.process.stdin.write(line)
            await self.process.stdin.drain()

    async def messages(self) -> AsyncIterator[types.JSONRPCMessage]:
        """The messages on stdout until it closes; MessageTooLarge for a line over the bound."""
        assert self.process.stdout is not None
        while True:
            try:
                line = await self.process.stdout.readline()
            except ValueError:  # asyncio's bound on a line (the reader's `limit`)
                raise MessageTooLarge from None
            if not line:
                return
            if not line.strip():
                continue
            try:
                yield types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except (ValidationError, ValueError):
                log.warning("stdio %s: the server wrote a line to stdout that is no JSON-RPC message (%d bytes): "
                            "dropped", self.label, len(line))

    async def _log_stderr(self) -> None:
        """Every stderr line into the log until stderr closes (bounded in length and rate)."""
        stream = self.process.stderr
        assert stream is not None
        pending = b""
        window, logged, dropped = 0, 0, 0
        while chunk := await stream.read(8192):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > 4 * _STDERR_LINE:  # a line without end: logged in pieces
                lines.append(pending)
                pending = b""
            for raw in lines:
                now = int(time.monotonic())
                if now != window:
                    if dropped:
                        log.warning("stdio %s: %d stderr lines not logged (over %d a second)", self.label, dropped,
                                    _STDERR_LINES_PER_S)
                    window, logged, dropped = now, 0, 0
                if logged >= _STDERR_LINES_PER_S:
                    dropped += 1
                    continue
                logged += 1
                log.info("stdio %s: %s", self.label, self._clean(raw))
        if pending:
            log.info("stdio %s: %s", self.label, self._clean(pending))

    def _clean(self, raw: bytes) -> str:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        text = text.translate(_CONTROL)
        return text if len(text) <= _STDERR_LINE else text[:_STDERR_LINE] + "…"

    async def stop(self) -> None:
        """Close stdin, wait; SIGTERM to the process group, wait; SIGKILL. Bounded (about 6 s);
        once, however many ask (each waits for the end)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if not await self.exited(_EXIT_WAIT_S):
            self._signal_group(signal.SIGTERM)
            if not await self.exited(_EXIT_WAIT_S):
                self._signal_group(signal.SIGKILL)
                await self.exited(_EXIT_WAIT_S)
        if self._signal_group(signal.SIGTERM):  # whatever it started and left behind
            deadline = time.monotonic() + _LEFTOVER_WAIT_S
            while self._signal_group(0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._stderr), 0.5)  # its last lines
        self._stderr.cancel()
        log.info("stdio %s: server process %d ended (%s)", self.label, process.pid, _status(process.returncode))

    async def exited(self, timeout: float) -> bool:
        """Polled, not `process.wait()`: that waits for the pipes to close too, which a process the
        server started and that inherited them can hold open long after the server exited."""
        deadline = time.monotonic() + timeout
        while self.process.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.process.returncode is not None

    def _signal_group(self, sig: int) -> bool:
        """Whether any process of its group (its own session: the group id is its pid) was there."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _status(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"status {code}" if code >= 0 else f"signal {-code}"
