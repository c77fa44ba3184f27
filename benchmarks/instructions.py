"""Instructions the proxy executes per `tools/call`, counted by valgrind's callgrind.

Seconds on this shared, 2-core machine move with whatever else runs; instruction counts do not
(the same binary, inputs and environment give the same count), so this is the figure to compare
two versions of the hot path with. The proxy runs under `valgrind --tool=callgrind`; after a
warm-up its counters are zeroed (`callgrind_control --zero`), N sequential requests go through,
and the counters are dumped: total instructions / N. The upstream runs natively.

    python benchmarks/instructions.py [--requests 300] [--proxy-cmd TEMPLATE]

Prints one JSON line: {"requests": N, "instructions_per_request": ...}. Needs valgrind (Debian).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from run import DEFAULT_PROXY_CMD, Servers, free_port


def _total(dump: Path) -> int:
    """The `summary:`/`totals:` line of a callgrind dump (Ir of everything counted)."""
    for line in dump.read_text().splitlines():
        m = re.match(r"(?:summary|totals): (\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no totals in {dump}")


def measure(requests: int, warmup: int, proxy_cmd: str, keep: Path | None = None, sse: bool = False) -> dict:
    """`sse`: the upstream answers with an SSE stream (tool echo_sse) instead of a JSON body."""
    servers = Servers()
    out_dir = Path(tempfile.mkdtemp(prefix="callgrind-"))
    try:
        up_port, proxy_port = free_port(), free_port()
        servers.start("upstream", [sys.executable, "benchmarks/fast_upstream.py", "--port", str(up_port)], up_port, 10)
        argv = shlex.split(proxy_cmd.format(python=sys.executable, port=proxy_port,
                                            upstream=f"http://127.0.0.1:{up_port}/mcp"))
        proxy = servers.start("proxy", ["valgrind", "--tool=callgrind", "--collect-atstart=yes",
                                        f"--callgrind-out-file={out_dir}/cg.%p", *argv], proxy_port, 300)
        url = f"http://127.0.0.1:{proxy_port}/mcp"
        spec = loadgen.echo_spec("/mcp")
        if sse:
            spec = dataclasses.replace(spec, body=spec.body.replace('"echo"', '"echo_sse"'), answer="sse")
        loadgen.sequential_spec(url, spec, count=warmup, warmup=0, timeout=30)
        subprocess.run(["callgrind_control", "--zero", str(proxy.pid)], check=True, capture_output=True)
        loadgen.sequential_spec(url, spec, count=requests, warmup=0, timeout=30)
        subprocess.run(["callgrind_control", "--dump=measured", str(proxy.pid)], check=True, capture_output=True)
        dumps = sorted(out_dir.glob("cg.*.*"))  # cg.PID.N: the explicit dump (cg.PID is written at exit)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump in {out_dir}")
        total = _total(dumps[-1])
        if keep is not None:
            shutil.copy(dumps[-1], keep)
        return {"requests": requests, "instructions_per_request": round(total / requests)}
    finally:
        servers.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--proxy-cmd", default=DEFAULT_PROXY_CMD)
    parser.add_argument("--keep", type=Path, help="copy the callgrind dump here (for callgrind_annotate)")
    parser.add_argument("--sse", action="store_true", help="the upstream answers with SSE (tool echo_sse)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.requests, args.warmup, args.proxy_cmd, args.keep, args.sse)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
