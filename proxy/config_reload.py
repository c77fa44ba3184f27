"""Config reload without restart: on file change (polled) or SIGHUP.

A new version is parsed and validated in full before anything changes; an invalid one is logged
(naming file and key) and counted, and the running config stays in force. `apply` may refuse a
parsed version too, by raising ConfigError before it changes anything (ProxyApp.apply_config does
when a server names a method or tag the catalog in force does not know: proxy/config_words.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from .config import Config, ConfigError

log = logging.getLogger("mcp_policy_proxy.config")


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # through symlinks: a ConfigMap swap changes it
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class ConfigReloader:
    def __init__(self, path: str, load: Callable[[], Config], apply: Callable[[Config], None],
                 on_result: Callable[[bool], None] = lambda ok: None) -> None:
        self.path, self._load, self._apply, self._on_result = path, load, apply, on_result
        self._stamp = _stamp(path)

    def reload(self) -> bool:
        self._stamp = _stamp(self.path)
        try:
            self._apply(self._load())
        except ConfigError as exc:
            log.error("config reload rejected, the running config stays in force: %s", exc)
            self._on_result(False)
            return False
        log.info("config reloaded from %s", self.path)
        self._on_result(True)
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if _stamp(self.path) != self._stamp:
                self.reload()
