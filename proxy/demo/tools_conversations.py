"""Demo upstream tools that change conversations (update, merge), read a message by id, delete a post.

Registered on the server's MCPServer by :func:`register` (see :mod:`proxy.demo.upstream`).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from proxy.demo.data import DemoOrg, Json
from proxy.demo.tools_common import (
    DELETE,
    MERGE,
    READ,
    UPDATE,
    dump,
    get_conversation,
    lookup,
    user_refs,
)


def _set_labels(conv: Json, labels: list[Json]) -> None:
    conv["shared_labels"] = labels
    conv["shared_label_names"] = ", ".join(lb["name"] for lb in labels)


def _set_assignees(conv: Json, users: list[Json]) -> None:
    conv["assignees"] = users
    conv["assignee_names"] = ", ".join(u["name"] for u in users)
    conv["assignee_emails"] = ", ".join(u["email"] for u in users)


def _merged(first: list[Json], second: list[Json]) -> list[Json]:
    """`first` then the items of `second` whose id is not in it."""
    ids = {item["id"] for item in first}
    return [*first, *(item for item in second if item["id"] not in ids)]


def register(mcp: MCPServer, org: DemoOrg) -> None:
    """Add the tools to `mcp`, all reading and writing `org`."""

    @mcp.tool(annotations=UPDATE)
    def update_a_missive_conversation_by_id(
        id: str, close: bool | None = None, reopen: bool | None = None,
        add_shared_labels: list[str] | None = None, remove_shared_labels: list[str] | None = None,
        add_assignees: list[str] | None = None, remove_assignees: list[str] | None = None,
        team: str | None = None, flag: bool | None = None, unflag: bool | None = None,
    ) -> str:
        """Update conversations (Missive PATCH /conversations/:ids); `id` may list ids separated by commas.

        close / reopen (true) set the token owner's mailbox state; flag / unflag (true) its flag.
        add_shared_labels / remove_shared_labels take shared label ids or names, add_assignees /
        remove_assignees user ids (or emails), team a team id or name (moves the conversation).
        """
        if close and reopen:
            raise ToolError("pass only one of close and reopen")
        if flag and unflag:
            raise ToolError("pass only one of flag and unflag")
        if not (close or reopen or flag or unflag or add_shared_labels or remove_shared_labels
                or add_assignees or remove_assignees or team):
            raise ToolError("nothing to update: pass close, reopen, flag, unflag, add_shared_labels, "
                            "remove_shared_labels, add_assignees, remove_assignees or team")
        ids = [part.strip() for part in id.split(",") if part.strip()]
        if not ids:
            raise ToolError("id is required")
        with org.lock:
            convs = [get_conversation(org, ident) for ident in ids]
            hint = "list_all_missive_shared_labels"
            add_labels = [org.ref(lookup(org, org.shared_labels, x, "shared label", hint))
                          for x in add_shared_labels or []]
            drop_labels = {lookup(org, org.shared_labels, x, "shared label", hint)["id"]
                           for x in remove_shared_labels or []}
            add_users = user_refs(org, add_assignees or [])
            drop_users = {u["id"] for u in user_refs(org, remove_assignees or [])}
            team_ref = org.ref(lookup(org, org.teams, team, "team", "list_all_missive_teams")) if team else None
            for conv in convs:
                state = org.state[conv["id"]]
                if close:
                    state["status"] = "closed"
                elif reopen:
                    state["status"] = "open"
                if flag or unflag:
                    state["flagged"] = bool(flag)
                if add_labels or drop_labels:
                    kept = [lb for lb in _merged(conv["shared_labels"], add_labels) if lb["id"] not in drop_labels]
                    _set_labels(conv, kept)
                if add_users or drop_users:
                    _set_assignees(conv, [u for u in _merged(conv["assignees"], add_users)
                                          if u["id"] not in drop_users])
                if team_ref:
                    conv["team"] = team_ref
            return dump("conversations", [org.public(conv["id"]) for conv in convs])

    @mcp.tool(annotations=MERGE)
    def merge_missive_conversations(id: str, target: str, subject: str | None = None) -> str:
        """Merge conversation `id` into conversation `target` (Missive POST /conversations/:id/merge).

        The messages, comments, posts, drafts and tasks of `id` move to `target`, which also gains its
        shared labels and assignees; `id` is deleted. `subject` optionally renames the result.
        """
        if id == target:
            raise ToolError("cannot merge a conversation into itself")
        with org.lock:
            target_conv, old = get_conversation(org, target), get_conversation(org, id)
            tid, sid = target_conv["id"], old["id"]
            org.messages[tid] = sorted(org.messages[tid] + org.messages.pop(sid), key=lambda m: m["delivered_at"])
            org.comments[tid] = sorted(org.comments[tid] + org.comments.pop(sid), key=lambda c: c["created_at"])
            for store in (org.posts, org.drafts):
                moved = store.pop(sid, [])
                for item in moved:
                    item["conversation"] = tid
                if moved:
                    store.setdefault(tid, []).extend(moved)
            for task in org.tasks:
                if task.get("conversation") == sid:
                    task["conversation"] = tid
            _set_labels(target_conv, _merged(target_conv["shared_labels"], old["shared_labels"]))
            _set_assignees(target_conv, _merged(target_conv["assignees"], old["assignees"]))
            target_conv["users"] = _merged(target_conv["users"], old["users"])
            for key in ("attachments_count", "send_later_messages_count"):
                target_conv[key] += old[key]
            if subject:
                target_conv["subject"] = subject
            target_conv["created_at"] = min(target_conv["created_at"], old["created_at"])
            if org.messages[tid]:
                target_conv["latest_message_subject"] = org.messages[tid][-1]["subject"]
            del org.conversations[sid]
            del org.state[sid]
            org.touch(tid, old["last_activity_at"])
            return dump("conversations", [org.public(tid)])

    @mcp.tool(annotations=READ)
    def get_single_missive_message_by_id(id: str) -> str:
        """Get one message by id (Missive GET /messages/:id), with the id of its conversation."""
        with org.lock:
            for cid, messages in org.messages.items():
                for msg in messages:
                    if msg["id"] == id:
                        return dump("messages", {**msg, "conversation": cid})
        raise ToolError(f"message {id!r} not found (404)")

    @mcp.tool(annotations=DELETE)
    def delete_a_missive_post_by_id(id: str) -> str:
        """Delete a post (Missive DELETE /posts/:id)."""
        with org.lock:
            for posts in org.posts.values():
                for n, post in enumerate(posts):
                    if post["id"] == id:
                        del posts[n]
                        return dump("posts", {"id": id, "deleted": True})
        raise ToolError(f"post {id!r} not found (404)")
