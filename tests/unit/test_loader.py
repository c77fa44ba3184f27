import os
import re

import pytest

from proxy.policy.embedded import EmbeddedEngine
from proxy.policy.loader import PolicyLoadError, load_bundle
from proxy.policy.manager import fingerprint

POLICY = 'package mcp.authz\nimport rego.v1\ndecision := {"allow": true, "reasons": [], "visible_tools": []}\n'


def test_bundle_layout_and_revision(tmp_path):
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "authz.rego").write_text(POLICY)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "data.yaml").write_text("tools: {a: {method: get}}\n")
    (tmp_path / "data.json").write_text('{"top": 1}')
    bundle = load_bundle([str(tmp_path)])
    assert bundle.data == {"catalog": {"tools": {"a": {"method": "get"}}}, "top": 1}
    assert [p for p, _ in bundle.modules] == [str(tmp_path / "mcp" / "authz.rego")]
    before = bundle.revision
    (tmp_path / "mcp" / "authz.rego").write_text(POLICY + "# changed\n")
    assert load_bundle([str(tmp_path)]).revision != before


def test_errors_name_the_file(tmp_path):
    with pytest.raises(PolicyLoadError, match=r"no \.rego files"):
        load_bundle([str(tmp_path)])
    (tmp_path / "data.json").write_text("{oops")
    (tmp_path / "a.rego").write_text(POLICY)
    with pytest.raises(PolicyLoadError, match=re.escape(f"{tmp_path / 'data.json'}: invalid data")):
        load_bundle([str(tmp_path)])


def test_broken_rego_is_refused_with_file_and_line(tmp_path):
    (tmp_path / "broken.rego").write_text("package mcp.authz\n\ndecision := {\n")
    with pytest.raises(PolicyLoadError, match=r"broken\.rego:\d+"):
        EmbeddedEngine(load_bundle([str(tmp_path)]), "data.mcp.authz.decision")


def test_policy_without_a_valid_decision_is_refused(tmp_path):
    (tmp_path / "a.rego").write_text('package mcp.authz\nimport rego.v1\ndecision := "yes"\n')
    with pytest.raises(PolicyLoadError, match=r"data\.mcp\.authz\.decision"):
        EmbeddedEngine(load_bundle([str(tmp_path)]), "data.mcp.authz.decision")
    (tmp_path / "a.rego").write_text("package other\nx := 1\n")
    with pytest.raises(PolicyLoadError):
        EmbeddedEngine(load_bundle([str(tmp_path)]), "data.mcp.authz.decision")


def test_configmap_symlink_swap_changes_the_fingerprint(tmp_path):
    """Kubernetes mounts a ConfigMap as ..data -> ..<timestamp>/ and swaps the link atomically."""
    v1, v2 = tmp_path / "..2026_11_23_1", tmp_path / "..2026_11_23_2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "authz.rego").write_text(POLICY)
    (v2 / "authz.rego").write_text(POLICY + "# v2, same size? no\n")
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "authz.rego").symlink_to("..data/authz.rego")
    first = fingerprint((str(tmp_path),))
    assert load_bundle([str(tmp_path)]).modules[0][1] == POLICY
    (tmp_path / "..data_tmp").symlink_to(v2.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert fingerprint((str(tmp_path),)) != first
    assert "v2" in load_bundle([str(tmp_path)]).modules[0][1]
