"""The strict parse's fast path (orjson plus what the text shows) agrees with the strict decoder
(hypothesis): for every generated body — duplicate keys (also spelled with escapes), keys that
differ only in case, whitespace around colons, escaped quotes, integers beyond 64 bits, huge floats,
deep nesting, junk — both give the same value (and value count) or the same refusal."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.jsonrpc import MAX_DEPTH, ProtocolError, _decode, _loads_strictly, _values, parse_client_body

keys = st.sampled_from(["a", "A", "send", "Send", "\u017fend", "x\"y", "k\\", "ß", "SS", "é", "\u0130", "id"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(alphabet="a\"\\: {}[],\u00e9\n", max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=20)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    value = draw(values)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " : "), (",\n", ":\t")]))
    text = json.dumps(value, separators=separators, ensure_ascii=draw(st.booleans()))
    edit = draw(st.sampled_from(["none", "none", "dup", "escaped dup", "deep", "junk", "bigint", "huge"]))
    if edit == "dup" and text.startswith("{") and len(text) > 2:
        text = '{"a":1,"a":2,' + text[1:] if text != "{}" else '{"a":1,"a":2}'
    elif edit == "escaped dup":
        text = '{"a":1,"\\u0061":2}'
    elif edit == "deep":
        depth = draw(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2))
        text = "[" * depth + text + "]" * depth
    elif edit == "junk":
        text += draw(st.sampled_from([" x", "}", ",", "\ufeff"]))
    elif edit == "bigint":
        text = '{"n":' + str(2**64 + draw(st.integers(0, 10))) + "}"
    elif edit == "huge":
        text = '{"n":1e400}'
    return text.encode("utf-8", "surrogatepass")


def outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(body)
    except ProtocolError as exc:
        return "refused", exc.message


def strict_with_values(body: bytes) -> tuple[Any, int | None]:
    obj = _loads_strictly(body)
    try:
        return obj, _values(obj, MAX_DEPTH) if isinstance(obj, dict | list) else 1
    except Exception as exc:  # too deep or infinite: the fast path must not have counted it either
        return obj, type(exc).__name__  # type: ignore[return-value]


@settings(max_examples=600, deadline=None)
@given(bodies())
def test_the_fast_path_agrees_with_the_strict_decoder(body: bytes) -> None:
    fast, strict = outcome(_decode, body), outcome(strict_with_values, body)
    assert fast[0] == strict[0], (body, fast, strict)
    if fast[0] == "refused":
        assert fast[1] == strict[1]
        return
    (fast_obj, fast_values), (strict_obj, strict_values) = fast[1], strict[1]
    assert json.dumps(fast_obj, sort_keys=True) == json.dumps(strict_obj, sort_keys=True), body
    assert fast_values is None or fast_values == strict_values, body


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_messages_parse_alike_on_both_paths(body: bytes) -> None:
    """parse_client_body end to end: the canonical encoding, or the refusal, of the strict decoder."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {}}}
    wrapped = body if body.startswith(b"{") else b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' \
        b'{"name":"t","arguments":{"v":' + body + b"}}}"
    try:
        got: Any = parse_client_body(wrapped).canonical
    except ProtocolError as exc:
        got = exc.message
    try:
        obj = _loads_strictly(wrapped)
        expected: Any = "strict accepts"
    except ProtocolError as exc:
        expected = exc.message
    if expected != "strict accepts":
        assert got == expected, wrapped
    else:
        assert isinstance(got, bytes | str)
        if isinstance(got, bytes):
            assert json.loads(got) == json.loads(json.dumps(obj)), wrapped
    assert message  # the shape the wrapper mimics
