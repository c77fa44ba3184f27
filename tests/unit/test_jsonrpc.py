import pytest

from proxy.protocol import jsonrpc
from proxy.protocol.jsonrpc import Kind, ProtocolError


def test_request_notification_response_are_classified():
    assert jsonrpc.parse_client_body(b'{"jsonrpc":"2.0","id":1,"method":"ping"}').kind is Kind.REQUEST
    assert jsonrpc.parse_client_body(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').kind \
        is Kind.NOTIFICATION
    assert jsonrpc.parse_client_body(b'{"jsonrpc":"2.0","id":"a","result":{}}').kind is Kind.RESPONSE
    assert jsonrpc.parse_client_body(b'{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"x"}}').kind \
        is Kind.RESPONSE


@pytest.mark.parametrize("body", [
    b"not json", b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', b'{"a":NaN}', b"\xff\xfe",
    b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"x"}', b'{"jsonrpc":"2.0","method":"x"} trailing',
    b'{"jsonrpc":"2.0","method":"x","params":{"p":"\\ud800"}}',
])
def test_unparseable_bodies_are_parse_errors(body):
    with pytest.raises(ProtocolError) as err:
        jsonrpc.parse_client_body(body).encode()
    assert err.value.code == jsonrpc.PARSE_ERROR and err.value.status == 400


@pytest.mark.parametrize("body", [
    b"[]", b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', b'"x"', b'{"id":1,"method":"ping"}',
    b'{"jsonrpc":"1.0","id":1,"method":"ping"}', b'{"jsonrpc":"2.0","id":1,"method":7}',
    b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1}',
    b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}',
    b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}',
])
def test_non_jsonrpc_bodies_are_invalid_requests(body):
    with pytest.raises(ProtocolError) as err:
        jsonrpc.parse_client_body(body)
    assert err.value.code == jsonrpc.INVALID_REQUEST and err.value.status == 400


def test_forwarded_bytes_are_the_canonical_reserialization():
    msg = jsonrpc.parse_client_body(b'{ "jsonrpc" : "2.0", "id" : 7, "method" : "tools/call",\n'
                                    b' "params" : {"name": "echo", "arguments": {"text": "\\u00e9"}} }')
    expected = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"é"}}}'
    assert msg.encode() == expected.encode()


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', b'{"jsonrpc":"2.0","id":1,"method":"x","params":null}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":"{}"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[]}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":1}}',
])
def test_params_and_arguments_must_be_objects(body):
    with pytest.raises(ProtocolError) as err:
        jsonrpc.parse_client_body(body)
    assert err.value.code == jsonrpc.INVALID_PARAMS and err.value.id == 1


def test_null_or_absent_arguments_are_no_arguments():
    for params in (b'{"name":"t"}', b'{"name":"t","arguments":null}'):
        assert jsonrpc.parse_client_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":%s}' % params)


def test_server_messages_and_plain_json_documents():
    assert jsonrpc.parse_server_data('{"jsonrpc":"2.0","id":1,"result":{}}') is not None
    assert jsonrpc.parse_server_data('{"x":1}') is None  # no message at all: an HTTP error document
    assert jsonrpc.parse_server_data('{"error":"invalid_token","error_description":"expired"}') is None


@pytest.mark.parametrize(("data", "salvaged"), [
    ("nope", None),
    ('\ufeff{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}', 3),  # fetch().json() strips a BOM
    ('[{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}]', 4),  # the TypeScript SDK accepts arrays
    ('{"jsonrpc":"2.0","id":5,"result":{"tools":[]},"error":null}', 5),
    ('{"id":6,"result":{"tools":[]}}', 6),  # no "jsonrpc"
    ('{"jsonrpc":"2.0","id":7,"result":{}} {"jsonrpc":"2.0","id":8,"result":{}}', None),
    ('{"jsonrpc":"2.0","id":9,"result":{"x":"\\ud800"}}', None),  # a lone surrogate
    ('7', None), ('"text"', None), ('{"jsonrpc":"2.0","id":null,"result":{}}', None),
])
def test_would_be_messages_that_are_not_valid_are_undecidable(data, salvaged):
    with pytest.raises(jsonrpc.UndecidableAnswer) as err:
        jsonrpc.parse_server_data(data)
    assert err.value.id == salvaged


def _with_arguments(arguments: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":%s}}' % arguments.encode()


def test_a_message_holds_at_most_max_values_json_values():
    # The message, its jsonrpc, id, method, params, name, arguments and the array x: 8 values.
    room = jsonrpc.MAX_VALUES - 8
    assert jsonrpc.parse_client_body(_with_arguments('{"x":[' + ",".join(["0"] * room) + "]}"))
    with pytest.raises(ProtocolError) as err:
        jsonrpc.parse_client_body(_with_arguments('{"x":[' + ",".join(["0"] * (room + 1)) + "]}"))
    assert (err.value.status, err.value.code) == (413, jsonrpc.INVALID_REQUEST)
    # Keys are not values of their own; long strings are one value however long.
    assert jsonrpc.parse_client_body(_with_arguments('{"x":"' + "a," * 100_000 + '"}'))


@pytest.mark.parametrize(("body", "values"), [
    (b"{}", 1), (b"[]", 1), (b'{"a":[1,2,{"b":[3]}]}', 7), (b'["a,b","[{"]', 3), (b'{"a":"\\"[,{"}', 2),
    (b"[" + b",".join([b"{}"] * 50) + b"]", 51), (b"[" + b",".join([b"[]"] * 50) + b"]", 51),
])
def test_more_values_than_is_certain_before_it_says_so(body, values):
    assert not jsonrpc.more_values_than(body, values)  # never more than there are
    assert jsonrpc.more_values_than(body, values // 2 - 1) or values < 4  # and finds many early


def test_a_number_beyond_a_double_is_a_parse_error():
    for number in ("1e400", "-1e400", "1" * 400 + ".0"):
        with pytest.raises(ProtocolError) as err:
            jsonrpc.parse_client_body(_with_arguments('{"x":[' + number + "]}"))
        assert err.value.code == jsonrpc.PARSE_ERROR
    assert jsonrpc.parse_client_body(_with_arguments('{"x":1.5e308}')).params["arguments"]["x"] == 1.5e308


@pytest.mark.parametrize("rid", [b"123456789012345678901234567890", b'"\\ud800"'])
def test_a_refusal_never_carries_an_id_it_cannot_encode(rid):
    body = b'{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"t","arguments":[]}}' % rid
    with pytest.raises(ProtocolError) as err:
        jsonrpc.parse_client_body(body)
    assert err.value.id is None
    assert jsonrpc.encode(err.value.to_message())  # the answer itself always encodes


def test_check_client_body_says_what_parse_client_body_would():
    assert jsonrpc.check_client_body(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') is None
    assert jsonrpc.check_client_body(b"[]") == (jsonrpc.INVALID_REQUEST, "Invalid Request: JSON-RPC batches are "
                                                "not supported; send one message per HTTP request", 400, None)


@pytest.mark.parametrize(("revision", "needed"), [
    ("2026-07-28", True), ("2027-01-01", True), ("2025-11-25", False), ("2024-11-05", False), (None, False),
    ("latest", False), ("9", False), ("", False),
])
def test_result_type_is_needed_from_revision_2026_07_28(revision, needed):
    assert jsonrpc.result_type_needed(revision) is needed


def test_counting_values_is_linear_in_an_unterminated_string_of_escaped_quotes():
    """A failed string match rescanned from every quote would take hours on this 1 MiB body."""
    import time

    body = b'{"a":"' + b'\\"' * (512 * 1024) + b"," * 10_001
    start = time.perf_counter()
    assert jsonrpc.check_client_body(body) is not None
    assert time.perf_counter() - start < 5
