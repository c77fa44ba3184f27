"""Config reload without restart: on file change (polled) or SIGHUP.

A new version is parsed and validated in full before anything changes; an invalid one is logged
(naming file and key) and counted, and the running config stays in force. `apply` may refuse a
parsed version too, by raising ConfigError before it changes anything (ProxyApp.apply_config does
when a server names a method or tag the catalog in force does not know: proxy/config_words.py).

Only a complete file is put in force: a change is reloaded once the file has stayed the same for a
whole polling interval (an editor or `cat >` truncates, then writes: the empty or half-written file
in between may well parse, with servers or `auth` missing), and a file that changed while it was
read is read again, never applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from .config import Config, ConfigError

log = logging.getLogger("mcp_policy_proxy.config")

Stamp = tuple[int, int] | None
_READS = 3  # attempts at reading a file that does not change meanwhile, per reload


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)  # through symlinks: a ConfigMap swap changes it
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class ConfigReloader:
    def __init__(self, path: str, load: Callable[[], Config], apply: Callable[[Config], None],
                 on_result: Callable[[bool], None] = lambda ok: None) -> None:
        self.path, self._load, self._apply, self._on_result = path, load, apply, on_result
        self._stamp: Stamp | str = _stamp(path)  # of the file last read ("" : read it again)
        self._polled = self._stamp  # what the previous poll saw

    def _read(self) -> tuple[Stamp, Config | ConfigError] | None:
        """The config the file makes (or why it makes none), and its stamp; None if it kept
        changing while it was read."""
        for _ in range(_READS):
            before = _stamp(self.path)
            loaded: Config | ConfigError
            try:
                loaded = self._load()
            except ConfigError as exc:
                loaded = exc
            if _stamp(self.path) == before:
                return before, loaded
        return None

    def reload(self) -> bool:
        read = self._read()
        if read is None:
            self._stamp = ""  # the next poll that finds the file settled tries again
            log.warning("config file %s kept changing while it was read; the running config stays", self.path)
            return False
        self._stamp, loaded = read
        try:
            if isinstance(loaded, ConfigError):
                raise loaded
            self._apply(loaded)
        except ConfigError as exc:
            log.error("config reload rejected, the running config stays in force: %s", exc)
            self._on_result(False)
            return False
        log.info("config reloaded from %s", self.path)
        self._on_result(True)
        return True

    def poll(self) -> None:
        """One look at the file: reload a change once it has held still for a polling interval."""
        now = _stamp(self.path)
        settled, self._polled = now == self._polled, now
        if settled and now != self._stamp:
            self.reload()

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.poll()
