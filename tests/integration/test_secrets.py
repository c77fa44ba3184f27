"""Secrets never printed (issue 10 point 6), through the real proxy with `--access-log`.

Whatever a client sends (a routed or unrouted path, a discovery path, a query string, any
percent-encoding, a WebSocket upgrade, an invalid request), no URL token, bearer token or session id
reaches the proxy's log files. RFC 9728 metadata exists only where an authorization server issues
bearer tokens. And the real clients print no token as an authorization server: mcp-remote (the npm
package Claude Desktop runs) and the MCP Python SDK client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web

from proxy.auth.tokens import url_token_hmac
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import leaked, secret
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import NODE_PEERS, eventually, free_port

KEY = "url-token-key-for-secrets-0123456789"
OPEN, GUARDED, OAUTH = secret(), secret(), secret()  # URL tokens: a plain, a bearer-guarded, a JWT server
API_TOKEN = secret()
WELL_KNOWN = "/.well-known/oauth-protected-resource"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
MCP_REMOTE = NODE_PEERS / "node_modules" / "mcp-remote" / "dist" / "proxy.js"
GUARDED_401 = 'Bearer error="invalid_token", error_description="This server requires a bearer token as well as its URL"'


@dataclass
class Stack:
    tokens: Proxy  # URL tokens and API tokens only: no authorization server, so no metadata
    oauth: Proxy  # JWTs from the authorization server at as_port: metadata served
    as_port: int
    workdir: Path

    def logs(self) -> str:
        return "\n".join(p.handle.stdout() + p.handle.stderr() for p in (self.tokens, self.oauth))


@pytest.fixture(scope="module")
def stack(sdk_upstream_module, tmp_path_factory) -> Any:
    workdir = tmp_path_factory.mktemp("secrets")
    upstream, legacy = sdk_upstream_module("stateful-json"), sdk_upstream_module("legacy-sse")
    tokens = start_proxy(workdir, upstream.base, {
        "upstream": {"sse_url": f"{legacy.base}/sse"},
        "auth": {"url_token_key": KEY,
                 "api_tokens": [{"name": "ci", "sha256": hashlib.sha256(API_TOKEN.encode()).hexdigest()}]},
        "servers": [{"name": "open", "token_hmac": url_token_hmac(KEY, OPEN), "methods": ["read"]},
                    {"name": "guarded", "token_hmac": url_token_hmac(KEY, GUARDED), "methods": ["read"],
                     "require_api_token_auth": True}],
        "decision_log": {"sink": f"file:{workdir / 'decisions.log'}"},
    }, log_level="info", access_log=True)
    as_port, port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{as_port}"  # the fake authorization server of the mcp-remote test
    oauth = start_proxy(workdir, upstream.base, {
        "public_url": f"http://127.0.0.1:{port}",
        "auth": {"url_token_key": KEY, "jwt": {"issuer": issuer, "jwks_url": f"{issuer}/jwks.json"}},
        "servers": [{"name": "oauth", "token_hmac": url_token_hmac(KEY, OAUTH), "methods": ["read"],
                     "require_api_token_auth": True},
                    {"name": "plain", "methods": ["read"]}],
    }, port=port, log_level="info", access_log=True)
    yield Stack(tokens, oauth, as_port, workdir)
    tokens.stop()
    oauth.stop()


def messages(log: str) -> str:
    """The `msg` of each JSON log line, one a line."""
    return "\n".join(json.loads(line)["msg"] for line in log.splitlines())


async def raw(port: int, head: str) -> int | None:
    """Send `head` (request line and headers) as bytes on a socket of its own; the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def request(target: str, method: str = "GET", extra: str = "") -> str:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"


def pct(text: str, lower: bool = False) -> str:
    return "".join((f"%{ord(c):02x}" if lower else f"%{ord(c):02X}") for c in text)


def hostile_targets() -> list[tuple[str, str]]:
    """(request target, a secret it carries): each secret fresh, so a leak names its request."""
    t = secret
    return [
        # routed (an unknown URL token is a 404 like any unknown path)
        (f"/{(s := t())}/mcp", s), (f"/mcp/{(s := t())}", s), (f"/{(s := t())}/sse", s),
        (f"/{(s := t())}/messages/?session_id={t()}", s),
        # not routed: every place a client puts its token URL when it probes or mistypes
        (f"/{(s := t())}", s), (f"/{(s := t())}/", s), (f"/{(s := t())}/mcp/x", s),
        (f"/{(s := t())}/mcp/.well-known/openid-configuration", s),
        (f"/{(s := t())}/.well-known/oauth-protected-resource", s),
        (f"{WELL_KNOWN}/{(s := t())}/mcp", s), (f"{WELL_KNOWN}/mcp/{(s := t())}", s),
        (f"/.well-known/oauth-authorization-server/{(s := t())}/mcp", s),
        (f"/.well-known/openid-configuration/{(s := t())}/mcp", s),
        (f"/x/{(s := t())}/mcp", s), (f"//{(s := t())}//mcp", s), (f"/{(s := t())[:-3]}/mcp", s),
        (f"/{(s := t())}extra/mcp", s), (f"/prefix-{(s := t())}.json", s), (f"/{(s := t())};x=1/mcp", s),
        # query strings
        (f"/mcp?token={(s := t())}", s), (f"/healthz?access_token={(s := t())}", s),
        (f"/metrics?{(s := t())}", s), (f"/healthz?a=1&token={(s := t())}&b", s),
        (f"/sse?session_id={(s := t())}", s), (f"/?{(s := t())}={t()}", s),
        (f"/{OPEN}/mcp?api_key={(s := t())}", s),
        # percent-encoded: once (uvicorn decodes it), twice (it does not), an encoded slash, mixed case
        (f"/{pct(s := t())}/mcp", s), (f"/{quote(pct(s := t()))}/mcp", s), (f"/{pct(s := t(), lower=True)}", s),
        (f"/{(s := t())[:10]}%2F{s[10:]}/mcp", s), (f"/{(s := t())[:10]}%252F{s[10:]}/mcp", s),
        (f"/mcp?token={pct(s := t())}", s), (f"/mcp?access_token={quote(pct(s := t()))}", s),
        (f"{WELL_KNOWN}/{pct(s := t())}/mcp", s),
    ]


async def test_access_log_prints_no_secret_whatever_the_request(stack):
    proxy = stack.tokens
    port = proxy.port
    lines_before = proxy.handle.stdout().count("\n")
    carried = []
    for target, value in hostile_targets():
        for method in ("GET", "POST"):
            status = await raw(port, request(target, method, "Content-Length: 0\r\n" if method == "POST" else ""))
            assert status is not None and status < 500, (method, target, status)
        carried.append(value)

    async def all_logged() -> bool:  # one line each: the filter dropped none
        return proxy.handle.stdout().count("\n") - lines_before == 2 * len(carried)

    assert await eventually(all_logged), "access-log lines are missing"
    # A WebSocket upgrade: uvicorn logs it on its error log, at info, even without --access-log.
    ws = secret(), secret()
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
              "Sec-WebSocket-Version: 13\r\n"
    assert await raw(port, f"GET /{ws[0]}/mcp?access_token={ws[1]} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n") == 403
    # Requests uvicorn cannot parse: it answers 400 and logs a fixed sentence, without the target.
    invalid = (secret(), secret())
    assert await raw(port, f"GET /{invalid[0]}/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n") == 400
    assert await raw(port, f"GET /{invalid[1]} /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 400
    # Ordinary traffic: a URL-token session, a legacy SSE session (its id in the query), bearer tokens.
    async with sdk_client(f"{proxy.base}/{OPEN}/mcp") as client:
        assert await client.tool_names()
    async with sse_client(f"{proxy.base}/{OPEN}/sse") as client:
        assert await client.tool_names()
        legacy_session = client.session_id
    assert legacy_session
    async with httpx.AsyncClient() as http:
        for bearer, status in ((API_TOKEN, 200), (bad := secret(), 401)):
            r = await http.post(f"{proxy.base}/{GUARDED}/mcp", json=INIT,
                                headers={**HEADERS, "authorization": f"Bearer {bearer}"})
            assert r.status_code == status
    await asyncio.sleep(0.7)  # the decision log's flush interval (access-log lines are flushed at once)
    texts = {"stdout": proxy.handle.stdout(), "stderr": proxy.handle.stderr(),
             "decisions": (stack.workdir / "decisions.log").read_text()}
    secrets = [*carried, *ws, *invalid, bad, OPEN, GUARDED, API_TOKEN, legacy_session]
    for name, text in texts.items():
        assert not leaked(text, secrets), f"{name}: {[secrets.index(s) for s in leaked(text, secrets)]}"
    access = messages(texts["stdout"])  # the proxy logs JSON lines here (docs/logging.md): their `msg`
    for line in ('"GET /[redacted]/mcp/.well-known/openid-configuration HTTP/1.1" 404',
                 f'"GET {WELL_KNOWN}/[redacted]/mcp HTTP/1.1" 404', '"GET /[redacted]/ HTTP/1.1" 404',
                 '"POST /mcp?token=[redacted] HTTP/1.1"', '"GET /healthz?access_token=[redacted] HTTP/1.1" 200',
                 '"GET /[redacted]/messages/?session_id=[redacted] HTTP/1.1"',
                 '"POST /[redacted]/mcp HTTP/1.1" 401', '"POST /[redacted]/mcp HTTP/1.1" 200'):
        assert line in access, line
    assert '"WebSocket /[redacted]/mcp?access_token=[redacted]" 403' in messages(texts["stderr"])
    assert texts["stderr"].count("Invalid HTTP request received.") >= 2


async def test_metadata_only_where_an_authorization_server_issues_tokens(stack):
    tokens, oauth = stack.tokens, stack.oauth
    issuer = f"http://127.0.0.1:{stack.as_port}"
    async with httpx.AsyncClient() as http:
        # URL tokens and API tokens only: no document anywhere, no pointer to one in challenges.
        for path in ("", "/mcp", "/sse", f"/{OPEN}/mcp"):
            r = await http.get(f"{tokens.base}{WELL_KNOWN}{path}")
            assert (r.status_code, r.text) == (404, "Not Found"), path
        r = await http.post(f"{tokens.base}/{GUARDED}/mcp", json=INIT, headers=HEADERS)
        assert (r.status_code, r.headers["www-authenticate"]) == (401, GUARDED_401)
        r = await http.post(f"{tokens.base}/{GUARDED}/mcp", json=INIT,
                            headers={**HEADERS, "authorization": f"Bearer {secret()}"})
        assert (r.status_code, r.headers["www-authenticate"]) == (401, 'Bearer error="invalid_token"')
        # A JWT issuer: the documents, each naming it; a URL token in the path is never echoed.
        for path in ("", "/mcp", "/sse"):
            r = await http.get(f"{oauth.base}{WELL_KNOWN}{path}")
            assert r.status_code == 200
            assert r.json() == {"resource": oauth.base + path, "authorization_servers": [issuer],
                                "bearer_methods_supported": ["header"], "resource_name": "mcp-policy-proxy"}
        for path in (f"/{OAUTH}/mcp", f"/mcp/{OAUTH}", f"/{OAUTH}", f"/{OAUTH}/sse"):
            r = await http.get(f"{oauth.base}{WELL_KNOWN}{path}")
            assert (r.status_code, r.text) == (404, "Not Found"), path
        # Challenges: a token URL points to the root document (its resource, the origin, is a prefix
        # of the token URL and names no token); /mcp and /sse to their own.
        for path, document in ((f"/{OAUTH}/mcp", ""), (f"/mcp/{OAUTH}", ""), ("/mcp", "/mcp"), ("/sse", "/sse")):
            r = await (http.get(oauth.base + path) if path == "/sse" else
                       http.post(oauth.base + path, json=INIT, headers=HEADERS))
            assert r.status_code == 401, path
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith(f'Bearer resource_metadata="{oauth.base}{WELL_KNOWN}{document}"'), path
            assert not leaked(challenge + r.text, [OAUTH])


@contextlib.asynccontextmanager
async def authorization_server(port: int) -> AsyncIterator[list[str]]:
    """A fake OAuth authorization server on loopback: metadata and client registration; every
    request it receives (method, target, body) is recorded."""
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        seen.append(f"{request.method} {request.raw_path} {body}")
        if request.path == "/.well-known/oauth-authorization-server":
            return web.json_response({
                "issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "registration_endpoint": f"{base}/register", "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"], "token_endpoint_auth_methods_supported": ["none"],
                "grant_types_supported": ["authorization_code", "refresh_token"]})
        if request.path == "/register":
            return web.json_response({**json.loads(body or "{}"), "client_id": "test-client"}, status=201)
        return web.Response(status=404, text="Not Found")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


async def mcp_remote(url: str, workdir: Path, *args: str, until: Callable[[str], bool],
                     timeout: float = 10.0) -> tuple[str, str]:
    """Run mcp-remote as Claude Desktop does (a stdio MCP server in front of `url`), send it an
    initialize, and stop it once `until(stdout + stderr)` holds, it exits, or `timeout` passes.
    No browser: BROWSER=true is the "browser", and no desktop is in the environment."""
    node = shutil.which("node")
    if node is None or not MCP_REMOTE.exists():
        raise RuntimeError(f"node or {MCP_REMOTE} is missing: run `npm ci --prefix {NODE_PEERS}`")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP", "DBUS_SESSION_BUS_ADDRESS")}
    env.update(BROWSER="true", MCP_REMOTE_CONFIG_DIR=str(workdir / "mcp-auth"))
    proc = await asyncio.create_subprocess_exec(
        node, str(MCP_REMOTE), url, "--allow-http", "--auth-timeout", "2", "--connect-timeout", "2", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=NODE_PEERS)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(json.dumps(INIT).encode() + b"\n")
    out, err = bytearray(), bytearray()

    async def pump(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(4096):
            into.extend(chunk)

    pumps = [asyncio.ensure_future(pump(proc.stdout, out)), asyncio.ensure_future(pump(proc.stderr, err))]
    deadline = time.monotonic() + timeout
    while proc.returncode is None and time.monotonic() < deadline and not until((out + err).decode(errors="replace")):
        await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    await asyncio.gather(*pumps)
    return out.decode(errors="replace"), err.decode(errors="replace")


def answered(output: str) -> bool:
    return '"id":1,"result"' in output


def never(output: str) -> bool:
    return False  # until mcp-remote gives up by itself


@pytest.mark.parametrize(("proxy_name", "token", "args", "until", "connects"), [
    ("tokens", OPEN, (), answered, True),
    ("tokens", "bad", (), never, False),
    ("tokens", GUARDED, (), never, False),  # 401, no metadata: no authorization server to go to
    ("tokens", GUARDED, ("--header", f"Authorization:Bearer {API_TOKEN}"), answered, True),
    ("oauth", OAUTH, (), lambda o: "visiting:" in o and "Browser opened" in o, False),
], ids=["url-token", "bad-url-token", "bearer-required", "api-token", "oauth-authorization-server"])
async def test_mcp_remote_prints_no_token_as_authorization_server(stack, tmp_path, proxy_name, token, args,
                                                                  until, connects):
    proxy = getattr(stack, proxy_name)
    token = secret() if token == "bad" else token
    url = f"{proxy.base}/{token}/mcp"
    async with authorization_server(stack.as_port) as seen_by_the_as:
        out, err = await mcp_remote(url, tmp_path, *args, until=until)
    output = out + err
    assert answered(output) == connects, output
    # mcp-remote echoes the URL it was given ("Connecting to remote server: <url>"): its own
    # argument. Nowhere else: not as the authorization server, not in the browser's URL.
    holding = [line for line in output.splitlines() if leaked(line, [token])]
    assert all(line.endswith(f"Connecting to remote server: {url}") for line in holding), holding
    assert not leaked(output, [API_TOKEN])
    discovered = re.findall(r"Discovered authorization server: (\S+)", output)
    if proxy_name == "oauth":
        assert discovered == [f"http://127.0.0.1:{stack.as_port}"], output
        visit = re.search(r"visiting:\s*\n(\S+)", output)
        assert visit and visit.group(1).startswith(f"http://127.0.0.1:{stack.as_port}/authorize?"), output
        assert f"resource={quote(proxy.base + '/', safe='')}" in visit.group(1)  # the origin, no token
        assert seen_by_the_as and not leaked("\n".join(seen_by_the_as), [token])
    else:
        assert discovered == [] and "visiting:" not in output and not seen_by_the_as, output
    stored = [path for path in (tmp_path / "mcp-auth").rglob("*") if path.is_file()]  # its OAuth state
    assert not [path.name for path in stored if leaked(path.read_text(errors="replace"), [token])]
    assert not leaked(proxy.handle.stdout() + proxy.handle.stderr(), [token])


@pytest.mark.parametrize("case", ["bad-url-token", "bearer-required"])
async def test_sdk_client_error_holds_no_token(stack, caplog, case):
    token = secret() if case == "bad-url-token" else GUARDED
    url = f"{stack.tokens.base}/{token}/mcp"
    caplog.set_level("DEBUG")
    with pytest.raises(BaseException) as caught:  # whatever the SDK raises
        async with sdk_client(url, read_timeout=5) as client:
            await client.tool_names()
    text = "".join(traceback.format_exception(caught.value))
    assert not leaked(text, [token]), text
    # The SDK logs the URL it was given (connecting, each HTTP request): its own argument, nothing more.
    holding = [f"{r.name}: {r.getMessage()}" for r in caplog.records if leaked(r.getMessage(), [token])]
    assert all(line.startswith(("mcp.client.streamable_http: Connecting to StreamableHTTP endpoint: ",
                                "httpx2: HTTP Request: ")) for line in holding), holding
    assert not leaked(stack.tokens.handle.stdout() + stack.tokens.handle.stderr(), [token])
