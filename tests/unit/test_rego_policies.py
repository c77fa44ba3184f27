"""The bundled Rego policies pass their own unit tests, and the test runner reports failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from proxy.policy.loader import PolicyLoadError
from proxy.policy.testing import run_rego_tests

POLICIES = Path(__file__).resolve().parents[2] / "policies"

# Every rule of policies/mcp/authz.rego, and the word its tests carry in their names.
RULES = (
    "methods_read", "methods_write", "methods_custom", "methods_specific", "methods_named_custom",
    "methods_empty", "tags_", "tags_empty", "expiry_before", "expiry_at", "expiry_after",
    "expiry_null", "token_auth_url_token_alone", "token_auth_url_token_and_jwt", "token_auth_api_token",
    "token_auth_anonymous", "housekeeping", "notifications", "listings", "tasks", "tools_page",
    "call_of_a_visible", "call_of_a_hidden", "unknown_method_denied", "allow_methods",
    "server_to_client", "client_responses", "malformed",
)


def test_bundled_policy_tests_pass(bundled_rego_results):
    """Every Rego test of the bundled policies: the default policy's and the Missive pack's."""
    results = bundled_rego_results
    failed = [f"{r.package}.{r.name}: {r.error}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    assert len(results) >= 25
    assert {r.package for r in results} == {"mcp.authz_test"}
    assert all(r.duration_ns > 0 and r.error is None for r in results)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_is_tested(bundled_rego_results, rule):
    assert any(rule in r.name for r in bundled_rego_results), f"no test_*{rule}* rule in policies/"


def test_failures_are_reported(tmp_path):
    (tmp_path / "p.rego").write_text(
        "package demo\n"
        "import rego.v1\n"
        "test_true if true\n"
        "test_false := false\n"
        "test_undefined if input.nothing == 1\n"
        "test_broken if to_number(\"x\") == 1\n"
        "test_not_a_boolean := 7\n"
        "test_helper(x) := x  # a function: not a test\n"
        "default test_defaulted := false\n"
        "test_defaulted if data.nested.dir.answer == 42\n"
        "test_top_level_data if data.flag == true\n"
    )
    nested = tmp_path / "nested" / "dir"
    nested.mkdir(parents=True)
    (nested / "data.yaml").write_text("answer: 42\n")
    (tmp_path / "data.json").write_text('{"flag": true}')
    (tmp_path / "p_test.rego").write_text("package demo.more\nimport rego.v1\ntest_in_a_test_file if 1 + 1 == 2\n")

    results = {f"{r.package}.{r.name}": r for r in run_rego_tests([str(tmp_path)])}
    assert set(results) == {
        "demo.test_true", "demo.test_false", "demo.test_undefined", "demo.test_broken",
        "demo.test_not_a_boolean", "demo.test_defaulted", "demo.test_top_level_data",
        "demo.more.test_in_a_test_file",
    }
    passed = {name for name, r in results.items() if r.passed}
    assert passed == {"demo.test_true", "demo.test_defaulted", "demo.test_top_level_data",
                      "demo.more.test_in_a_test_file"}
    assert results["demo.test_false"].error == "false"
    assert results["demo.test_undefined"].error == "undefined"
    assert results["demo.test_not_a_boolean"].error == "value is 7, not true"
    broken = results["demo.test_broken"].error
    assert broken is not None and "p.rego:6" in broken and "Stack backtrace" not in broken
    assert results["demo.test_true"].path == "data.demo.test_true"


def test_a_file_that_does_not_parse_fails_the_run(tmp_path):
    (tmp_path / "bad.rego").write_text("package bad\nimport rego.v1\ntest_x if {\n")
    with pytest.raises(PolicyLoadError, match=r"bad\.rego:\d+"):
        run_rego_tests([str(tmp_path)])


def test_a_single_file(tmp_path):
    single = tmp_path / "one.rego"
    single.write_text("package one\nimport rego.v1\ntest_alone if true\n")
    assert [(r.name, r.passed) for r in run_rego_tests([str(single)])] == [("test_alone", True)]


# The extension example of docs/policies.md, with its tests: extensions compile beside the bundled
# policy and can both deny and hide.
EXTENSION = """\
package mcp.authz

import rego.v1

# Writing needs the mcp:write scope, whatever the server's methods say.
deny contains "writing needs the mcp:write scope" if {
	input.tool.access == "write"
	not has_scope("mcp:write")
}

has_scope(scope) if scope in input.principal.scopes

# Deleting is for the admins group: other clients do not even see delete tools.
hidden_tools contains tool.name if {
	some tool in message_tools
	tool.method == "delete"
	not in_group("admins")
}

in_group(group) if group in object.get(input.principal.claims, "groups", [])
"""

EXTENSION_TESTS = """\
package mcp.local_test

import rego.v1

import data.mcp.authz

call := {
	"version": 1, "time": "2026-11-23T20:00:00Z",
	"server": {
		"name": "s", "methods": ["read", "write"], "tags": [],
		"require_api_token_auth": false, "expires_at": null, "params": {},
	},
	"principal": {
		"authenticated": true, "via": ["jwt"], "subject": "a",
		"claims": {"groups": ["support"]}, "scopes": ["mcp:read"],
	},
	"message": {"kind": "request", "direction": "client_to_server", "method": "tools/call", "name": "x"},
	"tool": {"name": "create_a_missive_post", "method": "create", "access": "write", "tags": ["posts"]},
}

test_write_needs_the_scope if {
	d := authz.decision with input as call
	d == {"allow": false, "reasons": ["writing needs the mcp:write scope"], "visible_tools": ["create_a_missive_post"]}
	authz.decision.allow with input as object.union(call, {"principal": {"scopes": ["mcp:write"]}})
}

test_delete_hidden_outside_admins if {
	delete := object.union(call, {
		"principal": {"scopes": ["mcp:write"]},
		"tool": {"name": "delete_a_missive_contact_by_id", "method": "delete"},
	})
	d := authz.decision with input as delete
	d.visible_tools == []
	d.reasons == ["tool delete_a_missive_contact_by_id is hidden from this client"]
	authz.decision.allow with input as object.union(delete, {"principal": {"claims": {"groups": ["admins"]}}})
}
"""


def test_extension_example(tmp_path):
    shutil.copytree(POLICIES, tmp_path / "policies")
    (tmp_path / "policies" / "mcp" / "local.rego").write_text(EXTENSION)
    (tmp_path / "policies" / "mcp" / "local_test.rego").write_text(EXTENSION_TESTS)
    results = run_rego_tests([str(tmp_path / "policies")])
    local = {r.name: r for r in results if r.package == "mcp.local_test"}
    assert set(local) == {"test_write_needs_the_scope", "test_delete_hidden_outside_admins"}
    assert all(r.passed for r in local.values()), [r.error for r in local.values()]
    # The bundled tests notice what the extension changed: writes now need a scope.
    changed = {r.name for r in results if not r.passed}
    assert "test_methods_write_is_create_update_delete" in changed
    assert "test_methods_read_is_list_and_get" not in changed
