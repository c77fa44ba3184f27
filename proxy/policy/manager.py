"""Keeps a good policy set in force: builds it at start, rebuilds it on change or SIGHUP.

A new version is loaded, compiled and smoke-evaluated before it replaces the old one; a broken
version is logged (naming file and line) and counted, and the last good one stays in force. So is
a version whose catalog no longer knows a method or tag the config in force names
(proxy/config_words.py).
Changes are found by polling a fingerprint of the files (path, size, mtime through symlinks), which
also sees Kubernetes' ConfigMap update: an atomic swap of the `..data` symlink.

Only complete versions are put in force. A change is reloaded once the fingerprint has stayed the
same for a whole polling interval (a copy or an editor writing file after file, or truncating then
writing, would otherwise be caught half-way: a Rego file cut at a rule boundary still compiles, with
rules missing). And a version whose files changed while they were read (a swap in the middle of the
walk mixes two versions) is read again, never used.
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
from .engine import PolicyEngine, PolicyError
from .loader import DATA_FILES, PolicyLoadError, load_bundle

log = logging.getLogger("mcp_policy_proxy.policy")

Fingerprint = tuple[tuple[str, int, int], ...]
_READS = 3  # attempts at reading a version that does not change meanwhile, per reload


def build_policy_set(config: Policy, in_force: PolicyEngine | None = None) -> PolicySet:
    """The engine and catalog for `config`; PolicyLoadError naming the file if they cannot be built.

    A remote engine in force (`in_force`) is kept: its settings change only on restart, and a new
    one per reload would leave the old one's connections to OPA open.
    """
    remote = config.engine == "opa"
    bundle = load_bundle(config.paths, require_modules=not remote)
    engine: PolicyEngine
    if remote:
        from .opa import OpaEngine

        engine = in_force if isinstance(in_force, OpaEngine) else OpaEngine(config.opa.url, config.query,
                                                                          config.opa.timeout_ms)
    else:
        engine = EmbeddedEngine(bundle, config.query, config.decision_cache_size)
    try:
        catalog = Catalog(bundle.data.get("catalog"))
    except CatalogError as exc:
        source = bundle.source_of(exc.path.removeprefix("data.")) or ", ".join(config.paths)
        raise PolicyLoadError(f"{source}: {exc}") from None
    return PolicySet(engine, catalog)


def fingerprint(paths: tuple[str, ...]) -> Fingerprint:
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
        self._fingerprint: Fingerprint | None = fingerprint(config.paths)  # of the files last read
        self._polled = self._fingerprint  # what the previous poll saw

    def _read(self) -> tuple[Fingerprint, PolicySet | str] | None:
        """The policy set the files make (or why they make none), and their fingerprint; None if
        they kept changing while they were read."""
        for _ in range(_READS):
            before = fingerprint(self.config.paths)
            built: PolicySet | str
            try:
                built = build_policy_set(self.config, self.holder.policy.engine)
                if self._config_in_force is not None:
                    check_config_words(self._config_in_force(), built.catalog)
            except PolicyLoadError as exc:
                built = str(exc)
            except ConfigError as exc:
                built = f"its catalog does not know a word the running config uses: {exc}"
            # Read mid-change, it may be half of one version and half of another: read again.
            if fingerprint(self.config.paths) == before:
                return before, built
        return None

    def reload(self) -> bool:
        """Build the policy set anew; keep the old one if the new one is broken or would not hold
        still while it was read."""
        read = self._read()
        if read is None:
            self._fingerprint = None  # the next poll that finds the files settled tries again
            log.warning("policy files kept changing while they were read; the previous version stays in force")
            return False
        self._fingerprint, policy = read
        if isinstance(policy, str):
            self.holder.metrics.reloads.labels("failure").inc()
            log.error("policy reload rejected, the previous version stays in force: %s", policy)
            return False
        self.holder.policy = policy
        self.holder.metrics.reloads.labels("success").inc()
        self.holder.metrics.policy_in_force(policy.engine.revision)
        log.info("policy reloaded: revision %s", policy.engine.revision)
        return True

    async def readiness(self) -> str | None:
        """None when the policy set in force can decide now (its engine answers a probe decision),
        else why not, for /readyz (no URL, no secret)."""
        try:
            await self.holder.policy.engine.probe()
        except PolicyError as exc:
            return f"policy engine unavailable: {exc}"
        return None

    def poll(self) -> None:
        """One look at the files: reload a change once it has held still for a polling interval."""
        now = fingerprint(self.config.paths)
        settled, self._polled = now == self._polled, now
        if settled and now != self._fingerprint:
            self.reload()

    async def watch(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.poll()


class PolicyHolder(Protocol):
    """Anything holding the policy set in force (the Enforcer), and its metrics."""

    policy: PolicySet
    metrics: Metrics
