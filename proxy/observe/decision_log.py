"""Decision log: one entry per policy decision, in OPA's decision-log event shape.

Each entry is serialized once; lines are buffered and written at most every `flush_s` (and at
shutdown), so logging a decision costs a serialization, not a system call, on the hot path; the
shipper (decision_shipper.py) takes the same bytes. Tool arguments are redacted by default:
policies see them, logs keep only their names. Formats: docs/logging.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

from .. import __version__
from ..config import DecisionLogService
from . import logging_setup
from .decision_shipper import DecisionShipper

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


class DecisionLogError(Exception):
    """The decision log's sink cannot be used (its file cannot be opened)."""


class DecisionLog:
    """Each decision once serialized (OPA's event shape), then written to the sink and handed to
    the shipper. `sink`: `stdout` (a log line: docs/logging.md), `file:PATH` (OPA events, one a
    line), `off`. `service`: where decisions are also shipped (proxy/observe/decision_shipper.py)."""

    def __init__(self, sink: str = "stdout", *, path: str = "mcp/authz/decision", redact_arguments: bool = True,
                 flush_s: float = 0.5, service: DecisionLogService | None = None,
                 dropped: Callable[[int], None] = lambda n: None, line_format: str | None = None) -> None:
        self._stream: IO[bytes] | None = None
        if sink == "stdout":
            self._stream = sys.stdout.buffer
        elif sink.startswith("file:"):
            try:
                self._stream = open(sink[len("file:"):], "ab")  # noqa: SIM115  (closed in close())
            except OSError as exc:
                raise DecisionLogError(f"cannot open {sink[len('file:'):]} for appending ({exc.strerror})") from None
        self._owns_stream = sink.startswith("file:")
        self._envelope = sink == "stdout"  # stdout lines are log lines: they carry the log fields too
        self._text = self._envelope and (line_format or logging_setup.current_format()) == "text"
        self.shipper = DecisionShipper(service, dropped) if service is not None else None
        self.enabled = self._stream is not None or self.shipper is not None
        self._path = path
        self._redact = redact_arguments
        self._flush_s = flush_s
        self._buffer: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def log(self, decision_id: str, timestamp: str, input: dict[str, Any], result: Any, eval_ns: int,
            labels: dict[str, str], trace: tuple[str, str] | None = None) -> None:
        """`trace`: (trace_id, span_id) of the decision's span when traced, OPA's fields of the same names."""
        if not self.enabled:
            return
        entry = {
            "decision_id": decision_id, "timestamp": timestamp, "path": self._path,
            "input": redact(input) if self._redact else input, "result": result,
            "metrics": {"timer_eval_ns": eval_ns},
            "labels": {"app": "mcp-policy-proxy", "version": __version__, **labels},
        }
        if trace is not None:  # after decision_id, where OPA puts them
            entry = {"decision_id": decision_id, "trace_id": trace[0], "span_id": trace[1], **entry}
        try:
            event = orjson.dumps(entry)
        except (TypeError, orjson.JSONEncodeError):  # still one entry per decision, never a lost one
            event = orjson.dumps(encodable(entry))
        if self.shipper is not None:
            self.shipper.add(event)
        if self._stream is None:
            return
        if self._text:
            line = summary(entry).encode()
        elif self._envelope:  # the log fields, then the event's own: `{"level":…,"type":…,"decision_id":…}`
            line = b'{"time":"%s",%s%s' % (logging_setup.rfc3339_ms(time.time()).encode(), _ENVELOPE, event[1:])
        else:
            line = event
        self._buffer.append(line + b"\n")
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)
            except RuntimeError:  # no loop (CLI use): write now
                self.flush()

    def start(self) -> None:
        """In the running loop (the app's lifespan): the shipper's background uploads begin."""
        if self.shipper is not None:
            self.shipper.start()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._buffer and self._stream is not None:
            self._stream.write(b"".join(self._buffer))
            self._stream.flush()
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._owns_stream and self._stream is not None:
            self._stream.close()

    async def aclose(self) -> None:
        """At shutdown: local lines written, what the shipper holds uploaded (within its timeout)."""
        self.flush()
        if self.shipper is not None:
            await self.shipper.close()
        self.close()


_ENVELOPE = b'"level":"info","logger":"mcp_policy_proxy.decision_log","msg":"Decision Log",' \
            b'"type":"openpolicyagent.org/decision_logs",'


def _printable(text: Any) -> str:
    """Client-chosen text (a tool name) on one line, whatever it holds."""
    text = str(text)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def summary(entry: dict[str, Any]) -> str:
    """A decision in text mode: `… INFO mcp_policy_proxy.decision_log: deny server=support tools/call
    send_message reasons="…" decision_id=…` (the whole event: json mode, a file sink, the service)."""
    result, input = entry["result"], entry["input"]
    outcome = "deny"
    if isinstance(result, dict):
        outcome = "allow" if result.get("allow") is True else "error" if "error" in result else "deny"
    message = input.get("message") or {}
    what = " ".join(_printable(w) for w in (message.get("method"), message.get("name")) if w)
    server = (input.get("server") or {}).get("name", "")
    reasons = result.get("reasons") if isinstance(result, dict) else None
    because = f' reasons="{_printable("; ".join(map(str, reasons)))}"' if reasons else ""
    traced = f" trace_id={entry['trace_id']}" if "trace_id" in entry else ""
    return (f"{logging_setup.text_time(time.time())} INFO mcp_policy_proxy.decision_log: {outcome} "
            f"server={_printable(server)} {what}{because} decision_id={entry['decision_id']}{traced}")
