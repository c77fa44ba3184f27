"""The Enforcer with the bundled policies and the embedded engine, message by message."""

from __future__ import annotations

import json

import pytest

from proxy.auth.principal import Principal
from proxy.config import Policy, Server
from proxy.enforce.enforcer import Enforcer
from proxy.enforce.pipeline import DROP, Channel
from proxy.observe.decision_log import DecisionLog
from proxy.policy.manager import build_policy_set
from proxy.protocol.jsonrpc import Kind, Message, to_message

POLICY = build_policy_set(Policy())


def enforcer(server: Server, clock: float = 1_800_000_000.0) -> Enforcer:
    return Enforcer(POLICY, (server,), DecisionLog("off"), clock=lambda: clock)


def request(method: str, params: dict | None = None, id: int = 1) -> Message:
    return to_message({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}})


def call(name: str, arguments: dict | None = None) -> Message:
    return request("tools/call", {"name": name, "arguments": arguments or {}})


def tools_page(*names: str, id: int = 1) -> Message:
    return to_message({"jsonrpc": "2.0", "id": id, "result": {"tools": [{"name": n} for n in names]}})


READ = Server(name="ro", methods=("read",))


async def test_hidden_tool_is_unknown_and_visible_tool_passes():
    e = enforcer(READ)
    ch = Channel("streamable_http", READ)
    v = await e.client_message(ch, call("create_a_missive_post"))
    assert not v.allow and v.reply["error"] == {"code": -32602, "message": "Unknown tool: create_a_missive_post"}
    assert (await e.client_message(ch, call("list_all_missive_conversations"))).allow


@pytest.mark.parametrize(("via", "allowed"), [((), False), (("url_token",), False), (("url_token", "jwt"), True),
                                              (("url_token", "api_token"), True), (("jwt",), True)])
async def test_require_api_token_auth(via, allowed):
    server = Server(name="strict", methods=("read",), require_api_token_auth=True)
    ch = Channel("streamable_http", server, principal=Principal(bool(via), via))
    v = await enforcer(server).client_message(ch, request("tools/list"))
    assert v.allow is allowed
    if not allowed:
        assert v.reply["error"]["code"] == -32001
        assert "requires a bearer token" in v.reply["error"]["data"]["reasons"][0]


async def test_page_filtering_needs_no_correlation():
    """A tools/list answer on any stream (a GET, a resumed stream) is filtered by its shape."""
    e = enforcer(READ)
    out = await e.server_message(Channel("streamable_http", READ, "GET"),
                                 tools_page("create_a_missive_post", "list_all_missive_conversations", id=77))
    assert [t["name"] for t in out.data["result"]["tools"]] == ["list_all_missive_conversations"]
    unchanged = await e.server_message(Channel("streamable_http", READ), tools_page("list_all_missive_conversations"))
    assert unchanged is None  # nothing hidden: relayed byte for byte


async def test_server_to_client_requests_and_the_answers_go_through_policy():
    e = enforcer(READ)
    ch = Channel("legacy_sse", READ)
    sampling = request("sampling/createMessage", {"messages": []}, id="s1")
    assert await e.server_message(ch, sampling) is None
    assert ch.server_requests == {"s1": "sampling/createMessage"}
    answer = to_message({"jsonrpc": "2.0", "id": "s1", "result": {"role": "assistant"}})
    assert (await e.client_message(ch, answer)).allow
    # Refused (here: the server has expired): the request never reaches the client.
    gone = Server(name="gone", methods=("read",))
    expired = enforcer(gone)
    expired._servers["gone"]["expires_at"] = "2000-01-01T00:00:00Z"
    assert await expired.server_message(Channel("legacy_sse", gone), sampling) is DROP


async def test_denied_notification_is_dropped_without_a_reply():
    server = Server(name="gone", methods=("read",))
    e = enforcer(server)
    e._servers["gone"]["expires_at"] = "2000-01-01T00:00:00Z"
    v = await e.client_message(Channel("streamable_http", server),
                               to_message({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    assert not v.allow and v.reply is None


async def test_visible_tool_denied_by_its_arguments_is_a_tool_error(tmp_path):
    (tmp_path / "no_send.rego").write_text(
        'package mcp.authz\nimport rego.v1\n'
        'deny contains "drafts may not be sent" if input.tool.arguments.send == true\n')
    import shutil

    from proxy.config import BUNDLED_POLICIES
    shutil.copytree(BUNDLED_POLICIES, tmp_path / "p")
    shutil.move(tmp_path / "no_send.rego", tmp_path / "p" / "mcp" / "no_send.rego")
    server = Server(name="support", methods=("read", "create"))
    e = Enforcer(build_policy_set(Policy(paths=(str(tmp_path / "p"),))), (server,), DecisionLog("off"))
    v = await e.client_message(Channel("streamable_http", server), call("create_a_missive_draft", {"send": True}))
    assert v.reply["result"] == {"content": [{"type": "text", "text": "drafts may not be sent"}], "isError": True}
    assert (await e.client_message(Channel("streamable_http", server), call("create_a_missive_draft"))).allow


async def test_engine_error_is_a_503_verdict(tmp_path):
    (tmp_path / "a.rego").write_text(
        'package mcp.authz\nimport rego.v1\n'
        'decision := {"allow": true, "reasons": [], "visible_tools": []} if input.message.method == "ping"\n'
        'decision := {"allow": to_number(input.message.method) > 0, "reasons": [], "visible_tools": []} '
        'if input.message.method != "ping"\n')
    e = Enforcer(build_policy_set(Policy(paths=(str(tmp_path),))), (READ,), DecisionLog("off"))
    v = await e.client_message(Channel("streamable_http", READ), request("tools/list"))
    assert (v.allow, v.status, v.reply["error"]["message"]) == (False, 503, "Policy engine unavailable")
    page = await e.server_message(Channel("streamable_http", READ), tools_page("list_all_missive_conversations"))
    assert page.kind is Kind.RESPONSE and page.data["error"]["code"] == -32603  # no unfiltered page


def test_input_is_json_serializable_and_versioned():
    from proxy.enforce.input import build_input, server_input
    doc = build_input(Channel("legacy_sse", READ), server_input(READ), "2026-11-23T20:00:00Z", kind="request",
                      direction="client_to_server", method="ping")
    assert json.loads(json.dumps(doc))["version"] == 1
    assert doc["server"] == {"name": "ro", "methods": ["read"], "tags": [], "require_api_token_auth": False,
                             "expires_at": None, "params": {}}
