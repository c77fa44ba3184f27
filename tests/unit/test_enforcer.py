"""The Enforcer with the bundled policies and the embedded engine, message by message."""

from __future__ import annotations

import json

import pytest

from proxy.auth.principal import Principal
from proxy.config import Policy, Server
from proxy.enforce.enforcer import Enforcer
from proxy.enforce.inventory import ToolInventory
from proxy.enforce.pipeline import DROP, Channel
from proxy.observe.decision_log import DecisionLog
from proxy.policy.manager import build_policy_set
from proxy.protocol.jsonrpc import Kind, Message, to_message

POLICY = build_policy_set(Policy())
# What the upstream declares: every catalog tool, taking any object (schemas are tested below).
DECLARED = [{"name": n, "inputSchema": {"type": "object"}} for n in POLICY.catalog.known_names]


def declared(tools: list[dict] = DECLARED) -> ToolInventory:
    async def listing() -> list[dict]:
        return tools

    inventory = ToolInventory(listing)
    inventory.learn(tools)
    return inventory


def enforcer(server: Server, clock: float = 1_800_000_000.0, policy=POLICY, **kwargs) -> Enforcer:
    kwargs.setdefault("inventory", declared())
    return Enforcer(policy, (server,), kwargs.pop("log", DecisionLog("off")), clock=lambda: clock, **kwargs)


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
    kept = await e.server_message(Channel("streamable_http", READ), tools_page("list_all_missive_conversations"))
    # Nothing hidden, and still re-encoded from what was parsed: the client sees what was decided.
    assert kept.data == tools_page("list_all_missive_conversations").data


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
    e = enforcer(server, policy=build_policy_set(Policy(paths=(str(tmp_path / "p"),))))
    v = await e.client_message(Channel("streamable_http", server), call("create_a_missive_draft", {"send": True}))
    assert v.reply["result"] == {"content": [{"type": "text", "text": "drafts may not be sent"}], "isError": True}
    assert (await e.client_message(Channel("streamable_http", server), call("create_a_missive_draft"))).allow


async def test_engine_error_is_a_503_verdict(tmp_path):
    (tmp_path / "a.rego").write_text(
        'package mcp.authz\nimport rego.v1\n'
        'decision := {"allow": true, "reasons": [], "visible_tools": []} if input.message.method == "ping"\n'
        'decision := {"allow": to_number(input.message.method) > 0, "reasons": [], "visible_tools": []} '
        'if input.message.method != "ping"\n')
    e = enforcer(READ, policy=build_policy_set(Policy(paths=(str(tmp_path),))))
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


# --- the proxy's own checks of a tools/call, each one decision on the one path ---

DRAFT_SCHEMA = {"type": "object", "required": ["conversation"], "properties": {
    "conversation": {"type": "string"},
    "send": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None},
    "limit": {"type": "integer"}}}
SUPPORT = Server(name="support", methods=("read", "create"))


class Recorder(DecisionLog):
    def __init__(self) -> None:
        super().__init__("off", redact_arguments=False)
        self.entries: list[dict] = []

    def log(self, decision_id, timestamp, input, result, eval_ns, labels, trace=None) -> None:  # type: ignore[override]
        self.entries.append({"decision_id": decision_id, "input": input, "result": result, "labels": labels})


def draft_enforcer(mode: str = "enforce") -> tuple[Enforcer, Recorder]:
    log = Recorder()
    tools = [*DECLARED, {"name": "create_a_missive_draft", "inputSchema": DRAFT_SCHEMA}]
    return enforcer(SUPPORT, inventory=declared(tools), log=log, mode=mode), log


@pytest.mark.parametrize("send", [1, "yes", "on", "True", "t", "1", 1.0, "false", 0, [], {}])
async def test_arguments_are_checked_strictly_against_the_declared_schema(send):
    e, log = draft_enforcer()
    v = await e.client_message(Channel("streamable_http", SUPPORT),
                               call("create_a_missive_draft", {"conversation": "c-1", "send": send}))
    assert not v.allow and v.reply["result"]["isError"] is True
    text = v.reply["result"]["content"][0]["text"]
    assert text.startswith("argument send: ") and "(expected: boolean or null)" in text
    [entry] = log.entries  # exactly one decision-log entry, naming the proxy's refusal
    assert entry["result"]["refused_by_proxy"] == "invalid_arguments" and entry["result"]["allow"] is False
    assert entry["input"]["tool"]["arguments"]["send"] == send  # the value as sent, not coerced


async def test_valid_arguments_reach_the_policy_unchanged():
    e, log = draft_enforcer()
    args = {"conversation": "c-1", "send": False, "limit": 3}
    v = await e.client_message(Channel("streamable_http", SUPPORT), call("create_a_missive_draft", args))
    assert v.allow and log.entries[0]["input"]["tool"]["arguments"] == args


async def test_a_hidden_tool_with_bad_arguments_stays_unknown():
    tools = [*DECLARED, {"name": "create_a_missive_draft", "inputSchema": DRAFT_SCHEMA}]
    e = enforcer(READ, inventory=declared(tools))  # create_a_missive_draft is hidden from a read-only server
    v = await e.client_message(Channel("streamable_http", READ), call("create_a_missive_draft", {"send": "yes"}))
    assert v.reply["error"] == {"code": -32602, "message": "Unknown tool: create_a_missive_draft"}


@pytest.mark.parametrize(("params", "message"), [
    ({"name": "not_declared_anywhere"}, "Unknown tool: not_declared_anywhere"),
    ({"name": "Create_A_Missive_Post"}, "Unknown tool: Create_A_Missive_Post"),  # a look-alike is undeclared
    ({"name": "\uff43reate_a_missive_post"}, "Unknown tool: \uff43reate_a_missive_post"),  # full-width c
    ({"name": "x" * 129}, "Invalid params: tool names are at most 128 characters"),
    ({}, "Invalid params: tools/call needs params.name, a tool name"),
    ({"name": ""}, "Invalid params: tools/call needs params.name, a tool name"),
])
async def test_names_the_upstream_does_not_declare_are_refused_and_logged(params, message):
    e, log = draft_enforcer()
    v = await e.client_message(Channel("streamable_http", SUPPORT), request("tools/call", params))
    assert v.reply["error"] == {"code": -32602, "message": message}
    [entry] = log.entries
    assert entry["result"]["allow"] is False and entry["result"]["refused_by_proxy"] in ("unknown_tool",
                                                                                         "invalid_name")
    assert len(entry["input"]["tool"]["name"] or "") <= 128  # a huge name is not copied into the log


async def test_dry_run_is_applied_once_to_every_refusal():
    e, log = draft_enforcer(mode="dry_run")
    ch = Channel("streamable_http", SUPPORT)
    for msg in (call("create_a_missive_draft", {"conversation": "c", "send": "yes"}), call("Create_A_Missive_Post"),
                call("delete_a_missive_post_by_id"), request("tools/call", {"name": "x" * 200})):
        assert (await e.client_message(ch, msg)).allow
    assert [entry["result"]["allow"] for entry in log.entries] == [False] * 4
    assert {entry["labels"]["mode"] for entry in log.entries} == {"dry_run"}


async def test_an_unusable_upstream_schema_refuses_the_call():
    e = enforcer(SUPPORT, inventory=declared([{"name": "create_a_missive_post", "inputSchema": {"type": 12}}]))
    v = await e.client_message(Channel("streamable_http", SUPPORT), call("create_a_missive_post", {}))
    assert v.reply["result"]["isError"] and "no usable inputSchema" in v.reply["result"]["content"][0]["text"]


async def test_unknown_tools_are_listed_from_the_upstream_once_then_refused():
    fetched = []

    async def fetch():
        fetched.append(1)
        return [{"name": "create_a_missive_post", "inputSchema": {"type": "object"}}]

    now = [0.0]
    e = enforcer(SUPPORT, inventory=ToolInventory(fetch, clock=lambda: now[0]))
    ch = Channel("streamable_http", SUPPORT)
    assert (await e.client_message(ch, call("create_a_missive_post"))).allow
    for name in ("nope", "nope2"):  # misses within 5 s of a listing: refused without listing again
        assert (await e.client_message(ch, call(name))).reply["error"]["message"] == f"Unknown tool: {name}"
    assert fetched == [1]
    now[0] = 6.0
    assert (await e.client_message(ch, call("nope"))).reply["error"]["message"] == "Unknown tool: nope"
    assert fetched == [1, 1]
    now[0] = 400.0  # past the time to live: the known tool is listed again before it is used
    assert (await e.client_message(ch, call("create_a_missive_post"))).allow
    assert fetched == [1, 1, 1]


async def test_an_upstream_that_cannot_be_listed_refuses_the_call():
    async def fetch():
        raise OSError("connection refused")

    e = enforcer(SUPPORT, inventory=ToolInventory(fetch))
    v = await e.client_message(Channel("streamable_http", SUPPORT), call("create_a_missive_post"))
    assert (v.allow, v.status, v.reply["error"]["code"]) == (False, 502, -32603)


async def test_list_changed_makes_the_proxy_list_again():
    listings = [[{"name": "create_a_missive_post", "inputSchema": {"type": "object"}}], []]

    async def fetch():
        return listings.pop(0)

    e = enforcer(SUPPORT, inventory=ToolInventory(fetch, min_refetch_s=0))
    ch = Channel("streamable_http", SUPPORT)
    assert (await e.client_message(ch, call("create_a_missive_post"))).allow
    await e.server_message(ch, to_message({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}))
    assert (await e.client_message(ch, call("create_a_missive_post"))).reply["error"]["code"] == -32602


async def test_a_list_changed_during_the_listing_lists_once_more_instead_of_refusing():
    """A server announcing list_changed as each session starts (the TypeScript reference server
    does) may do so while the proxy lists it: the tool is listed again, not refused as unknown."""
    now = [0.0]
    inventory = ToolInventory(None, clock=lambda: now[0])
    fetched = []

    async def fetch():
        fetched.append(1)
        if len(fetched) == 1:
            now[0] += 0.1
            inventory.invalidate()  # arrives while the upstream is being listed
        now[0] += 0.1
        return [{"name": "create_a_missive_post", "inputSchema": {"type": "object"}}]

    inventory._fetch = fetch
    e = enforcer(SUPPORT, inventory=inventory)
    assert (await e.client_message(Channel("streamable_http", SUPPORT), call("create_a_missive_post"))).allow
    assert fetched == [1, 1]


PARAM_SCHEMA = {"type": "object", "properties": {"mailbox": {"type": "string", "x-mcp-header": "Mailbox"}}}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {}}


def param_enforcer(server: Server = SUPPORT) -> Enforcer:
    return enforcer(server, inventory=declared([{"name": "list_all_missive_conversations",
                                                  "inputSchema": PARAM_SCHEMA}]))


def modern_call(arguments: dict) -> Message:
    return request("tools/call", {"name": "list_all_missive_conversations", "arguments": arguments,
                                  "_meta": MODERN_META})


@pytest.mark.parametrize(("headers", "allowed"), [
    ([("mcp-param-mailbox", "inbox")], True),
    ([], False),  # the argument is mirrored: the header must be there
    ([("mcp-param-mailbox", "all")], False),
    ([("mcp-param-mailbox", "inbox"), ("mcp-param-mailbox", "inbox")], False),
])
async def test_mcp_param_headers_must_mirror_the_arguments(headers, allowed):
    v = await param_enforcer().client_message(Channel("streamable_http", SUPPORT), modern_call({"mailbox": "inbox"}),
                                              headers)
    assert v.allow is allowed
    if allowed:
        assert v.headers == (("mcp-param-mailbox", "inbox"),)  # the checked header is forwarded
    else:
        assert (v.status, v.reply["error"]["code"]) == (400, -32020)


async def test_mcp_param_headers_belong_to_2026_07_28_only():
    """Older clients never send them (nor do SDK servers check them there): not demanded, and any
    such header an older request carries is not forwarded."""
    e = param_enforcer()
    for headers in ([], [("mcp-param-mailbox", "all")]):
        v = await e.client_message(Channel("streamable_http", SUPPORT), call("list_all_missive_conversations",
                                                                             {"mailbox": "inbox"}), headers)
        assert v.allow and v.headers == ()


async def test_a_header_mismatch_on_a_hidden_tool_is_an_unknown_tool():
    v = await param_enforcer(READ).client_message(Channel("streamable_http", READ), modern_call({"mailbox": "x"}), [])
    assert (v.status, v.reply["error"]["code"]) == (400, -32020)  # visible to READ: the mismatch is named
    hidden = Server(name="ro", methods=("write",))
    v = await param_enforcer(hidden).client_message(Channel("streamable_http", hidden), modern_call({"mailbox": "x"}),
                                                    [])
    assert v.reply["error"] == {"code": -32602, "message": "Unknown tool: list_all_missive_conversations"}


async def test_undeclared_param_headers_are_not_forwarded():
    e = enforcer(SUPPORT)
    v = await e.client_message(Channel("streamable_http", SUPPORT), request("tools/call", {
        "name": "list_all_missive_conversations", "arguments": {}, "_meta": MODERN_META}), [("mcp-param-region", "eu")])
    assert v.allow and v.headers == ()


async def test_a_request_named_like_a_notification_is_decided_as_a_request():
    e, log = draft_enforcer()
    v = await e.client_message(Channel("streamable_http", SUPPORT), request("notifications/initialized", id=9))
    assert not v.allow and v.reply["error"]["code"] == -32001
    assert log.entries[0]["input"]["message"]["kind"] == "request"


async def test_a_tools_result_without_a_list_is_replaced_by_an_error():
    e = enforcer(READ)
    bad = to_message({"jsonrpc": "2.0", "id": 4, "result": {"tools": {"create_a_missive_post": {}}}})
    out = await e.server_message(Channel("streamable_http", READ), bad)
    assert out.data["id"] == 4 and out.data["error"]["code"] == -32603


async def test_answers_to_tools_list_teach_the_inventory_their_schemas():
    inventory = ToolInventory(None)
    e = enforcer(SUPPORT, inventory=inventory)
    page = to_message({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "create_a_missive_draft", "inputSchema": DRAFT_SCHEMA}]}})
    stray = Channel("streamable_http", SUPPORT, "GET")  # a page on a GET stream answers no request here
    await e.server_message(stray, page)
    assert "create_a_missive_draft" not in inventory
    listing = Channel("streamable_http", SUPPORT)
    listing.watched[1] = "tools/list"
    await e.server_message(listing, page)
    v = await e.client_message(Channel("streamable_http", SUPPORT), call("create_a_missive_draft", {"send": 1}))
    assert v.reply["result"]["isError"]


@pytest.mark.parametrize(("method", "params", "message"), [
    ("prompts/get", {"name": "p" * 129}, "Invalid params: prompt names are at most 128 characters"),
    ("resources/read", {"uri": "file:///" + "u" * 8192}, "Invalid params: resource URIs are at most 8192 characters"),
    ("tools/call", {"name": "x_" * 10**6}, "Invalid params: tool names are at most 128 characters"),
])
async def test_names_beyond_their_bound_are_refused_before_anything_looks_at_them(method, params, message):
    e, log = draft_enforcer()
    looked_up: list[str] = []
    real_lookup = e.inventory.lookup

    async def lookup(name: str):
        looked_up.append(name)
        return await real_lookup(name)

    e.inventory.lookup = lookup  # type: ignore[method-assign]
    v = await e.client_message(Channel("streamable_http", SUPPORT), request(method, params))
    assert v.reply["error"] == {"code": -32602, "message": message}
    [entry] = log.entries
    assert entry["result"]["refused_by_proxy"] == "invalid_name"
    assert len(entry["input"]["message"]["name"]) <= 8192 and looked_up == []
    ok = {"prompts/get": {"name": "p" * 128}, "resources/read": {"uri": "u" * 8192}}.get(method)
    if ok is not None:  # at the bound: decided by the policy as ever
        await e.client_message(Channel("streamable_http", SUPPORT), request(method, ok))
        assert log.entries[-1]["result"].get("refused_by_proxy") != "invalid_name"


async def test_the_catalog_only_ever_sees_declared_names():
    e = enforcer(READ)
    seen: list[str] = []
    real = e.policy.catalog.classify
    e.policy.catalog.classify = lambda name, annotations=None: seen.append(name) or real(name, annotations)  # type: ignore[method-assign]
    ch = Channel("streamable_http", READ)
    for name in ("not_declared", "List_All_Missive_Conversations", "list_all_missive_conversations "):
        assert (await e.client_message(ch, call(name))).reply["error"]["message"] == f"Unknown tool: {name}"
    assert seen == []
    assert (await e.client_message(ch, call("list_all_missive_conversations"))).allow
    assert seen == ["list_all_missive_conversations"]


def _argument_error(v) -> dict:
    assert not v.allow and v.reply["result"]["isError"] is True
    return v.reply["result"]


async def test_a_tool_error_carries_result_type_in_the_revision_the_request_travels_in():
    e, _ = draft_enforcer()
    bad = {"conversation": "c-1", "send": "yes"}
    legacy = Channel("legacy_sse", SUPPORT)  # no header names the revision on this transport
    modern = request("tools/call", {"name": "create_a_missive_draft", "arguments": bad, "_meta": MODERN_META})
    assert _argument_error(await e.client_message(legacy, modern))["resultType"] == "complete"
    old = call("create_a_missive_draft", bad)
    assert "resultType" not in _argument_error(await e.client_message(legacy, old))
    # The channel learns the revision its initialize negotiated, from the answer it relays.
    legacy.remember(legacy.watched, 7, "initialize")
    legacy.answered(to_message({"jsonrpc": "2.0", "id": 7, "result": {"protocolVersion": "2026-07-28"}}))
    assert legacy.protocol_version == "2026-07-28" and not legacy.watched
    assert _argument_error(await e.client_message(legacy, old))["resultType"] == "complete"
    streamable = Channel("streamable_http", SUPPORT, protocol_version="2025-11-25")
    assert "resultType" not in _argument_error(await e.client_message(streamable, old))


async def test_a_memoized_decision_is_still_logged_and_counted_as_its_own():
    """The decision memo skips the evaluation only: every decision keeps its entry, id and count,
    and a second later (the time is in the input) the policy is asked again."""
    from proxy.policy import memo

    log, now = Recorder(), [1_800_000_000.0]
    e = Enforcer(build_policy_set(Policy()), (READ,), log, clock=lambda: now[0], inventory=declared())
    ch = Channel("streamable_http", READ)
    hits, misses = memo.STATS.hits, memo.STATS.misses
    for _ in range(3):
        assert (await e.client_message(ch, call("list_all_missive_conversations", {"inbox": True}))).allow
    assert (memo.STATS.hits - hits, memo.STATS.misses - misses) == (2, 1)
    now[0] += 1
    assert (await e.client_message(ch, call("list_all_missive_conversations", {"inbox": True}))).allow
    assert memo.STATS.misses - misses == 2
    assert len({entry["decision_id"] for entry in log.entries}) == 4
    assert [entry["result"] for entry in log.entries] == [log.entries[0]["result"]] * 4
    assert log.entries[2]["result"] is not log.entries[1]["result"]  # each its own object
    assert 'mcp_proxy_policy_decisions_total{mode="enforce",outcome="allow",server="ro"} 4.0' in \
        e.metrics.render().decode()
