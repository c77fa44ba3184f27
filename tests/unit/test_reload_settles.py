"""Reloads put only complete versions in force: a change is taken once the files held still for a
polling interval, and files that change while they are read are read again (proxy/policy/manager.py,
proxy/config_reload.py)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy.config import BUNDLED_POLICIES, Config, ConfigError, Policy, load
from proxy.config_reload import ConfigReloader
from proxy.observe.metrics import Metrics
from proxy.policy.loader import load_bundle
from proxy.policy.manager import PolicyManager, build_policy_set

RULES = """package mcp.authz
import rego.v1
deny contains "echo is off" if input.tool.name == "echo"
deny contains "add is off" if input.tool.name == "add"
"""


def _version(root: Path, name: str, off: list[str]) -> Path:
    directory = root / name
    (directory / "switch").mkdir(parents=True)
    (directory / "switch.rego").write_text(  # each version's rule names it: a mix differs from both
        f'package mcp.authz\nimport rego.v1\ndeny contains "off in {name}" if input.tool.name in data.switch.off\n')
    (directory / "switch" / "data.json").write_text(json.dumps({"off": off, "version": name}))
    return directory


def _swap(link: Path, target: Path) -> None:
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    new.replace(link)


def _manager(paths: list[str]) -> tuple[PolicyManager, SimpleNamespace]:
    config = Policy(paths=tuple(paths))
    holder = SimpleNamespace(policy=build_policy_set(config), metrics=Metrics())
    return PolicyManager(config, holder), holder


def test_a_version_swapped_in_while_it_is_read_is_read_again_never_used(tmp_path, monkeypatch):
    site = tmp_path / "site"
    v1, v2, v3 = (_version(tmp_path, name, off) for name, off in (("v1", []), ("v2", ["echo"]), ("v3", ["add"])))
    _swap(site, v1)
    paths = [BUNDLED_POLICIES, str(site)]
    manager, holder = _manager(paths)
    _swap(site, v2)
    real = pathlib.Path.read_text
    swapped: list[Path] = []

    def read_text(self: Path, *args, **kwargs) -> str:  # v3 swapped in after the first file of v2 was read
        text = real(self, *args, **kwargs)
        if not swapped and str(self).startswith(str(site)):
            swapped.append(self)
            _swap(site, v3)
        return text

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    assert manager.reload() is True
    monkeypatch.undo()
    assert swapped  # the walk was caught mid-version
    assert holder.policy.engine.revision == load_bundle(paths).revision  # all of v3, no part of v2
    assert 'mcp_proxy_policy_reloads_total{result="success"} 1.0' in holder.metrics.render().decode()


def test_a_policy_change_is_reloaded_once_it_held_still_for_a_poll(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    rules = site / "rules.rego"
    rules.write_text(RULES)
    paths = [BUNDLED_POLICIES, str(site)]
    manager, holder = _manager(paths)
    first = holder.policy
    # Rewritten in place, caught half-way: the first rule only, which compiles.
    complete = RULES + 'deny contains "sleep is off" if input.tool.name == "sleep"\n'
    rules.write_text(complete.split('deny contains "add')[0])
    manager.poll()
    assert holder.policy is first  # seen changing: not taken yet
    rules.write_text(complete)
    manager.poll()
    assert holder.policy is first  # changed again since the last poll
    manager.poll()
    assert holder.policy.engine.revision == load_bundle(paths).revision
    manager.poll()
    assert 'mcp_proxy_policy_reloads_total{result="success"} 1.0' in holder.metrics.render().decode()


def test_files_that_never_hold_still_while_read_leave_the_old_version_in_force(tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    site.mkdir()
    rules = site / "rules.rego"
    rules.write_text(RULES)
    manager, holder = _manager([BUNDLED_POLICIES, str(site)])
    first = holder.policy
    real = pathlib.Path.read_text
    reads = [0]

    def read_text(self: Path, *args, **kwargs) -> str:  # a writer busy with the file at every read
        text = real(self, *args, **kwargs)
        if self == rules:
            reads[0] += 1
            rules.write_text(RULES + "#" * reads[0])
        return text

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    assert manager.reload() is False
    monkeypatch.undo()
    assert holder.policy is first and reads[0] == 3
    assert "policy files kept changing while they were read" in caplog.text
    text = holder.metrics.render().decode()
    assert 'reloads_total{result="success"} 0.0' in text and 'reloads_total{result="failure"} 0.0' in text  # neither
    manager.poll()  # settled now: the next polls take it
    manager.poll()
    assert holder.policy is not first


def _reloader(path: Path) -> tuple[ConfigReloader, list[Config], list[bool]]:
    applied: list[Config] = []
    results: list[bool] = []
    return ConfigReloader(str(path), lambda: load(path), applied.append, results.append), applied, results


CONFIG = """upstream: {url: "http://127.0.0.1:9/mcp"}
auth: {url_token_key: url-token-key-for-tests-0123456789}
servers:
  - {name: ro, methods: [read], token_hmac: "%s"}
""" % ("0" * 64)


def test_a_config_change_is_reloaded_once_it_held_still_for_a_poll(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    reloader, applied, results = _reloader(path)
    # Caught half-way through a rewrite: `auth` and the servers missing, and still valid YAML.
    path.write_text(CONFIG.split("auth:")[0])
    reloader.poll()
    path.write_text(CONFIG.replace("methods: [read]", "methods: [read, write]"))
    reloader.poll()
    assert applied == []
    reloader.poll()
    assert [c.servers[0].methods for c in applied] == [("read", "write")] and results == [True]
    reloader.poll()
    assert len(applied) == 1


def test_a_config_file_changing_while_read_is_read_again(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    applied: list[Config] = []
    texts = [CONFIG.split("auth:")[0], CONFIG.replace("[read]", "[read, write]")]

    def load_mid_write() -> Config:
        config = load(path)
        if texts:
            path.write_text(texts.pop(0))  # the writer was not done
        return config

    reloader = ConfigReloader(str(path), load_mid_write, applied.append)
    path.write_text(CONFIG.replace("[read]", "[write]"))
    assert reloader.reload() is True
    assert [c.servers[0].methods for c in applied] == [("read", "write")]


def test_a_broken_config_is_still_refused(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    reloader, applied, results = _reloader(path)
    path.write_text(CONFIG.replace("methods: [read]", "methods: read"))
    assert reloader.reload() is False and applied == [] and results == [False]
    with pytest.raises(ConfigError):
        load(path)
