"""A JWKS endpoint for tests (an authorization server's `jwks_uri`), plus signing keys to mint tokens.

In-process, on the test's event loop::

    key = rsa_key("k1")
    async with JWKSServer(jwk_set(key)) as server:      # http://127.0.0.1:<port>/jwks.json
        token = key.sign({"iss": ..., "aud": ..., "exp": ...})
        server.set_keys(key, rsa_key("k2"))             # rotation, seen by the next fetch
        server.fetches                                  # GETs of the key set so far

From synchronous code (e.g. a test driving the proxy as a subprocess), on a thread of its own::

    with JWKSServer(jwk_set(key)).in_thread() as server: ...

Faults: `status` (answer that HTTP status), `body` (answer these bytes instead), `delay_s` (sleep
before answering); `stop()` then `start()` again takes the endpoint down and back on the same port.

As a subprocess, serving a file re-read on every request (rotate by rewriting it); `GET /stats`
answers `{"fetches": n}`::

    python -m tests.peers.jwks_server --port 8765 --jwks-file keys.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWKS_PATH = "/jwks.json"


@dataclass
class SigningKey:
    """A private key the tests sign with, and its public JWK."""

    kid: str | None
    alg: str
    private_key: Any

    def public_jwk(self, *, declare_alg: bool = True, **extra: Any) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any] = (RSAAlgorithm.to_jwk(public, as_dict=True) if self.alg[0] in "RP"
                               else ECAlgorithm.to_jwk(public, as_dict=True))
        jwk["use"] = "sig"
        if self.kid is not None:
            jwk["kid"] = self.kid
        if declare_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def sign(self, claims: Mapping[str, Any], *, alg: str | None = None, kid: str | bool | None = True,
             headers: Mapping[str, Any] | None = None) -> str:
        """A compact JWS. `kid=True`: this key's kid; `False`/None: no kid header; a string: that kid."""
        all_headers = dict(headers or {})
        if kid is True:
            kid = self.kid
        if isinstance(kid, str):
            all_headers["kid"] = kid
        return jwt.encode(dict(claims), self.private_key, algorithm=alg or self.alg, headers=all_headers or None)


def rsa_key(kid: str | None, alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str | None, alg: str = "ES256") -> SigningKey:
    curves: dict[str, ec.EllipticCurve] = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
    curve = curves[alg]
    return SigningKey(kid, alg, ec.generate_private_key(curve))


def jwk_set(*keys: SigningKey | Mapping[str, Any]) -> dict[str, Any]:
    """A JWKS document: SigningKeys become their public JWK, mappings are taken as JWKs."""
    return {"keys": [k.public_jwk() if isinstance(k, SigningKey) else dict(k) for k in keys]}


class JWKSServer:
    def __init__(self, jwks: Mapping[str, Any] | None = None, *, port: int = 0, path: str = JWKS_PATH,
                 jwks_file: Path | None = None) -> None:
        self.jwks: dict[str, Any] = dict(jwks or {"keys": []})
        self.jwks_file = jwks_file
        self.path = path
        self.port = port
        self.fetches = 0
        self.status = 200
        self.body: bytes | None = None
        self.delay_s = 0.0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def set_keys(self, *keys: SigningKey | Mapping[str, Any]) -> None:
        """Serve these keys from the next request on (key rotation)."""
        self.jwks = jwk_set(*keys)

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.body is not None:
            return web.Response(status=self.status, body=self.body, content_type="application/json")
        if self.status != 200:
            return web.json_response({"error": "simulated"}, status=self.status)
        body = self.jwks_file.read_bytes() if self.jwks_file is not None else json.dumps(self.jwks).encode()
        return web.Response(body=body, content_type="application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"fetches": self.fetches})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(self.path, self._serve)
        app.router.add_get("/stats", self._stats)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]  # kept: a restart binds the same port
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> JWKSServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[JWKSServer]:
        """Serve from a thread with its own event loop (for synchronous tests)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(loop, started), daemon=True, name="jwks-server")
        thread.start()
        started.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def _thread_main(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.start())
        started.set()
        loop.run_forever()


async def _main(port: int, jwks_file: Path) -> None:
    server = JWKSServer(port=port, jwks_file=jwks_file)
    await server.start()
    print(f"serving {jwks_file} at {server.url}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jwks-file", type=Path, required=True, help="JWKS document, re-read on every request")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.jwks_file))


if __name__ == "__main__":
    main()
