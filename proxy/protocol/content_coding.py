"""HTTP content codings of upstream answers: `gzip`/`x-gzip` and `deflate`, decoded incrementally.

The proxy asks the upstream for `Accept-Encoding: identity`, but an upstream (or a layer in front
of it) may compress anyway. Its SSE and JSON parsers must see the bytes the client will see, so an
encoded body is decoded before anyone reads it, and a coding the proxy cannot decode is refused
rather than relayed with its encoding stripped.

Decoding is bounded: each call to zlib produces at most one slice (`slice_bytes`), so a
decompression bomb never allocates more than a slice at a time; the consumer bounds the total
(SSE events and JSON bodies have byte limits). No I/O here.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

SLICE_BYTES = 64 * 1024

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper only
_ZLIB_WBITS = zlib.MAX_WBITS  # RFC 1950 wrapper (what `deflate` means per RFC 9110)
_RAW_WBITS = -zlib.MAX_WBITS  # bare RFC 1951 stream (what some servers send, and browsers accept)

_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class ContentCodingError(ValueError):
    """An encoded body that cannot be decoded (corrupt, truncated, or data after its end)."""


class UnsupportedCoding(ContentCodingError):
    """A Content-Encoding the proxy does not decode (br, zstd, compress, unknown, stacked codings)."""


def decoder_for(values: Iterable[str], slice_bytes: int = SLICE_BYTES) -> Decoder | None:
    """The decoder for the Content-Encoding field values of a response; None for identity.

    Several fields are one list (RFC 9110 §5.3). Empty elements and `identity` are ignored; more
    than one remaining coding (stacked, even `gzip, gzip`) is refused like an unknown one.
    """
    given = ", ".join(v.strip() for v in values)
    tokens = [t for t in (t.strip().lower() for t in given.split(",")) if t and t != "identity"]
    if not tokens:
        return None
    if len(tokens) > 1:
        raise UnsupportedCoding(f"unsupported Content-Encoding: {given[:100]} (stacked codings)")
    coding = _CODINGS.get(tokens[0])
    if coding is None:
        raise UnsupportedCoding(f"unsupported Content-Encoding: {given[:100]}")
    return Decoder(coding, slice_bytes)


def _is_zlib_header(cmf: int, flg: int) -> bool:
    """RFC 1950 §2.2: method 8 (deflate), window ≤ 32 KiB, header check bits."""
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and ((cmf << 8) | flg) % 31 == 0


class Decoder:
    """Incremental decoder of one body. `feed` each received piece (exhausting what it yields
    before feeding the next), then `close` at the end of the body."""

    __slots__ = ("_head", "_slice", "_z", "coding")

    def __init__(self, coding: str, slice_bytes: int = SLICE_BYTES) -> None:
        if coding not in ("gzip", "deflate"):
            raise UnsupportedCoding(f"unsupported Content-Encoding: {coding}")
        self.coding = coding
        self._slice = slice_bytes
        self._z: zlib._Decompress | None = None  # created with the first bytes
        self._head = b""  # deflate: the first byte, until the second tells zlib from raw

    def _start(self, data: bytes) -> bytes:
        if self.coding == "gzip":
            self._z = zlib.decompressobj(_GZIP_WBITS)
            return data
        data = self._head + data
        if len(data) < 2:
            self._head = data
            return b""
        self._head = b""
        self._z = zlib.decompressobj(_ZLIB_WBITS if _is_zlib_header(data[0], data[1]) else _RAW_WBITS)
        return data

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of `data`, in non-empty slices of at most `slice_bytes`."""
        if self._z is None:
            data = self._start(data)
            if not data:
                return
        z = self._z
        assert z is not None
        limit = self._slice
        while True:
            if z.eof:
                if not data:
                    return
                if self.coding != "gzip":
                    raise ContentCodingError("data after the end of the deflate stream")
                z = self._z = zlib.decompressobj(_GZIP_WBITS)  # RFC 1952: a gzip body may hold several members
            try:
                out = z.decompress(data, limit)
            except zlib.error as exc:
                raise ContentCodingError(f"corrupt {self.coding} data ({exc})") from None
            if out:
                yield out
            if z.eof:
                data = z.unused_data
                continue
            data = z.unconsumed_tail
            # Output short of the slice: zlib has consumed all the input and holds nothing back.
            if not data and len(out) < limit:
                return

    def close(self) -> None:
        """The body ended: refuse a truncated stream. An empty body is an empty body."""
        if self._z is None:
            if self._head:
                raise ContentCodingError(f"truncated {self.coding} data")
            return
        if not self._z.eof:
            raise ContentCodingError(f"truncated {self.coding} data")
