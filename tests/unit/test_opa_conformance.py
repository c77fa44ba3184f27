"""Conformance: regorus (the embedded engine) and the real OPA Go engine decide alike.

Same policies and data (policies/, loaded as the proxy loads them), a table of representative
inputs (docs/policy-input.md, v1), identical decisions required from three evaluators: the proxy's
embedded engine (regorus' VM, what serves traffic), regorus' interpreter (what `policy test` runs)
and OPA. OPA runs in-process through
`opa-golib-python-bindings` (OPA's Go `rego` package as a c-shared library). Its metadata asks for
Python >= 3.14, but the wheel loads on 3.11; install it with

    pip install --ignore-requires-python opa-golib-python-bindings==0.4.4

Without it these tests are SKIPPED, loudly (a skip reason and a warning): never a silent pass.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ["RUST_BACKTRACE"] = "0"

import regorus

from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.loader import load_bundle
from proxy.policy.testing import run_rego_tests

POLICIES = Path(__file__).resolve().parents[2] / "policies"
QUERY = "mcp.authz.decision"
INSTALL = "pip install --ignore-requires-python opa-golib-python-bindings==0.4.4"

try:
    from opa_bindings import OpaEngine, OpaError
except Exception as exc:  # ImportError, or OSError if the shared library does not load
    OpaEngine = OpaError = None
    UNAVAILABLE: str | None = f"{type(exc).__name__}: {exc}"
else:
    UNAVAILABLE = None


def _skip(why: str) -> None:
    message = f"OPA CONFORMANCE NOT CHECKED: the OPA Go engine is unavailable ({why}). Install it: {INSTALL}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle([str(POLICIES)])


@pytest.fixture(scope="module")
def opa(bundle):
    if UNAVAILABLE is not None:
        _skip(UNAVAILABLE)
    try:
        engine = OpaEngine()
        for path, source in bundle.modules:
            engine.add_policy(path, source)
        engine.add_data(bundle.data)
    except OSError as exc:  # the library loads lazily, on the first engine
        _skip(f"{type(exc).__name__}: {exc}")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def rego(bundle):
    engine = regorus.Engine()
    for path, source in bundle.modules:
        engine.add_policy(path, source)
    engine.add_data(bundle.data)
    return engine


@pytest.fixture(scope="module")
def embedded(bundle):
    return EmbeddedEngine(bundle, "data." + QUERY)


# --- Inputs, built as proxy/enforce/input.py builds them ------------------------------------------

CATALOG_TOOLS = (
    "list_all_missive_conversations", "get_single_missive_conversation_by_id",
    "list_all_missive_conversation_messages", "create_a_missive_post", "create_a_missive_draft",
    "list_all_missive_users", "merge_missive_conversations",
)


def server(**changes: Any) -> dict[str, Any]:
    return {"name": "support-triage", "methods": ["read"], "tags": [], "require_api_token_auth": False,
            "expires_at": None, "params": {}, **changes}


def principal(*via: str) -> dict[str, Any]:
    return {"authenticated": bool(via), "via": list(via), "subject": "agent-7" if via else None,
            "claims": {"iss": "https://idp.example.com", "sub": "agent-7"} if "jwt" in via else {},
            "scopes": []}


def message(method: str | None, *, kind: str = "request", direction: str = "client_to_server",
            name: str | None = None, srv: dict[str, Any] | None = None, via: tuple[str, ...] = ("url_token",),
            time: str = "2026-11-23T20:00:00Z", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1, "time": time, "server": srv or server(), "principal": principal(*via),
        "transport": {"kind": "streamable_http", "protocol_version": "2025-11-25", "http_method": "POST",
                      "origin": None},
        "message": {"kind": kind, "direction": direction, "method": method, "name": name},
        **extra,
    }


def tool(catalog: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    """A tool as the catalog classifies it (an explicit entry), or as given."""
    entry = catalog["tools"].get(name, {})
    return {"name": name, "method": entry.get("method", name), "access": entry.get("access", "custom"),
            "tags": list(entry.get("tags", [])), "annotations": {}, **fields}


def call(catalog: dict[str, Any], name: str, arguments: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    args = {"id": "c-1"} if arguments is None else arguments
    return message("tools/call", name=name, tool={**tool(catalog, name), "arguments": args}, **kw)


def page(catalog: dict[str, Any], names: tuple[str, ...] = CATALOG_TOOLS, **kw: Any) -> dict[str, Any]:
    return message("tools/list", kind="response", direction="server_to_client",
                   tools=[tool(catalog, n) for n in names], **kw)


def cases(catalog: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(id, input, expected allow)."""
    token = server(methods=["read", "create"], tags=["conversations", "posts"], require_api_token_auth=True,
                   expires_at="2026-12-31T23:59:59Z", params={"shared_labels": ["vip"]})
    return [
        ("doc-example", call(catalog, "create_a_missive_post", srv=token, via=("url_token", "jwt")), True),
        ("token-auth-url-token-only", call(catalog, "create_a_missive_post", srv=token), False),
        ("token-auth-api-token", message("tools/list", srv=token, via=("api_token",)), True),
        ("token-auth-anonymous", message("initialize", srv=token, via=()), False),
        ("ping-anonymous", message("ping", via=()), True),
        ("notification", message("notifications/initialized", kind="notification"), True),
        ("tools-list-request", message("tools/list"), True),
        ("page-read", page(catalog), True),
        ("page-read-conversations-tags", page(catalog, srv=server(methods=["read", "write"],
                                                                  tags=["conversations"])), True),
        ("page-no-methods", page(catalog, srv=server(methods=[])), True),
        ("page-custom", page(catalog, srv=server(methods=["custom"])), True),
        ("page-expired", page(catalog, srv=server(expires_at="2026-01-01T00:00:00Z")), False),
        ("call-visible", call(catalog, "get_single_missive_conversation_by_id"), True),
        ("call-hidden-method", call(catalog, "create_a_missive_draft"), False),
        ("call-hidden-tag", call(catalog, "list_all_missive_users", srv=server(tags=["conversations"])), False),
        ("call-named-custom", call(catalog, "merge_missive_conversations", srv=server(methods=["merge"])), True),
        ("call-custom-uncatalogued", call(catalog, "archive_all", srv=server(methods=["custom"])), True),
        ("call-hidden-tools-param", call(catalog, "list_all_missive_users",
                                         srv=server(params={"hidden_tools": ["list_all_missive_users"]})), False),
        ("call-without-tool", message("tools/call", name="x"), False),
        ("expiry-not-yet", message("ping", srv=server(expires_at="2026-11-23T20:00:01Z")), True),
        ("expiry-at-instant", message("ping", srv=server(expires_at="2026-11-23T20:00:00Z")), False),
        ("expiry-offset", message("ping", srv=server(expires_at="2026-11-23T21:30:00+02:00")), False),
        ("expiry-bad-time", message("ping", srv=server(expires_at="2026-12-31T23:59:59Z"), time="now"), False),
        ("unknown-method", message("admin/shutdown"), False),
        ("allow-methods-param", message("admin/stats", srv=server(params={"allow_methods": ["admin/stats"]})),
         True),
        ("resources-read", message("resources/read", name="missive://conversations/c-1"), True),
        ("tasks-get", message("tasks/get"), True),
        ("server-sampling", message("sampling/createMessage", direction="server_to_client"), True),
        ("server-elicitation-expired", message("elicitation/create", direction="server_to_client",
                                               srv=server(expires_at="2020-01-01T00:00:00Z")), False),
        ("client-answer", message("sampling/createMessage", kind="response"), True),
        ("client-answer-unknown-request", message(None, kind="response"), True),
        ("client-asks-sampling", message("sampling/createMessage"), False),
        ("malformed-empty", {}, False),
        ("malformed-version", {**message("ping"), "version": 2}, False),
        ("malformed-via", {**message("ping", srv=token), "principal": {"via": "jwt"}}, False),
        ("malformed-page-tools-null", {**page(catalog), "tools": None}, True),
        ("request-named-notification", message("notifications/initialized"), False),
        ("request-named-notification-allowed", message("notifications/x", srv=server(
            params={"allow_methods": ["notifications/x"]})), True),
        *missive_cases(catalog),
    ]


def missive_cases(catalog: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """The Missive pack's deny-unless-exactly-safe rules on red-team values (docs/policies.md)."""
    writer = server(methods=["read", "write", "custom"], params={"missive": True, "max_limit": 25})
    scoped = server(methods=["read", "write", "custom"], params={"shared_labels": ["vip"], "teams": ["t-1"]})

    def draft(args: dict[str, Any]) -> dict[str, Any]:
        return call(catalog, "create_a_missive_draft", {"body": "Hi", **args}, srv=writer)

    def listing(args: dict[str, Any], srv: dict[str, Any] = writer) -> dict[str, Any]:
        return call(catalog, "list_all_missive_conversations", args, srv=srv)

    sends = [True, "true", 1, 1.0, "yes", "on", "True", "t", "y", "1", "false", 0, "", [], {}, "no", 12345678.5]
    limits = ["+200", " 200", "0200", "200_000", "25", True, False, 0, -1, 2.5, 26, 1e3, [5], {}]
    flags = ["false", "yes", 1, 0, "", [], {"a": 1}]
    ids = [7, True, False, ["t-1"], {"id": "t-1"}]
    labels = ["VIP", " vip", 5, ["vip"], {"id": "vip"}]
    return [
        ("missive-draft-saved", draft({}), True),
        ("missive-draft-send-false", draft({"send": False, "send_at": None}), True),
        ("missive-draft-send-null", draft({"send": None}), True),
        *[(f"missive-draft-send-{i}", draft({"send": v}), False) for i, v in enumerate(sends)],
        ("missive-draft-send-at", draft({"send_at": 1800000000}), False),
        ("missive-draft-send-at-string", draft({"send_at": "<tomorrow & later>"}), False),
        ("missive-limit-25.0", listing({"inbox": True, "limit": 25.0}), True),
        ("missive-limit-null", listing({"inbox": True, "limit": None}), True),
        *[(f"missive-limit-{i}", listing({"inbox": True, "limit": v}), False) for i, v in enumerate(limits)],
        ("missive-flag-false-and-null", listing({"inbox": True, "all": False, "closed": None}), True),
        *[(f"missive-flag-{i}", listing({"inbox": v, "team_all": "t-1"}), False) for i, v in enumerate(flags)],
        *[(f"missive-id-{i}", listing({"team_inbox": v, "inbox": True}), False) for i, v in enumerate(ids)],
        ("missive-label-in-scope", listing({"shared_label": "vip"}, scoped), True),
        ("missive-team-in-scope", listing({"team_all": "t-1"}, scoped), True),
        *[(f"missive-label-{i}", listing({"shared_label": v}, scoped), False) for i, v in enumerate(labels)],
        ("missive-label-and-flag", listing({"shared_label": "vip", "inbox": "yes"}, scoped), False),
        ("missive-write-labels", call(catalog, "create_a_missive_post", {"text": "t", "add_shared_labels": [
            "vip", 5, ["vip"], {"id": "vip"}, "", "VIP"]}, srv=scoped), False),
        ("missive-write-team-in-scope", call(catalog, "create_a_missive_post", {"text": "t", "team": "t-1"},
                                             srv=scoped), True),
        ("missive-merge-team", call(catalog, "merge_missive_conversations", {"id": "c-1", "target": "c-2",
                                                                             "team": 1}, srv=scoped), False),
    ]


def _ids() -> list[str]:
    return [case_id for case_id, _, _ in cases({"tools": {}})]


@pytest.mark.parametrize("index", range(len(_ids())), ids=_ids())
async def test_same_decision(index, bundle, embedded, rego, opa):
    case_id, input, allow = cases(bundle.data["catalog"])[index]
    vm = await embedded.evaluate(copy.deepcopy(input))
    rego.set_input(copy.deepcopy(input))
    interpreter = rego.eval_rule("data." + QUERY)
    real = opa.eval_document(QUERY, input)
    assert vm == real, f"{case_id}: regorus VM {vm} != OPA {real}"
    assert interpreter == real, f"{case_id}: regorus interpreter {interpreter} != OPA {real}"
    assert set(real) == {"allow", "reasons", "visible_tools"}
    assert real["allow"] is allow, f"{case_id}: {real}"
    assert allow or real["reasons"], f"{case_id}: a denial without a reason"


def test_table_is_large_enough(bundle):
    assert len(cases(bundle.data["catalog"])) >= 20


def test_rego_unit_tests_pass_in_opa(bundle, opa):
    """The policy's own test_* rules hold in OPA too (tests loaded into a separate engine)."""
    engine = OpaEngine()
    try:
        with_tests = load_bundle([str(POLICIES)], include_tests=True)
        for path, source in with_tests.modules:
            engine.add_policy(path, source)
        engine.add_data(with_tests.data)
        results = run_rego_tests([str(POLICIES)])
        assert results
        failed = []
        for r in results:
            try:
                value = engine.eval_document(f"{r.package}.{r.name}")
            except OpaError as exc:
                value = str(exc)
            if value is not True:
                failed.append(f"{r.package}.{r.name}: {value}")
        assert not failed, "\n".join(failed)
    finally:
        engine.close()
