"""What the image runs, run here: the wheel and sdist built (`python -m build`) from exactly the files
the Dockerfile copies, the wheel installed into a clean venv without extras, then its entry point:
`--version`, `config check` (which loads and compiles the bundled policies), and `serve` with the image's
CMD and environment in front of the demo Missive upstream (from the same wheel), with one MCP call
through it by the official SDK client, a body large enough for the checker's child process, and the
image's HEALTHCHECK one-liner. Nothing may be written into the installed tree (the image's root
filesystem is read-only).

Cost: one module fixture builds (about 10 s: an isolated build environment, setuptools from the
package index) and installs (about 10 s, no bytecode compiled); the tests then take a few seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.dockerfile import REPO, copied_sources, env, stages
from tests.peers.clients import sdk_client
from tests.peers.harness import ServerHandle, free_port

pytestmark = pytest.mark.timeout(300)

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
POLICY_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "policies").rglob("*") if p.is_file())
# In the wheel they are a copy inside the package (proxy/bundled_policies links to policies/ in the repo).
WHEEL_POLICIES = {"proxy/bundled_" + name: name for name in POLICY_FILES}


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    workdir: Path  # the processes' cwd: nothing of the repo on their path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The image's environment (Dockerfile ENV), with the venv first on PATH and nothing of the
        repo's (no PYTHONPATH, no active virtualenv)."""
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        image = env(stages()[1])
        image.pop("PATH")
        home = self.workdir.parent / "home"
        home.mkdir(exist_ok=True)
        return {**base, **image, "HOME": str(home), "TMPDIR": str(home),
                "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}", **extra}

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "mcp-policy-proxy"), *args], cwd=self.workdir, env=self.env(**extra),
                              capture_output=True, text=True, timeout=60)


def _tree(root: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("package")
    context = root / "context"
    for source in copied_sources():  # the Docker build context, as the Dockerfile's COPYs take it
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, context / source)
    dist = root / "dist"
    started = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(context)],
                           capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = time.monotonic()
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # As the image installs it: pip from outside the venv, no extras; bytecode is left uncompiled
    # here to save time (PYTHONDONTWRITEBYTECODE keeps the runs from writing it).
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--quiet", "--disable-pip-version-check", "--no-compile", str(wheel)],
                             capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    print(f"\nbuild {built - started:.1f} s, install {time.monotonic() - built:.1f} s")
    workdir = root / "work"
    workdir.mkdir()
    yield Installed(wheel, sdist, venv, workdir)


def test_wheel_holds_the_proxy_its_policies_and_demo_but_no_tests(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        assert sorted(n for n in names if "policies/" in n) == sorted(WHEEL_POLICIES)
        assert not [n for n in names if n.startswith("policies/")]  # no top-level package of that name
        for name, source in WHEEL_POLICIES.items():
            assert whl.read(name) == (REPO / source).read_bytes(), name
        assert "proxy/demo/upstream.py" in names and "proxy/transport/body_checker.py" in names
        assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "deploy/", "helm/"))]
        assert f"mcp_policy_proxy-{VERSION}.dist-info/licenses/LICENSE" in names
        metadata = whl.read(f"mcp_policy_proxy-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    with tarfile.open(installed.sdist) as sdist:
        members = [m.split("/", 1)[1] for m in sdist.getnames() if "/" in m]
    assert "LICENSE" in members and "pyproject.toml" in members
    assert set(WHEEL_POLICIES) <= set(members)
    assert not [m for m in members if m.startswith("tests/")]


def test_version_and_config_check_on_the_bundled_policies(installed: Installed) -> None:
    version = installed.run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"mcp-policy-proxy {VERSION}"

    code = "import os, proxy.config as c; print(c.__file__); print(os.path.isdir(c.BUNDLED_POLICIES))"
    where = subprocess.run([str(installed.bin / "python"), "-c", code], cwd=installed.workdir, env=installed.env(),
                           capture_output=True, text=True, timeout=30)
    module, found = where.stdout.split()
    assert module.startswith(str(installed.venv)) and found == "True"  # the wheel's, not the repo's

    config = installed.workdir.parent / "check.yaml"
    config.write_text(yaml.safe_dump({
        "upstream": {"url": "http://127.0.0.1:3000/mcp"}, "policy": {"paths": ["@bundled"]},
        "servers": [{"name": "triage", "methods": ["read"], "tags": ["support"], "params": {"missive": True}}]}))
    check = installed.run("config", "check", str(config))
    assert check.returncode == 0, check.stderr
    assert "ok (1 server(s): triage" in check.stdout
    config.write_text(yaml.safe_dump({"upstream": {"url": "http://127.0.0.1:3000/mcp"},
                                      "servers": [{"name": "triage", "methods": ["reed"]}]}))
    refused = installed.run("config", "check", str(config))
    assert refused.returncode == 2 and "servers[0].methods[0]: unknown method 'reed'" in refused.stderr


def _start(installed: Installed, command: list[str], port: int, **extra: str) -> ServerHandle:
    """A process of the installed venv, in its own working directory, waited for on `port`."""
    logs = installed.workdir.parent / "logs"
    logs.mkdir(exist_ok=True)
    stderr_path = logs / f"{Path(command[0]).name}-{port}.stderr"
    stderr = open(stderr_path, "wb")  # noqa: SIM115  (closed by ServerHandle.stop)
    with open(stderr_path.with_suffix(".stdout"), "wb") as stdout:
        proc = subprocess.Popen(command, cwd=installed.workdir, env=installed.env(**extra), stdout=stdout,
                                stderr=stderr)
    handle = ServerHandle(proc=proc, port=port, args=command, stderr_path=stderr_path, _stderr=stderr)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return handle
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                handle.stop()
                raise RuntimeError(f"{command} did not start:\n{handle.stderr()}") from None
            time.sleep(0.05)


async def test_serve_as_the_image_does(installed: Installed) -> None:
    before = _tree(installed.venv)
    upstream_port, port = free_port(), free_port()
    upstream = _start(installed, [str(installed.bin / "python"), "-m", "proxy.demo.upstream",
                                  "--port", str(upstream_port)], upstream_port)
    config = installed.workdir.parent / "proxy.yaml"
    config.write_text(yaml.safe_dump({
        "upstream": {"url": f"http://127.0.0.1:{upstream_port}/mcp", "timeout_s": 10},
        "servers": [{"name": "triage", "methods": ["read"], "tags": ["support"], "params": {"missive": True}}]}))
    # The image's CMD, on loopback (tests bind nothing else) and a free port; the config from the
    # image's MCP_POLICY_PROXY_CONFIG.
    cmd = stages()[1][-1].exec_form()
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    proxy = _start(installed, [str(installed.bin / "mcp-policy-proxy"), *cmd], port,
                   MCP_POLICY_PROXY_CONFIG=str(config))
    try:
        async with sdk_client(f"http://127.0.0.1:{port}/mcp") as client:
            assert "list_all_missive_teams" in await client.tool_names()
            assert "create_a_missive_post" not in await client.tool_names()  # a write: hidden from triage
            assert "Backend Engineering" in await client.call_text("list_all_missive_teams", {})

        # A body of more JSON values than the proxy parses on its loop goes to the checker's child
        # process (python -m proxy.transport.body_checker): it must start from the installed wheel.
        values = ",".join(["0"] * 40_000)
        body = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"list_all_missive_teams",' \
               f'"arguments":{{"v":[{values}]}}}}}}'
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(f"http://127.0.0.1:{port}/mcp", content=body, headers={
                "content-type": "application/json", "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2025-06-18"})
        assert answer.status_code == 413, answer.text  # the checker's verdict (503 if it could not run)
        assert "more than 10000 JSON values" in answer.text

        health = env(stages()[1])["HEALTHCHECK_URL"].replace(":8080/", f":{port}/")
        probe = next(i for i in stages()[1] if i.keyword == "HEALTHCHECK").exec_form()
        probe[0] = str(installed.bin / "python")
        ok = subprocess.run(probe, env=installed.env(HEALTHCHECK_URL=health), capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        down = subprocess.run(probe, env=installed.env(HEALTHCHECK_URL=f"http://127.0.0.1:{free_port()}/healthz"),
                              capture_output=True, timeout=10)
        assert down.returncode != 0
    finally:
        proxy.stop()
        upstream.stop()
    assert proxy.proc.returncode == 0, proxy.stderr()  # SIGTERM: drained, exit 0
    assert _tree(installed.venv) == before  # nothing written into the installed tree
    assert not list(installed.workdir.iterdir())  # nor into the working directory
