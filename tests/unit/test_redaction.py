"""What the proxy's logs may print of a request target (proxy/transport/paths.py `redact_path`), the
log filters that apply it (proxy/observe/access_log.py), and where RFC 9728 metadata is pointed to
(proxy/auth/resource.py). The real proxy's log files: tests/integration/test_secrets.py."""

from __future__ import annotations

import logging
import string
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth.authenticator import AuthFailure
from proxy.auth.resource import challenge, metadata, metadata_url
from proxy.config import Config, parse
from proxy.observe.access_log import RedactTokens, RedactWebSocketPaths
from proxy.transport.paths import LOGGED_QUERY_KEYS, LOGGED_WORDS, REDACTED, redact_path

TOKEN = "yFDRN8URcOWYvzJPORQRJXglXP8H22PZxPMEVKh7uQY"
URL_SAFE = string.ascii_letters + string.digits + "-_"
PRINTABLE = {*LOGGED_WORDS, *LOGGED_QUERY_KEYS, REDACTED}


@pytest.mark.parametrize(("target", "logged"), [
    (f"/{TOKEN}/mcp", "/[redacted]/mcp"),
    (f"/mcp/{TOKEN}", "/mcp/[redacted]"),
    (f"/{TOKEN}/messages/?session_id=abc", "/[redacted]/messages/?session_id=[redacted]"),
    (f"/{TOKEN}", "/[redacted]"),
    (f"/{TOKEN}/", "/[redacted]/"),
    (f"/{TOKEN}/mcp/x", "/[redacted]/mcp/[redacted]"),
    (f"/{TOKEN}/mcp/.well-known/openid-configuration", "/[redacted]/mcp/.well-known/openid-configuration"),
    (f"/.well-known/oauth-protected-resource/{TOKEN}/mcp", "/.well-known/oauth-protected-resource/[redacted]/mcp"),
    (f"/{TOKEN[:-5]}/mcp", "/[redacted]/mcp"),  # mistyped
    (f"//{TOKEN}//sse", "//[redacted]//sse"),
    ("/" + quote(quote("".join(f"%{ord(c):02X}" for c in TOKEN))) + "/mcp", "/[redacted]/mcp"),
    (f"/{TOKEN[:9]}%2F{TOKEN[9:]}/mcp", "/[redacted]/mcp"),
    (f"/mcp?token={TOKEN}", "/mcp?token=[redacted]"),
    (f"/healthz?a=1&access_token={TOKEN}&", "/healthz?[redacted]=[redacted]&access_token=[redacted]&"),
    (f"/metrics?{TOKEN}", "/metrics?[redacted]"),
    (f"/?{TOKEN}={TOKEN}", "/?[redacted]=[redacted]"),
    ("/mcp", "/mcp"), ("/", "/"), ("/favicon.ico", "/favicon.ico"), ("/MCP", "/[redacted]"),
    ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource/mcp"),
    ("*", "[redacted]"),
])
def test_redact_path_keeps_only_the_proxys_own_words(target, logged):
    assert redact_path(target) == logged


def uvicorn_prints(raw_target: str) -> str:
    """What uvicorn's access log prints for a request target: the path decoded once and re-quoted
    (uvicorn.protocols.utils.get_path_with_query_string), the query as sent."""
    path, sep, query = raw_target.partition("?")
    return quote(unquote(path)) + sep + query


def encoded(token: str, ways: list[int]) -> str:
    """`token` with each character as is, %XX, %xx or %25XX (double-encoded), `ways` cycling."""
    forms = (lambda c: c, lambda c: f"%{ord(c):02X}", lambda c: f"%{ord(c):02x}", lambda c: f"%25{ord(c):02X}")
    return "".join(forms[ways[i % len(ways)]](c) for i, c in enumerate(token))


tokens = st.text(URL_SAFE, min_size=20, max_size=64).filter(lambda t: not any(t in w for w in PRINTABLE))
words = st.sampled_from(sorted(LOGGED_WORDS))
junk = st.text(string.printable.replace("?", "").replace("#", ""), max_size=8)


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """(token, a request target that carries it): in a path segment or a query name or value,
    with junk around it, split by `/` or `%2F`, percent-encoded any mix of ways."""
    token = draw(tokens)
    carried = encoded(token, draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)))
    if draw(st.booleans()):
        cut = draw(st.integers(1, len(carried) - 1))
        if carried[cut - 1] != "%" and "%" not in carried[max(0, cut - 3):cut]:
            carried = carried[:cut] + draw(st.sampled_from(["/", "%2F", "%252F", "%2f"])) + carried[cut:]
    carried = draw(junk).replace("/", "") + carried + draw(junk).replace("/", "")
    segments = draw(st.lists(words, max_size=5))
    where = draw(st.sampled_from(["path", "query name", "query value"]))
    query = draw(st.lists(st.tuples(st.sampled_from(sorted(LOGGED_QUERY_KEYS)), junk), max_size=3))
    params = [f"{k}={quote(v)}" for k, v in query]
    if where == "path":
        segments.insert(draw(st.integers(0, len(segments))), carried)
    else:
        param = f"{quote(carried, safe='%')}=x" if where == "query name" else f"access_token={quote(carried, safe='%')}"
        params.insert(draw(st.integers(0, len(params))), param)
    target = "/" + "/".join(segments) + ("?" + "&".join(params) if params or draw(st.booleans()) else "")
    return token, target


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(targets())
def test_no_token_survives_redaction_whatever_the_encoding(case):
    token, target = case
    for printed in (target, uvicorn_prints(target)):
        logged = redact_path(printed)
        decoded = [logged]
        for _ in range(3):
            decoded.append(unquote(decoded[-1]))
        assert not any(token in form for form in decoded), (printed, logged)
        # Structurally: nothing but the proxy's words, [redacted] and separators.
        path, _, query = logged.partition("?")
        assert set(path.split("/")) <= PRINTABLE
        assert all(p.partition("=")[0] in PRINTABLE | {""} and p.partition("=")[2] in ("", REDACTED)
                   for p in query.split("&"))


def record(logger: str, msg: str, args: tuple[object, ...]) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.INFO, __file__, 1, msg, args, None)


def test_access_log_filter_redacts_and_drops_what_it_cannot_redact():
    access = RedactTokens()
    line = record("uvicorn.access", '%s - "%s %s HTTP/%s" %d',
                  ("127.0.0.1:1", "GET", f"/{TOKEN}/mcp?token=x", "1.1", 404))
    assert access.filter(line)
    assert line.getMessage() == '127.0.0.1:1 - "GET /[redacted]/mcp?token=[redacted] HTTP/1.1" 404'
    assert not access.filter(record("uvicorn.access", "%s", (f"GET /{TOKEN}/mcp",)))  # unknown shape: dropped
    ws = RedactWebSocketPaths()
    line = record("uvicorn.error", '%s - "WebSocket %s" %d', (("127.0.0.1", 1), f"/{TOKEN}/mcp", 403))
    assert ws.filter(line) and line.getMessage() == "('127.0.0.1', 1) - \"WebSocket /[redacted]/mcp\" 403"
    assert not ws.filter(record("uvicorn.error", '%s - "WebSocket %s" [accepted]', (f"/{TOKEN}/mcp",)))
    other = record("uvicorn.error", "Invalid HTTP request received.", ())
    assert ws.filter(other) and other.getMessage() == "Invalid HTTP request received."


def config(auth: dict[str, object]) -> Config:
    return parse({"upstream": {"url": "http://127.0.0.1:9/mcp"}, "auth": auth,
                  "servers": [{"name": "s", "methods": ["read"]}]}, "test")


def test_metadata_exists_only_with_an_authorization_server():
    base = "http://127.0.0.1:8080"
    api_only = config({"api_tokens": [{"name": "ci", "sha256": "0" * 64}]})
    assert metadata(api_only, base, "/mcp") is None
    assert metadata_url(api_only, base, "/mcp", "/mcp") is None
    failure = AuthFailure(401, "missing_credentials", "s", error=None)
    assert challenge(failure, None) == "Bearer"
    assert challenge(AuthFailure(401, "invalid_token", "s"), None) == 'Bearer error="invalid_token"'
    with_as = config({"api_tokens": [{"name": "ci", "sha256": "0" * 64}],
                                "authorization_servers": ["https://idp.example.com"]})
    assert metadata(with_as, base, "/mcp") == {"resource": f"{base}/mcp", "authorization_servers": [
        "https://idp.example.com"], "bearer_methods_supported": ["header"], "resource_name": "mcp-policy-proxy"}
    well_known = f"{base}/.well-known/oauth-protected-resource"
    assert metadata_url(with_as, base, "/mcp", "/mcp") == f"{well_known}/mcp"
    assert metadata_url(with_as, base, "/sse", "/messages/") == f"{well_known}/sse"
    # A URL with a URL token gets the root document: its resource (the origin) names no token.
    assert metadata_url(with_as, base, "/mcp", f"/{TOKEN}/mcp") == well_known
    assert metadata_url(with_as, base, "/mcp", f"/mcp/{TOKEN}") == well_known
    assert metadata(with_as, base, "")["resource"] == base  # type: ignore[index]
    assert challenge(failure, well_known) == f'Bearer resource_metadata="{well_known}"'
