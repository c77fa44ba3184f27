"""The Missive policy pack (policies/missive/, docs/missive.md): its Rego unit tests pass, and the
real proxy engine decides representative inputs (docs/policy-input.md, v1) as documented; where the
OPA Go engine is installed, it decides them identically."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("RUST_BACKTRACE", "0")

from proxy.config import Policy
from proxy.enforce.catalog import Catalog
from proxy.policy.manager import build_policy_set

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
CATALOG = yaml.safe_load((POLICIES / "catalog" / "data.yaml").read_text())


@pytest.mark.parametrize("rule", ["pack_off", "pack_on", "mailbox_filter_one", "mailbox_filter_missing",
                                  "mailbox_filter_two", "shared_labels_listing_in", "shared_labels_listing_out",
                                  "teams_listing", "shared_labels_writes_in", "shared_labels_writes_out",
                                  "drafts_saved", "drafts_send_denied", "allow_send", "delete_denied",
                                  "allow_delete", "max_limit_at", "max_limit_above", "mailbox_flag_red_team",
                                  "mailbox_id_red_team", "listing_red_team", "writes_red_team",
                                  "send_table_unsafe", "send_table_safe", "send_at_table", "max_limit_table_unsafe",
                                  "max_limit_table_safe", "include_custom_tools", "arguments_not_an_object"])
def test_every_missive_rule_is_tested(bundled_rego_results, rule):
    assert any(r.name.startswith("test_missive_") and rule in r.name for r in bundled_rego_results), rule


def test_catalog_keys_and_missive_tools():
    assert set(CATALOG) == {"tools", "tag_rules"}
    tools = CATALOG["tools"]
    for name in ("list_all_missive_conversations", "get_single_missive_conversation_by_id",
                 "list_all_missive_conversation_messages", "list_all_missive_conversation_comments",
                 "create_a_missive_post", "create_a_missive_draft", "create_a_missive_task",
                 "list_all_missive_users", "list_all_missive_teams", "merge_missive_conversations"):
        assert name in tools, name
    assert tools["merge_missive_conversations"] == {"method": "merge", "access": "custom",
                                                    "tags": ["conversations", "support"]}
    catalog = Catalog(CATALOG)
    for name, entry in tools.items():
        assert entry["access"] == {"list": "read", "get": "read", "create": "write", "update": "write",
                                   "delete": "write"}.get(entry["method"], "custom"), name
        # The entry agrees with the naming convention, so a catalog-less proxy classifies alike.
        assert Catalog().classify(name).method == entry["method"] or name == "merge_missive_conversations"
        assert catalog.classify(name).tags == tuple(entry["tags"])
        assert ("support" in entry["tags"]) != ("admin" in entry["tags"]) or entry["tags"][0] == "responses", name


# --- Decisions through the proxy's engine ------------------------------------------------------

def call(name: str, arguments: dict[str, Any], params: dict[str, Any], methods=("read", "write", "custom"),
         tags=()) -> dict[str, Any]:
    entry = CATALOG["tools"][name]
    return {
        "version": 1, "time": "2026-11-23T20:00:00Z",
        "server": {"name": "support", "methods": list(methods), "tags": list(tags), "require_api_token_auth": False,
                   "expires_at": None, "params": params},
        "principal": {"authenticated": True, "via": ["url_token"], "subject": "agent-7", "claims": {}, "scopes": []},
        "transport": {"kind": "streamable_http", "protocol_version": "2025-11-25", "http_method": "POST",
                      "origin": None},
        "message": {"kind": "request", "direction": "client_to_server", "method": "tools/call", "name": name},
        "tool": {"name": name, "method": entry["method"], "access": entry["access"], "tags": entry["tags"],
                 "annotations": {}, "arguments": arguments},
    }


TRIAGE = {"shared_labels": ["vip"], "max_limit": 50}
WRITER = {"missive": True}
ADMIN = {"missive": True, "allow_send": True, "allow_delete": ["delete_a_missive_hook_by_id"]}

CASES = [
    ("no-params-unchanged", call("list_all_missive_conversations", {}, {}), True, None),
    ("triage-in-label", call("list_all_missive_conversations", {"shared_label": "vip", "limit": 50}, TRIAGE),
     True, None),
    ("triage-no-filter", call("list_all_missive_conversations", {}, TRIAGE), False, "needs exactly one mailbox"),
    ("triage-inbox", call("list_all_missive_conversations", {"inbox": True}, TRIAGE), False,
     "filter by shared_label set to one of: vip"),
    ("triage-limit", call("list_all_missive_conversations", {"shared_label": "vip", "limit": 500}, TRIAGE), False,
     "ask for at most 50"),
    ("triage-post-other-label", call("create_a_missive_post", {"conversation": "c-1", "add_shared_labels": ["x"]},
                                     TRIAGE), False, "may not use (x)"),
    ("writer-draft", call("create_a_missive_draft", {"conversation": "c-1", "body": "Hi"}, WRITER), True, None),
    ("writer-draft-send", call("create_a_missive_draft", {"conversation": "c-1", "send": True}, WRITER), False,
     "remove send and send_at"),
    ("writer-delete", call("delete_a_missive_post_by_id", {"id": "p-1"}, WRITER), False, "not in allow_delete"),
    ("admin-send", call("create_a_missive_draft", {"send_at": 1800000000}, ADMIN), True, None),
    ("admin-delete-hook", call("delete_a_missive_hook_by_id", {"id": "h-1"}, ADMIN, tags=("admin",)), True, None),
    ("admin-delete-post", call("delete_a_missive_post_by_id", {"id": "p-1"}, ADMIN), False, "not in allow_delete"),
    ("off-switch", call("create_a_missive_draft", {"send": True}, {"missive": False, "max_limit": 5}), True, None),
    # Deny unless exactly safe (docs/policies.md): values the upstream (pydantic, lax) coerces.
    *[(f"writer-draft-send-{i}", call("create_a_missive_draft", {"conversation": "c-1", "send": value}, WRITER),
       False, f"would send the email (send: {shown})")
      for i, (value, shown) in enumerate([(1, "1"), (1.0, "1"), ("yes", '"yes"'), ("on", '"on"'), ("True", '"True"'),
                                          ("t", '"t"'), ("y", '"y"'), ("1", '"1"'), ("true", '"true"'),
                                          ("false", '"false"'), (0, "0"), ("", '""'), ([], "a list"),
                                          ({}, "an object"), ("no", '"no"')])],
    ("writer-draft-send-false", call("create_a_missive_draft", {"conversation": "c-1", "send": False}, WRITER), True,
     None),
    ("writer-draft-send-null", call("create_a_missive_draft", {"conversation": "c-1", "send": None, "send_at": None},
                                    WRITER), True, None),
    ("writer-draft-send-at-zero", call("create_a_missive_draft", {"conversation": "c-1", "send_at": 0}, WRITER),
     False, "(send_at: 0)"),
    *[(f"triage-limit-{i}", call("list_all_missive_conversations", {"shared_label": "vip", "limit": value}, TRIAGE),
       False, f"limit must be a whole number from 1 to 50; got {shown}")
      for i, (value, shown) in enumerate([("+200", '"+200"'), (" 200", '" 200"'), ("0200", '"0200"'),
                                          ("200_000", '"200_000"'), ("25", '"25"'), (True, "true"), (0, "0"),
                                          (-5, "-5"), (2.5, "2.5"), ([25], "a list"), ({}, "an object")])],
    ("triage-limit-float", call("list_all_missive_conversations", {"shared_label": "vip", "limit": 25.0}, TRIAGE),
     True, None),
    ("triage-limit-float-above", call("list_all_missive_conversations", {"shared_label": "vip", "limit": 51.0},
                                      TRIAGE), False, "ask for at most 50"),
    ("writer-flag-string-false", call("list_all_missive_conversations", {"inbox": "false", "team_all": "t-1"},
                                      WRITER), False, 'inbox must be true, false or absent; got "false"'),
    ("writer-flag-one", call("list_all_missive_conversations", {"closed": 1}, WRITER), False,
     "closed must be true, false or absent; got 1"),
    ("writer-id-number", call("list_all_missive_conversations", {"team_inbox": 7}, WRITER), False,
     "team_inbox must be an id (a non-empty string) or absent; got 7"),
    ("triage-label-case", call("list_all_missive_conversations", {"shared_label": "VIP"}, TRIAGE), False,
     "filter by shared_label set to one of: vip"),
    ("triage-label-list", call("list_all_missive_conversations", {"shared_label": ["vip"]}, TRIAGE), False,
     "filter by shared_label set to one of: vip"),
    ("triage-post-label-number", call("create_a_missive_post", {"conversation": "c-1", "add_shared_labels": [
        "vip", 5]}, TRIAGE), False, "may not use (5)"),
]


@pytest.fixture(scope="module")
def engine():
    return build_policy_set(Policy()).engine


@pytest.mark.parametrize(("case_id", "inp", "allow", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_decision_through_the_proxy_engine(engine, case_id, inp, allow, reason):
    d = await engine.evaluate(copy.deepcopy(inp))
    assert d["allow"] is allow, d
    assert d["visible_tools"] == [inp["tool"]["name"]]  # denied, never hidden: the model reads why
    if reason:
        assert any(reason in r for r in d["reasons"]), d["reasons"]
    else:
        assert d["reasons"] == []


async def test_same_decisions_in_opa(engine):
    try:
        from opa_bindings import OpaEngine

        from proxy.policy.loader import load_bundle
        opa = OpaEngine()
    except Exception as exc:
        pytest.skip(f"OPA Go engine unavailable: {exc}")
    try:
        bundle = load_bundle([str(POLICIES)])
        for path, source in bundle.modules:
            opa.add_policy(path, source)
        opa.add_data(bundle.data)
        for case_id, inp, _, _ in CASES:
            assert opa.eval_document("mcp.authz.decision", inp) == await engine.evaluate(copy.deepcopy(inp)), case_id
    finally:
        opa.close()
