"""Decision log: one JSON line per policy decision, in OPA's decision-log shape.

Lines are buffered and written at most every `flush_s` (and at shutdown), so logging a decision
costs a serialization, not a system call, on the hot path. Tool arguments are redacted by default:
policies see them, logs keep only their names.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO, Any

import orjson

from .. import __version__

REDACTED = "[redacted]"


def redact(input: dict[str, Any]) -> dict[str, Any]:
    tool = input.get("tool")
    if not tool or not tool.get("arguments"):
        return input
    arguments = tool["arguments"]
    hidden = dict.fromkeys(arguments, REDACTED) if isinstance(arguments, dict) else REDACTED
    return {**input, "tool": {**tool, "arguments": hidden}}


_MAX_DEPTH = 200  # orjson encodes at most 254 levels


def encodable(value: Any, depth: int = 0) -> Any:
    """`value` with what JSON cannot carry written out: text that is not Unicode (lone surrogates)
    with its surrogates escaped (`\\ud800`), integers beyond 64 bits and other objects as text,
    containers nested deeper than orjson encodes cut off. Only for an entry orjson refused as is."""
    kind = value.__class__
    if kind is str:
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if not value.isascii() else value
    if kind is dict or kind is list or kind is tuple:
        if depth >= _MAX_DEPTH:
            return "[nested too deeply]"
        if kind is dict:
            return {encodable(k if isinstance(k, str) else str(k)): encodable(v, depth + 1) for k, v in value.items()}
        return [encodable(v, depth + 1) for v in value]
    if kind is int and not -(2 ** 63) <= value < 2 ** 64:
        return str(value)
    if value is None or kind in (bool, int, float):
        return value
    return repr(value)


class DecisionLog:
    def __init__(self, sink: str = "stdout", *, path: str = "mcp/authz/decision", redact_arguments: bool = True,
                 flush_s: float = 0.5) -> None:
        self.enabled = sink != "off"
        self._stream: IO[bytes] | None = None
        if sink == "stdout":
            self._stream = sys.stdout.buffer
        elif sink.startswith("file:"):
            self._stream = open(sink[len("file:"):], "ab")  # noqa: SIM115  (closed in close())
        self._owns_stream = sink.startswith("file:")
        self._path = path
        self._redact = redact_arguments
        self._flush_s = flush_s
        self._buffer: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def log(self, decision_id: str, timestamp: str, input: dict[str, Any], result: Any, eval_ns: int,
            labels: dict[str, str]) -> None:
        if not self.enabled:
            return
        entry = {
            "decision_id": decision_id, "timestamp": timestamp, "path": self._path,
            "input": redact(input) if self._redact else input, "result": result,
            "metrics": {"timer_eval_ns": eval_ns},
            "labels": {"app": "mcp-policy-proxy", "version": __version__, **labels},
        }
        try:
            line = orjson.dumps(entry)
        except (TypeError, orjson.JSONEncodeError):  # still one entry per decision, never a lost one
            line = orjson.dumps(encodable(entry))
        self._buffer.append(line + b"\n")
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)
            except RuntimeError:  # no loop (CLI use): write now
                self.flush()

    def flush(self) -> None:
        self._timer = None
        if self._buffer and self._stream is not None:
            self._stream.write(b"".join(self._buffer))
            self._stream.flush()
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._owns_stream and self._stream is not None:
            self._stream.close()
