"""A child process that checks client bodies too costly to parse on the event loop.

A body of many JSON values costs Python about a microsecond per value to parse, and a 4 MiB body
can hold more than a million; parsed on the event loop, one such request would stall every other
client for a second. intake.py sends such bodies here first: this process (one per proxy worker,
started when first needed, at a lower CPU priority) parses them exactly as the proxy does and says
only whether the body is one message the proxy can take (jsonrpc.check_client_body). The event loop
parses a body it was told is fine itself, at a cost bounded by jsonrpc.MAX_VALUES.

Wire format on the pipes: an 8-byte big-endian length, then that many bytes — the body one way, the
JSON verdict (null, or [code, message, status, id]) the other. A plain child process rather than
multiprocessing: nothing of the parent (its main module, its threads, its loop) is imported or forked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson

from ..protocol import jsonrpc
from ..protocol.jsonrpc import INTERNAL_ERROR, ProtocolError

log = logging.getLogger("mcp_policy_proxy.body_checker")

# Bodies waiting for the checker at once; more are refused (503) rather than queued.
MAX_WAITING = 16
# One check is linear (about 0.3 s for 4 MiB here); one that takes longer is refused and its
# process replaced, so no body can hold the checker for the others.
CHECK_TIMEOUT_S = 2.0
_HEADER = 8


class BodyChecker:
    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the child's pipes belong to one loop
        self.waiting = 0

    async def check(self, body: bytes) -> None:
        """Return if `body` is one message the proxy can take; raise its ProtocolError if not (503
        when the checker is busy with too many bodies, or died)."""
        if self.waiting >= MAX_WAITING:
            raise ProtocolError(INTERNAL_ERROR, "Too many large requests are being checked; retry later", status=503)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run several): a new child
            self._discard(self._proc)
            self._lock, self._loop = asyncio.Lock(), loop
        self.waiting += 1
        try:
            async with self._lock:  # one body at a time on the pipe
                try:
                    async with asyncio.timeout(CHECK_TIMEOUT_S):
                        verdict = await self._exchange(body)
                except TimeoutError:
                    log.warning("a body took longer than %.0f s to check; refused", CHECK_TIMEOUT_S)
                    raise ProtocolError(INTERNAL_ERROR, "The request could not be checked in time", status=503
                                        ) from None
        finally:
            self.waiting -= 1
        if verdict is not None:
            code, message, status, id = verdict
            raise ProtocolError(code, message, status, id)

    async def _exchange(self, body: bytes) -> Any:
        proc = self._proc
        try:
            if proc is None or proc.returncode is not None:
                proc = self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "proxy.transport.body_checker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(len(body).to_bytes(_HEADER, "big") + body)
            await proc.stdin.drain()
            size = int.from_bytes(await proc.stdout.readexactly(_HEADER), "big")
            return orjson.loads(await proc.stdout.readexactly(size))
        except asyncio.CancelledError:  # the client left mid-exchange: the pipe's state is unknown
            self._discard(proc)
            raise
        except (OSError, EOFError, asyncio.IncompleteReadError, orjson.JSONDecodeError) as exc:
            log.warning("the body checker failed (%s); the next body gets a new one", type(exc).__name__)
            self._discard(proc)
            raise ProtocolError(INTERNAL_ERROR, "The request could not be checked; retry later", status=503) from None

    def _discard(self, proc: asyncio.subprocess.Process | None) -> None:
        if proc is not None and proc.returncode is None:
            proc.kill()
        if self._proc is proc:
            self._proc = None

    def close(self) -> None:
        self._discard(self._proc)


def main() -> None:
    """The child: check bodies from stdin until it closes."""
    if hasattr(os, "nice"):
        os.nice(10)  # the proxy's event loop comes first
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(_HEADER):
        body = stdin.read(int.from_bytes(header, "big"))
        verdict = orjson.dumps(jsonrpc.check_client_body(body))
        stdout.write(len(verdict).to_bytes(_HEADER, "big") + verdict)
        stdout.flush()


if __name__ == "__main__":
    main()
