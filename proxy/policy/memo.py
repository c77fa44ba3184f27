"""An exact memo of the embedded engine's decisions: the same input, the same compiled policy
version, the same answer, without evaluating again.

A decision is a function of the policy version (modules and data, compiled once per engine: a
reload builds a new engine and with it an empty memo) and the input, which carries the time to the
second. So a memo keyed on the input's exact serialization answers exactly what a fresh evaluation
would, as long as no rule reads anything else: the clock (`time.now_ns`), randomness, the network or
the runtime. A version that calls such a builtin anywhere (`impure_builtin`) gets no memo.

Bounded by entries and by bytes (keys and values); the least recently used entry goes first. The
memo keeps recent inputs in memory (claims, arguments) as the engine itself does while evaluating;
it never writes them anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Builtins whose value is not a function of input and data (OPA's "non-deterministic" builtins,
# plus print/trace, whose output a memo hit would swallow). io.jwt.decode_verify reads the clock
# when its constraints carry no time.
_IMPURE = re.compile(
    r"\b(time\s*\.\s*now_ns|rand\s*\.\s*intn|uuid\s*\.\s*rfc4122|http\s*\.\s*send|net\s*\.\s*lookup_ip_addr"
    r"|opa\s*\.\s*runtime|io\s*\.\s*jwt\s*\.\s*decode_verify|print|trace)\s*\("
)
MAX_ENTRIES = 4096
MAX_BYTES = 16 * 1024 * 1024
MAX_INPUT_BYTES = 64 * 1024  # larger inputs (huge arguments) are evaluated every time, never kept


class MemoStats:
    """Hits and misses of every memo of this process (a reload's new memo counts on)."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


STATS = MemoStats()


def impure_builtin(modules: Iterable[tuple[str, str]]) -> str | None:
    """The first builtin in `modules` (path, source) that makes a decision depend on more than its
    input, as `path: name`; None when there is none. Comments count too: a false alarm only costs
    the memo."""
    for path, source in modules:
        if match := _IMPURE.search(source):
            name = re.sub(r"\s+", "", match.group(1))
            return f"{path}: {name}"
    return None


class DecisionMemo:
    __slots__ = ("_bytes", "_entries", "_max_bytes", "_max_entries", "_stats")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 stats: MemoStats = STATS) -> None:
        self._entries: dict[bytes, str] = {}
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._stats = stats

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> str | None:
        entries = self._entries
        value = entries.pop(key, None)
        if value is None:
            self._stats.misses += 1
            return None
        entries[key] = value  # most recently used: last in insertion order
        self._stats.hits += 1
        return value

    def put(self, key: bytes, value: str) -> None:
        size = len(key) + len(value)
        if len(key) > MAX_INPUT_BYTES or size > self._max_bytes or self._max_entries <= 0:
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= len(key) + len(old)
        entries[key] = value
        self._bytes += size
        while len(entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(entries))
            self._bytes -= len(oldest) + len(entries.pop(oldest))
