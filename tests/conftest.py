"""Shared pytest fixtures: free ports, server subprocesses, official-SDK upstream servers.

Async tests use pytest-asyncio. Suggested pyproject config::

    [tool.pytest.ini_options]
    testpaths = ["tests"]
    pythonpath = ["."]
    asyncio_mode = "auto"
    asyncio_default_fixture_loop_scope = "function"
    asyncio_default_test_loop_scope = "function"

Starting an SDK upstream takes about 1 s (interpreter + ``mcp`` import), so modules with many
tests should prefer ``sdk_upstream_module`` (one server per mode per module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.harness import (
    SDK_MODES,
    STREAMABLE_MODES,
    ServerHandle,
    Upstream,
    free_port,
    start_sdk_upstream,
    start_server,
)

__all__ = [
    "SDK_MODES",
    "STREAMABLE_MODES",
    "ServerHandle",
    "Upstream",
    "free_port",
    "start_server",
]

UpstreamFactory = Callable[[str], Upstream]
SpawnFactory = Callable[..., ServerHandle]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[SpawnFactory]:
    """``spawn(args, port, env=None) -> ServerHandle``: start_server, stopped at teardown."""
    handles: list[ServerHandle] = []

    def _spawn(args: list[str], port: int, env: dict[str, str] | None = None) -> ServerHandle:
        handle = start_server(args, port, env, log_dir=tmp_path)
        handles.append(handle)
        return handle

    yield _spawn
    for handle in reversed(handles):
        handle.stop()


@pytest.fixture
def sdk_upstream(tmp_path: Path) -> Iterator[UpstreamFactory]:
    """``sdk_upstream(mode) -> Upstream``: a fresh SDK server per call, stopped at teardown."""
    started: list[Upstream] = []

    def _factory(mode: str) -> Upstream:
        upstream = start_sdk_upstream(mode, tmp_path)
        started.append(upstream)
        return upstream

    yield _factory
    for upstream in started:
        upstream.stop()


@pytest.fixture(scope="module")
def sdk_upstream_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamFactory]:
    """Module-scoped ``sdk_upstream``: one server per mode, shared by the module's tests.

    Recordings accumulate across tests; call ``upstream.clear_requests()`` first if it matters.
    """
    workdir = tmp_path_factory.mktemp("sdk-upstream")
    started: dict[str, Upstream] = {}

    def _factory(mode: str) -> Upstream:
        if mode not in started:
            started[mode] = start_sdk_upstream(mode, workdir)
        return started[mode]

    yield _factory
    for upstream in started.values():
        upstream.stop()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: no registered secret in any log, access log, decision log or upstream
    record that any test's servers wrote."""
    yield
    from tests.leakcheck import SECRETS, leaked

    if not SECRETS:
        return
    root = tmp_path_factory.getbasetemp()
    leaks = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".stderr", ".stdout", ".log", ".jsonl"):
            text = path.read_text(errors="replace")  # whole, in pieces or percent-encoded (leakcheck.py)
            leaks += [f"{path}: secret #{SECRETS.index(s)}" for s in leaked(text)]
    assert not leaks, f"secrets found in outputs: {leaks}"
