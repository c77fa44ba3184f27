"""Several workers' /metrics expositions added up into one, at the text level (format 0.0.4).

No I/O, and nothing of how a worker keeps its metrics: only the text every worker renders with the
same code, so the same families and label sets. A sample (`name{labels}`) present in several
expositions is combined by its family's rule; one present in only some is kept as it is.

- counters and histograms (buckets, `_sum`, `_count`): summed — the whole proxy's requests;
- gauges that count something open (streams, sessions, pool connections): summed;
- `*_info` gauges (build, policy revision) and expiry timestamps: the same in every worker, so the
  largest (during a policy reload, each revision in force somewhere shows);
- the upstream's last-seen rate-limit state per server: the most restrictive one any worker saw
  (least `remaining` and `limit`, latest `reset`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

from prometheus_client.utils import floatToGoString

Combine = Callable[[float, float], float]

_LEAST = frozenset({"mcp_proxy_upstream_ratelimit_remaining", "mcp_proxy_upstream_ratelimit_limit"})
_MOST = frozenset({"mcp_proxy_upstream_ratelimit_reset_seconds", "mcp_proxy_server_expiry_timestamp_seconds"})


def combine_rule(family: str, kind: str) -> Combine:
    if kind != "gauge":
        return operator.add
    if family.endswith("_info") or family in _MOST:
        return max
    if family in _LEAST:
        return min
    return operator.add


class _Family:
    __slots__ = ("combine", "help", "samples", "type")

    def __init__(self) -> None:
        self.help: str | None = None
        self.type: str | None = None
        self.combine: Combine = operator.add
        self.samples: dict[str, float] = {}  # `name{labels}` → value, in the order first seen


def merge(expositions: Sequence[bytes]) -> bytes:
    """One exposition: the families in the order the first exposition has them (then any others)."""
    families: dict[str, _Family] = {}
    for exposition in expositions:
        _add(exposition.decode("utf-8"), families)
    lines: list[str] = []
    for family in families.values():
        if family.help is not None:
            lines.append(family.help)
        if family.type is not None:
            lines.append(family.type)
        lines += [f"{key} {floatToGoString(value)}" for key, value in family.samples.items()]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _add(text: str, families: dict[str, _Family]) -> None:
    family: _Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            family = families.setdefault(line[7:].split(" ", 1)[0], _Family())
            family.help = family.help or line
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            family = families.setdefault(name, _Family())
            family.type, family.combine = line, combine_rule(name, kind.strip())
        elif not line.startswith("#"):
            # `name{label="a value"} 1.0`: the value is what follows the last space (no timestamps)
            key, _, text_value = line.rpartition(" ")
            try:
                value = float(text_value)
            except ValueError:
                continue  # not a sample this format has: dropped rather than relayed garbled
            if family is None:  # a sample before any family: its own, untyped
                family = families.setdefault("", _Family())
            held = family.samples.get(key)
            family.samples[key] = value if held is None else family.combine(held, value)
