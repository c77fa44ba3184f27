"""Start the proxy itself as a subprocess (`python -m proxy serve --config …`) for integration tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.peers.harness import ServerHandle, free_port, start_server


@dataclass
class Proxy:
    port: int
    handle: ServerHandle
    config_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def sse_url(self) -> str:
        return f"{self.base}/sse"

    def stop(self) -> None:
        self.handle.stop()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def start_proxy(workdir: Path, upstream_base: str, extra: dict[str, Any] | None = None,
                env: dict[str, str] | None = None, port: int | None = None, log_level: str = "warning",
                access_log: bool = False) -> Proxy:
    """The proxy in front of `upstream_base` (`/mcp` and `/sse` beneath it), with config `extra` merged in."""
    port = port or free_port()
    config = merge({
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": f"{upstream_base}/mcp", "sse_url": f"{upstream_base}/sse",
                     "headers": {"Authorization": "Bearer upstream-credential", "X-Proxy-Tenant": "acme"},
                     "timeout_s": 10},
    }, extra or {})
    path = workdir / f"proxy-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["proxy", "serve", "--config", str(path), "--log-level", log_level]
    handle = start_server([*args, "--access-log"] if access_log else args, port, env, log_dir=workdir)
    return Proxy(port, handle, path)
