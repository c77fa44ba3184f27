"""What a request's access-log line says about it beyond uvicorn's five fields: the ids of the
decisions taken for it, and its trace id.

One contextvar holding a list, set when an MCP request begins (ProxyApp.__call__): the enforcer
appends to that list from whichever task decides (child tasks share their parent's context, so the
same list), and the access formatter reads it when uvicorn logs the response's start, in the
request's own task. uvicorn runs each request in a fresh context, so nothing leaks between them.
"""

from __future__ import annotations

from contextvars import ContextVar

# Decisions after the access line are not printed: a stream's later decisions need no room here.
MAX_IDS = 16

DECISION_IDS: ContextVar[list[str] | None] = ContextVar("mcp_proxy_decision_ids", default=None)
# The W3C trace id of the request, once traces exist (set by whoever starts the request's span).
TRACE_ID: ContextVar[str] = ContextVar("mcp_proxy_trace_id", default="")


def begin_request() -> None:
    DECISION_IDS.set([])


def note_decision(decision_id: str) -> None:
    ids = DECISION_IDS.get()
    if ids is not None and len(ids) < MAX_IDS:
        ids.append(decision_id)
