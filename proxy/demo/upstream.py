"""Demo Missive upstream: a real MCP server (official ``mcp`` SDK) over the seeded org of :mod:`.data`.

Run: ``python -m proxy.demo.upstream --port 8931 [--host 127.0.0.1] [--per-minute 300] ...``

One process, one Starlette app, both MCP HTTP transports on the same tool set and the same org:

- Streamable HTTP at ``/mcp`` (stateful: ``Mcp-Session-Id``; POST answers are ``text/event-stream``).
- Legacy HTTP+SSE (2024-11-05) at ``GET /sse`` + ``POST /messages/?session_id=…``.

Tools (the 37 of the Missive catalog, ``policies/catalog/data.yaml``) follow the managed-MCP naming
convention (``list_all_missive_<resources>``, ``get_single_missive_<resource>_by_id``,
``create_a_missive_<resource>``, ``update_a_missive_<resource>_by_id``,
``delete_a_missive_<resource>_by_id``, plus ``merge_missive_conversations``) and answer JSON text
wrapped by resource key, like Missive's REST API (``{"conversations": [...]}``, ``{"posts": {...}}``).
Listings, conversation reads, the create tools of messages/posts/drafts/tasks/contacts and the task
get/update are defined here; conversation update and merge, message by id and post deletion in
:mod:`.tools_conversations`; contacts, contact books/groups, shared labels, teams, responses,
analytics and webhooks in :mod:`.tools_admin` (shared helpers in :mod:`.tools_common`).

Annotations: list/get tools ``readOnlyHint: true``; create tools ``readOnlyHint: false,
destructiveHint: false``; update tools also ``idempotentHint: true``; delete tools
``destructiveHint: true, idempotentHint: true``; the merge ``destructiveHint: true``.
``create_a_missive_draft``, ``create_a_missive_message`` (they can send email) and
``create_a_missive_hook`` (Missive would POST data to its URL; the demo never does) are
``openWorldHint: true``. Invalid calls are MCP tool errors (``isError``).

Rate limits (Missive: 5 concurrent, 300/min, 900/15 min) are simulated by :class:`RateLimitMiddleware`.
DNS-rebinding protection is the SDK's default for a loopback bind (Host must be
``127.0.0.1:*``/``localhost:*``/``[::1]:*``); ``--no-dns-rebinding-protection`` turns it off.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.demo import tools_admin, tools_conversations
from proxy.demo.data import DemoOrg, Json, build_org
from proxy.demo.tools_common import (
    CREATE,
    READ,
    SEND,
    TASK_STATES,
    UPDATE,
    check_limit,
    dump,
    get_conversation,
    lookup,
    page,
    user_refs,
)

MAILBOX_FLAGS = ("inbox", "all", "assigned", "closed", "snoozed", "flagged", "trashed", "junked", "drafts")
MAILBOX_IDS = ("shared_label", "team_inbox", "team_closed", "team_all")


def _newest(items: list[Json], stamp: str, until: int | None, limit: int) -> list[Json]:
    """Newest first, at most `limit`, none after `until` (Missive's pagination)."""
    kept = [item for item in items if until is None or item[stamp] <= until]
    return sorted(kept, key=lambda item: -item[stamp])[:limit]


def _addresses(fields: list[dict[str, str]] | None, what: str) -> list[Json]:
    out: list[Json] = []
    for item in fields or []:
        address = item.get("address")
        if not address or "@" not in address:
            raise ToolError(f"each entry of {what} needs an 'address' (an email address), got {item!r}")
        out.append({"name": item.get("name"), "address": address})
    return out


def _in_mailbox(org: DemoOrg, conv: Json, flag: str, ident: str | None) -> bool:
    state = org.state[conv["id"]]
    status = state["status"]
    visible = status not in ("trashed", "junked")
    team_id = (conv.get("team") or {}).get("id")
    match flag:
        case "inbox":
            return bool(status == "open")
        case "all":
            return visible
        case "assigned":
            return status == "open" and any(a["id"] == org.me["id"] for a in conv["assignees"])
        case "closed" | "snoozed" | "trashed" | "junked":
            return bool(status == flag)
        case "flagged":
            return visible and bool(state["flagged"])
        case "drafts":
            return bool(conv["drafts_count"])
        case "shared_label":
            return visible and any(lb["id"] == ident for lb in conv["shared_labels"])
        case "team_inbox":
            return team_id == ident and status == "open"
        case "team_closed":
            return team_id == ident and status == "closed"
        case "team_all":
            return team_id == ident and visible
    raise AssertionError(flag)  # pragma: no cover


def build_server(org: DemoOrg) -> MCPServer:
    """The MCPServer with the Missive tools, all reading and writing `org`."""
    mcp = MCPServer(name="missive-demo", version="1.0.0", log_level="WARNING",
                    instructions="Demo Missive workspace (fake data). Conversations need one mailbox filter.")

    @mcp.tool(annotations=READ)
    def list_all_missive_conversations(
        inbox: bool | None = None, all: bool | None = None, assigned: bool | None = None,
        closed: bool | None = None, snoozed: bool | None = None, flagged: bool | None = None,
        trashed: bool | None = None, junked: bool | None = None, drafts: bool | None = None,
        shared_label: str | None = None, team_inbox: str | None = None, team_closed: str | None = None,
        team_all: str | None = None, email: str | None = None, domain: str | None = None,
        limit: int = 25, until: int | None = None,
    ) -> str:
        """List conversations of ONE mailbox, newest activity first (Missive GET /conversations).

        Exactly one mailbox filter is required: a boolean among inbox, all, assigned, closed, snoozed,
        flagged, trashed, junked, drafts, or an id for shared_label, team_inbox, team_closed, team_all.
        Optional: email or domain (of a participant), limit (1-50, default 25), until (epoch seconds:
        only conversations whose last_activity_at <= until; pass the last one's value to paginate).
        """
        flags = {"inbox": inbox, "all": all, "assigned": assigned, "closed": closed, "snoozed": snoozed,
                 "flagged": flagged, "trashed": trashed, "junked": junked, "drafts": drafts}
        ids = {"shared_label": shared_label, "team_inbox": team_inbox, "team_closed": team_closed,
               "team_all": team_all}
        chosen: list[tuple[str, str | None]] = [(k, None) for k, v in flags.items() if v]
        chosen += [(k, v) for k, v in ids.items() if v]
        if not chosen:
            raise ToolError("a mailbox filter is required: add one argument among " + ", ".join(MAILBOX_FLAGS)
                            + " (set to true) or " + ", ".join(MAILBOX_IDS) + " (set to an id), e.g. inbox=true")
        if len(chosen) > 1:
            raise ToolError("only one mailbox filter is allowed, got " + ", ".join(k for k, _ in chosen))
        if email and domain:
            raise ToolError("pass at most one of email and domain")
        check_limit(limit, 50)
        flag, ident = chosen[0]
        with org.lock:
            if flag == "shared_label":
                label = org.find(org.shared_labels, ident or "")
                if label is None:
                    raise ToolError(f"shared_label {ident!r} not found (use list_all_missive_shared_labels)")
                ident = label["id"]
            elif flag.startswith("team_"):
                team = org.find(org.teams, ident or "")
                if team is None:
                    raise ToolError(f"{flag} {ident!r}: team not found (use list_all_missive_teams)")
                ident = team["id"]
            found = []
            for conv in org.conversations.values():
                if not _in_mailbox(org, conv, flag, ident):
                    continue
                if until is not None and conv["last_activity_at"] > until:
                    continue
                addresses = [a["address"].lower() for a in conv["authors"]]
                if email and email.lower() not in addresses:
                    continue
                if domain and not any(a.endswith("@" + domain.lower()) for a in addresses):
                    continue
                found.append(org.public(conv["id"]))
        found.sort(key=lambda c: (-c["last_activity_at"], c["id"]))
        return dump("conversations", found[:limit])

    @mcp.tool(annotations=READ)
    def get_single_missive_conversation_by_id(id: str) -> str:
        """Get one conversation by id (Missive GET /conversations/:id)."""
        with org.lock:
            return dump("conversations", [org.public(get_conversation(org, id)["id"])])

    def conversation_items(key: str, store: dict[str, list[Json]], stamp: str, conversation: str, limit: int,
                           until: int | None) -> str:
        """A conversation's messages or comments, newest first (limit 1-10, `until` on `stamp`)."""
        check_limit(limit, 10)
        with org.lock:
            get_conversation(org, conversation)
            return dump(key, _newest(store[conversation], stamp, until, limit))

    @mcp.tool(annotations=READ)
    def list_all_missive_conversation_messages(conversation: str, limit: int = 10, until: int | None = None) -> str:
        """List a conversation's messages, newest first (limit 1-10; until = delivered_at epoch seconds)."""
        return conversation_items("messages", org.messages, "delivered_at", conversation, limit, until)

    @mcp.tool(annotations=READ)
    def list_all_missive_conversation_comments(conversation: str, limit: int = 10, until: int | None = None) -> str:
        """List a conversation's internal comments, newest first (limit 1-10; until = created_at)."""
        return conversation_items("comments", org.comments, "created_at", conversation, limit, until)

    @mcp.tool(annotations=READ)
    def list_all_missive_conversation_posts(conversation: str) -> str:
        """List the posts (integration notes) of a conversation, newest first."""
        with org.lock:
            get_conversation(org, conversation)
            return dump("posts", sorted(org.posts.get(conversation, []), key=lambda p: -p["created_at"]))

    @mcp.tool(annotations=READ)
    def list_all_missive_conversation_drafts(conversation: str) -> str:
        """List the unsent (or scheduled) drafts of a conversation."""
        with org.lock:
            get_conversation(org, conversation)
            return dump("drafts", list(org.drafts.get(conversation, [])))

    @mcp.tool(annotations=SEND)
    def create_a_missive_message(
        account: str, body: str, conversation: str | None = None, subject: str | None = None,
        from_field: dict[str, str] | None = None, to_fields: list[dict[str, str]] | None = None,
    ) -> str:
        """Create an incoming message in a custom channel (Missive POST /messages).

        `account` is the custom channel account id; without `conversation` a new conversation is started.
        """
        sender = _addresses([from_field], "from_field")[0] if from_field else {"name": account, "address":
                                                                                  f"{account}@custom.example"}
        to = _addresses(to_fields, "to_fields")
        with org.lock:
            at = org.now()
            conv = get_conversation(org, conversation) if conversation else org.new_conversation(subject, None, at)
            msg = org.make_message(subject or conv["subject"], sender, to, body, at, kind="custom")
            msg["account"] = account
            org.messages[conv["id"]].append(msg)
            org.touch(conv["id"], at)
            return dump("messages", {**msg, "conversation": conv["id"]})

    @mcp.tool(annotations=CREATE)
    def create_a_missive_post(
        conversation: str | None = None, text: str | None = None, markdown: str | None = None,
        notification: dict[str, str] | None = None, username: str | None = None, team: str | None = None,
    ) -> str:
        """Add a post (a note visible to the team) to a conversation (Missive POST /posts).

        One of text/markdown is required. notification is {"title", "body"}. Without `conversation`
        a new conversation is created (in `team` if given).
        """
        if not (text or markdown):
            raise ToolError("one of text or markdown is required")
        content = markdown or text or ""
        note = notification or {"title": username or "Missive API", "body": " ".join(content.split())[:80]}
        with org.lock:
            at = org.now()
            if conversation:
                conv = get_conversation(org, conversation)
            else:
                team_obj = org.find(org.teams, team) if team else None
                if team and team_obj is None:
                    raise ToolError(f"team {team!r} not found")
                conv = org.new_conversation(note.get("title"), team_obj, at)
            post = {"id": org.new_id("post"), "conversation": conv["id"], "text": text, "markdown": markdown,
                    "username": username or "Missive API", "username_icon": None, "notification": note,
                    "attachments": [], "created_at": at}
            org.posts.setdefault(conv["id"], []).append(post)
            org.touch(conv["id"], at)
            return dump("posts", post)

    @mcp.tool(annotations=SEND)
    def create_a_missive_draft(
        body: str, conversation: str | None = None, subject: str | None = None,
        to_fields: list[dict[str, str]] | None = None, from_field: dict[str, str] | None = None,
        send: bool = False, send_at: int | None = None, team: str | None = None,
    ) -> str:
        """Create an email draft (Missive POST /drafts). `send: true` SENDS it now; `send_at` schedules it.

        to_fields/from_field entries are {"name", "address"}. Without `conversation` a new one is started.
        """
        to = _addresses(to_fields, "to_fields")
        if send and not to and not conversation:
            raise ToolError("sending needs to_fields (or a conversation to reply in)")
        with org.lock:
            at = org.now()
            if conversation:
                conv = get_conversation(org, conversation)
                if not to:
                    to = [a for a in conv["authors"] if not a["address"].endswith("@demo-org.example")][:1]
            else:
                team_obj = org.find(org.teams, team) if team else None
                if team and team_obj is None:
                    raise ToolError(f"team {team!r} not found")
                conv = org.new_conversation(subject, team_obj, at)
            sender = (_addresses([from_field], "from_field")[0] if from_field
                      else {"name": org.me["name"], "address": org.me["email"]})
            subj = subject or (f"Re: {conv['subject']}" if conv["subject"] else None)
            draft = org.make_message(subj, sender, to, body, at)
            draft.update({"conversation": conv["id"], "send_at": send_at, "sent": bool(send)})
            if send:
                org.messages[conv["id"]].append(draft)
            else:
                draft["delivered_at"] = None
                org.drafts.setdefault(conv["id"], []).append(draft)
                if send_at is not None:
                    conv["send_later_messages_count"] += 1
            org.touch(conv["id"], at)
            return dump("drafts", draft)

    @mcp.tool(annotations=CREATE)
    def create_a_missive_task(
        title: str, team: str | None = None, conversation: str | None = None,
        assignees: list[str] | None = None, due_at: int | None = None, description: str | None = None,
        state: str = "todo",
    ) -> str:
        """Create a task (Missive POST /tasks). Needs a team or assignees (user ids); state todo|in_progress|closed."""
        if state not in TASK_STATES:
            raise ToolError(f"state must be one of {', '.join(TASK_STATES)}")
        if not team and not assignees:
            raise ToolError("a task needs a team or assignees")
        with org.lock:
            team_obj = org.find(org.teams, team) if team else None
            if team and team_obj is None:
                raise ToolError(f"team {team!r} not found")
            users = []
            for ident in assignees or []:
                user = org.find(org.users, ident)
                if user is None:
                    raise ToolError(f"assignee {ident!r} is not a user (use list_all_missive_users)")
                users.append(org.user_ref(user))
            if conversation:
                get_conversation(org, conversation)
            at = org.now()
            task = {"id": org.new_id("task"), "title": title, "description": description, "state": state,
                    "due_at": due_at, "started_at": at if state == "in_progress" else None,
                    "closed_at": at if state == "closed" else None,
                    "team": org.ref(team_obj) if team_obj else None, "assignees": users,
                    "conversation": conversation, "created_at": at}
            org.tasks.append(task)
            if conversation:
                org.touch(conversation, at)
            return dump("tasks", task)

    @mcp.tool(annotations=READ)
    def list_all_missive_tasks(state: str | None = None, team: str | None = None, assignee: str | None = None) -> str:
        """List tasks, optionally filtered by state, team id or assignee user id."""
        with org.lock:
            items = [t for t in org.tasks
                     if (state is None or t["state"] == state)
                     and (team is None or (t["team"] or {}).get("id") == team)
                     and (assignee is None or any(a["id"] == assignee for a in t["assignees"]))]
            return dump("tasks", items)

    @mcp.tool(annotations=READ)
    def get_single_missive_task_by_id(id: str) -> str:
        """Get one task by id (Missive GET /tasks/:id)."""
        with org.lock:
            return dump("tasks", lookup(org, org.tasks, id, "task", "list_all_missive_tasks"))

    @mcp.tool(annotations=UPDATE)
    def update_a_missive_task_by_id(
        id: str, state: str | None = None, title: str | None = None, due_at: int | None = None,
        assignees: list[str] | None = None, description: str | None = None, team: str | None = None,
    ) -> str:
        """Update a task (Missive PATCH /tasks/:id); omitted fields are kept.

        state todo|in_progress|closed; due_at in epoch seconds; assignees (user ids) replace the list;
        team is a team id or name.
        """
        if state is not None and state not in TASK_STATES:
            raise ToolError(f"state must be one of {', '.join(TASK_STATES)}")
        if all(v is None for v in (state, title, due_at, assignees, description, team)):
            raise ToolError("nothing to update: pass at least one of state, title, due_at, assignees, "
                            "description, team")
        with org.lock:
            task = lookup(org, org.tasks, id, "task", "list_all_missive_tasks")
            users = user_refs(org, assignees) if assignees is not None else task["assignees"]
            new_team = (org.ref(lookup(org, org.teams, team, "team", "list_all_missive_teams")) if team
                        else task["team"])
            if not new_team and not users:
                raise ToolError("a task needs a team or assignees")
            at = org.now()
            if state is not None and state != task["state"]:
                task["started_at"] = at if state == "in_progress" else task["started_at"]
                task["closed_at"] = at if state == "closed" else None
                task["state"] = state
            task.update({"assignees": users, "team": new_team})
            task.update({k: v for k, v in (("title", title), ("due_at", due_at), ("description", description))
                         if v is not None})
            if task["conversation"] in org.conversations:
                org.touch(task["conversation"], at)
            return dump("tasks", task)

    @mcp.tool(annotations=READ)
    def list_all_missive_users(limit: int = 50, offset: int = 0) -> str:
        """List the organisation's users (the token owner has "me": true)."""
        return page(org, "users", lambda: org.users, limit, offset)

    @mcp.tool(annotations=READ)
    def list_all_missive_teams(limit: int = 50, offset: int = 0) -> str:
        """List the organisation's teams."""
        return page(org, "teams", lambda: org.teams, limit, offset)

    @mcp.tool(annotations=READ)
    def list_all_missive_organizations() -> str:
        """List the organisations the token owner belongs to."""
        return dump("organizations", [org.organization])

    @mcp.tool(annotations=READ)
    def list_all_missive_shared_labels(limit: int = 50, offset: int = 0) -> str:
        """List the organisation's shared labels."""
        return page(org, "shared_labels", lambda: org.shared_labels, limit, offset)

    @mcp.tool(annotations=READ)
    def list_all_missive_contacts(search: str | None = None, contact_book: str | None = None,
                                  limit: int = 50, offset: int = 0) -> str:
        """List contacts; `search` matches names and email addresses (case-insensitive)."""
        check_limit(limit, 200)
        with org.lock:
            items = []
            for c in org.contacts:
                if c["deleted"] or (contact_book and c["contact_book"] != contact_book):
                    continue
                text = " ".join([c["first_name"] or "", c["last_name"] or "", *(i["value"] for i in c["infos"])])
                if search and search.lower() not in text.lower():
                    continue
                items.append(c)
            return dump("contacts", items[offset:offset + limit])

    @mcp.tool(annotations=CREATE)
    def create_a_missive_contact(first_name: str | None = None, last_name: str | None = None,
                                 email: str | None = None, organization: str | None = None,
                                 contact_book: str | None = None, starred: bool = False) -> str:
        """Create a contact (Missive POST /contacts); `organization` is a company name."""
        if not (first_name or last_name or email):
            raise ToolError("a contact needs at least one of first_name, last_name, email")
        if email and "@" not in email:
            raise ToolError(f"email {email!r} is not an email address")
        with org.lock:
            book = contact_book or (org.contacts[0]["contact_book"] if org.contacts else org.new_id("contact_book"))
            contact = {
                "id": org.new_id("contact"), "first_name": first_name, "last_name": last_name, "starred": starred,
                "contact_book": book, "deleted": False, "modified_at": org.now(),
                "infos": [{"kind": "email", "label": "work", "value": email}] if email else [],
                "memberships": [{"title": "", "group": {"id": org.new_id("contact_group"), "kind": "organization",
                                                        "name": organization}}] if organization else [],
            }
            org.contacts.append(contact)
            return dump("contacts", [contact])

    tools_conversations.register(mcp, org)
    tools_admin.register(mcp, org)
    return mcp


class RateLimitMiddleware:
    """Pure-ASGI simulation of Missive's rate limits, in front of the SDK apps.

    Counted requests: POSTs whose path is ``/mcp`` or starts with ``/messages`` (one JSON-RPC
    message each; the long-lived ``GET /sse`` / ``GET /mcp`` streams and DELETEs are not counted).

    - Concurrency: at most `concurrent` counted requests in flight (until the app returns, i.e. the
      POST's response — SSE or JSON — is complete). Over it → 429, ``Retry-After: 1``.
    - Windows: a **sliding log** of accepted request times; a request is refused when `per_minute`
      requests were accepted in the last 60 s or `per_15min` in the last 900 s. ``X-RateLimit-Reset``
      is when the oldest request in the full window leaves it (UTC epoch seconds, rounded up) and
      ``Retry-After`` the seconds until then (≥ 1). Refused requests are not logged (do not count).

    429 answers carry ``Retry-After``, ``X-RateLimit-Limit``, ``X-RateLimit-Remaining: 0``,
    ``X-RateLimit-Reset`` and a JSON body ``{"error": "rate_limited", "limit", "window", "retry_after",
    "message"}``. Accepted requests get the three ``X-RateLimit-*`` headers of the per-minute window.
    A limit of 0 disables that limit.
    """

    def __init__(self, app: ASGIApp, *, concurrent: int = 5, per_minute: int = 300, per_15min: int = 900,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.concurrent = concurrent
        self.windows = [(60.0, per_minute, "minute"), (900.0, per_15min, "15 minutes")]
        self.clock = clock
        self.in_flight = 0
        self.log: list[float] = []

    @staticmethod
    def counted(scope: Scope) -> bool:
        """Whether a request counts against the limits."""
        path = scope.get("path", "")
        return scope["type"] == "http" and scope["method"] == "POST" and (
            path in ("/mcp", "/mcp/") or path.startswith("/messages"))

    def _window(self, now: float, seconds: float) -> list[float]:
        return self.log[bisect.bisect_right(self.log, now - seconds):]

    async def _reject(self, send: Send, limit: int, window: str, reset: float, now: float) -> None:
        retry_after = max(1, math.ceil(reset - now))
        body = json.dumps({"error": "rate_limited", "limit": limit, "window": window, "retry_after": retry_after,
                           "message": f"Rate limit exceeded: {limit} requests per {window}. "
                                      f"Retry in {retry_after} s."}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(retry_after).encode()), (b"x-ratelimit-limit", str(limit).encode()),
                   (b"x-ratelimit-remaining", b"0"), (b"x-ratelimit-reset", str(math.ceil(reset)).encode())]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.counted(scope):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        longest = max(w for w, _, _ in self.windows)
        del self.log[:bisect.bisect_right(self.log, now - longest)]
        if self.concurrent and self.in_flight >= self.concurrent:
            await self._reject(send, self.concurrent, "concurrent requests", now + 1, now)
            return
        for seconds, limit, name in self.windows:
            recent = self._window(now, seconds)
            if limit and len(recent) >= limit:
                await self._reject(send, limit, name, recent[0] + seconds, now)
                return
        self.log.append(now)
        _, minute_limit, _ = self.windows[0]
        minute = self._window(now, 60.0)
        info = [(b"x-ratelimit-limit", str(minute_limit).encode()),
                (b"x-ratelimit-remaining", str(max(0, minute_limit - len(minute))).encode()),
                (b"x-ratelimit-reset", str(math.ceil(minute[0] + 60.0)).encode())] if minute_limit else []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and info:
                message = {**message, "headers": [*message.get("headers", []), *info]}
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.in_flight -= 1


class OneResponseMiddleware:
    """Drops a second response to one HTTP request. The SDK's legacy ``GET /sse`` handler returns an
    empty response after its event stream ends (e.g. at shutdown), which uvicorn logs as an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = dropping = False

        async def send_once(message: Message) -> None:
            nonlocal started, dropping
            if message["type"] == "http.response.start":
                dropping, started = started, True
            if not dropping:
                await send(message)

        await self.app(scope, receive, send_once)


def build_app(org: DemoOrg | None = None, *, host: str = "127.0.0.1", concurrent: int = 5, per_minute: int = 300,
              per_15min: int = 900, dns_rebinding_protection: bool = True) -> ASGIApp:
    """One Starlette app serving ``/mcp`` (stateful Streamable HTTP, SSE answers) and ``/sse`` +
    ``/messages/`` (legacy) from one MCPServer, wrapped in :class:`RateLimitMiddleware` and
    :class:`OneResponseMiddleware`."""
    mcp = build_server(org or build_org())
    security = None if dns_rebinding_protection else TransportSecuritySettings(
        enable_dns_rebinding_protection=False)
    streamable = mcp.streamable_http_app(transport_security=security, host=host)
    sse = mcp.sse_app(transport_security=security, host=host)

    def lifespan(_: Starlette) -> AbstractAsyncContextManager[None]:
        return mcp.session_manager.run()  # the Streamable HTTP session manager's task group

    app = Starlette(routes=[*streamable.routes, *sse.routes], lifespan=lifespan)
    return RateLimitMiddleware(OneResponseMiddleware(app), concurrent=concurrent, per_minute=per_minute,
                               per_15min=per_15min)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve with uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m proxy.demo.upstream",
                                     description="Demo Missive MCP upstream (fake, seeded data).")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated organisation")
    parser.add_argument("--concurrent", type=int, default=5, help="max concurrent requests (0 = no limit)")
    parser.add_argument("--per-minute", type=int, default=300, help="requests per sliding minute (0 = no limit)")
    parser.add_argument("--per-15min", type=int, default=900, help="requests per sliding 15 minutes (0 = no limit)")
    parser.add_argument("--no-dns-rebinding-protection", action="store_true",
                        help="accept any Host/Origin header (the SDK checks them for loopback binds)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = build_app(build_org(args.seed), host=args.host, concurrent=args.concurrent, per_minute=args.per_minute,
                    per_15min=args.per_15min, dns_rebinding_protection=not args.no_dns_rebinding_protection)
    # Open SSE streams would otherwise hold up shutdown (SIGTERM) indefinitely.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
