"""A TLS listener on loopback whose certificate and settings a test switches between connections.

Blocking OpenSSL sockets, one thread per connection: they send the alerts a real server sends (an
asyncio server hangs up without one when a handshake fails).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

from tests.peers.certs import Leaf


class SwitchingTlsUpstream:
    """A TLS listener on 127.0.0.1 whose server context (`use`) applies to the next connections;
    None: plain TCP. A handshake that succeeds gets a JSON-RPC answer to its one request. Records
    the SNI of each ClientHello."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.server_names: list[str | None] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def use(self, leaf: Leaf, *, max_version: ssl.TLSVersion | None = None, client_ca: Path | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf.cert, leaf.key)
        if max_version is not None:
            context.maximum_version = max_version
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)  # type: ignore[assignment]
        self.context = context

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn, self.context), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket, context: ssl.SSLContext | None) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), conn:
            stream = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) if context else conn
            try:
                if isinstance(stream, ssl.SSLSocket):
                    stream.do_handshake()
            except ssl.SSLError:
                # A lingering close, as real servers do: the client reads the alert before a reset
                # (for the request it wrote meanwhile) could throw it away.
                stream.shutdown(socket.SHUT_WR)
                stream.settimeout(1)
                while stream.recv(65536):
                    pass
                return
            data = stream.recv(65536)
            if not data.startswith(b"POST"):  # a ClientHello on the plain port: what an HTTP server answers
                stream.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            while b"\r\n\r\n" not in data and (chunk := stream.recv(65536)):
                data += chunk
            body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
            stream.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                           b"content-length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()
