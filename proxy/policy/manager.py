"""Keeps a good policy set in force: builds it at start, rebuilds it on change or SIGHUP.

A new version is loaded, compiled and smoke-evaluated before it replaces the old one; a broken
version is logged (naming file and line) and counted, and the last good one stays in force. So is
a version whose catalog no longer knows a method or tag the config in force names
(proxy/config_words.py).
Changes are found by polling a fingerprint of the files (path, size, mtime through symlinks), which
also sees Kubernetes' ConfigMap update: an atomic swap of the `..data` symlink.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..config import Config, ConfigError, Policy
from ..config_words import check_config_words
from ..enforce.catalog import Catalog, CatalogError
from ..enforce.enforcer import PolicySet
from ..observe.metrics import Metrics
from .embedded import EmbeddedEngine
from .engine import PolicyEngine
from .loader import DATA_FILES, PolicyLoadError, load_bundle

log = logging.getLogger("mcp_policy_proxy.policy")


def build_policy_set(config: Policy) -> PolicySet:
    """The engine and catalog for `config`; PolicyLoadError naming the file if they cannot be built."""
    remote = config.engine == "opa"
    bundle = load_bundle(config.paths, require_modules=not remote)
    engine: PolicyEngine
    if remote:
        from .opa import OpaEngine

        engine = OpaEngine(config.opa.url, config.query, config.opa.timeout_ms)
    else:
        engine = EmbeddedEngine(bundle, config.query)
    try:
        catalog = Catalog(bundle.data.get("catalog"))
    except CatalogError as exc:
        source = bundle.source_of(exc.path.removeprefix("data.")) or ", ".join(config.paths)
        raise PolicyLoadError(f"{source}: {exc}") from None
    return PolicySet(engine, catalog)


def fingerprint(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(".rego") or name in DATA_FILES:
                    path = Path(dirpath) / name
                    try:
                        st = path.stat()  # through symlinks: a ConfigMap swap changes these
                    except OSError:
                        continue
                    entries.append((str(path), st.st_size, st.st_mtime_ns))
        if os.path.isfile(root):
            st = os.stat(root)
            entries.append((root, st.st_size, st.st_mtime_ns))
    return tuple(entries)


class PolicyManager:
    def __init__(self, config: Policy, holder: PolicyHolder,
                 config_in_force: Callable[[], Config] | None = None) -> None:
        """`config_in_force` gives the running config, whose servers' words a new catalog must know."""
        self.config = config
        self.holder = holder
        self._config_in_force = config_in_force
        self._fingerprint = fingerprint(config.paths)

    def reload(self) -> bool:
        """Build the policy set anew; keep the old one if the new one is broken."""
        self._fingerprint = fingerprint(self.config.paths)
        try:
            policy = build_policy_set(self.config)
            if self._config_in_force is not None:
                check_config_words(self._config_in_force(), policy.catalog)
        except (PolicyLoadError, ConfigError) as exc:
            problem = f"its catalog does not know a word the running config uses: {exc}" \
                if isinstance(exc, ConfigError) else str(exc)
            self.holder.metrics.reloads.labels("failure").inc()
            log.error("policy reload rejected, the previous version stays in force: %s", problem)
            return False
        self.holder.policy = policy
        self.holder.metrics.reloads.labels("success").inc()
        self.holder.metrics.policy_in_force(policy.engine.revision)
        log.info("policy reloaded: revision %s", policy.engine.revision)
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if fingerprint(self.config.paths) != self._fingerprint:
                self.reload()


class PolicyHolder(Protocol):
    """Anything holding the policy set in force (the Enforcer), and its metrics."""

    policy: PolicySet
    metrics: Metrics
