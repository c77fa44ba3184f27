"""The TypeScript SDK's reference server behind the proxy, driven by the Python SDK client.

A second real implementation: LF line endings, `id:` on every SSE event, server→client requests
(sampling) answered by the client through the proxy, and the TypeScript legacy SSE conventions
(`/message?sessionId=…`).
"""

from __future__ import annotations

import time

import pytest
from mcp_types import CreateMessageResult, TextContent

from tests.integration.proxy_harness import start_proxy
from tests.peers.clients import sdk_client, sse_client
from tests.peers.harness import start_ts_everything


@pytest.fixture(scope="module")
def ts_proxy(tmp_path_factory):
    started = []

    def _start(transport: str):
        workdir = tmp_path_factory.mktemp(f"ts-{transport}")
        port, handle = start_ts_everything(transport, workdir)
        proxy = start_proxy(workdir, f"http://127.0.0.1:{port}",
                            {"upstream": {"sse_url": f"http://127.0.0.1:{port}/sse"}})
        started.extend([proxy, handle])
        return proxy

    yield _start
    for item in reversed(started):
        item.stop()


async def sampling(context, params):
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text="sampled!"), model="test")


@pytest.mark.parametrize("client_mode", ["auto", "legacy"])
async def test_ts_streamable_server_through_proxy(ts_proxy, client_mode):
    proxy = ts_proxy("streamableHttp")
    async with sdk_client(proxy.url, mode=client_mode, sampling_callback=sampling) as client:
        assert client.session_id  # the TS server keeps sessions: the client fell back to initialize
        names = await client.tool_names()
        assert {"echo", "get-sum", "trigger-long-running-operation", "trigger-sampling-request"} <= set(names)
        assert await client.call_text("echo", {"message": "ts"}) == "Echo: ts"
        # A server→client sampling request on the POST's SSE stream, answered by a client POST.
        result = await client.call_tool("trigger-sampling-request", {"prompt": "hi"})
        assert "sampled!" in str(result.content)

        arrivals: list[float] = []

        async def on_progress(progress, total, message):
            arrivals.append(time.monotonic())

        await client.call_tool("trigger-long-running-operation", {"duration": 2, "steps": 4}, progress=on_progress)
        done = time.monotonic()
        assert len(arrivals) == 4 and done - arrivals[0] > 1.0


async def test_ts_legacy_sse_server_through_proxy(ts_proxy):
    proxy = ts_proxy("sse")
    async with sse_client(proxy.sse_url, sampling_callback=sampling) as client:
        assert await client.call_text("echo", {"message": "old"}) == "Echo: old"
        result = await client.call_tool("trigger-sampling-request", {"prompt": "hi"})
        assert "sampled!" in str(result.content)
