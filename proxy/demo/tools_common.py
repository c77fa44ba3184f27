"""Helpers shared by the demo upstream's tool modules: tool annotations, JSON answers, lookups."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from proxy.demo.data import DemoOrg, Json

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
SEND = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
UPDATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
MERGE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)

TASK_STATES = ("todo", "in_progress", "closed")


def dump(key: str, value: Any) -> str:
    """The answer text: `value` wrapped by resource key, like Missive's REST API."""
    return json.dumps({key: value}, ensure_ascii=False)


def check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ToolError(f"limit must be between 1 and {maximum}, got {limit}")


def page(org: DemoOrg, key: str, items: Callable[[], list[Json]], limit: int, offset: int) -> str:
    """One offset page (limit 1-200) of `items()`, read under the org's lock, wrapped by `key`."""
    check_limit(limit, 200)
    with org.lock:
        return dump(key, items()[offset:offset + limit])


def get_conversation(org: DemoOrg, ident: str) -> Json:
    """The stored conversation `ident`, or a 404 tool error."""
    conv = org.conversations.get(ident)
    if conv is None:
        raise ToolError(f"conversation {ident!r} not found (404)")
    return conv


def lookup(org: DemoOrg, collection: list[Json], ident: str, what: str, hint: str = "") -> Json:
    """The item of `collection` with id (or name/email) `ident`, or a 404 tool error."""
    item = org.find(collection, ident)
    if item is None:
        raise ToolError(f"{what} {ident!r} not found (404)" + (f"; use {hint}" if hint else ""))
    return item


def user_refs(org: DemoOrg, idents: list[str], what: str = "assignee") -> list[Json]:
    """Assignee objects of users given by id, name or email."""
    return [org.user_ref(lookup(org, org.users, ident, what, "list_all_missive_users")) for ident in idents]
