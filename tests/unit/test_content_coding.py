"""The content-coding decoder: gzip/x-gzip/deflate decoded incrementally, in bounded slices."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib

import pytest

from proxy.protocol.content_coding import SLICE_BYTES, ContentCodingError, UnsupportedCoding, decoder_for

BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + b"hello " * 5000 + b'"}]}}'


def deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


ENCODED = {
    "gzip": gzip.compress(BODY),
    "zlib": deflate(BODY, zlib.MAX_WBITS),
    "raw": deflate(BODY, -zlib.MAX_WBITS),
}
_preset = zlib.compressobj(zdict=b"preset")
WITH_PRESET_DICTIONARY = _preset.compress(b"preset dictionary") + _preset.flush()
CASES = [("gzip", "gzip"), ("x-gzip", "gzip"), ("GZip", "gzip"), ("deflate", "zlib"), ("deflate", "raw")]


def decode(header: str, pieces: list[bytes]) -> bytes:
    d = decoder_for([header])
    assert d is not None
    out = b"".join(piece for data in pieces for piece in d.feed(data))
    d.close()
    return out


@pytest.mark.parametrize(("header", "form"), CASES)
def test_decodes_whole(header, form):
    assert decode(header, [ENCODED[form]]) == BODY


@pytest.mark.parametrize(("header", "form"), CASES)
def test_decodes_one_byte_at_a_time(header, form):
    data = ENCODED[form]
    assert decode(header, [data[i:i + 1] for i in range(len(data))]) == BODY


def test_output_comes_as_soon_as_it_is_decodable():
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = c.compress(b"data: 1\n\n") + c.flush(zlib.Z_SYNC_FLUSH)
    rest = c.compress(b"data: 2\n\n") + c.flush()
    d = decoder_for(["gzip"])
    assert d is not None
    assert b"".join(d.feed(first)) == b"data: 1\n\n"  # before the stream ends
    assert b"".join(d.feed(rest)) == b"data: 2\n\n"
    d.close()


def test_several_gzip_members_are_one_body():
    assert decode("gzip", [gzip.compress(b"one ") + gzip.compress(b"two")]) == b"one two"


@pytest.mark.parametrize("values", [[], [""], ["identity"], ["Identity", ""], [" , "]])
def test_identity_needs_no_decoder(values):
    assert decoder_for(values) is None


def test_identity_elements_and_several_fields_are_one_list():
    assert decoder_for(["identity", "gzip"]) is not None
    assert decoder_for(["gzip, identity"]) is not None
    with pytest.raises(UnsupportedCoding, match="stacked"):
        decoder_for(["gzip", "gzip"])  # two fields are one list: stacked


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "x-compress", "exi", "pack200-gzip", "gzip;q=1",
                                    "aes128gcm", "whatever"])
def test_unsupported_codings_are_refused(header):
    with pytest.raises(UnsupportedCoding) as err:
        decoder_for([header])
    assert str(err.value) == f"unsupported Content-Encoding: {header}"


@pytest.mark.parametrize("header", ["gzip, gzip", "deflate, gzip", "gzip,br", "br, gzip"])
def test_stacked_codings_are_refused(header):
    with pytest.raises(UnsupportedCoding, match=r"unsupported Content-Encoding: .* \(stacked codings\)"):
        decoder_for([header])


@pytest.mark.parametrize(("header", "data"), [
    ("gzip", b"not gzip at all"),
    ("gzip", ENCODED["gzip"][:40] + b"\xff" * 40 + ENCODED["gzip"][80:]),  # damaged mid-stream
    ("gzip", ENCODED["gzip"][:-8] + b"\0\0\0\0" + ENCODED["gzip"][-4:]),  # wrong CRC-32
    ("gzip", ENCODED["gzip"] + b"trailing garbage"),
    ("deflate", b"\xff\xff\xff\xff"),
    ("deflate", ENCODED["zlib"][:-4] + b"\0\0\0\0"),  # wrong Adler-32
    ("deflate", ENCODED["zlib"] + b"x"),  # data after the end of the stream
    ("deflate", ENCODED["raw"] + b"x"),
    ("deflate", WITH_PRESET_DICTIONARY),  # a dictionary the proxy does not have
])
def test_corrupt_data_is_an_error(header, data):
    d = decoder_for([header])
    assert d is not None
    with pytest.raises(ContentCodingError):
        for _ in d.feed(data):
            pass
        d.close()


@pytest.mark.parametrize(("header", "form"), CASES)
def test_truncated_stream_is_an_error_at_close(header, form):
    d = decoder_for([header])
    assert d is not None
    out = b"".join(d.feed(ENCODED[form][:-10]))
    assert BODY.startswith(out)
    with pytest.raises(ContentCodingError, match="truncated"):
        d.close()


@pytest.mark.parametrize("header", ["gzip", "deflate"])
def test_a_single_byte_is_truncated_and_nothing_is_an_empty_body(header):
    d = decoder_for([header])
    assert d is not None
    assert list(d.feed(b"\x1f" if header == "gzip" else b"\x78")) == []
    with pytest.raises(ContentCodingError):
        d.close()
    d = decoder_for([header])
    assert d is not None
    d.close()  # no bytes at all: an empty body (a 202 or 204 that still names a coding)


def gzip_bomb(gib: int = 1) -> bytes:
    """~1 MiB of gzip expanding to `gib` GiB of zeros: one independent deflate block run repeated."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, refers to nothing before it
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(mib, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (1024 * gib) + c.flush()
            + struct.pack("<II", crc, (gib << 30) & 0xFFFFFFFF))


def test_a_bomb_fed_in_small_pieces_is_decoded_a_slice_at_a_time():
    bomb = gzip_bomb()
    assert len(bomb) < 2 << 20
    d = decoder_for(["gzip"])
    assert d is not None
    total = largest = 0
    tracemalloc.start()
    try:
        for i in range(0, len(bomb), 4096):
            for piece in d.feed(bomb[i:i + 4096]):
                total += len(piece)
                largest = max(largest, len(piece))
        d.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 1 << 30 and largest == SLICE_BYTES
    assert peak < 4 * SLICE_BYTES + 64 * 1024  # a slice (and zlib's window), never the expansion


def test_slice_size_is_configurable_and_respected():
    d = decoder_for(["deflate"], slice_bytes=1000)
    assert d is not None
    pieces = list(d.feed(ENCODED["zlib"]))
    d.close()
    assert b"".join(pieces) == BODY and max(map(len, pieces)) == 1000 and len(pieces) == -(-len(BODY) // 1000)
