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
    hidden = {k: REDACTED for k in arguments} if isinstance(arguments, dict) else REDACTED
    return {**input, "tool": {**tool, "arguments": hidden}}


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
        except (TypeError, orjson.JSONEncodeError) as exc:  # still one entry per decision, never a lost one
            entry["input"] = {"unencodable": f"{type(exc).__name__}: {exc}", "message": input.get("message")}
            line = orjson.dumps(entry, default=repr)
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
