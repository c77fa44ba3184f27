"""Official-SDK MCP server (``mcp`` 2.3.0 ``MCPServer``) used as the proxy's upstream in tests.

Run: ``python -m tests.peers.sdk_server --mode MODE --port PORT`` (cwd = repository root).

Modes:

- ``stateful-sse``   Streamable HTTP at ``/mcp``, sessions, POST answers are ``text/event-stream``.
- ``stateful-json``  Streamable HTTP at ``/mcp``, sessions, ``json_response=True``.
- ``stateless-json`` Streamable HTTP at ``/mcp``, ``stateless_http=True``, ``json_response=True``.
- ``legacy-sse``     2024-11-05 HTTP+SSE: ``GET /sse`` then ``POST /messages/?session_id=…``.

Set ``MCP_RECORD_FILE=/path`` to append one JSON line per incoming HTTP request
(``method``, ``path``, ``query``, ``headers`` (lowercase names), ``body`` as text, ``ts``, and
``client_port``: the peer's port, which tells the connections that carried the requests apart).

Set ``MCP_TALLY_FILE=/path`` to add a ``tally`` tool (absent otherwise: tests pin the tool list),
which appends one JSON line per execution (``{"pid": …, "key": …}``); the file outlives a restart,
so a test can count how often a call was executed, whichever server process executed it.

``--reuse-port`` binds with ``SO_REUSEPORT``: a second server can listen on the port of a first
one before the first is killed, so a request the proxy sent twice would reach the second.

What the 2.3.0 server does with the modern (2026-07-28) ``server/discover`` probe:

- The Streamable HTTP session manager routes on the ``MCP-Protocol-Version`` header *before*
  looking at stateful/stateless: any value that is not a handshake-era version (2024-11-05 ...
  2025-11-25) goes to the single-exchange "modern" handler. So in **all three streamable modes**
  ``server/discover`` (and every later modern request) is answered 200 without any session; no
  ``Mcp-Session-Id`` is issued, and the SDK client in ``mode="auto"`` stays on 2026-07-28 (it never
  sends initialize, GET or DELETE). Modern requests must carry ``Mcp-Method`` (and ``Mcp-Name`` for
  tools/call, resources/read, prompts/get) matching the body, else 400 + JSON-RPC -32020; GET and
  DELETE with a modern version header → 405 ``Allow: POST``.
  With ``json_response=False`` a modern request is answered as JSON unless the handler emits a
  notification (e.g. progress) or runs > 15 s, in which case it commits to SSE. With
  ``json_response=True`` it is always JSON and progress notifications are dropped (the legacy
  JSON-mode session drops them too).
- A ``server/discover`` POST *without* a modern ``MCP-Protocol-Version`` header takes the legacy
  path: stateful modes → 400 "Missing session ID"; stateless → 200 with JSON-RPC -32601.
- ``initialize`` (``mode="legacy"``) works in every mode as before: stateful modes issue a session.
- ``legacy-sse``: era is decided per SSE connection by its first message. A ``server/discover``
  first locks the connection to 2026-07-28 (so ``mode="auto"`` over SSE ends up modern, replies
  still on the SSE stream); after ``initialize`` a discover is answered with JSON-RPC -32600.

Raw status codes for each mode are pinned down in ``tests/integration/test_peers_direct.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
import zlib
from typing import Annotated, Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MODES = ("stateful-sse", "stateful-json", "stateless-json", "legacy-sse")

# The proxy under test forwards requests with its own Host header (and the tests use several
# host spellings), while the SDK turns DNS-rebinding protection on for 127.0.0.1 and answers
# 421/403 to any Host/Origin outside its allow-list. These peers only ever bind to loopback,
# so the check protects nothing here and is switched off.
NO_DNS_REBINDING = TransportSecuritySettings(enable_dns_rebinding_protection=False)


def build_server() -> MCPServer:
    """Create the MCPServer with the test tools."""
    mcp = MCPServer(name="sdk-test-peer", version="1.0.0", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    async def slow_progress(ctx: Context, steps: int = 5, delay: float = 0.5) -> str:
        """Report progress once per step, sleeping `delay` seconds between steps."""
        for i in range(1, steps + 1):
            await asyncio.sleep(delay)
            await ctx.report_progress(i, steps, f"step {i}/{steps}")
        return "done"

    if tally_file := os.environ.get("MCP_TALLY_FILE"):  # only then: other tests pin the tool list
        tallies: dict[str, int] = {}

        @mcp.tool()
        async def tally(key: str, delay: float = 0.0) -> int:
            """Count one execution under `key` (in MCP_TALLY_FILE too), then wait `delay` seconds;
            answer how often this process has executed `key`."""
            tallies[key] = tallies.get(key, 0) + 1
            with open(tally_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "key": key}) + "\n")
            await asyncio.sleep(delay)
            return tallies[key]

    @mcp.tool()
    async def sleep(seconds: float) -> str:
        """Sleep for `seconds`, then answer."""
        await asyncio.sleep(seconds)
        return "slept"

    @mcp.tool()
    def create_a_missive_post(conversation: str, text: str) -> str:
        """Pretend to create a Missive post; returns a fake post id."""
        digest = zlib.crc32(f"{conversation}|{text}".encode())
        return f"post-{digest:08x}"

    @mcp.tool()
    def regional_echo(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], text: str) -> str:
        """Echo with a parameter mirrored in the Mcp-Param-Region header (revision 2026-07-28)."""
        return f"{region}:{text}"

    # Read tools in the managed-MCP naming convention (list/get → read access), for policy tests.
    @mcp.tool()
    def list_all_missive_conversations(inbox: bool = True) -> str:
        """Pretend to list conversations."""
        return json.dumps({"conversations": [{"id": "c-1", "subject": "Hello"}]})

    @mcp.tool()
    def get_single_missive_conversation_by_id(id: str) -> str:
        """Pretend to get one conversation."""
        return json.dumps({"conversations": [{"id": id, "subject": "Hello"}]})

    return mcp


def _headers_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for k, v in raw:
        name, value = k.decode("latin-1").lower(), v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class RecordingMiddleware:
    """Pure-ASGI middleware appending one JSON line per HTTP request to a file.

    Only the request side is wrapped: the body is captured from ``http.request`` messages as
    the app reads them, and the line is written as soon as the body is complete (or when the
    app starts responding / returns without reading it). Responses pass through untouched,
    so SSE is never buffered.
    """

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    def _write(self, scope: Scope, body: bytes) -> None:
        record: dict[str, Any] = {
            "ts": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": _headers_dict(scope["headers"]),
            "body": body.decode("utf-8", errors="replace"),
            "client_port": (scope.get("client") or (None, None))[1],
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        written = False

        def flush() -> None:
            nonlocal written
            if not written:
                written = True
                self._write(scope, b"".join(chunks))

        async def recv() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not written:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    flush()
            return message

        async def snd(message: Message) -> None:
            if message["type"] == "http.response.start":
                flush()
            await send(message)

        try:
            await self.app(scope, recv, snd)
        finally:
            flush()


def build_app(mode: str) -> ASGIApp:
    """Build the ASGI app for `mode`, wrapped in the recorder if MCP_RECORD_FILE is set."""
    mcp = build_server()
    app: ASGIApp
    if mode == "legacy-sse":
        app = mcp.sse_app(transport_security=NO_DNS_REBINDING)
    elif mode in MODES:
        app = mcp.streamable_http_app(
            json_response=mode.endswith("-json"),
            stateless_http=mode.startswith("stateless"),
            transport_security=NO_DNS_REBINDING,
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    record_file = os.environ.get("MCP_RECORD_FILE")
    return RecordingMiddleware(app, record_file) if record_file else app


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve with uvicorn on 127.0.0.1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    args = parser.parse_args(argv)
    if args.reuse_port:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((args.host, args.port))
        config = uvicorn.Config(build_app(args.mode), log_level=args.log_level, timeout_graceful_shutdown=1)
        uvicorn.Server(config).run(sockets=[sock])
        return
    uvicorn.run(
        build_app(args.mode),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # Open SSE streams would otherwise hold up shutdown (SIGTERM) indefinitely.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
