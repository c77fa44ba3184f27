"""Whether the command can start (in the bridge): the state /readyz reports, and the backoff that
keeps a broken command from being started again for every request.

A start fails when the program cannot be executed at all, or when the server exits, or stays
silent past `start_timeout_s`, before its first message. After a failure no start is attempted
until `retry_at` (the pause doubles from 0.5 s up to 30 s while failures go on): requests are
refused meanwhile (503 with Retry-After), and the bridge probes on its own at `retry_at`, so
readiness comes back without waiting for a client. The first probe runs when the bridge starts:
until it succeeds the bridge is not ready. A probe is a start plus the initialize handshake, then
the process is ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import anyio
import mcp_types as types
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from .. import __version__
from .child import Child, StartFailed
from .settings import BridgeSettings

log = logging.getLogger("mcp_policy_proxy.stdio")

BACKOFF_S = (0.5, 30.0)


class Refused(Exception):
    """No server process can be started now: `reason` says why, `retry_after_s` when to try again."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class Health:
    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.ready = False
        self.problem: str | None = None  # the last failure, while failures go on
        self.retry_at = 0.0
        self._delay = BACKOFF_S[0]
        self._wake = anyio.Event()

    def refusal(self) -> Refused | None:
        if self.problem is None:
            return None
        wait = self.retry_at - time.monotonic()
        if wait <= 0:
            return None  # due: this request may try
        return Refused(f"upstream.command {self.settings.program!r}: {self.problem}; retrying in {wait:.0f} s",
                       max(1, math.ceil(wait)))

    def readiness(self) -> str | None:
        """None when ready; else why not."""
        if self.problem is not None:
            wait = max(0.0, self.retry_at - time.monotonic())
            return f"upstream.command {self.settings.program!r} cannot start: {self.problem} (retrying in {wait:.0f} s)"
        if not self.ready:
            return f"upstream.command {self.settings.program!r} is starting"
        return None

    async def start(self, label: str) -> Child:
        """A new server process, unless starts are being refused (Refused)."""
        if (refused := self.refusal()) is not None:
            raise refused
        try:
            return await Child.start(self.settings, label)
        except StartFailed as exc:
            self.failed(str(exc))
            raise self.refusal() or Refused(str(exc), 1) from None

    def failed(self, problem: str) -> None:
        first = self.problem is None
        self.problem, self.ready = problem, False
        self.retry_at = time.monotonic() + self._delay
        log.log(logging.ERROR if first else logging.WARNING, "upstream.command %r cannot start: %s; retrying in %.1f s",
                self.settings.program, problem, self._delay)
        self._delay = min(self._delay * 2, BACKOFF_S[1])
        self._wake.set()

    def succeeded(self) -> None:
        if self.problem is not None:
            log.warning("upstream.command %r starts again", self.settings.program)
        elif not self.ready:
            log.info("upstream.command %r starts and answers: ready", self.settings.program)
        self.problem, self.ready, self._delay = None, True, BACKOFF_S[0]

    async def watch(self) -> None:
        """The first probe, then one at each `retry_at` while starts fail (runs until cancelled)."""
        while True:
            if self.problem is None and self.ready:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            await anyio.sleep(max(0.0, self.retry_at - time.monotonic()))
            try:
                await self.probe()
            except Exception:  # the watch goes on whatever one probe met
                log.exception("upstream.command %r: the probe failed", self.settings.program)
                self.failed("the probe failed")

    async def probe(self) -> None:
        try:
            child = await self.start("probe")
        except Refused:
            return
        try:
            with anyio.fail_after(self.settings.start_timeout_s):
                await child.send(_initialize())
                async for message in child.messages():
                    if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id == 0:
                        self.succeeded()
                        return
            self.failed(await exit_problem(child, "before it answered initialize"))
        except TimeoutError:
            self.failed(f"did not answer initialize within {self.settings.start_timeout_s:g} s")
        except Exception as exc:  # a broken pipe, a message over the bound: it does not work
            self.failed(f"failed during initialize ({type(exc).__name__})")
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await child.stop()


def _initialize() -> types.JSONRPCRequest:
    params = {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
              "clientInfo": {"name": "mcp-policy-proxy (probe)", "version": __version__}}
    return types.JSONRPCRequest(jsonrpc="2.0", id=0, method="initialize", params=params)


async def exit_problem(child: Child, when: str) -> str:
    """What became of a server whose stdout closed (`when`: before what)."""
    await child.exited(1.0)
    code = child.returncode
    if code is None:
        return f"closed its stdout {when}"
    return f"exited with status {code} {when}" if code >= 0 else f"was killed by signal {-code} {when}"
