"""What ends an exchange or a stream before it is done, without a task waiting for it.

- The client leaving: the client-facing server (http_server.LimitedHttpProtocol) marks each
  request's ASGI scope WATCHED; when the connection is lost it sets CLIENT_GONE and cancels the
  task under EXCHANGE_TASK. Under another server nothing is cancelled early.
- Revocation and the drain: an `Ending` is an asyncio.Event that also calls back when it is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WATCHED = "mcp.client_watched"
EXCHANGE_TASK = "mcp.exchange_task"
CLIENT_GONE = "mcp.client_gone"


class Ending(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self._callbacks: dict[Callable[[], None], None] = {}  # in order; forgotten in O(1) (many streams)

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks:
            callback()

    def call_when_set(self, callback: Callable[[], None]) -> None:
        """`callback()` once this is set (soon, if it is already)."""
        if self.is_set():
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._callbacks[callback] = None

    def forget(self, callback: Callable[[], None]) -> None:
        self._callbacks.pop(callback, None)
