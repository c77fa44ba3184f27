"""Benchmark: direct vs proxied MCP ``tools/call`` over Streamable HTTP (JSON answers).

Starts ``fast_upstream.py`` and the proxy on free loopback ports, measures

1. latency at 1 connection: sequential requests from a Python keep-alive client, direct and
   proxied in interleaved rounds; the proxy's cost is proxied minus direct (p50 and p99);
2. throughput and latency at 32 connections with ``wrk`` (pure-Python fallback without it),

prints a markdown table, writes ``benchmarks/results/latest.json`` and stops everything it started.
See benchmarks/README.md for the methodology and CPU placement.

    python benchmarks/run.py [--quick] [--proxy-cmd TEMPLATE] [--load-generator auto|wrk|python]
                             [--latency-layout shared|split] [--no-pin] [--check] [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import loadgen

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LUA = HERE / "mcp_call.lua"
DEFAULT_PROXY_CMD = "{python} -m proxy serve --upstream {upstream} --host 127.0.0.1 --port {port}"
# With the policy pipeline on (the default since the policy issue); the transparent proxy of the
# foundation issue had 0.4 ms and 3,000 req/s (met: benchmarks/README.md).
TARGET_ADDED_P50_MS = 0.7
TARGET_RPS = 2000
CONNECTIONS = 32

# (requests, warm-up, interleaved rounds, wrk seconds, wrk warm-up seconds, hard budget seconds)
PROFILES = {
    "full": (2000, 200, 8, 10, 2, 90),
    "quick": (500, 100, 4, 3, 1, 30),
}


class Budget(Exception):
    """The run went over its time budget."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Placement:
    """CPU pinning: the load generator on one core, the server under test on the other."""

    def __init__(self, enabled: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not enabled:
            self.why = "disabled by --no-pin"
        elif not shutil.which("taskset"):
            self.why = "taskset not installed"
        elif len(cpus) < 2:
            self.why = f"only {len(cpus)} CPU(s) available"
        else:
            self.why = f"CPU {cpus[0]}: load generator; CPU {cpus[1]}: server under test"
        self.enabled = self.why.startswith("CPU")
        self.load_cpu = str(cpus[0]) if self.enabled else ""
        self.server_cpu = str(cpus[1]) if self.enabled else ""

    def wrap(self, cpu: str, argv: list[str]) -> list[str]:
        return ["taskset", "-c", cpu, *argv] if self.enabled else argv

    def pin_self(self, cpu: str) -> None:
        if self.enabled:
            os.sched_setaffinity(0, {int(cpu)})

    def move(self, proc: subprocess.Popen[bytes], cpu: str) -> None:
        if self.enabled:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpu, str(proc.pid)],
                check=True,
                capture_output=True,
                timeout=5,
            )


class Servers:
    """Starts processes in their own session, logs to results/*.log.tmp, stops them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], port: int, timeout: float) -> subprocess.Popen[bytes]:
        log = RESULTS / f"{name}.log.tmp"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc, log))
        try:
            wait_port(port, proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{name} ({shlex.join(argv)}): {exc}\n{self.tail(log)}") from None
        return proc

    @staticmethod
    def tail(log: Path, lines: int = 20) -> str:
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in text) or "  | (no output)"

    def log_of(self, name: str) -> str:
        return next((self.tail(log) for n, _, log in self.procs if n == name), "")

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def summarize_sequential(samples_ns: list[int]) -> dict:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "connections": 1,
        "requests": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": sum(ms) / len(ms),
        "rps": len(ms) / (sum(ms) / 1e3),
        "errors": 0,
    }


def run_wrk(placement: Placement, url: str, seconds: int) -> dict:
    argv = placement.wrap(
        placement.load_cpu,
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(LUA),
            url,
        ],
    )
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 15)
    match = re.search(r"^WRK_JSON (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(match.group(1))
    lat = raw["latency_us"]
    return {
        "connections": CONNECTIONS,
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "p50_ms": lat["p50"] / 1e3,
        "p90_ms": lat["p90"] / 1e3,
        "p99_ms": lat["p99"] / 1e3,
        "max_ms": lat["max"] / 1e3,
        "mean_ms": lat["mean"] / 1e3,
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "errors": sum(raw["errors"].values()),
        "error_detail": raw["errors"],
    }


def run_python_load(url: str, seconds: int) -> dict:
    res = loadgen.concurrent(url, CONNECTIONS, max_requests=1_000_000, seconds=seconds)
    ms = sorted(s / 1e6 for s in res.latencies_ns)
    return {
        "connections": CONNECTIONS,
        "requests": res.requests,
        "seconds": res.seconds,
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": sum(ms) / len(ms),
        "rps": res.requests / res.seconds,
        "errors": 0,
    }


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(round(value, 3) + 0.0, spec)  # no "-0.000"


def table(results: dict) -> str:
    sc, added, checks = results["scenarios"], results["added"], results["checks"]
    rows = [
        "| Scenario | p50 (ms) | p99 (ms) | req/s | added p50 (ms) | added p99 (ms) | Target | Result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, label, add, check in (
        ("direct_1", "direct, 1 conn", None, None),
        ("proxied_1", "proxied, 1 conn", "c1", "added_p50"),
        ("direct_32", f"direct, {CONNECTIONS} conns", None, None),
        ("proxied_32", f"proxied, {CONNECTIONS} conns", "c32", "throughput"),
    ):
        s = sc[key]
        a = added.get(add, {}) if add else {}
        c = checks.get(check) if check else None
        rows.append(
            f"| {label} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['rps'], ',.0f')} "
            f"| {fmt(a.get('p50_ms'))} | {fmt(a.get('p99_ms'))} "
            f"| {c['target'] if c else '—'} | {('PASS' if c['pass'] else 'FAIL') if c else '—'} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Direct vs proxied MCP tools/call benchmark.")
    parser.add_argument("--quick", action="store_true", help="short run (< 30 s)")
    parser.add_argument(
        "--proxy-cmd",
        default=DEFAULT_PROXY_CMD,
        help="command template for the proxy; placeholders {python} {port} {upstream} "
        f"(default: {DEFAULT_PROXY_CMD!r})",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="for the 32-connection runs: wrk if installed (auto), or the pure-Python client",
    )
    parser.add_argument(
        "--latency-layout",
        choices=("shared", "split"),
        default="shared",
        help="1-connection phase: client on the servers' core (shared, default) or on the other core",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--startup-timeout", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if args.load_generator == "wrk" and not wrk:
        parser.error("wrk is not installed (apt-get install -y wrk); use --load-generator python")
    args.use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and bool(wrk))
    return args


def measure(args: argparse.Namespace, placement: Placement, profile: str) -> tuple[dict, dict]:
    """Start the servers, run both phases, stop them: (CPU steal per phase, the four scenarios)."""
    count, warmup, rounds, load_s, load_warm_s, _ = PROFILES[profile]
    servers = Servers()
    up_port, px_port = free_port(), free_port()
    direct = f"http://127.0.0.1:{up_port}/mcp"
    proxied = f"http://127.0.0.1:{px_port}/mcp"
    upstream_argv = [sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)]
    proxy_argv = shlex.split(args.proxy_cmd.format(python=shlex.quote(sys.executable), port=px_port, upstream=direct))
    server_cpu, load_cpu = placement.server_cpu, placement.load_cpu
    try:
        upstream = servers.start("upstream", placement.wrap(server_cpu, upstream_argv), up_port, 10)
        proxy = servers.start("proxy", placement.wrap(server_cpu, proxy_argv), px_port, args.startup_timeout)
        for name, url in (("upstream", direct), ("proxy", proxied)):
            try:
                loadgen.sequential(url, 1, 0)
            except (loadgen.BenchError, OSError) as exc:
                msg = f"probe via {name} failed: {exc}\n{servers.log_of(name)}"
                raise RuntimeError(msg) from None

        # Phase 1, 1 connection: upstream and proxy on the server core, the client (this process)
        # there too ("shared") or on the load core ("split"); direct and proxied alternate in
        # rounds so that drift hits both alike.
        placement.pin_self(server_cpu if args.latency_layout == "shared" else load_cpu)
        log(f"latency: {count} sequential requests per target after {warmup} warm-up, {rounds} interleaved rounds")
        t_start = cpu_times()
        samples: dict[str, list[int]] = {"direct": [], "proxied": []}
        by_round = []
        for i in range(rounds):
            p50 = {}
            for name, url in (("direct", direct), ("proxied", proxied)):
                got = loadgen.sequential(url, count // rounds, warmup if i == 0 else 20)
                samples[name] += got
                p50[name] = pct(sorted(got), 50) / 1e6
            by_round.append(round(p50["proxied"] - p50["direct"], 4))

        # Phase 2, 32 connections: the server under test alone on the server core. Direct: the
        # upstream. Proxied: the proxy; the upstream moves next to the load generator.
        placement.pin_self(load_cpu)
        t_mid = cpu_times()

        def load(url: str) -> dict:
            if args.use_wrk:
                run_wrk(placement, url, load_warm_s)
                return run_wrk(placement, url, load_s)
            run_python_load(url, load_warm_s)
            return run_python_load(url, load_s)

        log(
            f"throughput: {'wrk' if args.use_wrk else 'python'}, {CONNECTIONS} connections, "
            f"{load_s} s (+{load_warm_s} s warm-up) per target"
        )
        direct_n = load(direct)
        placement.move(upstream, load_cpu)
        cpu_before = process_cpu_s(proxy.pid)
        proxied_n = load(proxied)
        # CPU the proxy spent per request (warm-up included in both terms): unlike req/s, hardly
        # moved by hypervisor steal or by what shares the machine.
        cpu_s = process_cpu_s(proxy.pid) - cpu_before
        proxied_n["proxy_cpu_us_per_request"] = round(cpu_s / max(proxied_n["requests"], 1) * 1e6 *
                                                      load_s / (load_s + load_warm_s), 1)
        log(f"proxy CPU per request at {CONNECTIONS} connections: {proxied_n['proxy_cpu_us_per_request']} µs")
        t_end = cpu_times()
    finally:
        servers.stop()
    steal = {"phase_1": share(t_start, t_mid, 2), f"phase_{CONNECTIONS}": share(t_mid, t_end, 2)}
    for phase, value in steal.items():
        if value > 0.05:
            log(f"warning: {value:.0%} of CPU time was stolen by the hypervisor during {phase}")
    return steal, {
        "direct_1": summarize_sequential(samples["direct"]),
        "proxied_1": {**summarize_sequential(samples["proxied"]), "added_p50_ms_by_round": by_round},
        f"direct_{CONNECTIONS}": direct_n,
        f"proxied_{CONNECTIONS}": proxied_n,
    }


def build_results(
    args: argparse.Namespace,
    placement: Placement,
    profile: str,
    scenarios: dict,
    *,
    busy_before: float,
    steal: dict,
    elapsed: float,
) -> dict:
    count, warmup, rounds, load_s, load_warm_s, _ = PROFILES[profile]
    added = {
        f"c{n}": {q: scenarios[f"proxied_{n}"][q] - scenarios[f"direct_{n}"][q] for q in ("p50_ms", "p99_ms")}
        for n in (1, CONNECTIONS)
    }
    proxied_n = scenarios[f"proxied_{CONNECTIONS}"]
    checks = {
        "added_p50": {
            "target": f"added p50 ≤ {TARGET_ADDED_P50_MS} ms",
            "value_ms": added["c1"]["p50_ms"],
            "pass": added["c1"]["p50_ms"] <= TARGET_ADDED_P50_MS,
        },
        "throughput": {
            "target": f"≥ {TARGET_RPS:,} req/s",
            "value_rps": proxied_n["rps"],
            "pass": proxied_n["rps"] >= TARGET_RPS and proxied_n["errors"] == 0,
        },
    }
    return {
        "schema": 1,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "elapsed_s": round(elapsed, 1),
        "proxy_cmd": args.proxy_cmd,
        "proxy_is_default": args.proxy_cmd == DEFAULT_PROXY_CMD,
        "git": git_state(),
        "load_generator": {
            "connections_1": "python sequential client (benchmarks/loadgen.py)",
            f"connections_{CONNECTIONS}": "wrk" if args.use_wrk else "python",
            "wrk_version": wrk_version() if args.use_wrk else None,
        },
        "settings": {
            "requests_1": count,
            "warmup_1": warmup,
            "rounds_1": rounds,
            f"seconds_{CONNECTIONS}": load_s,
            f"warmup_seconds_{CONNECTIONS}": load_warm_s,
        },
        "placement": {
            "pinned": placement.enabled,
            "why": placement.why,
            "load_cpu": placement.load_cpu,
            "server_cpu": placement.server_cpu,
            "latency_layout": args.latency_layout,
            "phase_1": (
                "client, upstream and proxy on server_cpu"
                if args.latency_layout == "shared"
                else "client on load_cpu; upstream and proxy on server_cpu"
            ),
            f"phase_{CONNECTIONS}_direct": "wrk on load_cpu; upstream on server_cpu",
            f"phase_{CONNECTIONS}_proxied": "wrk and upstream on load_cpu; proxy on server_cpu",
        },
        "host": {**host_info(), "cpu_busy_before": busy_before, "cpu_steal": steal},
        "scenarios": scenarios,
        "added": added,
        "checks": checks,
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) jiffies over all CPUs from /proc/stat; zeros if unavailable."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(f), f[3] + f[4], f[7]
    except (OSError, ValueError, IndexError):
        return 0, 0, 0


def share(before: tuple[int, int, int], after: tuple[int, int, int], field: int) -> float:
    """Fraction of the CPU time between two ``cpu_times()`` samples spent in ``field``."""
    return (after[field] - before[field]) / max(1, after[0] - before[0])


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPU time not idle over ``interval`` seconds."""
    before = cpu_times()
    time.sleep(interval)
    return 1 - share(before, cpu_times(), 1) if before[0] else 0.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = "quick" if args.quick else "full"
    budget_s = PROFILES[profile][-1]

    def on_alarm(signum: int, frame: object) -> None:
        raise Budget(f"benchmark exceeded its {budget_s} s budget")

    started = time.monotonic()
    busy_before = cpu_busy()
    if busy_before > 0.1:
        log(
            f"warning: the CPUs were {busy_before:.0%} busy before starting; other work on this "
            "machine will skew the numbers"
        )
    placement = Placement(not args.no_pin)
    placement.pin_self(placement.load_cpu)
    RESULTS.mkdir(exist_ok=True)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(budget_s)
    try:
        steal, scenarios = measure(args, placement, profile)
    except (Budget, RuntimeError, OSError, subprocess.SubprocessError, loadgen.BenchError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        signal.alarm(0)

    results = build_results(
        args,
        placement,
        profile,
        scenarios,
        busy_before=busy_before,
        steal=steal,
        elapsed=time.monotonic() - started,
    )
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.output)

    if not results["proxy_is_default"]:
        print(f"\nNOTE: not the real proxy; proxy command: {args.proxy_cmd}")
    print()
    print(table(results))
    by_round = sorted(results["scenarios"]["proxied_1"]["added_p50_ms_by_round"])
    print(
        f"\nadded p50 per round (ms, {len(by_round)} rounds): min {by_round[0]:.3f}, "
        f"median {pct(by_round, 50):.3f}, max {by_round[-1]:.3f}"
    )
    print(f"\n{profile} run, {results['elapsed_s']} s; results in {args.output}")
    failed = not all(c["pass"] for c in results["checks"].values())
    return 1 if args.check and failed else 0


def wrk_version() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).splitlines()[0].strip()
    return None


def git_state() -> dict:
    """Commit of the checkout and whether proxy/ differs from it (so results name what they measured)."""

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, check=False, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "proxy_dirty": bool(git("status", "--porcelain", "proxy")),
        }
    return {}


def host_info() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


if __name__ == "__main__":
    sys.exit(main())
