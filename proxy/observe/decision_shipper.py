"""Decision logs shipped the way OPA's decision_logs plugin ships them: batched, gzip-compressed
POSTs of JSON arrays of events to an HTTP endpoint (docs/logging.md).

Never on the request path: `add` appends already-serialized bytes to a bounded in-memory buffer
and returns; one background task uploads. The buffer holds at most `buffer_size_limit_events`
entries, counting the batch being uploaded; when it is full the oldest entry waiting is dropped
(as OPA's event buffer does: recent decisions matter more to whoever investigates) and counted
(mcp_proxy_decision_log_dropped_total). A failed upload keeps its batch, first in line, and is
retried with exponential backoff up to `max_delay_s`; the buffer never grows past its bound
meanwhile. At shutdown what remains is uploaded once, within `timeout_s`; what cannot be is counted
as dropped. The service's headers are secrets: they are sent, never logged, and a failure is
logged by the endpoint's origin and the kind of failure only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..config import DecisionLogService

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("mcp_policy_proxy.decision_shipper")

_FIRST_RETRY_S = 0.5  # the first backoff step after a failure (doubled per further failure)


class UploadFailed(Exception):
    pass


class DecisionShipper:
    def __init__(self, service: DecisionLogService, dropped: Callable[[int], None] = lambda n: None) -> None:
        self.service = service
        self._dropped = dropped
        self._waiting: deque[bytes] = deque()
        self._in_flight = 0  # entries of the batch being uploaded (they count to the bound)
        self._full = asyncio.Event()  # a whole batch waits: upload before min_delay_s is over
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(service.url)
        self._origin = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")  # no userinfo, path
        self._headers = {**service.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        self._failing = False
        self.uploaded = 0  # entries delivered (tests, docs)

    # --- the hot path ---
    def add(self, event: bytes) -> None:
        """One serialized event; O(1), no I/O."""
        if len(self._waiting) + self._in_flight >= self.service.buffer_size_limit_events:
            if not self._waiting:  # everything held is in flight (batch_size == the limit): the newest goes
                self._dropped(1)
                return
            self._waiting.popleft()
            self._dropped(1)
        self._waiting.append(event)
        if len(self._waiting) >= self.service.batch_size:
            self._full.set()

    @property
    def buffered(self) -> int:
        return len(self._waiting) + self._in_flight

    # --- the background ---
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        retries = 0
        while True:
            if retries:
                delay = min(self.service.max_delay_s, _FIRST_RETRY_S * 2 ** (retries - 1))
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.service.min_delay_s)
            try:
                while self._waiting:  # every full batch now; a partial one once per min_delay_s
                    await self._upload_next()
                    if len(self._waiting) < self.service.batch_size:
                        break
                retries = 0
            except UploadFailed as exc:
                retries += 1
                if not self._failing:  # once per outage, not once per retry
                    log.warning("decision log upload to %s failed (%s): entries stay buffered (at most %d) "
                                "and are retried", self._origin, exc, self.service.buffer_size_limit_events)
                self._failing = True

    async def _upload_next(self) -> None:
        """The oldest batch_size entries, in order, in one POST; on failure they stay first in line."""
        batch = [self._waiting.popleft() for _ in range(min(self.service.batch_size, len(self._waiting)))]
        if len(self._waiting) < self.service.batch_size:
            self._full.clear()
        self._in_flight = len(batch)
        try:
            await self._post(batch)
        except BaseException:
            self._waiting.extendleft(reversed(batch))
            raise
        finally:
            self._in_flight = 0
        self.uploaded += len(batch)
        if self._failing:
            log.warning("decision log uploads to %s succeed again", self._origin)
            self._failing = False

    async def _post(self, batch: list[bytes]) -> None:
        body = b"[" + b",".join(batch) + b"]"
        compressed = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)  # off the loop: zlib frees the GIL
        import aiohttp  # only where a service is configured (a quarter of a second at startup otherwise)

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.service.timeout_s))
        try:
            async with self._session.post(self.service.url, data=compressed, headers=self._headers,
                                          allow_redirects=False) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise UploadFailed(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UploadFailed(type(exc).__name__) from None  # its text may quote the URL

    async def close(self) -> None:
        """Stop the background task; upload what remains once, within timeout_s; count the rest."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            async with asyncio.timeout(self.service.timeout_s):
                while self._waiting:
                    await self._upload_next()
        except (UploadFailed, TimeoutError) as exc:
            lost = self.buffered
            self._dropped(lost)
            log.warning("shutdown: %d decision log entries could not be uploaded to %s (%s)", lost, self._origin,
                        str(exc) or "timed out")
            self._waiting.clear()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
