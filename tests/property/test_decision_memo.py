"""The decision memo (proxy/policy/memo.py) never changes a decision (hypothesis).

Generated policy inputs — servers with and without the Missive pack and an expiry, principals,
tools of the bundled catalog with hostile argument values, times around the expiry — are decided
in a generated order with repeats by two engines of the same compiled version: one with a small
memo (so entries are evicted and re-made) and one without. Every decision must be equal. Two
policy versions (the bundled one, and it plus a site rule) share nothing: each engine's memo only
answers for its own version, including across a reload in the manager.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import BUNDLED_POLICIES, Policy
from proxy.enforce.catalog import Catalog
from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.engine import SMOKE_INPUT
from proxy.policy.loader import load_bundle
from proxy.policy.manager import build_policy_set
from proxy.policy.memo import DecisionMemo, MemoStats, impure_builtin

QUERY = "data.mcp.authz.decision"
BUNDLE = load_bundle([BUNDLED_POLICIES])
SITE_RULE = ('package mcp.authz\nimport rego.v1\n'
             'deny contains "no tasks on Fridays" if {\n\tinput.tool.name == "create_a_missive_task"\n'
             '\tstartswith(input.time, "2026-12-04")\n}\n')
SITE = dataclasses.replace(BUNDLE, modules=(*BUNDLE.modules, ("site/friday.rego", SITE_RULE)), revision="site")
CATALOG = Catalog(BUNDLE.data.get("catalog"))
TOOL_NAMES = [*sorted(CATALOG.known_names)[:40], "echo", "frobnicate"]

values = st.one_of(st.none(), st.booleans(), st.sampled_from(["yes", "true", "", "vip", "0", "+20", "t"]),
                   st.sampled_from([0, 1, 20, 50, 51, 200, 25.0, -1, 1e400]), st.just([]), st.just({"id": "vip"}))
arguments = st.dictionaries(st.sampled_from(["send", "send_at", "limit", "inbox", "shared_label", "team_inbox",
                                             "conversation", "body", "all", "closed"]), values, max_size=4)
servers = st.fixed_dictionaries({
    "name": st.sampled_from(["triage", "support", "admin"]),
    "methods": st.lists(st.sampled_from(["read", "write", "custom", "create", "update", "list", "get"]),
                        max_size=3, unique=True),
    "tags": st.lists(st.sampled_from(["support", "drafts", "tasks", "conversations"]), max_size=2, unique=True),
    "require_api_token_auth": st.booleans(),
    "expires_at": st.sampled_from([None, "2026-12-04T12:00:00Z", "not a time"]),
    "params": st.one_of(st.just({}), st.fixed_dictionaries({}, optional={
        "missive": st.booleans(), "allow_send": st.booleans(), "max_limit": st.sampled_from([10, 50]),
        "shared_labels": st.sampled_from([["vip"], [], "vip"]),
        "allow_delete": st.just(["delete_a_missive_post_by_id"]),
        "hidden_tools": st.just(["frobnicate"])})),
})
principals = st.sampled_from([
    {"authenticated": False, "via": [], "subject": None, "claims": {}, "scopes": []},
    {"authenticated": True, "via": ["url_token"], "subject": None, "claims": {}, "scopes": []},
    {"authenticated": True, "via": ["url_token", "jwt"], "subject": "agent-7",
     "claims": {"sub": "agent-7", "iss": "https://idp"}, "scopes": ["mcp:read"]},
])
times = st.sampled_from(["2026-12-04T11:59:59Z", "2026-12-04T12:00:00Z", "2026-12-04T12:00:01Z",
                         "2026-12-01T09:00:00Z"])


@st.composite
def policy_inputs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1, "time": draw(times), "server": draw(servers), "principal": draw(principals),
        "transport": {"kind": draw(st.sampled_from(["streamable_http", "legacy_sse"])),
                      "protocol_version": "2025-11-25", "http_method": "POST", "origin": None},
    }
    shape = draw(st.sampled_from(["call", "call", "call", "page", "other"]))
    if shape == "call":
        name = draw(st.sampled_from(TOOL_NAMES))
        doc["message"] = {"kind": "request", "direction": "client_to_server", "method": "tools/call", "name": name}
        doc["tool"] = {**CATALOG.classify(name).to_input(None), "arguments": draw(arguments)}
    elif shape == "page":
        names = draw(st.lists(st.sampled_from(TOOL_NAMES), min_size=1, max_size=8, unique=True))
        doc["message"] = {"kind": "response", "direction": "server_to_client", "method": "tools/list", "name": None}
        doc["tools"] = [CATALOG.classify(n).to_input(None) for n in names]
    else:
        method = draw(st.sampled_from(["ping", "resources/read", "prompts/get", "frob/nicate", "initialize"]))
        doc["message"] = {"kind": "request", "direction": "client_to_server", "method": method, "name": None}
    return doc


def engine(bundle: Any, memo_size: int) -> EmbeddedEngine:
    return EmbeddedEngine(bundle, QUERY, memo_size)


MEMOIZED = {"bundled": engine(BUNDLE, 8), "site": engine(SITE, 8)}  # small: evictions happen
FRESH = {"bundled": engine(BUNDLE, 0), "site": engine(SITE, 0)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(policy_inputs(), min_size=1, max_size=6), st.lists(st.tuples(st.integers(0, 5),
       st.sampled_from(["bundled", "site"])), min_size=1, max_size=24))
async def test_memoized_decisions_equal_fresh_ones(inputs: list[dict[str, Any]],
                                                   order: list[tuple[int, str]]) -> None:
    for index, version in order:
        doc = inputs[index % len(inputs)]
        assert await MEMOIZED[version].evaluate(doc) == await FRESH[version].evaluate(doc), (version, doc)


async def test_the_memo_answers_repeats_and_each_version_its_own() -> None:
    doc = {**SMOKE_INPUT, "time": "2026-12-04T10:00:00Z", "server": {**SMOKE_INPUT["server"], "methods": ["create"]},
           "message": {"kind": "request", "direction": "client_to_server", "method": "tools/call",
                       "name": "create_a_missive_task"},
           "tool": {**CATALOG.classify("create_a_missive_task").to_input(None), "arguments": {}}}
    bundled, site = engine(BUNDLE, 16), engine(SITE, 16)
    assert bundled.memo is not None and site.memo is not None
    first = await bundled.evaluate(doc)
    assert len(bundled.memo) == 1 and await bundled.evaluate(doc) == first
    assert first["allow"] is True
    denied = await site.evaluate(doc)  # the new version decides afresh, with its own rule
    assert denied["allow"] is False and denied["reasons"] == ["no tasks on Fridays"]
    # A hit is a fresh object: changing what a caller got changes nothing for the next one.
    got = await bundled.evaluate(doc)
    got["allow"] = False
    assert (await bundled.evaluate(doc))["allow"] is True


def test_a_reload_brings_an_empty_memo(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text('package mcp.authz\nimport rego.v1\ndecision := {"allow": true}\n')
    first = build_policy_set(Policy(paths=(str(tmp_path),)))
    (tmp_path / "a.rego").write_text('package mcp.authz\nimport rego.v1\ndecision := {"allow": false}\n')
    second = build_policy_set(Policy(paths=(str(tmp_path),)))
    assert first.engine.revision != second.engine.revision
    assert first.engine.memo is not second.engine.memo  # type: ignore[attr-defined]
    assert build_policy_set(Policy(paths=(str(tmp_path),), decision_cache_size=0)).engine.memo is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("call", ["time.now_ns()", "rand.intn(\"x\", 10)", "uuid.rfc4122(\"x\")",
                                  "http.send({})", "opa.runtime()", "print(1)", "io.jwt.decode_verify(t, {})",
                                  "time . now_ns ()"])
def test_a_version_that_reads_more_than_its_input_gets_no_memo(call: str) -> None:
    modules = (("p.rego", f"package p\nx if {{ {call} }}\n"),)
    assert impure_builtin(modules) is not None
    assert impure_builtin((("p.rego", "package p\nx := sprintf(\"%v\", [1])\n"),)) is None
    assert impure_builtin(BUNDLE.modules) is None  # the bundled policies are memoized


async def test_an_impure_version_decides_every_time(tmp_path: Path) -> None:
    source = ('package mcp.authz\nimport rego.v1\n'
              'decision := {"allow": time.now_ns() > 0, "reasons": [], "visible_tools": []}\n')
    bundle = dataclasses.replace(BUNDLE, modules=(("clock.rego", source),), data={}, revision="clock")
    clocked = engine(bundle, 16)
    assert clocked.memo is None
    assert (await clocked.evaluate(SMOKE_INPUT))["allow"] is True


def test_the_memo_is_bounded_by_entries_and_bytes() -> None:
    stats = MemoStats()
    memo = DecisionMemo(max_entries=3, max_bytes=100, stats=stats)
    for i in range(10):
        memo.put(b"k%d" % i, "v")
    assert len(memo) == 3 and memo.get(b"k9") == "v" and memo.get(b"k0") is None
    assert (stats.hits, stats.misses) == (1, 1)
    memo.put(b"k7", "v")  # touch: k8 is now the oldest
    memo.put(b"big", "x" * 90)
    assert memo.get(b"k8") is None and memo.get(b"big") is not None
    memo.put(b"huge", "x" * 200)  # larger than the whole budget: never kept
    assert memo.get(b"huge") is None and len(memo) <= 3
