"""An HTTP CONNECT egress proxy on loopback, in a thread (asyncio): what a corporate proxy does, as
far as the proxy under test can tell.

It records each CONNECT (request line, Proxy-Authorization) and tunnels the bytes both ways; with
`credentials` set ("user:password") anything else gets 407. `mode` plays a proxy that refuses:
"403", "407", "502", "504" (answers that status), "silent" (reads the CONNECT, never answers),
"garbage" (answers something that is not HTTP), "ok" (the default). `cut()` ends every open tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass

from tests.peers.raw_server import ThreadedServer


@dataclass(frozen=True)
class Connect:
    line: str  # CONNECT host:port HTTP/1.1
    authorization: str | None  # the Proxy-Authorization value as sent


class ConnectProxy(ThreadedServer):
    def __init__(self, credentials: str | None = None) -> None:
        super().__init__()
        self.credentials = credentials
        self.mode = "ok"
        self.connects: list[Connect] = []
        self.tunnels = 0  # tunnels opened (2xx answered)
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def basic(self, credentials: str) -> str:
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *fields = head.split("\r\n")
            headers = {n.strip().lower(): v.strip() for n, _, v in (f.partition(":") for f in fields if f)}
            self.connects.append(Connect(line, headers.get("proxy-authorization")))
            method, target, _ = line.split(" ", 2)
            if self.mode == "silent":
                await asyncio.sleep(3600)
            if self.mode == "garbage":
                writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                return
            status = self.mode if self.mode.isdigit() else None
            if status is None and self.credentials is not None and \
                    headers.get("proxy-authorization") != self.basic(self.credentials):
                status = "407"
            if method != "CONNECT":
                status = "405"
            if status is not None:
                extra = 'proxy-authenticate: Basic realm="test"\r\n' if status == "407" else ""
                writer.write(f"HTTP/1.1 {status} No\r\n{extra}content-length: 0\r\n\r\n".encode())
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            self._writers.add(up_writer)
            self.tunnels += 1
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def cut(self) -> None:
        """End every open tunnel (the proxy under test then opens new ones)."""
        def close() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
        self._loop.call_soon_threadsafe(close)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
