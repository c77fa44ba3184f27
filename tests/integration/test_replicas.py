"""Two proxy processes (replicas) behind a real round-robin load balancer: Debian's nginx, on loopback.

nginx picks a replica per request (no affinity), so a client's successive requests alternate between
the two: Streamable HTTP sessions must work on both (one shared auth.session_key), and a legacy SSE
session's POSTs that land on the replica not holding its stream must be relayed to the one that does
(its cluster.listen address, named by the session id). The official SDK clients in every mode.
"""

from __future__ import annotations

import os
import pwd
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster_helpers import echo, legacy, owner_of, streamable, total
from tests.integration.proxy_harness import Proxy, start_proxy
from tests.leakcheck import secret
from tests.peers.harness import ServerHandle, free_port, start_server

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's)")

SESSION_KEY = secret()
CALLS = 8


def _nginx_config(prefix: Path, balancers: dict[int, list[int]]) -> str:
    """Round robin over each list of replica ports; SSE unbuffered; everything under `prefix`."""
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""  # no switch to nobody
    upstreams, servers = [], []
    for port, replicas in balancers.items():
        members = "\n".join(f"    server 127.0.0.1:{r} max_fails=0;" for r in replicas)
        upstreams.append(f"  upstream replicas_{port} {{\n{members}\n  }}")
        servers.append(f"""  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas_{port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream off;
    }}
  }}""")
    temp = "\n".join(f"  {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                          "scgi"))
    return f"""{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp}
{chr(10).join(upstreams)}
{chr(10).join(servers)}
}}
"""


def _replica(workdir: Path, upstream_base: str, sse_base: str) -> Proxy:
    extra = {"auth": {"session_key": SESSION_KEY}, "cluster": {"listen": f"127.0.0.1:{free_port()}"},
             "upstream": {"sse_url": f"{sse_base}/sse"}}
    return start_proxy(workdir, upstream_base, extra)


@pytest.fixture(scope="module")
def balanced(sdk_upstream_module, tmp_path_factory):
    """{upstream mode: (nginx's URL base, [replica A, replica B])}: stateful-sse (with the legacy
    SSE server at /sse) and stateless-json."""
    workdir = tmp_path_factory.mktemp("replicas")
    modes = ("stateful-sse", "stateless-json")
    with ThreadPoolExecutor(4) as pool:  # started side by side: each takes a second or so
        upstreams = dict(zip(("legacy-sse", *modes), pool.map(sdk_upstream_module, ("legacy-sse", *modes)),
                             strict=True))
        started = {mode: [pool.submit(_replica, workdir, upstreams[mode].base, upstreams["legacy-sse"].base)
                          for _ in range(2)] for mode in modes}
        pairs = {mode: [f.result() for f in futures] for mode, futures in started.items()}
    ports = {mode: free_port() for mode in pairs}
    prefix = workdir / "nginx"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(_nginx_config(prefix, {ports[m]: [p.port for p in pairs[m]] for m in pairs}))
    nginx: ServerHandle = start_server(["-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)],
                                       ports["stateful-sse"], command=[NGINX], log_dir=workdir)
    yield {mode: (f"http://127.0.0.1:{ports[mode]}", pairs[mode]) for mode in pairs}
    nginx.stop()
    for pair in pairs.values():
        for proxy in pair:
            proxy.stop()


async def _scrape(replicas: list[Proxy], name: str, **labels: str) -> list[float]:
    async with httpx.AsyncClient(timeout=10) as http:  # each replica, directly: Prometheus scrapes each pod
        return [total((await http.get(f"{p.base}/metrics")).text, name, **labels) for p in replicas]


@pytest.mark.parametrize(("mode", "client_mode"), [("stateful-sse", "legacy"), ("stateful-sse", "auto"),
                                                   ("stateless-json", "legacy"), ("stateless-json", "auto")])
async def test_streamable_http_through_the_balancer(balanced, mode, client_mode):
    base, replicas = balanced[mode]
    before = await _scrape(replicas, "mcp_proxy_requests_total", transport="streamable_http", outcome="forwarded")
    async with streamable(f"{base}/mcp", client_mode, keepalive=True) as client:
        for i in range(CALLS):
            assert await echo(client, f"call {i}") == f"call {i}"
        assert {"echo", "add"} <= {t.name for t in (await client.list_tools()).tools}
    after = await _scrape(replicas, "mcp_proxy_requests_total", transport="streamable_http", outcome="forwarded")
    assert all(a - b >= CALLS // 2 - 1 for a, b in zip(after, before, strict=True)), (before, after)  # both served


@pytest.mark.parametrize("client_mode", ["legacy", "auto"])
async def test_legacy_sse_through_the_balancer(balanced, client_mode):
    base, replicas = balanced["stateful-sse"]
    relayed_before = await _scrape(replicas, "mcp_proxy_cluster_relays_total", result="relayed")
    sessions: list[str] = []
    async with legacy(f"{base}/sse", sessions, keepalive=True, mode=client_mode) as client:
        for i in range(CALLS):
            assert await echo(client, f"message {i}") == f"message {i}"
    owner = [p.port for p in replicas].index(_replica_of(replicas, owner_of(sessions[0])))
    relayed = await _scrape(replicas, "mcp_proxy_cluster_relays_total", result="relayed")
    assert relayed[1 - owner] - relayed_before[1 - owner] >= CALLS // 2 - 1  # every other POST, relayed
    assert relayed[owner] == relayed_before[owner]


def _replica_of(replicas: list[Proxy], owner: str) -> int:
    """The public port of the replica whose cluster.listen is `owner`."""
    import yaml

    for proxy in replicas:
        if yaml.safe_load(proxy.config_path.read_text())["cluster"]["listen"] == owner:
            return proxy.port
    raise AssertionError(f"no replica listens at {owner}")
