"""A minimal, fast MCP-shaped upstream for benchmarks.

Raw ASGI app on uvicorn (uvloop + httptools, no access log, no lifespan, no session). Each
Streamable HTTP endpoint declares one tool catalog:

- ``POST /mcp``: ``echo`` and ``echo_sse`` (text in, the same text out; ``echo_sse`` answers as
  ``text/event-stream``: one ``message`` event, then the end of the body);
- ``POST /missive/mcp``: the 37 tools of the Missive catalog (``missive_tools.json``: the
  definitions the demo's SDK server publishes);
- ``POST /sixty/mcp``: 60 tools named like ``decision.py``'s ``page_of_60``.

``tools/call`` of a declared tool answers ``{"content": [{"type": "text", "text": T}], "isError":
false}``: T is ``arguments.text`` for the echo tools, the arguments as JSON for the others.
``tools/list``, ``initialize`` and ``ping`` answer the obvious thing; notifications and responses
get 202; anything else JSON-RPC -32601, an undeclared tool -32602.

Legacy HTTP+SSE (2024-11-05, the ``/mcp`` catalog): ``GET /sse`` sends an ``endpoint`` event
naming ``/messages?session_id=…``; ``POST /messages?session_id=…`` answers 202 and sends the
JSON-RPC answer on that session's stream. ``GET /jwks.json`` serves the file given by ``--jwks``.

Run: ``python benchmarks/fast_upstream.py --port 9000 [--host 127.0.0.1] [--jwks FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

PROTOCOL_VERSION = "2025-06-18"
HERE = Path(__file__).resolve().parent
TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
ECHO_TOOLS = [
    {"name": name, "description": "Echo the text back.", "inputSchema": TEXT_SCHEMA,
     "annotations": {"readOnlyHint": True}}
    for name in ("echo", "echo_sse")
]
RESOURCES = ["conversation", "message", "comment", "post", "draft", "task", "user", "team", "contact",
             "shared_label", "organization", "response"]
VERBS = ("list_all_missive_{}s", "get_single_missive_{}_by_id", "create_a_missive_{}",
         "update_a_missive_{}_by_id", "delete_a_missive_{}_by_id")
SIXTY_SCHEMA = {"type": "object", "properties": {"id": {"type": "string"}, "limit": {"type": "integer"}}}
SIXTY_TOOLS = [{"name": verb.format(r), "inputSchema": SIXTY_SCHEMA} for verb in VERBS for r in RESOURCES]
INITIALIZE_RESULT = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {"tools": {"listChanged": False}},
    "serverInfo": {"name": "fast-upstream", "version": "1.0.0"},
}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Catalog:
    """One endpoint's tools: the tools/list result, encoded once, and the declared names."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.list_result = orjson.Fragment(orjson.dumps({"tools": tools}))
        self.names = frozenset(t["name"] for t in tools)


def _load_missive() -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = json.loads((HERE / "missive_tools.json").read_text())
    return tools


CATALOGS = {
    "/mcp": Catalog(ECHO_TOOLS),
    "/missive/mcp": Catalog(_load_missive()),
    "/sixty/mcp": Catalog(SIXTY_TOOLS),
}
SESSIONS: dict[str, asyncio.Queue[bytes | None]] = {}
_session_ids = itertools.count(1)
JWKS: bytes | None = None


async def _send(send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _result(msg_id: Any, result: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result})


def _error(msg_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def answer(message: Any, catalog: Catalog) -> bytes | None:
    """JSON-RPC response body for one parsed message, or None for 202 (no body)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(None, -32600, "Invalid Request")
    if "id" not in message or "method" not in message:
        return None  # notification or response
    msg_id = message["id"]
    method = message["method"]
    params = message.get("params") or {}
    if method == "tools/call":
        name = params.get("name")
        if name not in catalog.names:
            return _error(msg_id, -32602, "Unknown tool")
        arguments = params.get("arguments") or {}
        echo = name in ("echo", "echo_sse")
        text = str(arguments.get("text", "")) if echo else orjson.dumps(arguments).decode()
        return _result(msg_id, {"content": [{"type": "text", "text": text}], "isError": False})
    if method == "tools/list":
        return _result(msg_id, catalog.list_result)
    if method == "initialize":
        return _result(msg_id, INITIALIZE_RESULT)
    if method == "ping":
        return _result(msg_id, {})
    return _error(msg_id, -32601, "Method not found")


async def _body(receive: Receive) -> bytes:
    event = await receive()
    body: bytes = event.get("body", b"")
    while event.get("more_body", False):
        event = await receive()
        body += event.get("body", b"")
    return body


def _event(data: bytes, event: bytes = b"message") -> bytes:
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


async def _post_mcp(receive: Receive, send: Send, catalog: Catalog) -> None:
    try:
        message = orjson.loads(await _body(receive))
    except orjson.JSONDecodeError:
        await _send(send, 400, _error(None, -32700, "Parse error"))
        return
    out = answer(message, catalog)
    if out is None:
        await _send(send, 202, b"", [])
    elif isinstance(message, dict) and (message.get("params") or {}).get("name") == "echo_sse":
        # As the SDK's servers answer: a stream (chunked) carrying one event, then its end.
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": _event(out), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _send(send, 200, out)


async def _legacy_stream(receive: Receive, send: Send) -> None:
    session_id = f"{next(_session_ids):016x}"
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    SESSIONS[session_id] = queue

    async def watch() -> None:  # the client going away ends the stream
        while (await receive())["type"] != "http.disconnect":
            pass
        queue.put_nowait(None)

    watcher = asyncio.ensure_future(watch())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        endpoint = f"/messages?session_id={session_id}".encode()
        await send({"type": "http.response.body", "body": _event(endpoint, b"endpoint"), "more_body": True})
        while (chunk := await queue.get()) is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        SESSIONS.pop(session_id, None)


async def _legacy_post(scope: Message, receive: Receive, send: Send) -> None:
    ids = parse_qs(scope.get("query_string", b"").decode()).get("session_id", [])
    queue = SESSIONS.get(ids[0]) if ids else None
    body = await _body(receive)
    if queue is None:
        await _send(send, 404, b"unknown session", [(b"content-type", b"text/plain")])
        return
    try:
        out = answer(orjson.loads(body), CATALOGS["/mcp"])
    except orjson.JSONDecodeError:
        await _send(send, 400, b"parse error", [(b"content-type", b"text/plain")])
        return
    await _send(send, 202, b"Accepted", [(b"content-type", b"text/plain")])
    if out is not None:
        queue.put_nowait(_event(out))


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    catalog = CATALOGS.get(path)
    if catalog is not None and method == "POST":
        await _post_mcp(receive, send, catalog)
    elif catalog is not None:
        await _send(send, 405, b"", [(b"allow", b"POST")])
    elif path == "/messages" and method == "POST":
        await _legacy_post(scope, receive, send)
    elif path == "/sse" and method == "GET":
        await _legacy_stream(receive, send)
    elif path == "/jwks.json" and method == "GET" and JWKS is not None:
        await _send(send, 200, JWKS)
    else:
        await _send(send, 404, b"not found", [(b"content-type", b"text/plain")])


def main(argv: list[str] | None = None) -> None:
    global JWKS
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, help="a JWKS document to serve at GET /jwks.json")
    args = parser.parse_args(argv)
    if args.jwks:
        JWKS = args.jwks.read_bytes()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
