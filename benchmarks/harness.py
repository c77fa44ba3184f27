"""Process and CPU plumbing shared by the benchmark scripts (run.py, soak.py, instructions.py).

Starting servers in their own sessions and stopping them all, CPU pinning (``Placement``), CPU
time of a process group from /proc, machine-wide busy and steal shares, and what the results
record about the checkout and the host.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


class Budget(Exception):
    """The run went over its time budget."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
        self._where: dict[int, str] = {}  # process group → the CPU it was last moved to

    def wrap(self, cpu: str, argv: list[str]) -> list[str]:
        return ["taskset", "-c", cpu, *argv] if self.enabled else argv

    def pin_self(self, cpu: str) -> None:
        if self.enabled:
            os.sched_setaffinity(0, {int(cpu)})

    def move(self, proc: subprocess.Popen[bytes], cpu: str) -> None:
        """Every thread of every process of ``proc``'s process group onto ``cpu`` (no-op if there)."""
        if not self.enabled or self._where.get(proc.pid) == cpu:
            return
        for pid in group_pids(proc.pid):
            with contextlib.suppress(subprocess.CalledProcessError):  # a process that just ended
                subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True,
                               timeout=5)
        self._where[proc.pid] = cpu


class Servers:
    """Starts processes in their own session, logs to results/*.log.tmp, stops them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = RESULTS / f"{name}.log.tmp"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.procs.append((name, proc, log_path))
        return proc

    def wait(self, name: str, port: int, timeout: float) -> None:
        _, proc, log_path = next(p for p in self.procs if p[0] == name)
        try:
            wait_port(port, proc, timeout)
        except RuntimeError as exc:
            argv = proc.args if isinstance(proc.args, list) else [proc.args]
            raise RuntimeError(f"{name} ({shlex.join(map(str, argv))}): {exc}\n{self.tail(log_path)}") from None

    def start(self, name: str, argv: list[str], port: int, timeout: float) -> subprocess.Popen[bytes]:
        proc = self.spawn(name, argv)
        self.wait(name, port, timeout)
        return proc

    @staticmethod
    def tail(log_path: Path, lines: int = 20) -> str:
        text = log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in text) or "  | (no output)"

    def log_of(self, name: str) -> str:
        return next((self.tail(log_path) for n, _, log_path in self.procs if n == name), "")

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


def _stat_fields(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_pids(pgid: int) -> list[int]:
    """Every live process of process group ``pgid`` (the servers each lead their own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat_fields(entry)[2]) == pgid:
                    pids.append(int(entry))
    return pids


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process of a process group (nginx: master and worker)."""
    total = 0.0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError, IndexError):
            total += process_cpu_s(pid)
    return total


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


def version_line(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=5)
        return (out.stdout + out.stderr).splitlines()[0].strip()
    return None


def git_state() -> dict[str, object]:
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


def host_info() -> dict[str, object]:
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
