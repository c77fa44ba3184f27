import pytest

from proxy.protocol.sse import SSEDecoder, SSEError, encode_event

STREAM_CRLF = (b": ping\r\n\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\nid: 7\r\nretry: 3000\r\ndata:\r\n\r\n"
               b"data: line1\r\ndata: line2\r\n\r\n")
STREAM_LF = STREAM_CRLF.replace(b"\r\n", b"\n")
STREAM_CR = STREAM_CRLF.replace(b"\r\n", b"\r")


def decode_all(stream: bytes, step: int) -> list:
    d = SSEDecoder()
    events = []
    for i in range(0, len(stream), step):
        events.extend(d.feed(stream[i:i + step]))
    return events + d.close()  # a final CR may be half a CRLF until the stream ends


@pytest.mark.parametrize("stream", [STREAM_CRLF, STREAM_LF, STREAM_CR], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_events_survive_any_chunking_byte_for_byte(stream, step):
    events = decode_all(stream, step)
    assert b"".join(e.raw for e in events) == stream
    ping, msg, primer, multi = events
    assert not ping.has_data
    assert msg.event == "message" and msg.data == '{"a":1}'
    assert primer.id == "7" and primer.retry == "3000" and primer.has_data and primer.data == ""
    assert multi.data == "line1\nline2"


def test_rewritten_event_keeps_type_id_and_line_ending():
    ev = decode_all(b"event: message\r\nid: 42\r\ndata: old\r\n\r\n", 5)[0]
    new = ev.with_data("new")
    assert new.raw == b"event: message\r\nid: 42\r\ndata: new\r\n\r\n"


def test_incomplete_event_is_held_until_its_blank_line():
    d = SSEDecoder()
    assert d.feed(b"data: x\n") == []
    assert [e.data for e in d.feed(b"\n")] == ["x"]


def test_trailing_cr_waits_for_a_possible_lf():
    d = SSEDecoder()
    assert d.feed(b"data: x\r\n\r") == []
    [ev] = d.feed(b"\n")
    assert ev.raw == b"data: x\r\n\r\n"


def test_oversize_event_is_refused():
    d = SSEDecoder(max_event_bytes=10)
    with pytest.raises(SSEError):
        d.feed(b"data: " + b"x" * 20)


def test_encode_event_splits_multiline_data():
    assert encode_event("a\nb", event="message").raw == b"event: message\ndata: a\ndata: b\n\n"


def test_close_discards_an_unterminated_tail():
    d = SSEDecoder()
    assert d.feed(b"data: done\n\ndata: cut") != []
    assert d.close() == []
