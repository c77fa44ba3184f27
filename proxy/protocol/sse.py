"""Incremental Server-Sent Events codec.

Each event keeps the exact bytes it arrived as, so an event the proxy does not rewrite is relayed
byte for byte (line endings, comments, `id:` and `retry:` included) and only rewritten events are
re-encoded, in the line-ending style of their stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE_END = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark


class SSEError(Exception):
    pass


@dataclass(slots=True)
class Event:
    raw: bytes
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)
    id: str | None = None
    retry: str | None = None
    newline: bytes = b"\n"
    # A line the codec does not take as SSE (an unknown field, bytes that are not UTF-8): the raw
    # bytes of such an event are never relayed, only what was parsed (`known()`).
    unknown: bool = False

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    @property
    def has_data(self) -> bool:
        return bool(self.data_lines)

    def with_data(self, data: str) -> Event:
        """The same event (type, id, retry) carrying other data, encoded in the stream's style."""
        return encode_event(data, event=self.event, id=self.id, retry=self.retry, newline=self.newline)

    def known(self) -> Event:
        """The event as parsed: its data, type, id and retry, without any line the codec did not take."""
        if self.data_lines:
            return self.with_data(self.data)
        nl = self.newline.decode()
        fields = (("event", self.event), ("id", self.id), ("retry", self.retry))
        lines = [f"{k}: {v}" for k, v in fields if v is not None]
        raw = (nl.join(lines) + nl + nl).encode() if lines else b""
        return Event(raw, self.event, [], self.id, self.retry, self.newline)


def encode_event(data: str, *, event: str | None = None, id: str | None = None, retry: str | None = None,
                 newline: bytes = b"\n") -> Event:
    nl = newline.decode()
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    data_lines = data.split("\n")
    lines.extend(f"data: {line}" for line in data_lines)
    raw = (nl.join(lines) + nl + nl).encode()
    return Event(raw, event, data_lines, id, retry, newline)


def message_event(data: bytes, *, event: str | None = None, id: str | None = None, retry: str | None = None,
                  newline: bytes = b"\n") -> bytes:
    """`encode_event(data.decode(), …).raw` for data of one line (a JSON text as orjson writes it:
    no line break outside an escape), built as bytes; data with a line break goes the long way."""
    if b"\n" in data or b"\r" in data:
        return encode_event(data.decode(), event=event, id=id, retry=retry, newline=newline).raw
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + newline
    if id is not None:
        head += b"id: " + id.encode() + newline
    if retry is not None:
        head += b"retry: " + retry.encode() + newline
    return head + b"data: " + data + newline + newline


class SSEDecoder:
    """Feed bytes as they arrive; get back every event completed so far."""

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the next unread line starts
        self._searched = 0  # bytes before this were searched for a line end already (in vain)
        self._lines: list[bytes] = []
        self._newline = b"\n"
        self._max = max_event_bytes
        self._started = False  # past a leading byte order mark, which SSE parsers ignore

    def feed(self, chunk: bytes, final: bool = False) -> list[Event]:
        buf = self._buf
        buf += chunk
        if not self._started:
            if len(buf) < len(BOM) and BOM.startswith(bytes(buf)) and not final:
                return []  # may be the start of a byte order mark
            if buf.startswith(BOM):
                del buf[:len(BOM)]
            self._started = True
        events: list[Event] = []
        start = 0  # start of the event being collected, in buf
        pos = self._scan
        search = max(pos, self._searched)  # a long line arriving in pieces is scanned once: linear
        while True:
            m = _LINE_END.search(buf, search)
            if m is None:
                search = len(buf)
                break
            if m.group() == b"\r" and m.end() == len(buf) and not final:
                search = m.start()
                break  # may be the first half of CRLF: wait for the next byte
            line = bytes(buf[pos:m.start()])
            pos = search = m.end()
            if line:
                self._lines.append(line)
                self._newline = m.group()
                continue
            if self._lines:
                events.append(self._build(bytes(buf[start:pos])))
            else:  # a blank line with nothing before it: keep it with the next event
                continue
            start = pos
        if start:
            del buf[:start]
            pos -= start
            search -= start
        self._scan, self._searched = pos, search
        if len(buf) > self._max:
            raise SSEError(f"SSE event larger than {self._max} bytes")
        return events

    def close(self) -> list[Event]:
        """At the end of the stream: the events a final CR completes.

        An unterminated trailing event is discarded, as SSE clients discard it: relaying it would
        pass on bytes no hook has seen.
        """
        events = self.feed(b"", final=True)
        self._buf.clear()
        self._lines.clear()
        self._scan = self._searched = 0
        self._started = False
        return events

    def _build(self, raw: bytes) -> Event:
        ev = Event(raw, newline=self._newline)
        for line in self._lines:
            if line[:1] == b":":
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text, ev.unknown = value.decode("utf-8", "replace"), True
            if name == b"data":
                ev.data_lines.append(text)
            elif name == b"event":
                ev.event = text
            elif name == b"id":
                ev.id = text
            elif name == b"retry":
                ev.retry = text
            else:
                ev.unknown = True  # "Data", "\ufeffdata", "data " …: a lenient client might read it
        self._lines.clear()
        return ev
