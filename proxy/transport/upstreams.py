"""Which upstream each virtual server's requests go to (servers[].upstream, docs/upstreams.md).

Every distinct upstream the servers name is built once at start: its client (pool, credential,
OAuth grant), its tool inventory (a tool list of one upstream never decides a call to another)
and, for a stdio upstream, its bridge. Servers naming an identical upstream share them. A request
finds its server's upstream with one dict lookup; nothing is built per request. A reload may point
servers only at upstreams already running: a new one takes a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..config import Config, ConfigError, Server, Upstream
from ..enforce.inventory import ToolInventory
from ..stdio.launcher import Bridge, bridge_for
from .upstream import UpstreamClient

READY_TIMEOUT_S = 1.0


@dataclass(slots=True, eq=False)
class Route:
    configured: Upstream  # as the config file says it: the registry's key
    config: Upstream  # as the proxy reaches it (a stdio upstream: its bridge's URL and secret)
    client: UpstreamClient
    inventory: ToolInventory
    bridge: Bridge | None = None
    servers: list[str] = field(default_factory=list)  # the servers using it, for /readyz's reasons

    async def readiness(self) -> str | None:
        """Why this upstream cannot take requests (no URL, no secret in it), or None."""
        problems = [await (self.bridge.readiness() if self.bridge is not None else _reachable(self.config.url))]
        if self.client.grant is not None:  # upstream.oauth: nothing can be sent until someone logs in
            problems.append(self.client.grant.readiness())
        return "; ".join(p for p in problems if p is not None) or None


Build = Callable[[Upstream], tuple[UpstreamClient, ToolInventory]]


class Upstreams:
    """The upstreams of one worker, and which server uses which."""

    def __init__(self, config: Config, build: Build) -> None:
        """`config` as parsed (stdio upstreams not bridged yet); `build(reached)` makes an upstream's
        client and inventory. The top-level upstream is built when a server uses it."""
        self.top = config.upstream
        self._build = build
        self.routes: list[Route] = []
        self._config = config
        self._by_server: dict[str, tuple[Server, Route]] = {}
        self.assign(config.servers)

    def _route(self, configured: Upstream, create: bool) -> Route | None:
        for route in self.routes:  # a handful at most: compared, not hashed (an Upstream holds dicts)
            if route.configured == configured:
                return route
        if not create:
            return None
        bridge = bridge_for(dataclasses.replace(self._config, upstream=configured))
        reached = bridge.upstream if bridge is not None else configured
        client, inventory = self._build(reached)
        route = Route(configured, reached, client, inventory, bridge)
        self.routes.append(route)
        return route

    def check(self, servers: tuple[Server, ...]) -> None:
        """Raises ConfigError when a server (of a reloaded config) names an upstream not running."""
        for i, server in enumerate(servers):
            if self._route(server.upstream or self.top, create=False) is not None:
                continue
            if server.upstream is None:
                raise ConfigError(self._config.source, f"servers[{i}]", "would use the top-level upstream, which no "
                                  "server used at start: a new upstream takes a restart")
            raise ConfigError(self._config.source, f"servers[{i}].upstream",
                              "names an upstream no server used at start: a new upstream takes a restart")

    def assign(self, servers: tuple[Server, ...]) -> None:
        """Which route each server's requests take (at start: building what is missing)."""
        by_server: dict[str, tuple[Server, Route]] = {}
        for each in self.routes:
            each.servers = []
        for server in servers:
            route = self._route(server.upstream or self.top, create=True)
            assert route is not None
            route.servers.append(server.name)
            by_server[server.name] = (server, route)
        self._by_server = by_server

    def route(self, server: Server) -> Route:
        """`server`'s upstream; one that a reload changed or removed meanwhile keeps its own."""
        found = self._by_server.get(server.name)
        if found is not None and found[0] is server:
            return found[1]
        kept = self._route(server.upstream or self.top, create=False)
        assert kept is not None  # every server ever in force had its upstream built
        return kept

    def inventory(self, server: Server) -> ToolInventory:
        return self.route(server).inventory

    @property
    def default(self) -> Route:
        """The top-level upstream's route (else the first): what a single-upstream proxy has."""
        return self._route(self.top, create=False) or self.routes[0]

    def bridged(self, config: Config) -> Config:
        """`config` with the top-level upstream as the proxy reaches it, when it is the running one."""
        top = self._route(self.top, create=False)
        if top is None or top.bridge is None or config.upstream != self.top:
            return config
        return dataclasses.replace(config, upstream=top.config)

    def bridges(self) -> Iterator[Bridge]:
        return (route.bridge for route in self.routes if route.bridge is not None)

    def pool_stats(self) -> tuple[int, int, int]:
        """(open, idle, waiting) over every upstream's pool."""
        stats = [route.client.pool_stats() for route in self.routes]
        return sum(s[0] for s in stats), sum(s[1] for s in stats), sum(s[2] for s in stats)

    async def readiness(self) -> str | None:
        """Every upstream in use checked at once; with several, each problem names its servers."""
        used = [route for route in self.routes if route.servers]
        problems = await asyncio.gather(*(route.readiness() for route in used))
        if len(used) == 1:
            return problems[0]
        found = [f"{'server' if len(r.servers) == 1 else 'servers'} {', '.join(r.servers)}: {problem}"
                 for r, problem in zip(used, problems, strict=True) if problem is not None]
        return "; ".join(found) or None

    async def close(self) -> None:
        for route in self.routes:
            await route.client.close()


async def _reachable(upstream_url: str) -> str | None:
    url = urlsplit(upstream_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            _, writer = await asyncio.open_connection(url.hostname, port)
        writer.close()
    except (OSError, TimeoutError):
        return "upstream unreachable"
    return None
