"""One log format for every line the proxy writes (docs/logging.md).

`json` (the default when stdout is not a terminal): one JSON object per line, each with `time`
(RFC 3339, UTC, milliseconds), `level`, `logger` and `msg`; an exception adds `exc`. uvicorn's
access line adds `client`, `method`, `path` (tokens redacted), `http_version`, `status`,
`decision_ids` and `trace_id`. A decision-log line on stdout adds `type:
"openpolicyagent.org/decision_logs"` (as OPA's console decision logger does) and the OPA event's
fields at the top level (proxy/observe/decision_log.py).

`text` (the default on a terminal): `2026-05-10 12:00:00,123 INFO logger: message`, the access
line followed by `decision_ids=… trace_id=…`, a decision as a one-line summary.

Python logging and uvicorn's error log go to stderr, the access log and decisions to stdout, as
uvicorn and OPA put them. uvicorn's loggers are configured through its `log_config`: the dict built
once here (`configure`), applied at once and handed to uvicorn, which applies it again when it starts.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from typing import Any

import orjson

from . import access_log
from .log_context import DECISION_IDS, TRACE_ID

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The process's format, for the decision log's stdout lines (set by `configure`).
_format = "json"


def current_format() -> str:
    return _format


def default_format() -> str:
    """JSON for collectors, text for a person at a terminal."""
    return "text" if sys.stdout.isatty() else "json"


_stamp: tuple[int, str] = (-1, "")


def rfc3339_ms(created: float) -> str:
    """`2026-05-10T12:00:00.123Z`; the seconds part formatted once per second."""
    global _stamp
    second = int(created)
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_stamp[1]}.{int((created - second) * 1000):03d}Z"


def text_time(created: float) -> str:
    """logging's default asctime: `2026-05-10 12:00:00,123` (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) + f",{int((created % 1) * 1000):03d}"


def _access_args(record: logging.LogRecord) -> tuple[Any, ...] | None:
    """uvicorn's access args (client, method, path, http_version, status), already redacted by
    access_log.RedactTokens (which drops any record of another shape)."""
    args = record.args
    return args if isinstance(args, tuple) and len(args) == 5 else None


class JsonFormatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": rfc3339_ms(record.created), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return entry

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(self.fields(record), default=str).decode()


class JsonAccessFormatter(JsonFormatter):
    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        entry = super().fields(record)
        args = _access_args(record)
        if args is not None:
            entry.update(client=args[0], method=args[1], path=args[2], http_version=args[3], status=args[4],
                         decision_ids=list(DECISION_IDS.get() or ()), trace_id=TRACE_ID.get())
        return entry


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or TEXT_FORMAT, datefmt)


class TextAccessFormatter(TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if _access_args(record) is None:
            return line
        return f"{line} decision_ids={','.join(DECISION_IDS.get() or ()) or '-'} trace_id={TRACE_ID.get() or '-'}"


def log_config(fmt: str, level: str) -> dict[str, Any]:
    """The dictConfig for the proxy's loggers and uvicorn's (the shape of uvicorn's LOGGING_CONFIG:
    formatters `default` and `access`, loggers `uvicorn`, `uvicorn.error`, `uvicorn.access`)."""
    json = fmt == "json"
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": JsonFormatter if json else TextFormatter},
            "access": {"()": JsonAccessFormatter if json else TextAccessFormatter},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level},
    }


def configure(fmt: str | None, level: str) -> dict[str, Any]:
    """Put `fmt` (None: the default for this stdout) in force for the whole process; the dict,
    for uvicorn's `log_config`."""
    global _format
    _format = fmt or default_format()
    config = log_config(_format, level)
    logging.config.dictConfig(config)
    access_log.install()  # the redaction filters, before any line could be written
    return config
