from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxy_harness import Proxy, start_proxy

ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def proxy_for(tmp_path: Path) -> Iterator[ProxyFactory]:
    """`proxy_for(upstream_base, extra_config=None) -> Proxy`, stopped at teardown."""
    started: list[Proxy] = []

    def _factory(upstream_base: str, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Proxy:
        proxy = start_proxy(tmp_path, upstream_base, extra, env)
        started.append(proxy)
        return proxy

    yield _factory
    for proxy in started:
        proxy.stop()
