"""A plain HTTP stand-in upstream (not an MCP server) for relay-fidelity tests.

The official SDK server only produces some status codes; this one answers whatever the request's
`x-test-status` header asks for, with `x-test-header-*` request headers turned into response
headers, and a JSON body describing the request it received (method, path, headers, body).
Run: ``python -m tests.peers.echo_server --port PORT``.
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if "x-test-tools" in headers:
        await _tools_answer(scope, headers, body, send)
        return
    if headers.get("mcp-method") == "tools/list":  # the proxy listing the tools of this stand-in itself
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(
            {"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"tools": ECHO_TOOLS}}).encode()})
        return
    status = int(headers.get("x-test-status", "200"))
    out_headers = [(b"content-type", b"application/json")]
    for name, value in scope["headers"]:
        if name.startswith(b"x-test-header-"):
            out_headers.append((name[len(b"x-test-header-"):], value))
    payload = json.dumps({"http_method": scope["method"], "path": scope["path"], "headers": headers,
                          "raw_headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                          "body": body.decode("utf-8", "replace")}).encode()
    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    await send({"type": "http.response.body", "body": payload})


# What this stand-in declares when the proxy lists its tools: `echo`, its `region` mirrored in a header.
ECHO_TOOLS = [{"name": "echo", "inputSchema": {
    "type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}}]

# A paginated tools/list (two pages via cursor) whose tools have write and read names.
TOOL_PAGES = {
    None: ([{"name": "list_all_missive_conversations", "inputSchema": {"type": "object"}},
            {"name": "create_a_missive_post", "inputSchema": {"type": "object"}}], "page-2"),
    "page-2": ([{"name": "get_single_missive_conversation_by_id", "inputSchema": {"type": "object"}},
                {"name": "delete_a_missive_post_by_id", "inputSchema": {"type": "object"}}], None),
}


async def _tools_answer(scope: Scope, headers: dict[str, str], body: bytes, send: Send) -> None:
    """`x-test-tools: json` answers a tools/list POST page by cursor; `x-test-tools: sse` answers
    any request (e.g. a GET stream) with an SSE stream carrying a tools/list-shaped response."""
    if headers["x-test-tools"] == "sse":
        tools, _ = TOOL_PAGES[None]
        event = json.dumps({"jsonrpc": "2.0", "id": 99, "result": {"tools": tools}})
        payload = f"id: 1\ndata: {event}\n\n".encode()
        ctype = b"text/event-stream"
    else:
        request = json.loads(body)
        tools, next_cursor = TOOL_PAGES[request.get("params", {}).get("cursor")]
        result: dict = {"tools": tools, "ttlMs": 60000, "cacheScope": "public"}
        if next_cursor:
            result["nextCursor"] = next_cursor
        payload = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        ctype = b"application/json"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
