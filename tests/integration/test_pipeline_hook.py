"""The one enforcement hook, exercised through every transport with the official SDK client.

A test pipeline (not a policy engine: that arrives with the policy issue) denies one tool and
rewrites `tools/list` answers. The proxy runs in-process so the pipeline can be a Python object;
the upstreams are the real SDK servers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from mcp.shared.exceptions import MCPError

from proxy.app import create_app
from proxy.config import load
from proxy.enforce.pipeline import ALLOW, Channel, Verdict
from proxy.protocol import jsonrpc
from proxy.protocol.jsonrpc import Kind, Message
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import free_port


class HidingPipeline:
    """Hides `add` from tools/list and refuses calls to `sleep`; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    async def client_message(self, channel: Channel, msg: Message, headers=()) -> Verdict:
        self.seen.append((channel.transport, msg.kind.value, msg.method))
        if msg.method == "tools/call" and msg.params.get("name") == "sleep":
            return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.FORBIDDEN, "Forbidden by policy"))
        if msg.method == "tools/list":
            return Verdict(True)
        return ALLOW

    async def server_message(self, channel: Channel, msg: Message) -> Message | None:
        self.seen.append((channel.transport, "server-" + msg.kind.value, msg.method))
        if msg.kind is Kind.RESPONSE and channel.watched.get(msg.id) == "tools/list" and "result" in msg.data:
            result = dict(msg.data["result"])
            result["tools"] = [t for t in result["tools"] if t["name"] != "add"]
            return Message({**msg.data, "result": result}, Kind.RESPONSE)
        return None


@pytest.fixture
async def in_process_proxy(sdk_upstream):
    async def start(mode: str) -> tuple[str, HidingPipeline]:
        upstream = sdk_upstream(mode)
        config = load(None, {"upstream.url": f"{upstream.base}/mcp", "upstream.sse_url": f"{upstream.base}/sse"})
        pipeline = HidingPipeline()
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(config, pipeline), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        servers.append((server, asyncio.ensure_future(server.serve())))
        while not server.started:
            await asyncio.sleep(0.02)
        return f"http://127.0.0.1:{port}", pipeline

    servers: list[tuple[uvicorn.Server, asyncio.Future[Any]]] = []
    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def _exercise(client: Any) -> None:
    names = await client.tool_names()
    assert "echo" in names and "add" not in names
    assert await client.call_text("echo", {"text": "hi"}) == "hi"
    with pytest.raises(MCPError) as err:
        await client.call_tool("sleep", {"seconds": 0})
    assert err.value.error.code == jsonrpc.FORBIDDEN


@pytest.mark.parametrize(("mode", "client_mode"), [
    ("stateful-sse", "legacy"), ("stateful-json", "legacy"), ("stateless-json", "auto"),
])
async def test_streamable_http_messages_pass_the_hook(in_process_proxy, mode, client_mode):
    base, pipeline = await in_process_proxy(mode)
    async with sdk_client(f"{base}/mcp", mode=client_mode) as client:
        await _exercise(client)
    assert ("streamable_http", "request", "tools/call") in pipeline.seen
    assert ("streamable_http", "server-response", None) in pipeline.seen


async def test_legacy_sse_denials_travel_on_the_stream(in_process_proxy):
    base, pipeline = await in_process_proxy("legacy-sse")
    async with sse_client(f"{base}/sse") as client:
        await _exercise(client)
    assert ("legacy_sse", "request", "tools/call") in pipeline.seen
    assert ("legacy_sse", "notification", "notifications/initialized") in pipeline.seen
