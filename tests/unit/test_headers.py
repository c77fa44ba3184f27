import base64

import pytest

from proxy.protocol.headers import (
    check_routing_headers,
    client_response_headers,
    decode_header_value,
    upstream_request_headers,
)
from proxy.protocol.jsonrpc import HEADER_MISMATCH, ProtocolError, parse_client_body

META = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}'
MODERN_CALL = parse_client_body(
    ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},' + META + "}}").encode())
OLD_CALL = parse_client_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}')
MODERN = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "echo")]


def test_modern_request_with_agreeing_headers_passes():
    check_routing_headers(MODERN, MODERN_CALL)


@pytest.mark.parametrize("headers", [
    [h for h in MODERN if h[0] != "mcp-method"],
    [h for h in MODERN if h[0] != "mcp-name"],
    [h for h in MODERN if h[0] != "mcp-protocol-version"],
    [*MODERN[:2], ("mcp-name", "delete_everything")],
    [MODERN[0], ("mcp-method", "tools/list"), MODERN[2]],
    [*MODERN, ("mcp-name", "echo")],
    [("mcp-protocol-version", "2025-11-25"), *MODERN[1:]],
])
def test_modern_request_with_missing_or_disagreeing_headers_is_refused(headers):
    with pytest.raises(ProtocolError) as err:
        check_routing_headers(headers, MODERN_CALL)
    assert err.value.code == HEADER_MISMATCH and err.value.status == 400 and err.value.id == 1


def test_older_revisions_may_omit_headers_but_present_ones_must_agree():
    check_routing_headers([("mcp-protocol-version", "2025-06-18")], OLD_CALL)
    with pytest.raises(ProtocolError):
        check_routing_headers([("mcp-name", "other")], OLD_CALL)
    ping = parse_client_body(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    with pytest.raises(ProtocolError):
        check_routing_headers([("mcp-name", "echo")], ping)


def test_base64_header_values_are_decoded():
    encoded = "=?base64?" + base64.b64encode("café".encode()).decode() + "?="
    assert decode_header_value(encoded) == "café"
    assert decode_header_value("plain") == "plain"


def test_client_credentials_and_hop_by_hop_headers_are_not_forwarded():
    out = upstream_request_headers(
        [("host", "proxy:8080"), ("authorization", "Bearer secret"), ("cookie", "s=1"), ("connection", "x-foo"),
         ("x-foo", "1"), ("mcp-session-id", "abc"), ("mcp-param-region", "eu"), ("content-length", "3"),
         ("accept", "application/json, text/event-stream"), ("origin", "http://localhost")],
        {"authorization": "Bearer proxy-own"})
    # Mcp-Param-* come back with the verdict, only when the called tool declares them and they agree.
    assert out == {"mcp-session-id": "abc",
                   "accept": "application/json, text/event-stream", "accept-encoding": "identity",
                   "authorization": "Bearer proxy-own"}


def test_only_checked_mcp_fields_are_forwarded():
    sent = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "t"),
            ("mcp-session-id", "s"), ("mcp-param-region", "eu"), ("mcp-tool-name", "other"), ("mcp-foo", "x")]
    assert set(upstream_request_headers(sent, {})) == {"mcp-protocol-version", "mcp-method", "mcp-name",
                                                       "mcp-session-id", "accept-encoding"}


def test_response_headers_drop_hop_by_hop_and_keep_repeats():
    out = client_response_headers([("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"),
                                   ("Mcp-Session-Id", "s1"), ("Link", "a"), ("Link", "b"), ("Content-Length", "9")])
    assert out == [(b"content-type", b"text/event-stream"), (b"mcp-session-id", b"s1"), (b"link", b"a"),
                   (b"link", b"b")]


def test_legacy_sse_does_not_require_modern_headers_but_checks_present_ones():
    check_routing_headers([], MODERN_CALL, streamable=False)
    with pytest.raises(ProtocolError):
        check_routing_headers([("mcp-name", "other")], MODERN_CALL, streamable=False)


LOOK_ALIKES = ["mcp_method", "mcp_name", "mcp_session_id", "mcp_protocol_version", "mcp_param_x", "x_custom",
               "Mcp_Method", "mcp-param_region", "_"]


def test_underscore_names_are_dropped_so_cgi_cannot_map_them_onto_checked_headers():
    canonical = [("mcp-method", "tools/call"), ("mcp-name", "echo"), ("mcp-session-id", "abc"),
                 ("mcp-protocol-version", "2026-07-28")]
    look_alikes = [(name, "delete_everything") for name in LOOK_ALIKES]
    out = upstream_request_headers([*canonical[:2], *look_alikes, *canonical[2:], ("x-custom", "ok")], {})
    assert out == {**dict(canonical), "x-custom": "ok", "accept-encoding": "identity"}


def test_underscore_drop_keeps_connection_rules_and_the_proxys_own_headers():
    out = upstream_request_headers(
        [("connection", "keep-alive, x-hop"), ("x-hop", "1"), ("keep-alive", "5"), ("te", "trailers"),
         ("connection", "x_other"), ("mcp_method", "x"), ("mcp-method", "tools/list"), ("accept", "*/*")],
        {"x_proxy_own": "kept"})  # the operator's configured headers are the operator's choice
    assert out == {"mcp-method": "tools/list", "accept": "*/*", "accept-encoding": "identity",
                   "x_proxy_own": "kept"}


def test_request_headers_from_any_iterable_keep_the_last_repetition():
    out = upstream_request_headers(iter([("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("x_c", "4")]), {})
    assert list(out.items()) == [("x-a", "3"), ("x-b", "2"), ("accept-encoding", "identity")]
