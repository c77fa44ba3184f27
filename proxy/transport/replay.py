"""An ASGI `receive` that hands over a body already read, then the connection's own messages: a
request read whole (to check its signature, to see which session it opens) is then served as if it
had just arrived."""

from __future__ import annotations

from starlette.types import Message, Receive


def replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
