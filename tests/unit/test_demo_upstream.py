"""The demo Missive upstream (proxy/demo) as a subprocess, driven by the official SDK clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.demo.data import STORY_ID, VIP_ADDRESS, build_org
from proxy.demo.upstream import build_server
from tests.peers.clients import PeerClient, sdk_client, sse_client
from tests.peers.harness import ServerHandle, free_port, start_server

CATALOG_TOOLS = set(yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "policies" / "catalog" / "data.yaml").read_text())["tools"])
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}}}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _start(tmp: Any, *extra: str) -> ServerHandle:
    port = free_port()
    return start_server(["proxy.demo.upstream", "--port", str(port), *extra], port, log_dir=tmp)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    handle = _start(tmp_path_factory.mktemp("demo"))
    try:
        yield f"http://127.0.0.1:{handle.port}"
    finally:
        handle.stop()


async def _json(client: PeerClient, tool: str, args: dict[str, Any] | None = None) -> Any:
    return json.loads(await client.call_text(tool, args or {}))


def test_seeded_org_is_deterministic_and_complete() -> None:
    a, b = build_org(), build_org()
    assert json.dumps(a.conversations) == json.dumps(b.conversations)
    assert (len(a.teams), len(a.users), len(a.shared_labels), len(a.conversations)) == (4, 9, 7, 50)
    assert {lb["name"] for lb in a.shared_labels} == {"L1 Support", "Support Triage", "vip", "billing", "bug",
                                                      "refund", "urgent"}
    assert all(1 <= len(m) <= 4 for m in a.messages.values())
    assert all(len(c) <= 3 for c in a.comments.values())
    assert any(VIP_ADDRESS in c["authors"][0]["address"] for c in a.conversations.values())
    assert a.tasks == [] and a.hooks == [] and a.reports == {}
    assert (len(a.contact_books), len(a.contact_groups), len(a.responses)) == (1, 2, 3)
    assert json.dumps(build_org(seed=8).conversations) != json.dumps(a.conversations)


def test_the_seeds_names_are_in_the_org() -> None:
    """The seed's prompts work as written: its labels, team, user, contact and conversation exist,
    and conversation 987654 is the newest unresolved one in L1 Support, from the CEO."""
    org = build_org()
    assert {"L1 Support", "Support Triage"} <= {lb["name"] for lb in org.shared_labels}
    assert "Backend Engineering" in [t["name"] for t in org.teams]
    assert "Sarah Jenkins" in [u["name"] for u in org.users]
    assert VIP_ADDRESS == "ceo@enterprise-client.com"
    assert any(i["value"] == VIP_ADDRESS for c in org.contacts for i in c["infos"])
    story = org.conversations[STORY_ID]
    assert STORY_ID == "987654" and org.state[STORY_ID]["status"] == "open" and not story["assignees"]
    l1 = [c for c in org.conversations.values() if "L1 Support" in c["shared_label_names"]
          and org.state[c["id"]]["status"] == "open"]
    assert max(l1, key=lambda c: c["last_activity_at"]) is story
    assert story["authors"][0]["address"] == VIP_ADDRESS and "Support Triage" in story["shared_label_names"]


async def test_server_tools_are_the_catalog_tools() -> None:
    tools = await build_server(build_org()).list_tools()
    assert len(CATALOG_TOOLS) == 37
    assert sorted(t.name for t in tools) == sorted(CATALOG_TOOLS)


async def test_streamable_tools_and_reads(upstream: str) -> None:
    async with sdk_client(f"{upstream}/mcp", mode="legacy") as client:
        assert client.session_id  # stateful
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == CATALOG_TOOLS
        hints = {name: tool.annotations for name, tool in tools.items()}
        assert all(hints.values())
        assert all(h.read_only_hint is True for n, h in hints.items() if h and n.startswith(("list_", "get_")))
        assert all(h.read_only_hint is False for n, h in hints.items() if h and n.startswith("create_"))
        assert all((h.read_only_hint, h.destructive_hint, h.idempotent_hint) == (False, False, True)
                   for n, h in hints.items() if h and n.startswith("update_"))
        assert all((h.read_only_hint, h.destructive_hint, h.idempotent_hint, h.open_world_hint)
                   == (False, True, True, False) for n, h in hints.items() if h and n.startswith("delete_"))
        merge_hints = hints["merge_missive_conversations"]
        assert merge_hints and merge_hints.destructive_hint is True
        draft_hints = hints["create_a_missive_draft"]
        assert draft_hints and draft_hints.open_world_hint is True

        missing = await client.call_tool("list_all_missive_conversations", {"limit": 5})
        assert missing.is_error
        text = missing.content[0].text  # type: ignore[union-attr]
        assert "mailbox filter is required" in text and "inbox" in text and "team_inbox" in text

        inbox = (await _json(client, "list_all_missive_conversations", {"inbox": True, "limit": 50}))["conversations"]
        assert 0 < len(inbox) <= 50
        times = [c["last_activity_at"] for c in inbox]
        assert times == sorted(times, reverse=True)
        page = (await _json(client, "list_all_missive_conversations",
                            {"all": True, "limit": 3, "until": times[2]}))["conversations"]
        assert len(page) == 3 and all(c["last_activity_at"] <= times[2] for c in page)
        vip = (await _json(client, "list_all_missive_conversations",
                           {"all": True, "email": VIP_ADDRESS}))["conversations"]
        assert vip and all("vip" in c["shared_label_names"] for c in vip)

        labels = (await _json(client, "list_all_missive_shared_labels"))["shared_labels"]
        billing = next(lb for lb in labels if lb["name"] == "billing")
        labelled = (await _json(client, "list_all_missive_conversations",
                                {"shared_label": billing["id"]}))["conversations"]
        assert labelled and all(billing["id"] in [x["id"] for x in c["shared_labels"]] for c in labelled)
        teams = (await _json(client, "list_all_missive_teams"))["teams"]
        assert [t["name"] for t in teams] == ["Support", "Billing", "VIP Care", "Backend Engineering"]
        assert len((await _json(client, "list_all_missive_users"))["users"]) == 9
        by_name = await _json(client, "list_all_missive_conversations", {"shared_label": "L1 Support", "limit": 1})
        assert by_name["conversations"][0]["id"] == STORY_ID  # a label's name works where its id does
        story = await _json(client, "get_single_missive_conversation_by_id", {"id": "987654"})
        assert story["conversations"][0]["subject"].startswith("Urgent")

        conv = inbox[0]
        got = (await _json(client, "get_single_missive_conversation_by_id", {"id": conv["id"]}))["conversations"]
        assert got[0]["id"] == conv["id"]
        messages = (await _json(client, "list_all_missive_conversation_messages",
                                {"conversation": conv["id"]}))["messages"]
        assert len(messages) == conv["messages_count"]
        assert {"from_field", "to_fields", "preview", "body", "delivered_at"} <= set(messages[0])
        assert "address" in messages[0]["from_field"]
        local = build_org()  # the server runs the same seed, so ids match
        cid = next(cid for cid, items in local.comments.items() if len(items) >= 2)
        comments = (await _json(client, "list_all_missive_conversation_comments",
                                {"conversation": cid}))["comments"]
        assert [c["id"] for c in comments] == [c["id"] for c in reversed(local.comments[cid])]
        assert all({"id", "body", "author", "created_at"} <= set(c) for c in comments)
        unknown = await client.call_tool("get_single_missive_conversation_by_id", {"id": "nope"})
        assert unknown.is_error


async def test_writes_over_legacy_sse_are_visible_over_streamable(upstream: str) -> None:
    async with sse_client(f"{upstream}/sse") as sse:
        inbox = (await _json(sse, "list_all_missive_conversations", {"inbox": True, "limit": 1}))["conversations"]
        cid = inbox[0]["id"]
        post = (await _json(sse, "create_a_missive_post",
                            {"conversation": cid, "markdown": "**Escalated** to tier 2",
                             "notification": {"title": "Escalation", "body": "tier 2"}}))["posts"]
        assert post["id"] and post["conversation"] == cid
        draft = (await _json(sse, "create_a_missive_draft",
                             {"conversation": cid, "body": "We are on it.",
                              "to_fields": [{"name": "Ada", "address": "ada@analytical.example"}]}))["drafts"]
        assert draft["id"] and draft["sent"] is False
        task = (await _json(sse, "create_a_missive_task",
                            {"title": "Follow up", "team": "Support", "conversation": cid}))["tasks"]
        assert task["state"] == "todo" and task["team"]["name"] == "Support"
        bad = await sse.call_tool("create_a_missive_draft", {"body": "x", "to_fields": [{"name": "no address"}]})
        assert bad.is_error
    async with sdk_client(f"{upstream}/mcp", mode="legacy") as client:
        posts = (await _json(client, "list_all_missive_conversation_posts", {"conversation": cid}))["posts"]
        assert post["id"] in [p["id"] for p in posts]
        drafts = (await _json(client, "list_all_missive_conversation_drafts", {"conversation": cid}))["drafts"]
        assert draft["id"] in [d["id"] for d in drafts]
        conv = (await _json(client, "get_single_missive_conversation_by_id", {"id": cid}))["conversations"][0]
        assert conv["drafts_count"] >= 1 and conv["tasks_count"] >= 1
        drafts_box = (await _json(client, "list_all_missive_conversations", {"drafts": True}))["conversations"]
        assert cid in [c["id"] for c in drafts_box]


async def test_update_delete_task_and_merge_tools(upstream: str) -> None:
    async with sdk_client(f"{upstream}/mcp", mode="legacy") as client:
        inbox = (await _json(client, "list_all_missive_conversations", {"inbox": True, "limit": 50}))["conversations"]
        cid = inbox[-1]["id"]
        closed = (await _json(client, "update_a_missive_conversation_by_id",
                              {"id": cid, "close": True, "add_shared_labels": ["urgent"]}))["conversations"][0]
        assert closed["id"] == cid and "urgent" in closed["shared_label_names"]
        assert any(u.get("closed") for u in closed["users"])
        inbox_ids = [c["id"] for c in (await _json(client, "list_all_missive_conversations",
                                                   {"inbox": True, "limit": 50}))["conversations"]]
        assert cid not in inbox_ids
        assert cid in [c["id"] for c in (await _json(client, "list_all_missive_conversations",
                                                     {"closed": True, "limit": 50}))["conversations"]]
        await _json(client, "update_a_missive_conversation_by_id", {"id": cid, "reopen": True})
        assert cid in [c["id"] for c in (await _json(client, "list_all_missive_conversations",
                                                     {"inbox": True, "limit": 50}))["conversations"]]
        assert (await client.call_tool("update_a_missive_conversation_by_id", {"id": cid})).is_error
        assert (await client.call_tool("update_a_missive_conversation_by_id",
                                       {"id": cid, "add_shared_labels": ["no-such-label"]})).is_error

        post = (await _json(client, "create_a_missive_post", {"conversation": cid, "text": "temporary"}))["posts"]
        deleted = (await _json(client, "delete_a_missive_post_by_id", {"id": post["id"]}))["posts"]
        assert deleted == {"id": post["id"], "deleted": True}
        posts = (await _json(client, "list_all_missive_conversation_posts", {"conversation": cid}))["posts"]
        assert post["id"] not in [p["id"] for p in posts]
        again = await client.call_tool("delete_a_missive_post_by_id", {"id": post["id"]})
        assert again.is_error and "404" in again.content[0].text  # type: ignore[union-attr]

        users = (await _json(client, "list_all_missive_users"))["users"]
        task = (await _json(client, "create_a_missive_task",
                            {"title": "Check logs", "team": "Support", "conversation": cid}))["tasks"]
        updated = (await _json(client, "update_a_missive_task_by_id",
                               {"id": task["id"], "state": "closed", "assignees": [users[1]["id"]]}))["tasks"]
        assert updated["state"] == "closed" and updated["closed_at"] and updated["title"] == "Check logs"
        assert [a["id"] for a in updated["assignees"]] == [users[1]["id"]]
        got = (await _json(client, "get_single_missive_task_by_id", {"id": task["id"]}))["tasks"]
        assert got == updated
        conv = (await _json(client, "get_single_missive_conversation_by_id", {"id": cid}))["conversations"][0]
        assert conv["completed_tasks_count"] >= 1
        assert (await client.call_tool("update_a_missive_task_by_id", {"id": task["id"], "state": "done"})).is_error

        # Merge two closed conversations without the VIP (other tests check VIP conversations).
        closed_box = (await _json(client, "list_all_missive_conversations",
                                  {"closed": True, "limit": 50}))["conversations"]
        target, source = [c for c in closed_box if "vip" not in c["shared_label_names"]][:2]
        source_messages = (await _json(client, "list_all_missive_conversation_messages",
                                       {"conversation": source["id"]}))["messages"]
        merged = (await _json(client, "merge_missive_conversations",
                              {"id": source["id"], "target": target["id"]}))["conversations"][0]
        assert merged["id"] == target["id"]
        assert merged["messages_count"] == target["messages_count"] + source["messages_count"]
        assert (await client.call_tool("get_single_missive_conversation_by_id", {"id": source["id"]})).is_error
        moved = (await _json(client, "get_single_missive_message_by_id", {"id": source_messages[0]["id"]}))
        assert moved["messages"]["conversation"] == target["id"]
        assert (await client.call_tool("merge_missive_conversations",
                                       {"id": target["id"], "target": target["id"]})).is_error


def test_rate_limit_429_with_headers(tmp_path: Any) -> None:
    handle = _start(tmp_path, "--per-minute", "3")
    try:
        url = f"http://127.0.0.1:{handle.port}/mcp"
        with httpx.Client(timeout=10) as http:
            ok = [http.post(url, json=INIT, headers=ACCEPT) for _ in range(3)]
            assert [r.status_code for r in ok] == [200, 200, 200]
            assert ok[0].headers["x-ratelimit-limit"] == "3"
            assert ok[2].headers["x-ratelimit-remaining"] == "0"
            refused = http.post(url, json=INIT, headers=ACCEPT)
            assert refused.status_code == 429
            retry_after = int(refused.headers["retry-after"])
            assert 1 <= retry_after <= 60
            assert refused.headers["x-ratelimit-limit"] == "3"
            assert refused.headers["x-ratelimit-remaining"] == "0"
            assert 0 < int(refused.headers["x-ratelimit-reset"]) - time.time() <= 61
            body = refused.json()
            assert body["error"] == "rate_limited" and body["limit"] == 3 and body["window"] == "minute"
            assert http.get(f"http://127.0.0.1:{handle.port}/nothing").status_code == 404  # not counted
    finally:
        handle.stop()


async def test_concurrency_limit_429(tmp_path: Any) -> None:
    handle = _start(tmp_path, "--concurrent", "1")
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc": "2.0", '  # the request stays in flight until the body is complete
        await release.wait()
        yield json.dumps(INIT).encode()[1:]

    try:
        url = f"http://127.0.0.1:{handle.port}/mcp"
        async with httpx.AsyncClient(timeout=10) as http:
            held = asyncio.create_task(http.post(url, content=slow_body(), headers=ACCEPT))
            await asyncio.sleep(0.3)
            refused = await http.post(url, json=INIT, headers=ACCEPT)
            release.set()
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1" and refused.headers["x-ratelimit-limit"] == "1"
            assert refused.json()["window"] == "concurrent requests"
            assert (await held).status_code == 200
            # The slot is freed when the server-side handler returns, a moment after the client has the body.
            statuses = []
            for _ in range(20):
                statuses.append((await http.post(url, json=INIT, headers=ACCEPT)).status_code)
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.1)
            assert statuses[-1] == 200, statuses
    finally:
        handle.stop()
