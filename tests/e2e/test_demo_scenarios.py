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


async def triage_reads(client) -> tuple[dict, dict, int]:
    """Workflow (a), reads: the newest unresolved conversation in the shared label `L1 Support`, its
    messages and comments, the team `Backend Engineering`. Returns (conversation, team, number of
    messages)."""
    labels = (await call_json(client, "list_all_missive_shared_labels", {}))["shared_labels"]
    l1 = next(label for label in labels if label["name"] == "L1 Support")
    conversations = (await call_json(client, "list_all_missive_conversations",
                                     {"shared_label": l1["id"], "limit": 10}))["conversations"]
    assert conversations and all(l1["id"] in [lb["id"] for lb in c["shared_labels"]] for c in conversations)
    newest = max(conversations, key=lambda c: c["last_activity_at"])
    assert newest["id"] == "987654"  # the seed's conversation
    messages = (await call_json(client, "list_all_missive_conversation_messages",
                                {"conversation": newest["id"]}))["messages"]
    assert messages
    await call_json(client, "list_all_missive_conversation_comments", {"conversation": newest["id"]})
    teams = (await call_json(client, "list_all_missive_teams", {}))["teams"]
    team = next(t for t in teams if t["name"] == "Backend Engineering")
    return newest, team, len(messages)


async def vip_reads(client) -> tuple[dict, dict]:
    """Workflow (b), reads: the conversations of `ceo@enterprise-client.com`, the latest message,
    the user to note (Sarah Jenkins). Returns (conversation, user)."""
    found = (await call_json(client, "list_all_missive_conversations",
                             {"all": True, "email": "ceo@enterprise-client.com"}))["conversations"]
    assert found
    latest = max(found, key=lambda c: c["last_activity_at"])
    messages = (await call_json(client, "list_all_missive_conversation_messages",
                                {"conversation": latest["id"], "limit": 1}))["messages"]
    assert len(messages) == 1 and messages[0]["delivered_at"]
    users = (await call_json(client, "list_all_missive_users", {}))["users"]
    return latest, next(u for u in users if u["name"] == "Sarah Jenkins")


async def test_support_triage_workflow(demo):
    """Newest unresolved conversation in a shared label, its messages and comments, a team's id,
    an internal summary post, a task for that team."""
    async with sdk_client(demo["support"]) as client:
        newest, team, count = await triage_reads(client)
        post = await call_json(client, "create_a_missive_post", {
            "conversation": newest["id"], "text": f"Summary: {count} messages, needs a reply."})
        assert post["posts"]["conversation"] == newest["id"]
        task = await call_json(client, "create_a_missive_task", {
            "title": "Fix the API 502s", "team": team["id"], "conversation": newest["id"]})
        assert task["tasks"]["team"]["id"] == team["id"] and task["tasks"]["conversation"] == newest["id"]
        posts = await call_json(client, "list_all_missive_conversation_posts", {"conversation": newest["id"]})
        assert posts["posts"][0]["id"] == post["posts"]["id"]


async def test_vip_workflow_drafts_but_never_sends(demo):
    """Conversations of an email address, the latest message, a draft reply (not sent), a note."""
    async with sdk_client(demo["support"]) as client:
        latest, user = await vip_reads(client)
        draft = await call_json(client, "create_a_missive_draft", {
            "conversation": latest["id"], "body": "Thanks, we are on it.",
            "to_fields": [{"address": "ceo@enterprise-client.com"}]})
        assert draft["drafts"]["sent"] is False
        for args in ({"send": True}, {"send_at": 1_900_000_000}):
            refused = await client.call_tool("create_a_missive_draft",
                                              {"conversation": latest["id"], "body": "Sending now", **args})
            assert refused.is_error and "send" in refused.content[0].text.lower()
        drafts = await call_json(client, "list_all_missive_conversation_drafts", {"conversation": latest["id"]})
        assert [d["id"] for d in drafts["drafts"]] == [draft["drafts"]["id"]]  # nothing else reached Missive
        note = await call_json(client, "create_a_missive_post", {
            "conversation": latest["id"], "markdown": f"@{user['name']}: draft ready for review"})
        assert note["posts"]["conversation"] == latest["id"]
        # Listing without a mailbox filter is refused with a hint the model can act on.
        hint = await client.call_tool("list_all_missive_conversations", {})
        assert hint.is_error and "inbox" in hint.content[0].text


async def test_read_only_server_reads_but_writes_nothing(demo):
    async with sdk_client(demo["triage"]) as client:
        names = set(await client.tool_names())
        assert "list_all_missive_conversations" in names
        assert not {n for n in names if n.startswith(("create_", "update_", "delete_"))}
        newest, team, _ = await triage_reads(client)
        latest, _ = await vip_reads(client)
        for tool, args in (
            ("create_a_missive_post", {"conversation": newest["id"], "text": "Summary"}),
            ("create_a_missive_task", {"title": "Answer the VIP", "team": team["id"]}),
            ("create_a_missive_draft", {"conversation": latest["id"], "body": "Thanks"}),
            ("create_a_missive_draft", {"conversation": latest["id"], "body": "Thanks", "send": True}),
        ):
            with pytest.raises(MCPError) as err:
                await client.call_tool(tool, args)
            assert err.value.error.code == -32602
    async with sdk_client(demo["support"]) as client:  # nothing was written
        posts = await call_json(client, "list_all_missive_conversation_posts", {"conversation": newest["id"]})
        assert not any(p["text"] == "Summary" for p in posts["posts"])


async def test_admin_sends_and_updates_but_does_not_delete(demo):
    """The admin server: every tool, sending allowed; deleting still needs allow_delete."""
    async with sdk_client(demo["admin"]) as client:
        names = set(await client.tool_names())
        assert {"create_a_missive_hook", "delete_a_missive_post_by_id", "create_a_missive_team"} <= names
        latest, _ = await vip_reads(client)
        sent = await call_json(client, "create_a_missive_draft", {
            "conversation": latest["id"], "body": "Sent by the admin", "send": True})
        assert sent["drafts"]["sent"] is True
        post = await call_json(client, "create_a_missive_post", {"conversation": latest["id"], "text": "Admin note"})
        refused = await client.call_tool("delete_a_missive_post_by_id", {"id": post["posts"]["id"]})
        assert refused.is_error and "allow_delete" in refused.content[0].text
        posts = await call_json(client, "list_all_missive_conversation_posts", {"conversation": latest["id"]})
        assert post["posts"]["id"] in [p["id"] for p in posts["posts"]]  # the refusal changed nothing
        closed = await call_json(client, "update_a_missive_conversation_by_id", {"id": latest["id"], "close": True})
        assert closed["conversations"][0]["id"] == latest["id"]
        await call_json(client, "update_a_missive_conversation_by_id", {"id": latest["id"], "reopen": True})


async def test_missive_rate_limit_reaches_the_client_unretried(tmp_path):
    """The demo upstream at 2 requests per minute: the third POST through the proxy is the
    upstream's 429, with its Retry-After and X-RateLimit-* headers, and was sent once."""
    import time

    import httpx2

    upstream_port, port = free_port(), free_port()
    upstream = start_server(["proxy.demo.upstream", "--port", str(upstream_port), "--per-minute", "2",
                             "--concurrent", "0", "--log-level", "info"], upstream_port, log_dir=tmp_path)
    config, tokens = demo_config(upstream_port, port, "127.0.0.1")
    secret(tokens["triage"])
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{upstream_port}", {k: v for k, v in config.items()
                                                                         if k != "listen"}, port=port)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream"}
    try:
        async with httpx2.AsyncClient() as http:
            answers = [await http.post(f"{proxy.base}/{tokens['triage']}/mcp", json=initialize, headers=headers)
                       for _ in range(3)]
    finally:
        proxy.stop()
        upstream.stop()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert upstream.stdout().count('"POST /mcp HTTP/1.1"') == 3  # no retry
    limited = answers[2]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-ratelimit-limit"] == "2" and limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) > time.time() - 5  # epoch seconds
    assert limited.json()["error"] == "rate_limited"
