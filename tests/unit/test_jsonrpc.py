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
