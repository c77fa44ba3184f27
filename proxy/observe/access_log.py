"""uvicorn's log lines that print a request's path (its access log, and the WebSocket lines of its
error log, printed at info even without --access-log), with every possible secret redacted
(proxy/transport/paths.py `redact_path`: URL tokens wherever they are, query values)."""

from __future__ import annotations

import logging

from ..transport.paths import redact_path


class RedactTokens(logging.Filter):
    """For uvicorn.access: (client_addr, method, full_path, http_version, status_code). A record of
    another shape is dropped, not printed: a line that could not be redacted could hold a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str)):
            return False
        record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True


class RedactWebSocketPaths(logging.Filter):
    """For uvicorn.error: `%s - "WebSocket %s" …` with (client, full_path[, status]). The proxy
    speaks no WebSocket, but uvicorn logs every upgrade attempt before the app refuses it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and '"WebSocket %s"' in record.msg:
            args = record.args
            if not (isinstance(args, tuple) and len(args) >= 2 and isinstance(args[1], str)):
                return False
            record.args = (args[0], redact_path(args[1]), *args[2:])
        return True


def install() -> None:
    for name, kind in (("uvicorn.access", RedactTokens), ("uvicorn.error", RedactWebSocketPaths)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
