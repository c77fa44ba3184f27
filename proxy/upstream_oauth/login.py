"""`upstream login`: obtaining the grant.

It prints the authorization URL alone on stdout (one line; everything else goes to stderr),
waits on 127.0.0.1:<redirect_port>/callback for the browser to come back with the code, exchanges
it, and writes the token file. The listener is bound before anything is sent: a busy port fails
at once. It answers only the redirect that carries this login's `state`; anything else (a favicon,
a stale tab) gets 404 or 400 and the wait goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
import sys
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from authlib.common.security import generate_token
from mcp.client.auth import OAuthFlowError
from mcp.client.auth.utils import validate_authorization_response_iss
from mcp.shared.auth import OAuthMetadata

from ..config import Config, UpstreamOAuth
from . import client, store
from .store import Grant

CALLBACK_PATH = "/callback"
_MAX_REQUEST_HEAD = 16 * 1024
_READ_TIMEOUT_S = 10.0
_DONE_PAGE = (b"<!doctype html><title>mcp-policy-proxy</title><p>Signed in: the proxy has its grant to the upstream. "
              b"You can close this window.")


class LoginError(Exception):
    pass


def redirect_uri(settings: UpstreamOAuth) -> str:
    return f"http://127.0.0.1:{settings.redirect_port}{CALLBACK_PATH}"


class _Callback:
    """The one HTTP request the login waits for, on 127.0.0.1 only."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.metadata: OAuthMetadata | None = None
        self.result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        try:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        except OSError as exc:
            raise LoginError(f"cannot listen on 127.0.0.1:{port} for the redirect ({exc.strerror}): "
                             "free it or set upstream.oauth.redirect_port") from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, body = 400, b"Bad request"
        with contextlib.suppress(ConnectionError):
            writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: %d\r\n"
                         b"cache-control: no-store\r\nconnection: close\r\n\r\n%s"
                         % (status, b"OK" if status == 200 else b"Error", len(body), body))
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, bytes]:
        if len(head) > _MAX_REQUEST_HEAD:
            return 431, b"Request header fields too large"
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.rpartition(" ")[0]
        url = urlsplit(target)
        if method != "GET" or url.path != CALLBACK_PATH:
            return 404, b"Not found"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if not secrets.compare_digest(query.get("state", ""), self.state):
            return 400, b"This is not the sign-in the proxy is waiting for (state differs): start again."
        if self.result.done():
            return 400, b"Already signed in."
        if "error" in query:  # the person declined, or the server refused: the login ends
            error = query["error"][:100]
            self.result.set_exception(LoginError(f"the authorization server refused: {error}"))
            return 400, b"Sign-in refused: " + html.escape(error).encode("utf-8", "replace")
        try:
            validate_authorization_response_iss(query.get("iss"), self.metadata)  # RFC 9207
        except OAuthFlowError as exc:
            self.result.set_exception(LoginError(str(exc)))
            return 400, b"Sign-in refused: the response names another authorization server."
        code = query.get("code")
        if not code:
            return 400, b"The redirect carries no code."
        self.result.set_result(code)
        return 200, _DONE_PAGE


async def login(config: Config, out: TextIO, timeout_s: float) -> Grant:
    settings = config.upstream.oauth
    assert settings is not None
    uri = redirect_uri(settings)
    state, verifier = secrets.token_urlsafe(32), generate_token(64)
    callback = _Callback(state)
    await callback.start(settings.redirect_port)
    try:
        async with client.http_client(config.upstream) as http:
            found = await client.discover(http, config.upstream.url)
            callback.metadata = found.metadata
            if settings.client_id is not None:
                creds = client.configured_client(found, settings.client_id, settings.client_secret)
            else:
                creds = await client.register(http, found, uri, settings.scopes)
        async with client.oauth_session(config.upstream, creds, uri) as session:
            url = client.authorization_url(session, found, state, verifier, settings.scopes)
            print(f"Open this URL in a browser and approve the access the proxy asks for "
                  f"(scopes: {' '.join(settings.scopes)}); waiting up to {timeout_s:g} s on {uri}:",
                  file=sys.stderr, flush=True)
            print(url, file=out, flush=True)
            try:
                async with asyncio.timeout(timeout_s):
                    code = await callback.result
            except TimeoutError:
                raise LoginError(f"nobody came back to {uri} within {timeout_s:g} s") from None
            grant = await client.exchange_code(session, creds, found, code, verifier, uri, settings.scopes)
    except client.OAuthFailure as exc:
        raise LoginError(exc.message) from None
    finally:
        callback.close()
    async with store.locked(settings.token_file):
        store.save(settings.token_file, grant, settings.token_key)
    return grant
