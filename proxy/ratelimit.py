"""Upstream rate-limit fields → one normalized view, and the fields the proxy emits for it (no I/O).

Read from every upstream answer, 429 or not:
- `X-RateLimit-{Limit,Remaining,Reset}`, `X-Rate-Limit-*` (vendors'), `RateLimit-{Limit,Remaining,
  Reset}` (IETF drafts ≤ 06; ≤ 03 allowed `10, 10;w=1` lists) and `RateLimit-Policy` of drafts 04-07
  (`100;w=60`);
- `RateLimit: limit=…, remaining=…, reset=…` (draft 07, a Dictionary);
- `RateLimit-Policy: "name";q=…;w=…` and `RateLimit: "name";r=…;t=…` (drafts 08-10, Lists);
- `Retry-After` (delay seconds or an HTTP-date).

Reset values mean different things to different servers, so every reset is read by one heuristic
(a delay of more than 31 years is implausible, a timestamp before 2001 too): an HTTP-date is a point
in time; a number above 10^12 is epoch milliseconds, above 10^9 epoch seconds, else a delay in
seconds. Points in the past are a reset of 0.

Several sources, or several policies, never make the limit look more permissive than any of them
(the drafts ask intermediaries for that): the smallest remaining, the latest reset, and the limit
(and window) of the policy with the smallest remaining. What cannot be parsed is ignored — never
guessed, never an error. Functions take `now` (epoch seconds) as an argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

# The seed's normalized trio (delay seconds), also the names of drafts ≤ 06.
LIMIT, REMAINING, RESET = "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"
# The current draft's fields (08-10).
RATELIMIT, POLICY = "ratelimit", "ratelimit-policy"
RETRY_AFTER = "retry-after"
_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "ratelimit-")
_TRIOS = tuple((p + "limit", p + "remaining", p + "reset") for p in _PREFIXES)
_READ = frozenset({RATELIMIT, POLICY, RETRY_AFTER, *(n for trio in _TRIOS for n in trio)})

_INT = re.compile(r"\d{1,16}")  # 16 digits: more than any real count or timestamp in ms
_NUMBER = re.compile(r"\d{1,16}(?:\.\d{1,9})?")
EPOCH_MS = 10**12
EPOCH_S = 10**9


class Quota(NamedTuple):
    """One policy as one source states it (None: not stated)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None  # delay seconds from `now`
    window_s: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The normalized view of one answer's rate-limit fields."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: int | None = None  # delay seconds, rounded up
    window_s: int | None = None
    retry_after_s: int | None = None  # the upstream's Retry-After as delay seconds, rounded up
    policy: str = "default"  # the name of the policy the values belong to (emitted RateLimit fields)
    # The upstream's own RateLimit / RateLimit-Policy are in the current draft's form: relayed as
    # they are (the proxy emits its own only in place of older forms or none).
    keeps: frozenset[str] = frozenset()

    @property
    def retry_in_s(self) -> int | None:
        """When to try again after a refusal: Retry-After takes precedence (the drafts say so), else
        the reset; None when the upstream said neither."""
        return self.retry_after_s if self.retry_after_s is not None else self.reset_s

    def meta(self) -> dict[str, Any]:
        """The values for a client to read (`_meta.ratelimit`, `error.data.ratelimit`)."""
        values = {"limit": self.limit, "remaining": self.remaining, "reset_s": self.reset_s,
                  "window_s": self.window_s, "retry_after_s": self.retry_after_s}
        return {k: v for k, v in values.items() if v is not None}

    def fields(self) -> list[tuple[str, str]]:
        """The fields the proxy emits (lowercase names): they replace the upstream's of the same
        names; the upstream's other rate-limit fields (X-RateLimit-*, Retry-After) stay as sent."""
        out: list[tuple[str, str]] = []
        for name, value in ((LIMIT, self.limit), (REMAINING, self.remaining), (RESET, self.reset_s)):
            if value is not None:
                out.append((name, str(value)))
        label = _sf_string(self.policy)
        if POLICY not in self.keeps and self.limit is not None:
            out.append((POLICY, f"{label};q={self.limit}" + (f";w={self.window_s}" if self.window_s else "")))
        if RATELIMIT not in self.keeps and self.remaining is not None:
            out.append((RATELIMIT, f"{label};r={self.remaining}" + (f";t={self.reset_s}" if self.reset_s is not None
                                                                      else "")))
        return out


def read(headers: Iterable[tuple[str, str]], now: float) -> RateLimits | None:
    """The normalized rate limits of an answer's header fields; None when it states none."""
    quotas, retry_after, keeps = observe(headers, now)
    return normalize(quotas, retry_after, keeps)


def carried(headers: Iterable[tuple[str, str]], limits: RateLimits) -> list[tuple[str, str]]:
    """The rate-limit fields of an answer (lowercase names) with the normalized ones in place: what
    an answer of the proxy's own that replaces it carries."""
    own = limits.fields()
    replaced = {n for n, _ in own}
    kept = [(n.lower(), v) for n, v in headers if _rate_limit_field(n.lower()) and n.lower() not in replaced]
    return kept + own


def _rate_limit_field(name: str) -> bool:
    return name == RETRY_AFTER or name.startswith(("ratelimit", "x-ratelimit", "x-rate-limit"))


def normalize(quotas: list[Quota], retry_after_s: float | None, keeps: frozenset[str] = frozenset()
              ) -> RateLimits | None:
    """Quotas from every source → the view no more permissive than any of them."""
    if not quotas and retry_after_s is None:
        return None
    stated = [q for q in quotas if q.remaining is not None]
    resets = [q.reset_s for q in quotas if q.reset_s is not None]
    limits = [q.limit for q in quotas if q.limit is not None]
    # The policy closest to exhaustion (ties: the one that resets last) names the limit and window.
    chosen = min(stated, key=lambda q: (q.remaining, -(q.reset_s or 0.0))) if stated else \
        min((q for q in quotas if q.limit is not None), key=lambda q: q.limit or 0, default=None)
    limit = chosen.limit if chosen is not None and chosen.limit is not None else min(limits, default=None)
    window = chosen.window_s if chosen is not None and chosen.limit is not None else None
    return RateLimits(
        limit=limit, remaining=min((q.remaining for q in stated if q.remaining is not None), default=None),
        reset_s=math.ceil(max(resets)) if resets else None, window_s=window,
        retry_after_s=None if retry_after_s is None else math.ceil(retry_after_s),
        policy=(chosen.name if chosen is not None and chosen.name else "default"), keeps=keeps)


def observe(headers: Iterable[tuple[str, str]], now: float) -> tuple[list[Quota], float | None, frozenset[str]]:
    """Every quota the fields state, Retry-After (delay seconds), and which of the current draft's
    fields the upstream sent in that form."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _READ:
            values.setdefault(lname, []).append(value)
    if not values:
        return [], None, frozenset()
    quotas: list[Quota] = []
    old_policies = _old_policies(values.get(POLICY)) if POLICY in values else {}
    for names in _TRIOS:
        quota = _trio(values, names, now, old_policies if names[0] == LIMIT else {})
        if quota is not None:
            quotas.append(quota)
    keeps: set[str] = set()
    current_policies = _current_policies(values.get(POLICY))
    if current_policies:
        keeps.add(POLICY)
    if RATELIMIT in values:
        joined = ", ".join(values[RATELIMIT])
        items = _sf_members(joined, dictionary=False)
        current = _current_limits(items, current_policies, now) if items is not None else []
        if current:
            keeps.add(RATELIMIT)
            quotas.extend(current)
            seen = {q.name for q in current}
            quotas.extend(q for name, q in current_policies.items() if name not in seen)
        else:
            quotas.extend(current_policies.values())
            if (draft7 := _draft7(joined, old_policies, now)) is not None:
                quotas.append(draft7)
    else:
        quotas.extend(current_policies.values())
    retry_after = None
    for value in values.get(RETRY_AFTER, ()):
        delay = retry_after_delay(value, now)
        if delay is not None:
            retry_after = delay if retry_after is None else max(retry_after, delay)
    return quotas, retry_after, frozenset(keeps)


def reset_delay(value: str, now: float) -> float | None:
    """A reset value (the heuristic above) as delay seconds from `now`; None when unparseable."""
    value = value.strip()
    if _NUMBER.fullmatch(value):
        number = float(value)
        if number > EPOCH_MS:
            return max(0.0, number / 1000 - now)
        if number > EPOCH_S:
            return max(0.0, number - now)
        return number
    return _http_date_delay(value, now)


def retry_after_delay(value: str, now: float) -> float | None:
    """Retry-After (RFC 9110 §10.2.3: delay seconds or an HTTP-date) as delay seconds."""
    value = value.strip()
    if _INT.fullmatch(value):
        return float(value)
    return _http_date_delay(value, now)


def _http_date_delay(value: str, now: float) -> float | None:
    if not (12 <= len(value) <= 64 and any(c.isalpha() for c in value)):
        return None
    try:
        when = parsedate_to_datetime(value)
        stamp = when.timestamp() if when.tzinfo is not None else when.replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(0.0, stamp - now)


def _ints(values: list[str] | None) -> list[tuple[int, dict[str, str]]]:
    """Integers of a field (all its lines, comma-separated members, `;param=value` ignored but kept)."""
    out: list[tuple[int, dict[str, str]]] = []
    for value in values or ():
        for member in value.split(","):
            head, _, params = member.partition(";")
            head = head.strip()
            if _INT.fullmatch(head):
                out.append((int(head), dict(p.strip().partition("=")[::2] for p in params.split(";"))
                            if params else _NO_PARAMS))
    return out


_NO_PARAMS: dict[str, str] = {}


def _window(params: dict[str, str]) -> int | None:
    w = params.get("w", "").strip()
    return int(w) if _INT.fullmatch(w) and int(w) > 0 else None


def _trio(values: dict[str, list[str]], names: tuple[str, str, str], now: float, windows: dict[int, int]
          ) -> Quota | None:
    """One vendor's (or the old drafts') Limit/Remaining/Reset fields: one quota, each value the most
    restrictive its lines state."""
    limit_v, remaining_v, reset_v = values.get(names[0]), values.get(names[1]), values.get(names[2])
    if limit_v is None and remaining_v is None and reset_v is None:
        return None
    limits = _ints(limit_v) if limit_v else []
    remaining = [n for n, _ in _ints(remaining_v)] if remaining_v else []
    resets = [d for v in reset_v for part in v.split(",") if (d := reset_delay(part, now)) is not None] \
        if reset_v else []
    if not (limits or remaining or resets):
        return None
    limit = min(n for n, _ in limits) if limits else None
    window = None
    for n, params in limits:
        if params and n == limit and (window := _window(params)):
            break
    if window is None and limit is not None and windows:
        window = windows.get(limit)
    return Quota(limit, min(remaining) if remaining else None, max(resets) if resets else None, window)


def _old_policies(values: list[str] | None) -> dict[int, int]:
    """Drafts 04-07 `RateLimit-Policy: 100;w=60, 1000;w=3600`: window by quota."""
    out: dict[int, int] = {}
    for n, params in _ints(values):
        if (w := _window(params)) is not None:
            out.setdefault(n, w)
    return out


def _current_policies(values: list[str] | None) -> dict[str, Quota]:
    """Drafts 08-10 `RateLimit-Policy: "name";q=100;w=60, …`: a quota per policy name."""
    if not values:
        return {}
    items = _sf_members(", ".join(values), dictionary=False)
    out: dict[str, Quota] = {}
    for value, params in items or ():
        q, w = params.get("q"), params.get("w")
        if isinstance(value, _Name) and _nonneg(q):
            out.setdefault(value, Quota(limit=q, window_s=w if _nonneg(w) and w else None, name=value))
    return out


def _current_limits(items: list[tuple[Any, dict[str, Any]]], policies: dict[str, Quota], now: float) -> list[Quota]:
    """Drafts 08-10 `RateLimit: "name";r=50;t=30, …`, with each policy's quota and window."""
    out: list[Quota] = []
    for value, params in items:
        r, t = params.get("r"), params.get("t")
        if not (isinstance(value, _Name) and _nonneg(r)):
            continue
        policy = policies.get(value)
        reset = reset_delay(str(t), now) if _nonneg(t) else None
        out.append(Quota(limit=policy.limit if policy else None, remaining=r, reset_s=reset,
                         window_s=policy.window_s if policy else None, name=value))
    return out


def _draft7(value: str, windows: dict[int, int], now: float) -> Quota | None:
    """Draft 07 `RateLimit: limit=100, remaining=50, reset=5`."""
    members = _sf_members(value, dictionary=True)
    if not members:
        return None
    fields = dict(members)
    limit, remaining, reset = fields.get("limit"), fields.get("remaining"), fields.get("reset")
    limit = limit if _nonneg(limit) else None
    quota = Quota(limit=limit, remaining=remaining if _nonneg(remaining) else None,
                  reset_s=reset_delay(str(reset), now) if _nonneg(reset) else None,
                  window_s=windows.get(limit) if limit is not None else None)
    return quota if (quota.limit, quota.remaining, quota.reset_s) != (None, None, None) else None


def _nonneg(value: Any) -> bool:
    return type(value) is int and value >= 0


# --- a small RFC 9651 (Structured Field Values) reader: Lists and Dictionaries of Items ---------

class _Name(str):
    """A String or Token item: a policy name."""


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]{0,63}")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,511}")
_SF_INT = re.compile(r"-?\d{1,15}")
_SF_DEC = re.compile(r"-?\d{1,12}\.\d{1,3}")
_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")


class _Bad(Exception):
    pass


def _sf_members(value: str, *, dictionary: bool) -> list[tuple[Any, dict[str, Any]]] | None:
    """`value` as a List of (item, params) or a Dictionary of (key, item) pairs (the item's params
    dropped); None when it is not one (strictly: RFC 9651 says to fail the whole field)."""
    if len(value) > 8192:
        return None
    s = value.strip(" \t")
    pos, out = 0, []
    try:
        while pos < len(s):
            if dictionary:
                m = _KEY.match(s, pos)
                if m is None:
                    raise _Bad
                pos = m.end()
                if pos < len(s) and s[pos] == "=":
                    item, pos = _bare(s, pos + 1)
                else:
                    item = True
                _, pos = _params(s, pos)
                out.append((m.group(), item))
            else:
                item, pos = _bare(s, pos)
                params, pos = _params(s, pos)
                out.append((item, params))
            while pos < len(s) and s[pos] in " \t":
                pos += 1
            if pos == len(s):
                break
            if s[pos] != ",":
                raise _Bad
            pos += 1
            while pos < len(s) and s[pos] in " \t":
                pos += 1
            if pos == len(s):
                raise _Bad  # a trailing comma
    except _Bad:
        return None
    return out


def _params(s: str, pos: int) -> tuple[dict[str, Any], int]:
    params: dict[str, Any] = {}
    while pos < len(s) and s[pos] == ";":
        pos += 1
        while pos < len(s) and s[pos] == " ":
            pos += 1
        m = _KEY.match(s, pos)
        if m is None:
            raise _Bad
        pos = m.end()
        value: Any = True
        if pos < len(s) and s[pos] == "=":
            value, pos = _bare(s, pos + 1)
        params[m.group()] = value
    return params, pos


def _bare(s: str, pos: int) -> tuple[Any, int]:
    if pos >= len(s):
        raise _Bad
    c = s[pos]
    if c == '"':
        chars, pos = [], pos + 1
        while pos < len(s):
            c = s[pos]
            if c == "\\":
                if pos + 1 >= len(s) or s[pos + 1] not in '"\\':
                    raise _Bad
                chars.append(s[pos + 1])
                pos += 2
            elif c == '"':
                return _Name("".join(chars)), pos + 1
            elif " " <= c <= "~":
                chars.append(c)
                pos += 1
            else:
                raise _Bad
        raise _Bad
    if c == "-" or c.isdigit():
        if m := _SF_DEC.match(s, pos):
            return float(m.group()), m.end()
        if m := _SF_INT.match(s, pos):
            if m.end() < len(s) and (s[m.end()].isdigit() or s[m.end()] == "."):
                raise _Bad  # too many digits
            return int(m.group()), m.end()
        raise _Bad
    if c == "?" and s[pos + 1:pos + 2] in ("0", "1"):
        return s[pos + 1] == "1", pos + 2
    if c == ":" and (m := _BYTES.match(s, pos)):
        return m.group().encode(), m.end()
    if m := _TOKEN.match(s, pos):
        return _Name(m.group()), m.end()
    raise _Bad


def _sf_string(name: str) -> str:
    """`name` as an SF String (printable ASCII only; others dropped)."""
    text = "".join(c for c in name[:64] if " " <= c <= "~") or "default"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
