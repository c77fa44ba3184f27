"""`mcp-policy-proxy demo`: the demo Missive upstream and the proxy in front of it, in one command.

Starts `proxy.demo.upstream` (an MCP server on the official SDK with an in-memory Missive
organisation and Missive's rate limits) on a free loopback port, writes a config with three
example servers and fresh URL tokens, prints how to connect and where /metrics is, then serves
until Ctrl-C, printing each policy decision as one line (read from the decision log it configures,
a file in its temporary directory: the proxy's own logging stays as configured). Needs neither
Node.js nor npm.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from .auth.tokens import mint_token, url_token_hmac

EXAMPLE_SERVERS: list[dict[str, Any]] = [
    {"name": "triage", "methods": ["read"], "tags": ["support"], "params": {"missive": True},
     "about": "read-only triage: conversations, messages, comments, users, teams, labels"},
    {"name": "support", "methods": ["read", "create", "update"], "tags": ["support"], "params": {"missive": True},
     "about": "support agent: reads, posts, tasks and drafts, but drafts are never sent"},
    {"name": "admin", "methods": ["read", "write", "custom"], "tags": [],
     "params": {"missive": True, "allow_send": True},
     "about": "admin: every tool, sending included (deletes still need allow_delete)"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo upstream exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the demo upstream did not start in time")


def demo_config(upstream_port: int, port: int, host: str,
                public_url: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The proxy config for the demo, and the URL token of each example server."""
    key = secrets.token_urlsafe(32)
    tokens = {s["name"]: mint_token() for s in EXAMPLE_SERVERS}
    servers = [{k: v for k, v in s.items() if k != "about"} | {"token_hmac": url_token_hmac(key, tokens[s["name"]])}
               for s in EXAMPLE_SERVERS]
    config = {
        "listen": {"host": host, "port": port},
        "public_url": public_url or f"http://{host}:{port}",
        "upstream": {"url": f"http://127.0.0.1:{upstream_port}/mcp", "sse_url": f"http://127.0.0.1:{upstream_port}/sse"},
        "auth": {"url_token_key": key},
        "servers": servers,
        "decision_log": {"sink": "off"},
    }
    return config, tokens


def format_decision(entry: dict[str, Any]) -> str:
    """One decision-log entry as one line: time, server, method and tool (or the answer's name),
    allow/deny, the reasons (or why the engine could not decide)."""
    input = entry.get("input") or {}
    message = input.get("message") or {}
    raw = entry.get("result")
    result: dict[str, Any] = raw if isinstance(raw, dict) else {}
    server = (input.get("server") or {}).get("name", "?")
    what = str(message.get("method") or "?")
    if message.get("name"):
        what += f" {message['name']}"
    if message.get("kind") == "response":
        what += " (answer)"
    if "error" in result:
        verdict, why = "ERROR", f"policy engine unavailable: {result['error']}"
    else:
        verdict = "allow" if result.get("allow") is True else "DENY"
        why = "; ".join(str(r) for r in result.get("reasons") or [])
        if message.get("kind") == "response" and isinstance(result.get("visible_tools"), list):
            shown = f"{len(result['visible_tools'])} of {len(input.get('tools') or [])} tools visible"
            why = f"{shown}; {why}" if why else shown
    if (entry.get("labels") or {}).get("mode") == "dry_run":
        verdict += " (dry run: not enforced)"
    stamp = str(entry.get("timestamp", ""))[11:19]
    return f"{stamp} {server:8} {what:50} {verdict}" + (f"  {why}" if why else "")


class DecisionPrinter(threading.Thread):
    """Follows the decision log file and prints each entry as a line (format_decision)."""

    def __init__(self, path: Path, out: Any = None) -> None:
        super().__init__(name="demo-decisions", daemon=True)
        self._path, self._out = path, out or sys.stdout
        self._stop_event = threading.Event()

    def run(self) -> None:
        self._path.touch()
        with self._path.open("rb") as log:
            pending = b""
            while True:
                stopping = self._stop_event.is_set()  # then what is left is printed, and no more
                chunk = log.readline()
                if not chunk:
                    if stopping:
                        return
                    self._stop_event.wait(0.1)
                    continue
                pending += chunk
                if not pending.endswith(b"\n"):  # the rest of the line is not written yet
                    continue
                line, pending = pending, b""
                try:
                    text = format_decision(json.loads(line))
                except (ValueError, AttributeError, TypeError):
                    continue
                print(text, file=self._out, flush=True)

    def stop(self) -> None:
        """Print what the log holds (the proxy has flushed it at shutdown), then end."""
        self._stop_event.set()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def banner(base: str, tokens: dict[str, str], upstream_url: str, metrics_url: str | None = None) -> str:
    """What the demo prints: each server's URL and token, how to connect common clients, where
    the metrics are."""
    lines = ["", "mcp-policy-proxy demo: the proxy in front of a demo Missive MCP server (in-memory data)",
             f"  demo upstream (no policy, no auth): {upstream_url}", ""]
    for server in EXAMPLE_SERVERS:
        token = tokens[server["name"]]
        lines += [f"  {server['name']:8} {server['about']}", f"           {base}/{token}/mcp",
                  f"           token {token} (in the URL: no header needed)", ""]
    triage = f"{base}/{tokens['triage']}/mcp"
    lines += [
        "Connect with:",
        f"  MCP Inspector:  npx @modelcontextprotocol/inspector --cli {triage} --transport http --method tools/list",
        "    or `npx @modelcontextprotocol/inspector` and, in its UI, Transport: Streamable HTTP, URL: a URL above.",
        "  Claude Desktop (mcp-remote), in claude_desktop_config.json:",
        '    {"mcpServers": {"missive-triage": {"command": "npx", "args": ["-y", "mcp-remote", "' + triage + '"]}}}',
        "  ChatGPT connector (developer mode): Settings > Connectors > Create, URL: a server URL above,",
        "    authentication: none (the token is in the URL). ChatGPT must reach it over HTTPS: run a tunnel",
        "    (e.g. `cloudflared tunnel --url http://127.0.0.1:PORT`) and restart with --public-url https://….",
        "  Legacy SSE clients: the same URLs with /sse instead of /mcp.",
        "",
        f"Metrics (Prometheus text): {metrics_url or base + '/metrics'}",
        "Ctrl-C stops the proxy and the demo upstream.",
        "",
        "Each policy decision is printed below: time, server, method and tool, allow/DENY, reasons.",
        "",
    ]
    return "\n".join(lines)


class _Stop(BaseException):
    """Raised by SIGINT/SIGTERM outside the proxy's run, and by SIGINT once it has drained (uvicorn
    re-raises SIGINT; after a SIGTERM the drained proxy returns 0 itself: http_server.py)."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _die_with_parent() -> None:
    """In the upstream child: get SIGTERM when the launcher dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_demo(host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning",
             public_url: str | None = None, log_format: str | None = None) -> int:
    from .cli import serve
    from .config import load

    if not _port_free(host, port):
        print(f"mcp-policy-proxy demo: {host}:{port} is in use: pass another --port", file=sys.stderr)
        return 2
    upstream_port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    upstream = subprocess.Popen([sys.executable, "-m", "proxy.demo.upstream", "--port", str(upstream_port)], env=env,
                                preexec_fn=_die_with_parent)
    try:
        try:
            _wait_for(upstream_port, upstream)
        except RuntimeError as exc:
            print(f"mcp-policy-proxy demo: {exc}", file=sys.stderr)
            return 1
        config, tokens = demo_config(upstream_port, port, host, public_url)
        with tempfile.TemporaryDirectory(prefix="mcp-policy-proxy-demo-") as tmp:
            path = Path(tmp) / "demo.yaml"
            decisions = Path(tmp) / "decisions.jsonl"
            config["decision_log"] = {"sink": f"file:{decisions}"}  # arguments redacted, as by default
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            local = f"http://{f'[{host}]' if ':' in host else host}:{port}"
            print(banner(config["public_url"].rstrip("/"), tokens, f"http://127.0.0.1:{upstream_port}/mcp",
                         f"{local}/metrics"), flush=True)
            printer = DecisionPrinter(decisions)
            printer.start()
            try:
                return serve(load(path), log_level, log_format=log_format)
            finally:
                printer.stop()
                printer.join(1)
    except _Stop:
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the clean-up (bounded: 5 s)
            signal.signal(sig, signal.SIG_IGN)
        upstream.terminate()
        try:
            upstream.wait(5)
        except subprocess.TimeoutExpired:
            upstream.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
