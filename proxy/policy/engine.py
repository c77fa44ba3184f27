"""The policy engine interface and the one place a raw result becomes a Decision.

Both engines (embedded regorus, remote OPA) only evaluate: they return the query's raw value or
raise PolicyError. `to_decision` then judges the shape, so a malformed or undefined result denies
the same way whichever engine produced it (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# A message every sane policy can decide: the embedded engine requires a decision for it when it
# loads a version, and readiness (/readyz) asks either engine to decide it.
SMOKE_INPUT: dict[str, Any] = {
    "version": 1, "time": "2000-01-01T00:00:00Z",
    "server": {"name": "smoke", "methods": [], "tags": [], "require_api_token_auth": False, "expires_at": None,
               "params": {}},
    "principal": {"authenticated": False, "via": [], "subject": None, "claims": {}, "scopes": []},
    "transport": {"kind": "streamable_http", "protocol_version": None, "http_method": "POST", "origin": None},
    "message": {"kind": "request", "direction": "client_to_server", "method": "ping", "name": None},
}


class PolicyError(Exception):
    """The engine could not decide (unavailable, timed out, evaluation error, bad result)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    visible_tools: frozenset[str]
    result: Any  # the raw value of the query, for the decision log


class PolicyEngine(Protocol):
    name: str  # "embedded" | "opa": the engine label in metrics and logs
    revision: str  # what policy version is in force (a content hash, or the OPA bundle revision)

    async def evaluate(self, input: dict[str, Any]) -> Any:
        """The value of the decision query for `input`; PolicyError if there is none."""
        ...

    async def probe(self) -> None:
        """Readiness: return if the engine decides SMOKE_INPUT now, else PolicyError saying why
        (a text without URLs or secrets: /readyz shows it). Cheap enough for every probe."""
        ...

    async def close(self) -> None:
        ...


def to_decision(result: Any) -> Decision:
    """Validate a raw query value as `{"allow": bool, "reasons": [str], "visible_tools": [str]}`."""
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
        raise PolicyError("policy result is not an object with a boolean 'allow'")
    reasons = result.get("reasons", [])
    visible = result.get("visible_tools", [])
    if not _strings(reasons):
        raise PolicyError("policy result 'reasons' is not a list of strings")
    if not _strings(visible):
        raise PolicyError("policy result 'visible_tools' is not a list of strings")
    return Decision(result["allow"], tuple(reasons), frozenset(visible), result)


_STR = {str}


def _strings(value: Any) -> bool:
    """A list of strings (results are decoded JSON: exactly `str`, no subclass), checked in C."""
    return isinstance(value, list) and (not value or set(map(type, value)) == _STR)
