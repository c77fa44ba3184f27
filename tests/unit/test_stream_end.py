"""A POST's SSE answer ends in one write: its last bytes go out with the end of the chunked body
(relay.LastChunk), the upstream's body is still read to its end (so its connection is reused),
and the bytes are the ones the long way gives (sse.message_event)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy.protocol.sse import encode_event, message_event
from proxy.transport.endings import WATCHED
from proxy.transport.relay import LastChunk, StreamResponse, relay_sse


class _Body:
    """An upstream body in chunks; `finished()` once the last one has been taken."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.left = list(chunks)
        self.exhausted = False

    def finished(self) -> bool:
        return not self.left

    async def chunks(self) -> AsyncIterator[bytes]:
        while self.left:
            yield self.left.pop(0)
        self.exhausted = True  # UpstreamResponse.chunks releases the connection here


async def _relayed(body: _Body, finished: bool) -> list[bytes]:
    # Events without data never reach the pipeline: relayed byte for byte.
    return [chunk async for chunk in relay_sse(None, None, body.chunks(), 1 << 20,  # type: ignore[arg-type]
                                               finished=body.finished if finished else None)]


async def test_the_rest_of_a_finished_body_is_one_last_chunk_and_the_body_is_read_to_its_end() -> None:
    body = _Body([b"id: 1\n", b"\nid: 2\n\n", b"id: 3\n\n"])
    out = await _relayed(body, finished=True)
    assert out == [b"id: 1\n\nid: 2\n\n", b"id: 3\n\n"]
    assert type(out[-1]) is LastChunk and type(out[0]) is bytes
    assert body.exhausted


async def test_without_finished_every_chunk_is_relayed_as_it_comes() -> None:
    body = _Body([b"id: 1\n\n", b"id: 2\n\n"])
    out = await _relayed(body, finished=False)
    assert out == [b"id: 1\n\n", b"id: 2\n\n"] and all(type(c) is bytes for c in out)
    assert body.exhausted


async def test_a_body_that_ends_mid_event_ends_with_an_empty_last_chunk() -> None:
    body = _Body([b"id: 1\n\nid: 2"])  # an unterminated trailing event is discarded, as clients do
    out = await _relayed(body, finished=True)
    assert out == [b"id: 1\n\n"] and type(out[0]) is LastChunk


async def _sent(chunks: list[bytes]) -> list[dict[str, Any]]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not asked: the scope is watched")

    await StreamResponse(200, [], source())({WATCHED: True}, receive, send)
    return messages[1:]


async def test_a_last_chunk_carries_the_end_of_the_body() -> None:
    assert await _sent([b"a", LastChunk(b"b")]) == [
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b", "more_body": False},
    ]


async def test_a_stream_without_a_last_chunk_ends_with_an_empty_body() -> None:
    sent = await _sent([b"a"])
    assert sent[-1] == {"type": "http.response.body", "body": b""}
    assert len(sent) == 2


_line = st.text().filter(lambda t: "\n" not in t and "\r" not in t)


@given(data=st.text(), event=st.sampled_from([None, "message"]), id=st.none() | _line,
       retry=st.none() | _line, newline=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_message_event_is_encode_event(data: str, event: str | None, id: str | None, retry: str | None,
                                       newline: bytes) -> None:
    assert message_event(data.encode(), event=event, id=id, retry=retry, newline=newline) == \
        encode_event(data, event=event, id=id, retry=retry, newline=newline).raw
