"""The least a Python proxy can do: forward POST bodies upstream and relay the answers.

No parsing, no policy, no streaming: a raw ASGI app on uvicorn (uvloop + httptools) with one shared
aiohttp client session. Run it in place of the real proxy to see the floor for this machine:

    python benchmarks/run.py --proxy-cmd "{python} benchmarks/floor_proxy.py --port {port} --upstream {upstream}"
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]
FORWARDED = ("content-type", "accept", "mcp-protocol-version", "mcp-session-id")


def make_app(upstream: str) -> Callable[..., Awaitable[None]]:
    session: aiohttp.ClientSession | None = None

    async def app(
        scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:  # created inside the running loop, once
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), skip_auto_headers=("User-Agent",))
        event = await receive()
        body = event.get("body", b"")
        while event.get("more_body", False):
            event = await receive()
            body += event.get("body", b"")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() in FORWARDED}
        async with session.post(upstream, data=body, headers=headers) as resp:
            data = await resp.read()
            out = [(b"content-length", str(len(data)).encode())]
            if "content-type" in resp.headers:
                out.append((b"content-type", resp.headers["content-type"].encode()))
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
        log_level="warning",
    )


if __name__ == "__main__":
    main()
