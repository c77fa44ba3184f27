"""Stream admission: how many SSE streams (and legacy sessions) are open, and whether one more may be.

No I/O. A transport takes a slot before it forwards a request whose answer may be a stream, and
the slot is released when that answer ends, however it ends (or at once, when the answer is no
stream). Taking the slot before forwarding means a request is only ever refused before the
upstream acted on it. Counts are per worker: one event loop, so no locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Limits

Key = tuple[str, str]  # (principal identity, server name)


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # the config key that refused: the metric's label and the error's data
    status: int  # 429: this principal's own streams; 503: the worker is full


PER_PRINCIPAL = Refusal("limits.max_streams_per_principal", 429)
TOTAL = Refusal("limits.max_streams", 503)
LEGACY = Refusal("limits.max_legacy_sessions", 503)


class Slot:
    """One open (or possible) stream; `release` is idempotent, so every way out may call it."""

    __slots__ = ("_admission", "_key", "_legacy")

    def __init__(self, admission: Admission, key: Key, legacy: bool) -> None:
        self._admission: Admission | None = admission
        self._key, self._legacy = key, legacy

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self._key, self._legacy)


class Admission:
    def __init__(self, limits: Limits, refused: Callable[[str], None] = lambda limit: None) -> None:
        """`refused(limit)` counts each refusal (Metrics.limit_rejected)."""
        self._per_principal = limits.max_streams_per_principal
        self._total = limits.max_streams
        self._legacy_cap = limits.max_legacy_sessions
        self._refused = refused
        self.streams = 0
        self.legacy_sessions = 0
        self._by_key: dict[Key, int] = {}  # only keys with open streams: bounded by `streams`

    def take(self, principal: str, server: str, *, legacy: bool = False) -> Slot | Refusal:
        """A slot for one more stream of `principal` on `server` (`legacy`: a legacy SSE session,
        which counts as a stream too), or the refusal naming the limit that is reached."""
        key = (principal, server)
        held = self._by_key.get(key, 0)
        refusal = (PER_PRINCIPAL if held >= self._per_principal
                   else LEGACY if legacy and self.legacy_sessions >= self._legacy_cap
                   else TOTAL if self.streams >= self._total else None)
        if refusal is not None:
            self._refused(refusal.limit)
            return refusal
        self._by_key[key] = held + 1
        self.streams += 1
        self.legacy_sessions += legacy
        return Slot(self, key, legacy)

    def _release(self, key: Key, legacy: bool) -> None:
        held = self._by_key[key] - 1
        if held:
            self._by_key[key] = held
        else:
            del self._by_key[key]
        self.streams -= 1
        self.legacy_sessions -= legacy
