"""A minimal, fast MCP-shaped upstream for benchmarks.

Raw ASGI app on uvicorn (uvloop + httptools, no access log, no lifespan). ``POST /mcp`` takes one
JSON-RPC message and answers ``application/json`` without a session:

- ``tools/call`` of ``echo`` → ``{"content": [{"type": "text", "text": <arguments.text>}],
  "isError": false}``
- ``tools/list`` → one tool, ``echo``; ``initialize`` and ``ping`` answer the obvious thing
- notifications and responses → 202 with no body; anything else → JSON-RPC -32601

Run: ``python benchmarks/fast_upstream.py --port 9000 [--host 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

PROTOCOL_VERSION = "2025-06-18"
ECHO_TOOL = {
    "name": "echo",
    "description": "Echo the text back.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    "annotations": {"readOnlyHint": True},
}
INITIALIZE_RESULT = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {"tools": {"listChanged": False}},
    "serverInfo": {"name": "fast-upstream", "version": "1.0.0"},
}
JSON_HEADERS = [(b"content-type", b"application/json")]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


def answer(message: Any) -> bytes | None:
    """JSON-RPC response body for one parsed message, or None for 202 (no body)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(None, -32600, "Invalid Request")
    if "id" not in message or "method" not in message:
        return None  # notification or response
    msg_id = message["id"]
    method = message["method"]
    params = message.get("params") or {}
    if method == "tools/call":
        if params.get("name") != "echo":
            return _error(msg_id, -32602, "Unknown tool")
        text = str((params.get("arguments") or {}).get("text", ""))
        return _result(msg_id, {"content": [{"type": "text", "text": text}], "isError": False})
    if method == "tools/list":
        return _result(msg_id, {"tools": [ECHO_TOOL]})
    if method == "initialize":
        return _result(msg_id, INITIALIZE_RESULT)
    if method == "ping":
        return _result(msg_id, {})
    return _error(msg_id, -32601, "Method not found")


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] != "/mcp":
        await _send(send, 404, b"not found", [(b"content-type", b"text/plain")])
        return
    if scope["method"] != "POST":
        await _send(send, 405, b"", [(b"allow", b"POST")])
        return
    event = await receive()
    body = event.get("body", b"")
    while event.get("more_body", False):
        event = await receive()
        body += event.get("body", b"")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        await _send(send, 400, _error(None, -32700, "Parse error"))
        return
    out = answer(message)
    if out is None:
        await _send(send, 202, b"", [])
    else:
        await _send(send, 200, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
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
