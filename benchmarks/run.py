"""Benchmark: the proxy beside nginx, on every path, in one run (benchmarks/README.md).

Starts ``fast_upstream.py``, nginx (the floor) and one proxy process per configuration
(scenarios.py), then runs rounds; each round measures every path once (order rotated per round):

1. at 1 connection, sequential requests (Python clients): p50 and p99, minus the same request sent
   straight to the upstream by the same client in the same round (the added latency);
2. at 32 connections (wrk, or the asyncio client): req/s, and the server's own CPU time (its whole
   process group, from /proc) per request, also as a ratio to nginx's in the same round.

Medians over the rounds (with min and max) go to a markdown table on stdout and to
``benchmarks/results/latest.json``; targets are printed PASS/FAIL. Everything started is stopped,
also on error or when the time budget (SIGALRM) runs out.

    python benchmarks/run.py [--quick] [--rounds N] [--paths a,b] [--workloads repeat,vary] [--check] ...
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    RESULTS,
    ROOT,
    Budget,
    Placement,
    Servers,
    cpu_busy,
    cpu_times,
    free_port,
    git_state,
    group_cpu_s,
    host_info,
    log,
    pct,
    share,
)

sys.path.append(str(ROOT))  # scenarios.JwtSetup mints the URL token with proxy.auth.tokens

import loadgen
import nginx
import report
import scenarios
import yaml
from scenarios import CONNECTIONS, PATHS, PROXIES, PROXY_CMD, WORKLOADS, Row

__all__ = ["CONNECTIONS", "DEFAULT_PROXY_CMD", "HERE", "RESULTS", "Budget", "Servers", "free_port", "git_state",
           "host_info", "log", "main"]

LUA = HERE / "mcp_call.lua"
BUDGET_SPENT = threading.Event()  # set by SIGALRM: checked after each measurement
# soak.py and instructions.py start a proxy without a config file this way.
DEFAULT_PROXY_CMD = "{python} -m proxy serve --upstream {upstream} --host 127.0.0.1 --port {port}"


@dataclasses.dataclass(frozen=True)
class Profile:
    rounds: int
    c1_requests: int  # per path, workload and round
    c1_warmup: int
    c32_seconds: int  # wrk takes whole seconds
    jwt_pool: int  # distinct JWTs the vary workload rotates
    budget_s: int


PROFILES = {
    "full": Profile(rounds=5, c1_requests=300, c1_warmup=30, c32_seconds=2, jwt_pool=512,
                    budget_s=450),
    "quick": Profile(rounds=2, c1_requests=150, c1_warmup=20, c32_seconds=1, jwt_pool=64,
                     budget_s=110),
}


class Meter:
    """CPU seconds of the server under test (its process group) and of the upstream between
    ``start()`` and ``end()``, and the hypervisor's steal share meanwhile."""

    def __init__(self, group: int, upstream: int) -> None:
        self.group, self.upstream = group, upstream
        self.cpu_s = self.upstream_cpu_s = self.steal = 0.0

    def start(self) -> None:
        self._t0 = (group_cpu_s(self.group), group_cpu_s(self.upstream), cpu_times())

    def end(self) -> None:
        cpu, up, t = group_cpu_s(self.group), group_cpu_s(self.upstream), cpu_times()
        self.cpu_s, self.upstream_cpu_s, self.steal = cpu - self._t0[0], up - self._t0[1], share(self._t0[2], t, 2)


class Bench:
    """The servers of one run, and how to measure a path on them."""

    def __init__(self, args: argparse.Namespace, placement: Placement, profile: Profile, rows: list[Row],
                 tmp: Path) -> None:
        self.args, self.placement, self.profile, self.rows, self.tmp = args, placement, profile, rows, tmp
        self.servers = Servers()
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: list[str] = []
        self.counter = scenarios.VARY_START
        self.steal: dict[str, list[float]] = {"c1": [], "c32": []}
        self.t0 = time.monotonic()

    # ---- servers ----

    def start(self) -> None:
        targets = {row.target for row in self.rows}
        wait = self.args.startup_timeout
        jwt = scenarios.JwtSetup(self.profile.jwt_pool) if "jwt" in targets else None
        up_port = self.ports["upstream"] = free_port()
        upstream_argv = [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)]
        if jwt is not None:
            (self.tmp / "jwks.json").write_bytes(jwt.jwks)
            upstream_argv += ["--jwks", str(self.tmp / "jwks.json")]
        self.procs["upstream"] = self.servers.spawn("upstream", self.placement.wrap(self.placement.server_cpu,
                                                                                     upstream_argv))
        if "nginx" in targets:
            exe = nginx.binary()
            if exe is None:
                raise RuntimeError("nginx is not installed (apt-get install -y nginx-light); leave out the nginx "
                                   "path with --paths")
            port = self.ports["nginx"] = free_port()
            ng_dir = self.tmp / "nginx"
            ng_dir.mkdir()
            conf = nginx.write_config(ng_dir, port, up_port)
            self.procs["nginx"] = self.servers.spawn("nginx", self.placement.wrap(
                self.placement.server_cpu, nginx.argv(exe, ng_dir, conf)))
        # Proxies start unpinned (both cores: faster), then move to the server core once listening.
        for name in (n for n in PROXIES if n in targets):
            port = self.ports[name] = free_port()
            settings = jwt.settings() if (jwt and PROXIES[name].jwt) else None
            config = scenarios.proxy_config(PROXIES[name], port, up_port, decision_log=self.args.decision_log,
                                            jwt=settings)
            path = self.tmp / f"proxy-{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            command = scenarios.FLOOR_CMD if PROXIES[name].floor else self.args.proxy_cmd
            argv = shlex.split(command.format(python=shlex.quote(sys.executable), config=path,
                                              port=port, upstream=config["upstream"]["url"]))
            self.procs[name] = self.servers.spawn(f"proxy-{name}", argv)
        for name, port in self.ports.items():
            self.servers.wait(self.log_name(name), port, wait)
        for name in PROXIES:
            if name in self.procs:
                self.placement.move(self.procs[name], self.placement.server_cpu)
        if jwt is not None:
            self.tokens = jwt.bearer_tokens(f"http://127.0.0.1:{self.ports['jwt']}")

    def log_name(self, target: str) -> str:
        return target if target in ("upstream", "nginx") else f"proxy-{target}"

    # ---- one measurement ----

    def spec(self, row: Row, workload: str) -> loadgen.Spec:
        self.counter += 1_000_000  # a fresh range of arguments for every measurement (vary)
        return scenarios.spec(row, workload, self.tokens, self.counter)

    def url(self, row: Row, spec: loadgen.Spec) -> str:
        return f"http://127.0.0.1:{self.ports[row.target]}{spec.path}"

    def c1(self, row: Row, workload: str, count: int, warmup: int) -> dict[str, Any]:
        """Sequential requests on one connection (one legacy session): latency percentiles."""
        spec = self.spec(row, workload)
        url = self.url(row, spec)
        if row.client == "wrk":
            samples = loadgen.sequential_spec(url, spec, count, warmup)
        elif row.client == "python":
            samples = loadgen.concurrent_spec(url, spec, 1, warmup + count, 30).latencies_ns[warmup:]
        else:
            samples = loadgen.legacy_spec(url, spec, 1, warmup + count, 30).latencies_ns[warmup:]
        ms = sorted(s / 1e6 for s in samples)
        return {"requests": len(ms), "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
                "max_ms": ms[-1], "mean_ms": sum(ms) / len(ms)}

    def _py(self, row: Row, url: str, spec: loadgen.Spec, seconds: float, meter: Meter) -> dict[str, Any]:
        """The asyncio client; the CPU is read once every connection (session) is open, and again
        before they close, so that it is the requests' alone."""
        run = loadgen.legacy_spec if row.client == "legacy" else loadgen.concurrent_spec
        res = run(url, spec, CONNECTIONS, 10**9, seconds, on_start=meter.start, on_end=meter.end)
        ms = sorted(s / 1e6 for s in res.latencies_ns)
        return {"requests": res.requests, "seconds": res.seconds, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
                "errors": 0}

    def _wrk(self, url: str, spec: loadgen.Spec, seconds: int, meter: Meter) -> dict[str, Any]:
        env = {"PATH": "/usr/bin:/bin", "MCP_BODY": spec.body, "MCP_COUNTER_START": str(spec.counter_start)}
        if spec.tokens:
            tokens = self.tmp / "bearer-tokens.txt"
            tokens.write_text("\n".join(spec.tokens) + "\n")
            env["MCP_TOKENS_FILE"] = str(tokens)
        argv = self.placement.wrap(self.placement.load_cpu, [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url])
        meter.start()
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 15, env=env)
        meter.end()
        match = re.search(r"^WRK_JSON (\{.*\})$", proc.stdout, re.M)
        if proc.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        raw = json.loads(match.group(1))
        lat = raw["latency_us"]
        return {"requests": raw["requests"], "seconds": raw["duration_us"] / 1e6, "p50_ms": lat["p50"] / 1e3,
                "p99_ms": lat["p99"] / 1e3, "errors": sum(raw["errors"].values()), "error_detail": raw["errors"]}

    def c32(self, row: Row, workload: str) -> dict[str, Any]:
        """32 connections (sessions): req/s and the target's CPU per request over the measured run."""
        spec = self.spec(row, workload)
        url = self.url(row, spec)
        meter = Meter(self.procs[row.target].pid, self.procs["upstream"].pid)
        if row.client == "wrk" and self.args.use_wrk:
            res = self._wrk(url, spec, self.profile.c32_seconds, meter)
        else:
            res = self._py(row, url, spec, self.profile.c32_seconds, meter)
        n = max(res["requests"], 1)
        return {**res, "rps": res["requests"] / res["seconds"], "cpu_us_per_request": meter.cpu_s / n * 1e6,
                "upstream_cpu_us_per_request": meter.upstream_cpu_s / n * 1e6, "cpu_steal": meter.steal}

    # ---- the run ----

    def probe(self) -> None:
        """One request of every path and workload must get the right answer before anything is measured."""
        for row in self.rows:
            for wl in row.workloads:
                try:
                    self.c1(row, wl, 2, 1)
                except (loadgen.BenchError, OSError) as exc:
                    raise RuntimeError(f"probe of {row.name} ({wl}) failed: {exc}\n"
                                       f"{self.servers.log_of(self.log_name(row.target))}") from None

    @contextlib.contextmanager
    def context(self, row: Row, workload: str, phase: str) -> Iterator[None]:
        """Name the path of a failed measurement (with its server's log); stop once the budget is
        spent, even if its SIGALRM struck inside the asyncio client's loop, which swallows it."""
        try:
            yield
        except (loadgen.BenchError, OSError) as exc:
            raise RuntimeError(f"{row.name} ({workload}, {phase}): {exc}\n"
                               f"{self.servers.log_of(self.log_name(row.target))}") from None
        if BUDGET_SPENT.is_set():
            raise Budget("benchmark exceeded its time budget")

    def rounds(self) -> report.Rounds:
        units = [(row, wl) for row in self.rows for wl in row.workloads]
        data: report.Rounds = {(row.name, wl): {"c1": [], "c32": []} for row, wl in units}
        p, pl = self.profile, self.placement
        step = max(1, len(units) // max(1, p.rounds))
        for r in range(p.rounds):
            order = units[r * step % len(units):] + units[: r * step % len(units)]
            # 1 connection: client, upstream and the server under test on the server core ("shared";
            # "split": the client on the load core). One process runs at a time: no cross-core wake-ups.
            pl.pin_self(pl.server_cpu if self.args.latency_layout == "shared" else pl.load_cpu)
            pl.move(self.procs["upstream"], pl.server_cpu)
            t0 = cpu_times()
            for row, wl in order:
                with self.context(row, wl, "1 connection"):
                    data[(row.name, wl)]["c1"].append(self.c1(row, wl, p.c1_requests, p.c1_warmup))
            self.steal["c1"].append(share(t0, cpu_times(), 2))
            # 32 connections: the server under test alone on the server core; the load generator and
            # (unless it is the one under test) the upstream on the load core.
            pl.pin_self(pl.load_cpu)
            t0 = cpu_times()
            for row, wl in order:
                if row.load:
                    pl.move(self.procs["upstream"], pl.server_cpu if row.target == "upstream" else pl.load_cpu)
                    with self.context(row, wl, f"{CONNECTIONS} connections"):
                        data[(row.name, wl)]["c32"].append(self.c32(row, wl))
            self.steal["c32"].append(share(t0, cpu_times(), 2))
            log(f"round {r + 1}/{p.rounds} done ({time.monotonic() - self.t0:.0f} s)")
        return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The proxy beside nginx on every path (benchmarks/README.md).")
    parser.add_argument("--quick", action="store_true", help="2 short rounds (< 110 s)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 5, --quick 2)")
    parser.add_argument("--paths", help="comma-separated paths to run (and what their figures need); see --list")
    parser.add_argument("--workloads", default="repeat,vary", help="repeat, vary or both (default)")
    parser.add_argument("--list", action="store_true", help="print the paths and exit")
    parser.add_argument("--decision-log", default="off",
                        help="the proxies' decision log: off (default) or a file, e.g. /dev/null (serialized, written)")
    parser.add_argument("--proxy-cmd", default=PROXY_CMD,
                        help=f"how to start a proxy; placeholders {{python}} {{config}} {{port}} {{upstream}} "
                        f"(default: {PROXY_CMD!r})")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto",
                        help="for the 32-connection runs: wrk if installed (auto), or the asyncio client")
    parser.add_argument("--latency-layout", choices=("shared", "split"), default="shared",
                        help="1 connection: client on the servers' core (shared, default) or on the other core")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.path_names = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else None
    unknown = [p for p in args.path_names or [] if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
    args.workload_names = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if not args.workload_names or any(w not in WORKLOADS for w in args.workload_names):
        parser.error(f"--workloads: one or both of {', '.join(WORKLOADS)}")
    wrk = shutil.which("wrk")
    if args.load_generator == "wrk" and not wrk:
        parser.error("wrk is not installed (apt-get install -y wrk); use --load-generator python")
    args.use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and bool(wrk))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for row in PATHS.values():
            print(f"{row.name:26} {'/'.join(row.workloads):12} {row.about}")
        return 0
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    if args.rounds:
        profile = dataclasses.replace(profile, rounds=args.rounds, budget_s=profile.budget_s * args.rounds //
                                      profile.rounds + 30)
    rows = scenarios.select(args.path_names, args.workload_names)

    def on_alarm(signum: int, frame: object) -> None:
        BUDGET_SPENT.set()
        raise Budget(f"benchmark exceeded its {profile.budget_s} s budget")

    started = time.monotonic()
    busy_before = cpu_busy()
    if busy_before > 0.1:
        log(f"warning: the CPUs were {busy_before:.0%} busy before starting; other work on this machine will "
            "skew the numbers")
    placement = Placement(not args.no_pin)
    placement.pin_self(placement.load_cpu)
    RESULTS.mkdir(exist_ok=True)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(profile.budget_s)
    try:
        with tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp:
            bench = Bench(args, placement, profile, rows, Path(tmp))
            try:
                bench.start()
                log(f"started {', '.join(bench.procs)} in {time.monotonic() - started:.1f} s; probing")
                bench.probe()
                log(f"{profile.rounds} rounds of {sum(len(r.workloads) for r in rows)} measurements "
                    f"({profile.c1_requests} requests at 1 connection, {profile.c32_seconds} s at {CONNECTIONS})")
                data = bench.rounds()
            finally:
                bench.servers.stop()
    except (Budget, RuntimeError, OSError, subprocess.SubprocessError, loadgen.BenchError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        signal.alarm(0)

    results = report.results(args, bench, profile_name, data, busy_before=busy_before,
                             elapsed=time.monotonic() - started)
    tmp_out = args.output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tmp_out.replace(args.output)
    for phase, s in results["host"]["cpu_steal"].items():
        if s and s["max"] > 0.05:
            log(f"warning: up to {s['max']:.0%} of CPU time was stolen by the hypervisor during {phase}")
    if not results["proxy_is_default"]:
        print(f"\nNOTE: proxy command: {args.proxy_cmd}")
    print()
    print(report.table(results["paths"], results["comparisons"], results["checks"]))
    print(f"\n{profile_name} run, {profile.rounds} rounds, {results['elapsed_s']} s; results in {args.output}")
    failed = not all(c["pass"] for c in results["checks"])
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
