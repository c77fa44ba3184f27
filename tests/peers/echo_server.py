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
    status = int(headers.get("x-test-status", "200"))
    out_headers = [(b"content-type", b"application/json")]
    for name, value in scope["headers"]:
        if name.startswith(b"x-test-header-"):
            out_headers.append((name[len(b"x-test-header-"):], value))
    payload = json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers,
                          "raw_headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                          "body": body.decode("utf-8", "replace")}).encode()
    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
