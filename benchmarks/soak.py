"""Soak: many `tools/call` through one proxy, watching its memory and file descriptors.

Starts ``fast_upstream.py`` and the proxy (bundled default policy, decision log serialized and
written to /dev/null) on free loopback ports, sends ``--calls`` tools/calls (default 10**6) from
``--connections`` keep-alive connections (default 32; the asyncio client of ``loadgen.py``, which
checks every answer), and samples the proxy's RSS and open file descriptors (psutil) every
``--sample-s`` seconds. The baseline is taken when the warm-up calls are done (``--warmup``,
default a tenth of the calls, at most 50,000): allocator arenas, caches and the connection pools
have filled by then. Writes ``benchmarks/results/soak.json`` and stops everything it started.

Exit status 1 when RSS grew by ``--max-growth-mb`` (20) or more after the warm-up, when the
proxy holds more file descriptors at the end of the load than after the warm-up (the same 32
client connections are open at both moments; ``--fd-slack`` allows for pool churn, default 0),
or when any call failed; 2 when the run itself could not be done.

    python benchmarks/soak.py [--calls N] [--connections 32] [--warmup N] [--sample-s 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import loadgen
import psutil
import run as bench

OUTPUT = bench.RESULTS / "soak.json"
MB = 1024 * 1024


@dataclass
class Sample:
    t_s: float  # since the load began
    calls: int  # completed so far (answered, or failed)
    rss_mb: float
    fds: int
    connections: int  # the proxy's TCP connections (clients and upstream)


class Soak:
    """The load and the sampler, in one event loop."""

    def __init__(self, url: str, proxy: psutil.Process, args: argparse.Namespace) -> None:
        self.url, self.proxy, self.args = url, proxy, args
        self.budget = args.calls
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.samples: list[Sample] = []
        self.warm: Sample | None = None
        self.warmed = asyncio.Event()
        self.finished = asyncio.Event()
        self.start = 0.0

    def sample(self) -> Sample:
        with self.proxy.oneshot():
            s = Sample(round(time.monotonic() - self.start, 3), self.done,
                       round(self.proxy.memory_info().rss / MB, 2), self.proxy.num_fds(),
                       len(self.proxy.net_connections(kind="tcp")))
        self.samples.append(s)
        return s

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port, _ = loadgen._target(self.url)
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def _call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg_id: int) -> None:
        host, port, path = loadgen._target(self.url)
        writer.write(loadgen.request_bytes(host, port, path, msg_id))
        status, body = await loadgen.read_response(reader)
        if status != 200:
            raise loadgen.BenchError(f"http_{status}")
        loadgen.check(status, body, msg_id)

    async def worker(self, writers: list[asyncio.StreamWriter]) -> None:
        reader, writer = await self._connect()
        writers.append(writer)
        while self.budget > 0:
            self.budget -= 1
            msg_id = self.budget + 1
            try:
                await self._call(reader, writer, msg_id)
            except loadgen.BenchError as exc:
                self.errors["http_status" if str(exc).startswith("http_") else "bad_answer"] += 1
                if sum(self.errors.values()) == 1:
                    bench.log(f"first error: {exc}")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.errors["connection"] += 1
                bench.log(f"connection error ({type(exc).__name__}); reconnecting")
                writer.close()
                reader, writer = await self._connect()
                writers.append(writer)
            self.done += 1
            if self.done == self.args.warmup:
                self.warmed.set()

    async def sampler(self) -> None:
        next_report = 0.0
        while not self.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.warmed.wait() if self.warm is None else self.finished.wait(),
                                       self.args.sample_s)
            if self.finished.is_set():
                return
            s = self.sample()
            if self.warm is None and self.warmed.is_set():
                self.warm = s
                bench.log(f"warm-up done after {s.calls:,} calls: RSS {s.rss_mb:.1f} MB, {s.fds} fds")
            if s.t_s >= next_report:
                next_report = s.t_s + 30
                bench.log(f"{s.t_s:7.1f} s  {s.calls:>9,} calls  RSS {s.rss_mb:7.1f} MB  {s.fds} fds  "
                          f"{sum(self.errors.values())} errors")

    async def run(self) -> tuple[Sample, Sample, Sample, float]:
        """(before, end of load, idle after) samples and the load's duration."""
        self.start = time.monotonic()
        before = self.sample()
        writers: list[asyncio.StreamWriter] = []
        sampler = asyncio.ensure_future(self.sampler())
        await asyncio.gather(*(self.worker(writers) for _ in range(self.args.connections)))
        seconds = time.monotonic() - self.start
        self.finished.set()
        await sampler
        end = self.sample()  # the clients' connections still open, as after the warm-up
        for writer in writers:
            writer.close()
        await asyncio.sleep(2)
        idle = self.sample()
        return before, end, idle, seconds


def slope_mb_per_100k(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over calls answered, in MB per 100,000 calls."""
    if len(samples) < 3:
        return None
    xs, ys = [s.calls for s in samples], [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 100_000, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak the proxy: RSS and file descriptors over many calls.")
    parser.add_argument("--calls", type=int, default=10**6, help="tools/calls to send (default 1,000,000)")
    parser.add_argument("--connections", type=int, default=bench.CONNECTIONS)
    parser.add_argument("--warmup", type=int, help="calls before the baseline (default calls/10, at most 50,000)")
    parser.add_argument("--sample-s", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--max-growth-mb", type=float, default=20.0, help="RSS growth after warm-up that fails")
    parser.add_argument("--fd-slack", type=int, default=0, help="fds above the warm-up count tolerated at the end")
    parser.add_argument("--max-seconds", type=int, default=3600, help="hard limit for the whole run")
    parser.add_argument("--startup-timeout", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.calls < 10 or args.connections < 1:
        parser.error("--calls must be at least 10 and --connections at least 1")
    args.warmup = args.warmup if args.warmup is not None else min(args.calls // 10, 50_000)
    if not 0 < args.warmup < args.calls:
        parser.error("--warmup must be between 1 and --calls")
    return args


def start(servers: bench.Servers, workdir: Path, args: argparse.Namespace) -> tuple[str, psutil.Process, str]:
    """fast_upstream and the proxy; (proxy URL, proxy process, the proxy's config)."""
    upstream_port, proxy_port = bench.free_port(), bench.free_port()
    servers.start("soak-upstream", [sys.executable, str(bench.HERE / "fast_upstream.py"), "--port", str(upstream_port)],
                  upstream_port, args.startup_timeout)
    config = (f"listen: {{host: 127.0.0.1, port: {proxy_port}}}\n"
              f"upstream: {{url: 'http://127.0.0.1:{upstream_port}/mcp'}}\n"
              "decision_log: {sink: 'file:/dev/null'}\n")  # every entry serialized and written, none kept
    path = workdir / "proxy.yaml"
    path.write_text(config)
    proc = servers.start("soak-proxy", [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                         proxy_port, args.startup_timeout)
    url = f"http://127.0.0.1:{proxy_port}/mcp"
    loadgen.sequential(url, 1, 0)  # one call must work before the soak starts
    return url, psutil.Process(proc.pid), config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_alarm(signum: int, frame: object) -> None:
        raise bench.Budget(f"soak exceeded its {args.max_seconds} s budget")

    bench.RESULTS.mkdir(exist_ok=True)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    servers = bench.Servers()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
            url, proxy, config = start(servers, Path(workdir), args)
            cpu_before = proxy.cpu_times()
            soak = Soak(url, proxy, args)
            load = soak.run()
            before, end, idle, seconds = loadgen.uvloop.run(load) if loadgen.uvloop is not None else asyncio.run(load)
            cpu = proxy.cpu_times()
    except (bench.Budget, RuntimeError, OSError, loadgen.BenchError, psutil.Error) as exc:
        bench.log(f"error: {exc}")
        return 2
    finally:
        signal.alarm(0)
        servers.stop()

    warm = soak.warm or before
    after_warm = [s for s in soak.samples if s.calls >= warm.calls and s is not idle]
    growth = round(end.rss_mb - warm.rss_mb, 2)
    errors = sum(soak.errors.values())
    checks = {
        "rss_growth": {"target": f"< {args.max_growth_mb:g} MB after warm-up", "value_mb": growth,
                       "pass": growth < args.max_growth_mb},
        "fds": {"target": f"end of load ≤ after warm-up + {args.fd_slack}", "warm": warm.fds, "end": end.fds,
                "pass": end.fds <= warm.fds + args.fd_slack},
        "errors": {"target": "0", "value": errors, "pass": errors == 0},
    }
    proxy_cpu_s = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": bench.git_state(),
        "host": bench.host_info(),
        "settings": {"calls": args.calls, "connections": args.connections, "warmup_calls": args.warmup,
                     "sample_s": args.sample_s, "proxy_config": config, "upstream": "benchmarks/fast_upstream.py",
                     "policy": "bundled default (embedded engine)"},
        "calls": soak.done,
        "seconds": round(seconds, 2),
        "rps": round(soak.done / seconds, 1),
        "proxy_cpu_us_per_call": round(proxy_cpu_s / soak.done * 1e6, 1),
        "errors": errors,
        "error_detail": dict(soak.errors),
        "rss_mb": {"start": before.rss_mb, "warm": warm.rss_mb, "end": end.rss_mb, "idle": idle.rss_mb,
                   "max": max(s.rss_mb for s in soak.samples), "growth_after_warmup": growth,
                   "slope_mb_per_100k_calls_after_warmup": slope_mb_per_100k(after_warm)},
        "fds": {"start": before.fds, "warm": warm.fds, "end": end.fds, "idle": idle.fds,
                "max": max(s.fds for s in soak.samples)},
        "checks": checks,
        "samples": [asdict(s) for s in soak.samples],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.output)

    rss, fds = results["rss_mb"], results["fds"]
    print(f"{soak.done:,} calls in {seconds:.1f} s: {results['rps']:,.0f} req/s, {errors} errors, "
          f"proxy CPU {results['proxy_cpu_us_per_call']} µs/call")
    print(f"RSS MB   start {rss['start']}  warm {rss['warm']}  end {rss['end']}  max {rss['max']}  idle {rss['idle']}"
          f"  growth after warm-up {growth} (slope {rss['slope_mb_per_100k_calls_after_warmup']} MB/100k calls)")
    print(f"fds      start {fds['start']}  warm {fds['warm']}  end {fds['end']}  max {fds['max']}  idle {fds['idle']}")
    for name, check in checks.items():
        print(f"{name:10} {'PASS' if check['pass'] else 'FAIL'}  ({check['target']})")
    print(f"results in {args.output}")
    return 0 if all(c["pass"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
