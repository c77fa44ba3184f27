"""The least a proxy on this stack can do: the proxy's own HTTP server and upstream client, no logic.

A raw ASGI app on uvicorn (uvloop + httptools, no proxy-headers middleware) that sends each POST
body to the upstream with the proxy's own keep-alive client (proxy/transport/upstream.py) and
relays the answer's status, content type and body. No parsing, policy, authentication, metrics or
logging: what is left is the cost of the HTTP stack itself, so a path's CPU over this one is what
the proxy's own work costs. run.py measures it as the `floor` path; by hand:

    python benchmarks/run.py --paths floor
    python benchmarks/floor_proxy.py --port 9100 --upstream http://127.0.0.1:9000/mcp

(An earlier version relayed through aiohttp's client: 424 µs/req here, more than the proxy itself.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's proxy package

from proxy.config import Upstream
from proxy.transport.upstream import UpstreamClient

Message = MutableMapping[str, Any]
FORWARDED = (b"content-type", b"accept", b"mcp-protocol-version", b"mcp-session-id")
MAX_ANSWER = 16 << 20


def make_app(upstream: str) -> Callable[..., Awaitable[None]]:
    client: UpstreamClient | None = None

    async def app(
        scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        nonlocal client
        if scope["type"] != "http":
            return
        if client is None:  # created inside the running loop, once
            client = UpstreamClient(Upstream(url=upstream))
        event = await receive()
        body = event.get("body", b"")
        while event.get("more_body", False):
            event = await receive()
            body += event.get("body", b"")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        resp = await client.send("POST", upstream, headers, body)
        data = await resp.read(MAX_ANSWER, 30.0)
        out = [(b"content-length", str(len(data)).encode())]
        if resp.content_type:
            out.append((b"content-type", resp.content_type.encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000/mcp")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
