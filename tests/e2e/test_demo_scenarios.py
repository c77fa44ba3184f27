"""The seed's two workflows end to end: the official SDK client → the proxy (bundled policies and
the Missive pack, URL tokens) → the demo Missive upstream (proxy/demo: a real MCP server on the
official SDK over an in-memory Missive organisation)."""

from __future__ import annotations

import json

import pytest
from mcp.shared.exceptions import MCPError

from proxy.demo_launcher import demo_config
from tests.integration.proxy_harness import start_proxy
from tests.leakcheck import secret
from tests.peers.clients import sdk_client
from tests.peers.harness import free_port, start_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    upstream_port, port = free_port(), free_port()
    upstream = start_server(["proxy.demo.upstream", "--port", str(upstream_port)], upstream_port, log_dir=workdir)
    config, tokens = demo_config(upstream_port, port, "127.0.0.1")
    for token in tokens.values():
        secret(token)
    base = f"http://127.0.0.1:{upstream_port}"
    proxy = start_proxy(workdir, base, {k: v for k, v in config.items() if k not in ("listen",)}, port=port)
    yield {name: f"{proxy.base}/{token}/mcp" for name, token in tokens.items()}
    proxy.stop()
    upstream.stop()


async def call_json(client, tool: str, args: dict) -> dict:
    return json.loads(await client.call_text(tool, args))


async def test_support_triage_workflow(demo):
    """Newest unresolved conversation in a shared label, its messages and comments, a team's id,
    an internal summary post, a task for that team."""
    async with sdk_client(demo["support"]) as client:
        labels = (await call_json(client, "list_all_missive_shared_labels", {}))["shared_labels"]
        vip = next(label for label in labels if label["name"] == "vip")
        conversations = (await call_json(client, "list_all_missive_conversations",
                                         {"shared_label": vip["id"], "limit": 10}))["conversations"]
        newest = max(conversations, key=lambda c: c["last_activity_at"])
        messages = (await call_json(client, "list_all_missive_conversation_messages",
                                    {"conversation": newest["id"]}))["messages"]
        await call_json(client, "list_all_missive_conversation_comments", {"conversation": newest["id"]})
        teams = (await call_json(client, "list_all_missive_teams", {}))["teams"]
        team = next(t for t in teams if t["name"] == "VIP Care")
        post = await call_json(client, "create_a_missive_post", {
            "conversation": newest["id"], "text": f"Summary: {len(messages)} messages, needs a reply."})
        assert post["posts"]["conversation"] == newest["id"] if isinstance(post["posts"], dict) else post
        task = await call_json(client, "create_a_missive_task", {
            "title": "Answer the VIP", "team": team["id"], "conversation": newest["id"]})
        assert "tasks" in task


async def test_vip_workflow_drafts_but_never_sends(demo):
    """Conversations of an email address, the latest message, a draft reply (not sent), a note."""
    async with sdk_client(demo["support"]) as client:
        found = (await call_json(client, "list_all_missive_conversations",
                                 {"all": True, "email": "vip@bigcustomer.example"}))["conversations"]
        latest = max(found, key=lambda c: c["last_activity_at"])
        messages = (await call_json(client, "list_all_missive_conversation_messages",
                                    {"conversation": latest["id"], "limit": 1}))["messages"]
        assert messages
        draft = await call_json(client, "create_a_missive_draft", {
            "conversation": latest["id"], "body": "Thanks, we are on it.",
            "to_fields": [{"address": "vip@bigcustomer.example"}]})
        assert "drafts" in draft
        refused = await client.call_tool("create_a_missive_draft", {
            "conversation": latest["id"], "body": "Sending now", "send": True})
        assert refused.is_error and "send" in refused.content[0].text.lower()
        await call_json(client, "create_a_missive_post", {"conversation": latest["id"], "text": "Draft ready"})
        # Listing without a mailbox filter is refused with a hint the model can act on.
        hint = await client.call_tool("list_all_missive_conversations", {})
        assert hint.is_error and "inbox" in hint.content[0].text


async def test_read_only_server_reads_but_writes_nothing(demo):
    async with sdk_client(demo["triage"]) as client:
        names = set(await client.tool_names())
        assert "list_all_missive_conversations" in names
        assert not {n for n in names if n.startswith(("create_", "update_", "delete_"))}
        found = await call_json(client, "list_all_missive_conversations", {"inbox": True, "limit": 5})
        assert found["conversations"]
        for tool, args in (("create_a_missive_post", {"conversation": "c", "text": "x"}),
                           ("create_a_missive_draft", {"body": "x"}), ("create_a_missive_task", {"title": "x"})):
            with pytest.raises(MCPError) as err:
                await client.call_tool(tool, args)
            assert err.value.error.code == -32602
