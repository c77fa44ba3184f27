"""`serve` as a group of worker processes (listen.workers), or as one of several replicas (cluster).

The main process binds the listening port, one socket per worker (SO_REUSEPORT: the kernel spreads
new connections evenly over them; one socket shared by all would let whichever worker wakes first
take a whole burst of connections, and keep-alive connections stay where they landed), and one
internal socket per worker (cluster.listen: port + i, or an ephemeral loopback port each), then
starts the workers — spawned, not forked: each
imports, loads the config and builds its app anew, and nothing of the parent (threads, loop) is
inherited. Each worker serves both sockets with the one-process server (http_server.py) and its
app (cluster.py says what the internal socket is for). The main process then only supervises:

- a worker that dies is started again in its slot after a pause that grows while it keeps dying;
  its listening socket is closed meanwhile (new connections go to the other workers) and bound
  again for its successor, its internal socket kept (so the address its legacy sessions named
  answers 404 for them, as for any session that ended); one that cannot start at all in the first
  place stops the group (1);
- SIGTERM or SIGINT goes to every worker, which drains as one process does (http_server.py); the
  main process exits 0 once all have exited 0. A second one is passed on as SIGINT (uvicorn's
  "stop now"). SIGHUP goes to every worker (each reloads its config and policies);
- a worker whose parent is gone (killed) stops by itself.

uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`) is not used: it pickles an app named
by import string, restarts every worker on SIGHUP (the proxy reloads instead), and knows neither the
drain's exit code nor the per-worker internal sockets.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ..config import Cluster, Config, ConfigError
from .cluster import address

log = logging.getLogger("mcp_policy_proxy.workers")

RESTART_DELAY_S = (0.5, 30.0)  # the pause before a dead worker is started again: doubling from, up to
STEADY_S = 30.0  # a worker that lived this long died for a reason of its own: the next restart waits least
_spawn = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of the group is started with (pickled to each: `reload_config` is a
    functools.partial of a module-level function, never a lambda)."""

    config: Config  # as the main process read it (a worker reads it anew when it can)
    reload_config: Callable[[], Config] | None
    owners: tuple[str, ...]  # each worker's internal address (`host:port`), by slot
    log_level: str
    access_log: bool
    log_format: str | None


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bound, not listening: the worker's server listens once it serves, so until then a connection
    is refused, or goes to another worker's socket (SO_REUSEPORT), instead of waiting for it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_group(config: Config, reload_config: Callable[[], Config] | None, *, log_level: str, access_log: bool,
                log_format: str | None) -> int:
    """Exit code: 0 after a drain, 1 when the group could not start or a worker failed, 2 for a
    policy the main process finds unusable (before any worker starts)."""
    from ..config_words import check_config_words
    from ..policy.loader import PolicyLoadError
    from ..policy.manager import build_policy_set

    try:  # every worker would fail alike: said once, here, naming file and line
        check_config_words(config, build_policy_set(config.policy).catalog)
    except PolicyLoadError as exc:
        print(f"mcp-policy-proxy: {config.source}: policy: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"mcp-policy-proxy: {exc}", file=sys.stderr)
        return 2
    cluster = config.cluster or Cluster()
    n = config.listen.workers
    try:
        public = bind(config.listen.host, config.listen.port, reuse_port=n > 1)
        publics = [public] + [bind(config.listen.host, public.getsockname()[1], reuse_port=True) for _ in range(n - 1)]
        internals = [bind(cluster.host, cluster.port + i if cluster.port else 0) for i in range(n)]
    except OSError as exc:
        print(f"mcp-policy-proxy: cannot listen ({config.source}: listen, cluster.listen): {exc.strerror}",
              file=sys.stderr)
        return 1
    ports = [s.getsockname()[1] for s in internals]
    if public.getsockname()[1] in ports:  # requests are told apart by the port they arrived on
        print(f"mcp-policy-proxy: {config.source}: cluster.listen: port {public.getsockname()[1]} is listen.port's "
              "too (on another address); choose another", file=sys.stderr)
        return 2
    owners = tuple(address(cluster.advertise, port) for port in ports)
    spec = WorkerSpec(config, reload_config, owners, log_level, access_log, log_format)
    log.info("serving %s with %d worker(s); internal endpoints %s", address(config.listen.host,
             public.getsockname()[1]), n, ", ".join(owners))
    if n == 1:  # a replica alone in its process: no supervisor
        return run_worker(spec, 0, public, internals[0], None)
    return Supervisor(spec, publics, internals, config.limits.shutdown_grace_s).run()


def run_worker(spec: WorkerSpec, slot: int, public: socket.socket, internal: socket.socket,
               ready: Connection | None) -> int:
    """Serve until the drain is done (0), in this process; `ready` hears once it serves."""
    from ..app import create_app
    from ..observe import logging_setup
    from ..policy.loader import PolicyLoadError
    from .cluster import ClusterApp, sibling_key
    from .http_server import serve

    log_config = logging_setup.configure(spec.log_format, spec.log_level)
    try:
        config = spec.reload_config() if spec.reload_config is not None else spec.config
        app = create_app(config, reload_config=spec.reload_config, owner=spec.owners[slot])
    except (ConfigError, PolicyLoadError) as exc:
        print(f"mcp-policy-proxy: worker {slot}: {exc}", file=sys.stderr)
        return 2
    if config.auth.session_key is None:  # the config changed since the main process read it
        print(f"mcp-policy-proxy: worker {slot}: {config.source}: auth.session_key is required", file=sys.stderr)
        return 2
    siblings = [owner for i, owner in enumerate(spec.owners) if i != slot]
    served = ClusterApp(app, internal_port=internal.getsockname()[1], siblings=siblings,
                        key=sibling_key(config.auth.session_key))
    log.info("worker %d (pid %d) starting; internal endpoint %s", slot, os.getpid(), spec.owners[slot])
    started = serve(served, config, app.drain, app.metrics.limit_rejected, log_level=spec.log_level,
                    access_log=spec.access_log, log_config=log_config, sockets=[public, internal],
                    on_started=(lambda: ready.send(True)) if ready is not None else None)
    return 0 if started else 1


def _worker_process(spec: WorkerSpec, slot: int, public: socket.socket, internal: socket.socket,
                    ready: Connection) -> None:
    """A spawned worker's entry point."""
    _stop_with_parent(os.getppid())
    sys.exit(run_worker(spec, slot, public, internal, ready))


def _stop_with_parent(parent: int) -> None:
    """SIGTERM to this worker (a drain) once its main process is gone: no orphan serves on."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the main process is gone: this worker drains and stops")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Slot:
    __slots__ = ("delay", "due", "process", "ready", "serving", "started_at")

    def __init__(self) -> None:
        self.process: BaseProcess | None = None
        self.ready: Connection | None = None  # the parent's end of the worker's "serving" pipe
        self.serving = False
        self.started_at = 0.0
        self.due = 0.0  # when a dead worker is started again
        self.delay = RESTART_DELAY_S[0]


class Supervisor:
    def __init__(self, spec: WorkerSpec, publics: list[socket.socket], internals: list[socket.socket],
                 grace_s: float) -> None:
        self.spec, self.internals, self.grace_s = spec, internals, grace_s
        self.publics: list[socket.socket | None] = list(publics)  # None while its worker is dead
        self.address = publics[0].getsockname()[:2]
        self.slots = [_Slot() for _ in internals]
        self.stops = 0  # SIGTERM/SIGINT received
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for i in range(len(self.slots)):
                self._start(i)
            if not self._all_started() and not self.stops:
                self._stop()
                return 1
            log.info("%d workers serving (pids %s)", len(self.slots),
                     ", ".join(str(s.process.pid) for s in self.slots if s.process))
            while not self.stops:
                self._supervise()
            return self._stop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- signals ---
    def _on_signal(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGHUP:
            self._send(signal.SIGHUP)
            return
        self.stops += 1
        if self.stops > 1:  # asked again: uvicorn's "stop now", in every worker
            self._send(signal.SIGINT)

    def _send(self, sig: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    def _wait(self, timeout: float) -> None:
        """Until a worker changes (exits, says it serves), a signal arrives, or `timeout` passes."""
        watched: list[Any] = [self._wake_r]
        for slot in self.slots:
            if slot.process is not None:
                watched.append(slot.process.sentinel)
                if slot.ready is not None:
                    watched.append(slot.ready)
        wait(watched, timeout)
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(64):
                pass

    # --- workers ---
    def _start(self, i: int) -> None:
        slot = self.slots[i]
        public = self.publics[i]
        if public is None:
            try:
                public = self.publics[i] = bind(*self.address, reuse_port=True)
            except OSError as exc:
                log.error("worker %d: cannot listen again on %s:%d (%s); retrying", i, *self.address, exc.strerror)
                slot.due = time.monotonic() + slot.delay
                return
        ready, ready_child = _spawn.Pipe(duplex=False)
        process = _spawn.Process(target=_worker_process, name=f"mcp-policy-proxy worker {i}",
                                 args=(self.spec, i, public, self.internals[i], ready_child))
        process.start()
        ready_child.close()
        slot.process, slot.ready, slot.serving, slot.started_at = process, ready, False, time.monotonic()

    def _serving(self, slot: _Slot) -> bool:
        """Whether the slot's worker serves (its one note taken off the pipe, which is then closed)."""
        if slot.ready is not None and slot.ready.poll():
            try:
                slot.serving = slot.ready.recv() is True
            except (EOFError, OSError):  # it died before it served
                slot.serving = False
            slot.ready.close()
            slot.ready = None
        return slot.serving and slot.process is not None and slot.process.exitcode is None

    def _all_started(self) -> bool:
        """Every worker serves; False as soon as one exited first (or a stop signal came)."""
        waiting = set(range(len(self.slots)))
        while waiting and not self.stops:
            for i in list(waiting):
                slot = self.slots[i]
                if self._serving(slot):
                    waiting.discard(i)
                elif slot.process is not None and slot.process.exitcode is not None:
                    log.error("worker %d exited with %s before it served: stopping", i, slot.process.exitcode)
                    return False
            if waiting:
                self._wait(1.0)
        return not waiting

    def _supervise(self) -> None:
        self._wait(1.0)
        now = time.monotonic()
        for i, slot in enumerate(self.slots):
            process = slot.process
            if process is not None and process.exitcode is not None and not self.stops:
                if now - slot.started_at > STEADY_S:
                    slot.delay = RESTART_DELAY_S[0]
                slot.due = now + slot.delay
                slot.delay = min(slot.delay * 2, RESTART_DELAY_S[1])
                log.error("worker %d (pid %s) exited with %s; starting it again in %.1f s",
                          i, process.pid, process.exitcode, slot.due - now)
                process.close()
                slot.process = None
                if slot.ready is not None:
                    slot.ready.close()
                    slot.ready = None
                if (public := self.publics[i]) is not None:  # meanwhile its share of new connections goes elsewhere
                    public.close()
                    self.publics[i] = None
            if slot.process is None and not self.stops and now >= slot.due:
                self._start(i)
            self._serving(slot)  # take its "serving" note, so the pipe stops waking the loop

    def _stop(self) -> int:
        """Every worker drains; 0 when all exited 0."""
        log.info("stopping: every worker drains")
        self._send(signal.SIGTERM)
        for sock in (*self.publics, *self.internals):  # refused, not queued, once the workers closed theirs too
            if sock is not None:
                sock.close()
        deadline = time.monotonic() + self.grace_s + 15
        codes = []
        for i, slot in enumerate(self.slots):
            process = slot.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker %d did not stop within the grace period: killed", i)
                process.kill()
                process.join()
            codes.append(process.exitcode)
        failed = [c for c in codes if c != 0]
        if failed:
            log.error("workers exited with %s", failed)
        return 1 if failed else 0
