"""Rego unit tests with the embedded engine: what `mcp-policy-proxy policy test [DIR]` runs.

The files are read as the proxy reads a policy bundle (`loader.load_bundle`), tests included: every
`.rego` below the given files and directories (`*_test.rego` too, which the proxy itself skips)
and the data files OPA bundles use:
`<root>/a/b/data.json` (or `data.yaml`, `data.yml`) becomes `data.a.b`, one directly in a root the
top of `data`; a data file given by name is the top of `data`, whatever its name. So a test sees
the data the proxy would load from the same directory.

Every rule named `test_*` (not a function) of every package is evaluated on its own, with no input
(tests bring theirs with `with input as …`). A test passes iff its value is `true`; undefined,
`false`, any other value or an evaluation error fail it. A file that does not parse or compile
fails the whole run with PolicyLoadError, as it would fail to load into the proxy.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

os.environ["RUST_BACKTRACE"] = "0"  # regorus errors would otherwise carry (and compute) a backtrace

import regorus

from .loader import PolicyLoadError, load_bundle

TEST_PREFIX = "test_"

# The fallback way to find tests, should regorus change its AST: a rule head at a line's start.
_TEST_HEAD = re.compile(r"^(?:default\s+)?(test_\w+)\b(?!\s*\()", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False  # not a pytest test class, despite the name

    package: str  # "mcp.authz_test"
    name: str  # "test_methods_read_is_list_and_get"
    passed: bool
    error: str | None  # why it failed: "undefined", "false", "value is …", or the evaluation error
    duration_ns: int

    @property
    def path(self) -> str:
        """The rule's full path, as OPA prints it: data.mcp.authz_test.test_…"""
        return f"data.{self.package}.{self.name}"


def error_text(exc: BaseException) -> str:
    """A regorus error on one line: `file:line:col: error: message` (no source excerpt)."""
    text = str(exc).split("\n\nStack backtrace")[0].strip()
    location = re.search(r"-->\s*(\S+)", text)
    message = next((line.strip() for line in text.splitlines() if line.strip().startswith("error:")), None)
    if location and message:
        return f"{location.group(1)}: {message}"
    return " ".join(text.split())


def _rule_name(rule: dict[str, Any]) -> str | None:
    """The name of a rule from regorus's AST, if the rule could be a test (no function, no ref)."""
    kind, node = next(iter(rule.items()))
    if kind == "Default":
        head = node
        if head.get("args"):
            return None
    elif kind == "Spec":
        head_kind, head = next(iter(node["head"].items()))
        if head_kind == "Func":
            return None
    else:
        return None
    var = head["refr"].get("Var")
    return var["value"] if var else None


def _test_names(engine: regorus.Engine, path: str, source: str) -> list[str]:
    names: list[str] = []
    try:
        for module in json.loads(engine.get_ast_as_json()):
            if module["source"]["file"] == path:
                names.extend(n for rule in module["ast"]["rules"] if (n := _rule_name(rule)) is not None)
    except (KeyError, TypeError, ValueError, StopIteration, RuntimeError):
        names = _TEST_HEAD.findall(source)
    return [n for n in names if n.startswith(TEST_PREFIX)]


def _verdict(value: Any) -> str | None:
    if value is True:
        return None
    if value is None:
        return "undefined"
    if value is False:
        return "false"
    return f"value is {value!r}, not true"


def run_rego_tests(paths: list[str]) -> list[TestResult]:
    """Every `test_*` rule under `paths`, in file and rule order; PolicyLoadError if they don't load."""
    bundle = load_bundle(paths, include_tests=True)
    engine = regorus.Engine()
    tests: dict[tuple[str, str], None] = {}  # (package, name), deduplicated, in order
    for path, source in bundle.modules:
        try:
            package = engine.add_policy(path, source)
        except RuntimeError as exc:
            raise PolicyLoadError(error_text(exc)) from None
        package = package.removeprefix("data.")
        for name in _test_names(engine, path, source):
            tests.setdefault((package, name), None)
    engine.add_data(bundle.data)

    results = []
    for package, name in tests:
        start = time.perf_counter_ns()
        try:
            error = _verdict(engine.eval_rule(f"data.{package}.{name}"))
        except Exception as exc:  # an evaluation error fails this test, not the run
            error = error_text(exc)
        results.append(TestResult(package, name, error is None, error, time.perf_counter_ns() - start))
    return results
