"""upstream.oauth against a real OAuth-protected MCP server on loopback (tests/peers/oauth_upstream.py:
the official SDK's authorization server routes and bearer middleware, access tokens that expire
after 2 s, refresh tokens good once).

`upstream login` is driven headless: the test reads the URL it prints, follows it (the server
approves at once and redirects), and the redirect reaches the command's listener. Then `serve`:
calls through the proxy with the SDK client, one refresh for 32 calls at expiry, one refresh and
one retry on an upstream 401, a revoked grant answered 503 with what to run, and no token, code or
client secret in anything any process printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.leakcheck import leaked, secret
from tests.peers.clients import sdk_client
from tests.peers.harness import REPO_ROOT, ServerHandle, eventually, free_port, start_server

ACCESS_TTL_S = 2.0
_MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2025-06-18"}


class Peer:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.handle = start_server(["tests.peers.oauth_upstream", "--port", str(self.port),
                                    "--access-ttl", str(ACCESS_TTL_S), *args], self.port, log_dir=tmp_path)

    async def stats(self) -> dict[str, Any]:
        async with httpx2.AsyncClient() as http:
            return (await http.get(f"{self.base}/test/stats")).json()

    async def hook(self, name: str) -> None:
        async with httpx2.AsyncClient() as http:
            assert (await http.post(f"{self.base}/test/{name}")).status_code == 200


def write_config(tmp_path: Path, peer: Peer, oauth: dict[str, Any], name: str = "proxy.yaml") -> tuple[Path, int]:
    port = free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port},
              "upstream": {"url": f"{peer.base}/mcp", "timeout_s": 10,
                           "oauth": {"token_file": "grant.json", "scopes": ["mcp:read", "mcp:write"], **oauth}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path, port


class Outputs:
    """What every command printed, kept in files the suite's leak check reads too (tests/conftest.py)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.texts, self.count = tmp_path, [], 0

    def keep(self, out: str, err: str) -> None:
        self.count += 1
        (self.tmp_path / f"command-{self.count}.stdout").write_text(out)
        (self.tmp_path / f"command-{self.count}.stderr").write_text(err)
        self.texts += [out, err]


async def run(outputs: Outputs, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", *args, cwd=REPO_ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    outputs.keep(out.decode(), err.decode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def login(outputs: Outputs, config: Path, redirect_port: int) -> tuple[int, str, str]:
    """`upstream login`, with the test as the browser: it opens the printed URL and follows the redirect."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "upstream", "login", "--config", str(config), "--timeout", "20",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    if first.startswith("http"):
        async with httpx2.AsyncClient(follow_redirects=False) as browser:
            approved = await browser.get(first.strip())
            assert approved.status_code == 302, approved.text
            location = approved.headers["location"]
            assert location.startswith(f"http://127.0.0.1:{redirect_port}/callback?")
            assert (await browser.get(f"http://127.0.0.1:{redirect_port}/favicon.ico")).status_code == 404
            back = await browser.get(location)
            assert back.status_code == 200 and "Signed in" in back.text
    rest, err = await asyncio.wait_for(proc.communicate(), 20)
    out = first + rest.decode()
    outputs.keep(out, err.decode())
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def raw_call(proxy_port: int, method: str = "tools/list", params: dict[str, Any] | None = None
                   ) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, **({"params": params} if params else {})}
    async with httpx2.AsyncClient() as http:
        return await http.post(f"http://127.0.0.1:{proxy_port}/mcp", json=body, headers=_MCP_HEADERS, timeout=15)


async def readyz(proxy_port: int) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{proxy_port}/readyz", timeout=5)


async def metric(proxy_port: int, reason: str) -> float:
    async with httpx2.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{proxy_port}/metrics")).text
    line = f'mcp_proxy_upstream_auth_failures_total{{reason="{reason}"}} '
    return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)


def no_secret_printed(peer_issued: list[str], texts: list[str], *handles: ServerHandle) -> None:
    for value in peer_issued:
        secret(value)  # the suite's own check reads every output file again at the end
    everything = [*texts, *(h.stdout() for h in handles), *(h.stderr() for h in handles)]
    assert not [i for i, text in enumerate(everything) if leaked(text, peer_issued)]


async def test_login_by_registration_then_refresh_retry_and_revocation(tmp_path):
    peer = Peer(tmp_path)
    redirect_port = free_port()
    # Refreshed from 1.5 s into a token's 2 s: 32 calls made at once after a refresh are all done well before.
    config, proxy_port = write_config(tmp_path, peer, {"redirect_port": redirect_port, "refresh_margin_s": 0.5})
    outputs = Outputs(tmp_path)
    proxy = start_server(["proxy", "serve", "--config", str(config), "--log-level", "info", "--access-log"],
                         proxy_port, log_dir=tmp_path)
    try:
        # Nobody has logged in: nothing is sent upstream; the client and /readyz say what to run.
        missing = await raw_call(proxy_port)
        assert missing.status_code == 503
        said = missing.json()["error"]["message"]
        assert "upstream login" in said and "is missing" in said
        assert (await readyz(proxy_port)).json()["reason"].startswith("upstream grant is missing")
        assert (await peer.stats())["mcp_requests"] == 0
        assert await metric(proxy_port, "no_grant") == 1

        rc, out, err = await login(outputs, config, redirect_port)
        assert rc == 0, err
        assert out.splitlines()[0].startswith(f"{peer.base}/authorize?") and len(out.splitlines()) == 1
        grant_file = tmp_path / "grant.json"
        assert stat.S_IMODE(os.stat(grant_file).st_mode) == 0o600
        stats = await peer.stats()
        assert stats["registrations"] == 1 and stats["code_exchanges"] == 1
        assert stats["resources"] == [f"{peer.base}/mcp"]  # RFC 8707, as the resource metadata names it
        assert stats["scopes"] == [["mcp:read", "mcp:write"]]  # what the config asks for, not all there are

        rc, out, err = await run(outputs, "upstream", "status", "--config", str(config))
        assert rc == 0, err
        assert "scopes:               mcp:read mcp:write" in out and "refresh token:        yes" in out
        assert "registered by `upstream login`" in out and "access token:" in out

        # The running proxy takes the new grant up (no restart).
        assert await eventually(lambda: _ready(proxy_port), timeout=5)
        async with sdk_client(f"http://127.0.0.1:{proxy_port}/mcp") as client:
            assert await client.call_text("echo", {"text": "hi"}) == "hi"

            await asyncio.sleep(ACCESS_TTL_S + 0.3)  # expired: 32 calls wait for one refresh
            before = await peer.stats()
            texts = await asyncio.gather(*(client.call_text("echo", {"text": str(i)}) for i in range(32)))
            assert texts == [str(i) for i in range(32)]
            after = await peer.stats()
            assert after["refreshes"] - before["refreshes"] == 1
            assert after["mcp_unauthorized"] == before["mcp_unauthorized"]  # refreshed ahead: no 401 seen

            await peer.hook("expire")  # the upstream stops taking the token the proxy holds as valid
            assert await client.call_text("echo", {"text": "again"}) == "again"
            retried = await peer.stats()
            assert retried["mcp_unauthorized"] - after["mcp_unauthorized"] == 1  # one 401 …
            assert retried["refreshes"] - after["refreshes"] == 1  # … one refresh, one retry
            assert retried["mcp_requests"] - after["mcp_requests"] == 2

        await peer.hook("revoke")  # refresh tokens too: only a new login helps
        revoked = await raw_call(proxy_port, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert revoked.status_code == 503
        message = revoked.json()["error"]["message"]
        assert "expired or revoked" in message and "mcp-policy-proxy upstream login --config" in message
        assert (await peer.stats())["refused_refreshes"] == 1
        again = await raw_call(proxy_port, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert again.status_code == 503  # answered without asking the authorization server again
        assert (await peer.stats())["refused_refreshes"] == 1
        ready = await readyz(proxy_port)
        assert ready.status_code == 503 and "upstream grant is expired or revoked" in ready.json()["reason"]
        assert await metric(proxy_port, "revoked") == 2
        assert proxy.stderr().count("upstream grant is expired or revoked") == 1  # logged once
    finally:
        proxy.stop()
        issued = (await peer.stats())["issued"]
        peer.handle.stop()
    no_secret_printed(issued, outputs.texts, proxy, peer.handle)


async def _ready(proxy_port: int) -> bool:
    return (await readyz(proxy_port)).status_code == 200


async def test_preregistered_client_with_an_encrypted_token_file(tmp_path):
    redirect_port = free_port()
    (tmp_path / "client_secret").write_text(secret() + "\n")
    (tmp_path / "token_key").write_text(secret() + "\n")
    peer = Peer(tmp_path, "--client-id", "the-proxy", "--client-secret-file", str(tmp_path / "client_secret"),
                "--redirect-uri", f"http://127.0.0.1:{redirect_port}/callback")
    oauth = {"redirect_port": redirect_port, "client_id": "the-proxy",
             "client_secret_file": str(tmp_path / "client_secret"), "token_key_file": str(tmp_path / "token_key")}
    config, proxy_port = write_config(tmp_path, peer, oauth)
    outputs = Outputs(tmp_path)
    proxy: ServerHandle | None = None
    try:
        rc, out, err = await login(outputs, config, redirect_port)
        assert rc == 0, err
        assert (await peer.stats())["registrations"] == 0  # no RFC 7591: the configured client
        sealed = json.loads((tmp_path / "grant.json").read_text())
        assert set(sealed) == {"format", "version", "encrypted"}

        rc, out, err = await run(outputs, "upstream", "status", "--config", str(config))
        assert rc == 0, err
        assert "client:               the-proxy (upstream.oauth.client_id)" in out and "(encrypted)" in out

        (tmp_path / "other_key").write_text(secret())
        wrong, _ = write_config(tmp_path, peer, {**oauth, "token_key_file": str(tmp_path / "other_key")}, "wrong.yaml")
        rc, out, err = await run(outputs, "upstream", "status", "--config", str(wrong))
        assert rc == 1 and "cannot be decrypted" in err and out == ""

        proxy = start_server(["proxy", "serve", "--config", str(config), "--log-level", "info"], proxy_port,
                             log_dir=tmp_path)
        async with sdk_client(f"http://127.0.0.1:{proxy_port}/mcp") as client:
            assert await client.call_text("echo", {"text": "one"}) == "one"
            await asyncio.sleep(ACCESS_TTL_S + 0.3)
            before = (await peer.stats())["refreshes"]
            assert await client.call_text("echo", {"text": "two"}) == "two"  # refreshed with client_secret_basic
            assert (await peer.stats())["refreshes"] - before == 1
        assert set(json.loads((tmp_path / "grant.json").read_text())) == {"format", "version", "encrypted"}
    finally:
        if proxy is not None:
            proxy.stop()
        issued = (await peer.stats())["issued"]
        peer.handle.stop()
    handles = [proxy] if proxy is not None else []
    no_secret_printed(issued, [*outputs.texts, (tmp_path / "grant.json").read_text()], *handles, peer.handle)


async def test_login_refuses_an_upstream_that_asks_for_no_oauth(tmp_path, sdk_upstream):
    upstream = sdk_upstream("stateless-json")
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump({"upstream": {"url": f"{upstream.base}/mcp", "oauth": {
        "token_file": "grant.json", "scopes": ["read"], "redirect_port": free_port()}}}))
    rc, out, err = await run(Outputs(tmp_path), "upstream", "login", "--config", str(config), "--timeout", "5")
    assert rc == 1 and out == ""
    assert "does not ask for OAuth" in err
    assert not (tmp_path / "grant.json").exists()
