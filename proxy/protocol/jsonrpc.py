"""JSON-RPC 2.0 messages as MCP uses them: strict parsing and canonical re-serialization.

The proxy decides on what it parsed and forwards the re-serialization of exactly that, so a
peer whose JSON parser treats duplicate keys, odd encodings or non-standard numbers differently
cannot be shown a message the policy never saw.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
FORBIDDEN = -32001
HEADER_MISMATCH = -32020

# How deeply a client message may nest (objects and arrays): far beyond any tool's arguments, and
# well within what the policy engine, the schema validator and the decision log can take.
MAX_DEPTH = 64
# How many JSON values (objects, arrays, strings, numbers, literals, at any depth) one client message
# may hold. Deciding costs about a microsecond per value here (parsing, the policy engine's input,
# the schema validator, the decision log), all of it on the event loop: 10,000 values keep the worst
# message to ~10 ms, so one client cannot stall every other. A model writes far fewer values into
# one tool call (each costs it at least a token); long strings cost little and stay allowed.
MAX_VALUES = 10_000
# From this revision on every result carries `resultType` (2026-07-28: required; the SDK's clients
# refuse a result without one).
RESULT_TYPE_REVISION = "2026-07-28"
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}")


class Kind(StrEnum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class ProtocolError(Exception):
    """A client message the proxy refuses before it reaches any policy or upstream."""

    def __init__(self, code: int, message: str, status: int = 400, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.id = id

    def to_message(self) -> dict[str, Any]:
        return error_response(self.id, self.code, self.message)


@dataclass(slots=True)
class Message:
    """One parsed JSON-RPC message; `data` is the object that will be serialized onward."""

    data: dict[str, Any]
    kind: Kind
    method: str | None = None
    # The canonical encoding of `data`, made once when a client message is parsed (what is forwarded).
    canonical: bytes | None = None

    @property
    def id(self) -> Any:
        return self.data.get("id")

    @property
    def params(self) -> dict[str, Any]:
        params = self.data.get("params")
        return params if isinstance(params, dict) else {}

    def encode(self) -> bytes:
        return self.canonical if self.canonical is not None else encode(self.data)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    if len(pairs) > 1 and (twins := case_twins(obj)):
        raise ValueError(f"keys {twins[0]!r} and {twins[1]!r} differ only in case")
    return obj


def case_twins(obj: dict[str, Any]) -> tuple[str, str] | None:
    """Two keys of `obj` that are one under Unicode case folding ("send", "Send", "\u017fend"), or None.

    Decoders that match keys case-insensitively (Go's encoding/json, and so MCP servers and clients
    built on it) would read such a twin where the proxy read the other key.
    """
    if len(obj) < 2:
        return None
    joined = "\0".join(obj)
    if joined.casefold() == joined:  # case folding maps each character alone: no key changes, no twins
        return None
    if len(set(map(str.casefold, obj))) == len(obj):
        return None
    folded: dict[str, str] = {}
    for key in obj:
        twin = folded.setdefault(key.casefold(), key)
        if twin is not key:
            return twin, key
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# parse_float stays the C float (a Python hook would cost a call per number): a number beyond the
# range of a double (1e400, read as infinity) is refused by the walk in parse_client_body instead.
_decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
_INFINITIES = (float("inf"), float("-inf"))


# The fast path is orjson, taken when the text shows everything orjson would hide: without an
# escaped quote in the body, a key ends at every quote followed by a colon and nowhere else, so a
# duplicate key (which orjson drops) shows as more key ends than keys parsed; an integer beyond
# 64 bits (which orjson reads as a float) shows as a float of 2**63 or more. Every other body, and
# every error (for its message), goes to the strict decoder: both give the same value or refusal.
# Only small bodies take it: a large hostile one (case twins) would be parsed twice.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_BIG = float(2**63)
FAST_PARSE_BYTES = 64 * 1024


def loads_strict(body: bytes) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, keys that differ only in case, NaN/Infinity and
    trailing data (numbers beyond the range of a double are read as infinities: parse_client_body
    refuses them)."""
    return _decode(body)[0]


def _decode(body: bytes) -> tuple[Any, int | None]:
    """loads_strict's value and, from the fast path, how many values it holds (within MAX_DEPTH,
    no infinities); None from the strict decoder, whose value is yet to be walked (_values)."""
    if len(body) <= FAST_PARSE_BYTES and b'\\"' not in body:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            shape = _plain_shape(obj, MAX_DEPTH) if obj.__class__ is dict or obj.__class__ is list else None
            if shape is not None and shape[1] == _key_ends(body):
                return obj, shape[0]
    return _loads_strictly(body), None


def _key_ends(body: bytes) -> int:
    if b'" ' in body or b'"\n' in body or b'"\t' in body or b'"\r' in body:
        return len(_KEY_END.findall(body))  # some quote is followed by whitespace: maybe a key's
    return body.count(b'":')


def _plain_shape(node: Any, budget: int) -> tuple[int, int] | None:
    """(values, object keys) that `node` holds, itself included; None for anything the strict path
    must judge: nesting deeper than `budget`, keys that differ only in case, a float of 2**63 or more."""
    if budget <= 0:
        return None
    if node.__class__ is dict:
        if len(node) > 1 and case_twins(node) is not None:
            return None
        keys, children = len(node), node.values()
    else:
        keys, children = 0, node
    values = 1 + len(children)
    for child in children:
        kind = child.__class__
        if kind is dict or kind is list:
            shape = _plain_shape(child, budget - 1)
            if shape is None:
                return None
            values += shape[0] - 1
            keys += shape[1]
        elif kind is float and not -_BIG < child < _BIG:
            return None
    return values, keys


def _loads_strictly(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte order mark")
        return _decoder.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(PARSE_ERROR, f"Parse error: {exc}") from None
    except RecursionError:
        raise ProtocolError(PARSE_ERROR, "Parse error: nested too deeply") from None


def encode(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError) as exc:
        # Lone surrogates and integers beyond 64 bits parse in Python but have no portable encoding.
        raise ProtocolError(PARSE_ERROR, f"Parse error: cannot re-encode message ({exc})") from None


def error_response(id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def undecided(id: Any, reason: str) -> dict[str, Any]:
    """What the client gets instead of an upstream answer the proxy could not decide on."""
    return error_response(id, INTERNAL_ERROR, f"Upstream answer could not be decided ({reason}); it was not relayed")


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def to_message(obj: Any) -> Message:
    """Classify one decoded JSON value as a JSON-RPC 2.0 message, or raise INVALID_REQUEST."""
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")
    msg_id = obj.get("id")
    if obj.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', id=_safe_id(msg_id))
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise ProtocolError(INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string',
                                id=_safe_id(msg_id))
        if "params" in obj and not isinstance(obj["params"], dict):
            raise ProtocolError(INVALID_PARAMS, 'Invalid params: "params" must be an object', id=_safe_id(msg_id))
        if "result" in obj or "error" in obj:
            raise ProtocolError(INVALID_REQUEST, "Invalid Request: a request cannot carry result or error",
                                id=_safe_id(msg_id))
        if "id" not in obj:
            return Message(obj, Kind.NOTIFICATION, method)
        if not _valid_id(msg_id):
            raise ProtocolError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Message(obj, Kind.REQUEST, method)
    if ("result" in obj) == ("error" in obj):
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: a response carries exactly one of result and error",
                            id=_safe_id(msg_id))
    if not _valid_id(msg_id) and not (msg_id is None and "error" in obj):
        raise ProtocolError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    if "error" in obj:
        err = obj["error"]
        if not (isinstance(err, dict) and isinstance(err.get("code"), int) and isinstance(err.get("message"), str)):
            raise ProtocolError(INVALID_REQUEST, 'Invalid Request: "error" needs an integer code and a message',
                                id=_safe_id(msg_id))
    return Message(obj, Kind.RESPONSE)


def _safe_id(value: Any) -> Any:
    """The id to answer a refused message with: None unless it is a valid id that can be encoded
    (not an integer beyond 64 bits, not a lone surrogate), so the answer itself never fails."""
    if not _valid_id(value):
        return None
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    return value


# A JSON string (skipped whole), or a comma or opening bracket outside strings.
# A string runs to its closing quote or, unterminated, to the end of the body: a failed match that
# rescanned to the end from every quote would be quadratic (`\"\"\"…` never closing).
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[,\[{]')


def more_values_than(body: bytes, limit: int) -> bool:
    """Whether `body`, if it is JSON, holds more than `limit` values — found without parsing it,
    stopping as soon as it is certain: a value follows each comma outside strings, and each opening
    bracket is one. (For a body that is no JSON the answer means nothing: parsing refuses it.)"""
    commas = opens = 0
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token == b",":
            commas += 1
        elif token in (b"[", b"{"):
            opens += 1
        else:
            continue
        if commas >= limit or opens > limit:
            return True
    return False


def parse_client_body(body: bytes) -> Message:
    """Parse one HTTP request body from a client into exactly one message.

    JSON-RPC batches (allowed only by revision 2025-03-26, removed in 2025-06-18 and sent by no
    official SDK) are refused: deciding and answering them message by message would multiply
    every path of the enforcement pipeline for a form no current client uses.
    """
    obj, values = _decode(body)
    if isinstance(obj, list):
        raise ProtocolError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported; "
                            "send one message per HTTP request")
    msg = to_message(obj)
    if msg.method == "tools/call":
        arguments = msg.params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            # What the policy would decide on ({}) is not what the upstream would be sent.
            raise ProtocolError(INVALID_PARAMS, 'Invalid params: "arguments" must be an object', id=_safe_id(msg.id))
    try:
        if values is None:
            values = _values(obj, MAX_DEPTH)
    except _TooDeep:
        raise ProtocolError(PARSE_ERROR, f"Parse error: nested more than {MAX_DEPTH} levels deep") from None
    except _Infinite:
        raise ProtocolError(PARSE_ERROR, "Parse error: a number is beyond the range of a double") from None
    if values > MAX_VALUES:
        raise too_many_values()
    # Encoded now, before any decision: what cannot be re-encoded (lone surrogates, integers beyond
    # 64 bits) is refused up front, and what is decided is what is sent.
    msg.canonical = encode(obj)
    return msg


def too_many_values() -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, f"Request holds more than {MAX_VALUES} JSON values", status=413)


def check_client_body(body: bytes) -> tuple[int, str, int, Any] | None:
    """parse_client_body's verdict as plain data (what a worker process can send back): None when
    the body is one message the proxy can take, else (code, message, status, id) of its refusal.
    A body of too many values is refused as soon as that is certain, before it is parsed."""
    try:
        if more_values_than(body, MAX_VALUES):
            raise too_many_values()
        parse_client_body(body)
    except ProtocolError as exc:
        return exc.code, exc.message, exc.status, exc.id
    return None


class _TooDeep(Exception):
    pass


class _Infinite(Exception):
    pass


def _values(node: dict[str, Any] | list[Any], budget: int) -> int:
    """How many values `node` holds (itself included), in one walk that also refuses nesting deeper
    than `budget` levels (_TooDeep) and infinities (_Infinite). Recursion is bounded: the JSON
    decoder already refused what Python's stack cannot hold."""
    if budget <= 0:
        raise _TooDeep
    children: Any = node.values() if node.__class__ is dict else node
    count = 1 + len(children)
    for child in children:
        kind = child.__class__
        if kind is dict or kind is list:
            count += _values(child, budget - 1) - 1
        elif kind is float and child in _INFINITIES:
            raise _Infinite
    return count


def result_type_needed(revision: str | None) -> bool:
    """Whether results in `revision` must carry `resultType` (the one rule, for every result the
    proxy makes itself)."""
    return revision is not None and _REVISION.fullmatch(revision) is not None and revision >= RESULT_TYPE_REVISION


class UndecidableAnswer(Exception):
    """Upstream data that claims to be a JSON-RPC message but is not one the proxy can decide on.

    `id` is the JSON-RPC id the data seems to answer (recovered leniently), so the client waiting
    for that answer can be told instead of waiting forever; None when none can be recovered.
    """

    def __init__(self, reason: str, id: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = id


# Keys (in any case) that make a JSON object a (would-be) JSON-RPC message rather than a plain
# HTTP error document such as OAuth's {"error": "invalid_token"}.
_MESSAGE_KEYS = frozenset({"jsonrpc", "id", "result", "method"})


def _looks_like_message(obj: dict[str, Any]) -> bool:
    return (any(k in _MESSAGE_KEYS or k.casefold() in _MESSAGE_KEYS for k in obj)
            or any(isinstance(v, dict) for k, v in obj.items() if k.casefold() == "error"))


def parse_server_data(data: bytes | str) -> Message | None:
    """Parse data from the upstream: a message, or None for a JSON object that is no message at all.

    Anything in between — not JSON, a byte order mark, trailing data, an array (batch), a scalar,
    or an object shaped like a message that is not a valid one (no "jsonrpc", "error": null beside
    "result", a bad id) — raises UndecidableAnswer: lenient client parsers would accept some of
    these, so they must never be relayed undecided. orjson keeps the last of duplicate keys, as
    the JSON parsers of the MCP SDKs do.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UndecidableAnswer(f"not JSON ({exc})", salvage_id(data)) from None
    if isinstance(obj, dict):
        if not _looks_like_message(obj):
            return None
        if twins := case_twins(obj):
            raise UndecidableAnswer(f"keys {twins[0]!r} and {twins[1]!r} differ only in case", _safe_id(obj.get("id")))
        try:
            return to_message(obj)
        except ProtocolError as exc:
            raise UndecidableAnswer(exc.message, _safe_id(obj.get("id"))) from None
    if isinstance(obj, list):
        raise UndecidableAnswer("a JSON array (batch) where one message belongs", _first_id(obj))
    raise UndecidableAnswer(f"a JSON {type(obj).__name__} where a message belongs")


def _first_id(items: list[Any]) -> Any:
    return next((_safe_id(x.get("id")) for x in items if isinstance(x, dict) and "id" in x), None)


def salvage_id(data: bytes | str) -> Any:
    """The id a lenient parser would find (BOM and whitespace stripped, first of an array)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        obj = orjson.loads(text.strip().lstrip("\ufeff"))
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, list):
        return _first_id(obj)
    return _safe_id(obj.get("id")) if isinstance(obj, dict) else None
