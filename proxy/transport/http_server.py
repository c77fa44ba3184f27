"""The client-facing HTTP/1.1 server: uvicorn (httptools) with the limits it lacks, and the drain.

uvicorn's httptools protocol bounds neither a request's header block nor the time a client may
take to send it or its body. `LimitedHttpProtocol` adds:

- `limits.max_header_bytes`: the request line and header fields → 431 and close. The head is
  measured once complete, and only when the reads it came in could hold more than the limit; one
  still incomplete after more than the limit's worth of further reads is refused at once, so the
  parser never buffers much more than the limit (it holds a field whole until the field ends);
- `limits.client_header_timeout_s`: from the connection's opening (on a kept-alive connection,
  from the next head's first byte) until the head is complete → 408 and close (a connection that never sent a byte
  is closed without an answer, like an idle kept-alive one);
- `limits.client_body_timeout_s`: silence while a body is being sent → 408 and close (not while
  the proxy itself has stopped reading: that is back-pressure, not a slow client).

One timer per connection at most, armed only while a head or body spans reads (and at the
connection's start); measured, the whole costs about 1 µs per request. Each refusal is counted
(mcp_proxy_limit_rejections_total{limit}). The subclass leans on uvicorn's internals (0.54).

`DrainingServer` puts the app in its drain (see ProxyApp.drain) the moment SIGTERM or SIGINT
arrives, before uvicorn stops listening, waits up to `limits.shutdown_grace_s` for connections to
finish, and exits 0: SIGTERM is the orchestrator's ordinary stop, not a crash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..config import Config, Limits
from ..protocol import jsonrpc
from . import answers
from .endings import CLIENT_GONE, EXCHANGE_TASK, WATCHED

log = logging.getLogger("mcp_policy_proxy.http")

# What the connection is reading: nothing (between requests), a request head, a request body.
_IDLE, _HEAD, _BODY = 0, 1, 2
_HEADER_TIMEOUT = "limits.client_header_timeout_s"
_BODY_TIMEOUT = "limits.client_body_timeout_s"


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing at once (the head is too large)."""


class LimitedHttpProtocol(HttpToolsProtocol):
    # Set per server by `protocol_for` (class attributes: uvicorn constructs the protocol itself).
    limits: Limits = Limits()
    refused: Callable[[str], None] = staticmethod(lambda limit: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._max_head = self.limits.max_header_bytes
        self._read = 0  # the size of the read being parsed
        # Of the reads before this one that the head being read spans: all their bytes (at least
        # the head's), and those of the reads after its first (all of them the head's).
        self._head_reads = self._head_continued = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0  # while reading a body: when bytes last arrived
        self._received = False  # any byte at all on this connection
        self._began_here = False

    # --- connection ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.client_header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # an exchange under way is cut short
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            scope[CLIENT_GONE] = True
            if (task := scope.get(EXCHANGE_TASK)) is not None:
                task.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._read = len(data)
        continued = self._phase == _HEAD  # this read continues a head begun in an earlier one
        self._began_here = False  # set when a head begins within this read (pipelining)
        if self._phase == _BODY:
            self._last_read = self.loop.time()
        # uvicorn's own data_received, but a head over the limit is answered 431, not 400.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(answers.header_too_large(self._max_head), "limits.max_header_bytes")
                return
            self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase == _HEAD:  # the head goes on in the next read
            self._head_reads += len(data)
            if continued and not self._began_here:
                # Every byte of this read is the head's: refused as soon as they exceed the limit,
                # so what the parser buffers stays bounded (it holds a field until it is complete).
                self._head_continued += len(data)
                if self._head_continued > self._max_head:
                    self._refuse(answers.header_too_large(self._max_head), "limits.max_header_bytes")
                    return
            if self._timer is None:
                self._arm(self.limits.client_header_timeout_s, self._head_timed_out)
        elif self._phase == _BODY and self._timer is None:
            self._last_read = self.loop.time()
            self._arm(self.limits.client_body_timeout_s, self._body_check)

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self._disarm()
        self.send_400_response(msg)

    # --- parser callbacks ---
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._head_reads, self._head_continued = _HEAD, 0, 0
        self._began_here = True

    def _head_size(self) -> int:
        # "METHOD url HTTP/1.1\r\n" (about), then "name: value\r\n" per field
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_headers_complete(self) -> None:
        # The head came in the reads since it began: only when those could hold more than the
        # limit is it measured (request line and fields as on the wire), before the app sees it.
        if self._head_reads + self._read > self._max_head and self._head_size() > self._max_head:
            raise _Refused
        self._phase = _BODY
        if self._timer is not None:
            self._disarm()
        super().on_headers_complete()
        if self.cycle is not None:  # connection_lost tells this request's exchange that the client left
            scope: dict[str, Any] = self.cycle.scope  # type: ignore[assignment]
            scope[WATCHED] = True

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._disarm()
        super().on_message_complete()

    # --- timers ---
    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._phase == _HEAD or (self._phase == _IDLE and self.cycle is None):
            if not self._received:  # never a byte: no request to answer (a preconnect, a port probe)
                self.transport.close()
                return
            self._refuse(answers.client_too_slow(_HEADER_TIMEOUT), _HEADER_TIMEOUT)

    def _body_check(self) -> None:
        self._timer = None
        if self._phase != _BODY:
            return
        now = self.loop.time()
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
            self._last_read = now  # the proxy is not reading (or has not asked for the body yet)
        silent = now - self._last_read
        if silent < self.limits.client_body_timeout_s:
            self._arm(self.limits.client_body_timeout_s - silent, self._body_check)
            return
        self._refuse(answers.client_too_slow(_BODY_TIMEOUT), _BODY_TIMEOUT)

    # --- refusing ---
    def _refuse(self, answer: answers.Answer, limit: str) -> None:
        """Answer `answer` if nothing else is being answered on this connection, then close it."""
        self._disarm()
        self.refused(limit)
        log.debug("closing a client connection: %s (%s)", answer.status, limit)
        cycle = self.cycle
        if self._phase == _BODY:  # the body's own request: answered unless its answer has begun
            free = cycle is not None and not cycle.response_started and not self.pipeline
        else:  # a new head: answered unless an earlier request's answer is still going out
            free = cycle is None or cycle.response_complete
        if free and not self.transport.is_closing():
            self.transport.write(self._encode(answer))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # as connection_lost does; at once, so nothing follows the answer
            cycle.message_event.set()
        self.transport.close()

    def _encode(self, answer: answers.Answer) -> bytes:
        body = jsonrpc.encode(answer.message) if answer.message is not None else b""
        head = [STATUS_LINE[answer.status]]
        for raw_name, raw_value in self.server_state.default_headers:
            head += [raw_name, b": ", raw_value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n"]
        for name, value in answer.headers:
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        head += [b"\r\n", body]
        return b"".join(head)


def protocol_for(limits: Limits, refused: Callable[[str], None]) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to these limits."""
    return type("BoundHttpProtocol", (LimitedHttpProtocol,), {"limits": limits, "refused": staticmethod(refused)})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the app's drain begun as soon as the stop signal arrives (uvicorn itself
    only notices at its next tick, then closes listeners and idle connections, waits for the rest up
    to `timeout_graceful_shutdown`, cancels what remains, and runs the lifespan shutdown)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None],
                 on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._drain = drain
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()  # a worker tells its supervisor it serves (proxy/transport/workers.py)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises a caught signal once it has shut down, which makes a drained,
            # finished process die "by SIGTERM" (exit 143); a completed drain is a clean exit.
            self._captured_signals.remove(sig)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain)  # a signal handler may not touch the loop itself

    async def shutdown(self, sockets: Any = None) -> None:
        self._drain()  # idempotent: also when the exit came another way
        await super().shutdown(sockets)


def serve(app: Any, config: Config, drain: Callable[[], None], refused: Callable[[str], None], *,
          log_level: str, access_log: bool, log_config: dict[str, Any] | None = None,
          sockets: list[socket.socket] | None = None, on_started: Callable[[], None] | None = None) -> bool:
    """Serve `app` until SIGTERM/SIGINT and the drain are done; False when it never started.
    `sockets`: listening sockets bound already (a worker's: proxy/transport/workers.py) instead of
    listen.host and listen.port."""
    server_config = uvicorn.Config(
        app, host=config.listen.host, port=config.listen.port, log_level=log_level, loop="uvloop",
        log_config=log_config or uvicorn.config.LOGGING_CONFIG,  # proxy/observe/logging_setup.py builds it
        http=protocol_for(config.limits, refused), access_log=access_log, server_header=False, lifespan="on",
        timeout_graceful_shutdown=config.limits.shutdown_grace_s,  # type: ignore[arg-type]  # float works
    )
    server = DrainingServer(server_config, drain, on_started)
    server.run(sockets)
    return server.started
