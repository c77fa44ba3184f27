"""resultType on every result the proxy makes itself, on every transport, whenever the revision in
force needs it (2026-07-28: the SDK's client refuses a result without one, so a model would never
read why its call was refused).

The official SDK client (mcp 2.3.0) in its default mode over legacy HTTP+SSE: it probes
`server/discover` first, the SDK's SSE server locks the connection to 2026-07-28, and every
request then names that revision in `params._meta` — the only place the proxy can learn it on
this transport (no MCP-Protocol-Version header). The proxy's own tool error (arguments that fail
the tool's schema) must reach the client as a result it accepts.
"""

from __future__ import annotations

import pytest

from tests.peers.clients import sdk_client, sse_client


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_proxy_made_tool_error_reaches_the_sdk_client_over_legacy_sse(sdk_upstream, proxy_for, mode):
    upstream = sdk_upstream("legacy-sse")
    proxy = proxy_for(upstream.base)
    async with sse_client(proxy.sse_url, mode=mode) as client:
        assert client.modern == (mode == "auto")
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        result = await client.call_tool("echo", {"text": 5})  # a schema violation: answered by the proxy
        assert result.is_error and "text" in result.content[0].text  # type: ignore[union-attr]
        assert await client.call_text("echo", {"text": "ok"}) == "ok"
    assert not any('"text":5' in r["body"] for r in upstream.relayed())


async def test_a_proxy_made_tool_error_reaches_the_sdk_client_over_streamable_http(sdk_upstream, proxy_for):
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base)
    async with sdk_client(proxy.url) as client:
        assert client.modern
        result = await client.call_tool("echo", {"text": 5})
        assert result.is_error and "text" in result.content[0].text  # type: ignore[union-attr]
