"""From the per-round measurements to the results: medians and spreads, ratios, checks, the table.

Every figure is first computed per round (a path minus its baseline, a path over nginx, in the
same round), then summarized over the rounds as median, min and max, so that slow drift on the
machine hits both sides of a difference alike.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import nginx
from harness import git_state, host_info, version_line
from scenarios import CONNECTIONS, PROXY_CMD, Row

# Issue 14's targets, as ratios to nginx measured in the same run.
CPU_RATIO_TARGETS = {("default_policy", "repeat"): 3.5, ("default_policy", "vary"): 5.0,
                     ("missive", "repeat"): 3.5, ("missive", "vary"): 5.0,
                     ("jwt", "repeat"): 4.5, ("jwt", "vary"): 4.5}
ADDED_P50_TARGET_MS = {"default_policy": 0.15, "missive": 0.15}
TOOLS_LIST_60_ADDED_MS = 0.2
WITHIN = 0.15  # sse vs JSON, legacy_sse vs streamable_py: CPU µs/req within 15%
OVER_FLOOR = ("no_policy", "default_policy", "missive", "jwt")  # their CPU minus the floor path's

Rounds = dict[tuple[str, str], dict[str, list[dict[str, Any]]]]  # (path, workload) → c1/c32 → per round


def stat(values: list[float | None]) -> dict[str, Any] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {"median": statistics.median(got), "min": min(got), "max": max(got),
            "rounds": [None if v is None else round(v, 4) for v in values]}


def _per_round(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, op: str) -> list[float | None]:
    out: list[float | None] = []
    for x, y in zip(a, b, strict=False):
        if x.get(key) is None or y.get(key) is None:
            out.append(None)
        elif op == "-":
            out.append(x[key] - y[key])
        else:
            out.append(x[key] / y[key] if y[key] else None)
    return out


def summarize(rows: list[Row], data: Rounds) -> dict[str, Any]:
    """Per path and workload: 1-connection and 32-connection figures over the rounds."""
    paths: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"about": row.about, "target": row.target, "request": row.request,
                                 "client": row.client, "baseline": row.baseline,
                                 "floor": None if row.target in ("nginx", "upstream") else row.floor,
                                 "workloads": {}}
        for wl in row.workloads:
            got = data[(row.name, wl)]
            c1 = got["c1"]
            fig: dict[str, Any] = {"c1": {"requests_per_round": c1[0]["requests"] if c1 else 0,
                                          "p50_ms": stat([r["p50_ms"] for r in c1]),
                                          "p99_ms": stat([r["p99_ms"] for r in c1])}}
            if row.baseline and (row.baseline, wl) in data:
                base = data[(row.baseline, wl)]["c1"]
                fig["c1"]["added_p50_ms"] = stat(_per_round(c1, base, "p50_ms", "-"))
                fig["c1"]["added_p99_ms"] = stat(_per_round(c1, base, "p99_ms", "-"))
            c32 = got.get("c32") or []
            if c32:
                fig["c32"] = {key: stat([r[key] for r in c32]) for key in
                              ("rps", "cpu_us_per_request", "upstream_cpu_us_per_request", "p50_ms", "p99_ms")}
                fig["c32"]["requests"] = sum(r["requests"] for r in c32)
                fig["c32"]["errors"] = sum(r["errors"] for r in c32)
                fig["c32"]["cpu_steal"] = stat([r["cpu_steal"] for r in c32])
                floor = (data.get((row.floor, wl)) or {}).get("c32")
                if floor and row.target not in ("nginx", "upstream"):
                    fig["c32"]["cpu_ratio_to_nginx"] = stat(_per_round(c32, floor, "cpu_us_per_request", "/"))
            entry["workloads"][wl] = fig
        paths[row.name] = entry
    return paths


def comparisons(data: Rounds) -> dict[str, Any]:
    """tools/list filtered over unfiltered; SSE answers over JSON ones; legacy SSE over Streamable HTTP."""
    out: dict[str, Any] = {}

    def pair(a: str, b: str, wl: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]] | None:
        if (a, wl) in data and (b, wl) in data:
            return data[(a, wl)], data[(b, wl)]
        return None

    for n in (37, 60):
        got = pair(f"tools_list_{n}", f"tools_list_{n}_unfiltered", "repeat")
        if got:
            out[f"tools_list_{n}"] = {
                "versus": f"tools_list_{n}_unfiltered",
                "added_p50_ms": stat(_per_round(got[0]["c1"], got[1]["c1"], "p50_ms", "-")),
                "added_p99_ms": stat(_per_round(got[0]["c1"], got[1]["c1"], "p99_ms", "-")),
                "added_cpu_us_per_request": stat(_per_round(got[0].get("c32", []), got[1].get("c32", []),
                                                            "cpu_us_per_request", "-")),
            }
    # The proxy's own work: its CPU over floor_proxy.py's (the same HTTP server and upstream client).
    for path in OVER_FLOOR:
        for wl in ("repeat", "vary"):
            got = pair(path, "floor", wl)
            if got and got[0].get("c32") and got[1].get("c32"):
                out.setdefault("over_floor", {}).setdefault(path, {})[wl] = stat(
                    _per_round(got[0]["c32"], got[1]["c32"], "cpu_us_per_request", "-"))
    pairs = (("sse_vs_json", "sse", "default_policy"), ("legacy_vs_streamable", "legacy_sse", "streamable_py"))
    for name, a, b in pairs:
        for wl in ("repeat", "vary"):
            got = pair(a, b, wl)
            if got:
                out.setdefault(name, {"versus": b})[wl] = {
                    "cpu_ratio": stat(_per_round(got[0].get("c32", []), got[1].get("c32", []),
                                                 "cpu_us_per_request", "/")),
                    "added_p50_ms": stat(_per_round(got[0]["c1"], got[1]["c1"], "p50_ms", "-")),
                }
    return out


def _median(s: dict[str, Any] | None) -> float | None:
    return None if s is None else float(s["median"])


def checks(paths: dict[str, Any], comp: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, limit: float, unit: str = "") -> None:
        out.append({"name": name, "target": target, "value": value, "unit": unit,
                    "pass": value is not None and value <= limit})

    for (path, wl), limit in CPU_RATIO_TARGETS.items():
        fig = paths.get(path, {}).get("workloads", {}).get(wl, {})
        if "c32" in fig:
            add(f"{path} {wl}: CPU µs/req over nginx", f"≤ {limit}x nginx",
                _median(fig["c32"].get("cpu_ratio_to_nginx")), limit, "x")
    for path, limit in ADDED_P50_TARGET_MS.items():
        for wl, fig in paths.get(path, {}).get("workloads", {}).items():
            if "added_p50_ms" in fig["c1"]:
                add(f"{path} {wl}: added p50", f"≤ {limit} ms", _median(fig["c1"]["added_p50_ms"]), limit, "ms")
    if "tools_list_60" in comp:
        add("tools_list_60: added p50 over unfiltered", f"≤ {TOOLS_LIST_60_ADDED_MS} ms",
            _median(comp["tools_list_60"]["added_p50_ms"]), TOOLS_LIST_60_ADDED_MS, "ms")
    for name, label in (("sse_vs_json", "sse over default_policy (JSON)"),
                        ("legacy_vs_streamable", "legacy_sse over streamable_py")):
        for wl in ("repeat", "vary"):
            if wl in comp.get(name, {}):
                add(f"{label} {wl}: CPU µs/req", f"≤ {1 + WITHIN:.2f}x",
                    _median(comp[name][wl]["cpu_ratio"]), 1 + WITHIN, "x")
    errors = sum(fig.get("c32", {}).get("errors", 0) for p in paths.values() for fig in p["workloads"].values())
    out.append({"name": "no errors at 32 connections", "target": "0", "value": errors, "unit": "",
                "pass": errors == 0})
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(round(value, 6) + 0.0, spec)  # no "-0.000"


def cell(s: dict[str, Any] | None, spec: str = ".3f", spread: bool = True) -> str:
    if s is None:
        return "—"
    text = _fmt(s["median"], spec)
    if spread and len([v for v in s["rounds"] if v is not None]) > 1:
        text += f" [{_fmt(s['min'], spec)}, {_fmt(s['max'], spec)}]"
    return text


def table(paths: dict[str, Any], comp: dict[str, Any], check_list: list[dict[str, Any]]) -> str:
    lines = [
        "Medians over the rounds [min, max]. Added = the path minus the same request straight to the upstream, "
        "same client, same round. CPU = the server's own user+system CPU over the 32-connection run / requests; "
        "x nginx = that over nginx's in the same round (sse: over nginx_sse).",
        "",
        "| path | workload | p50 1 conn (ms) | added p50 (ms) | added p99 (ms) | req/s at 32 | CPU µs/req | x nginx |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in paths.items():
        for wl, fig in entry["workloads"].items():
            c1, c32 = fig["c1"], fig.get("c32", {})
            if not c32 and name.startswith("direct["):
                continue  # a baseline: shown in the JSON
            lines.append(
                f"| {name} | {wl} | {cell(c1['p50_ms'], spread=False)} | {cell(c1.get('added_p50_ms'))} "
                f"| {cell(c1.get('added_p99_ms'), spread=False)} | {cell(c32.get('rps'), ',.0f', spread=False)} "
                f"| {cell(c32.get('cpu_us_per_request'), '.1f')} | {cell(c32.get('cpu_ratio_to_nginx'), '.2f')} |"
            )
    if any(k.startswith("tools_list") for k in comp):
        lines += ["", "| tools/list | added p50 over unfiltered (ms) | added p99 (ms) | added CPU µs/req |",
                  "|---|---:|---:|---:|"]
        for key in ("tools_list_37", "tools_list_60"):
            if key in comp:
                c = comp[key]
                lines.append(f"| {key} | {cell(c['added_p50_ms'])} | {cell(c['added_p99_ms'], spread=False)} "
                             f"| {cell(c['added_cpu_us_per_request'], '.1f')} |")
    if "over_floor" in comp:
        lines += ["", "The proxy's own work: CPU µs/req over the floor path (floor_proxy.py: the same HTTP server "
                  "and upstream client, no logic), same round.", "",
                  "| path | repeat | vary |", "|---|---:|---:|"]
        for key, by_wl in comp["over_floor"].items():
            lines.append(f"| {key} | {cell(by_wl.get('repeat'), '.1f')} | {cell(by_wl.get('vary'), '.1f')} |")
    lines += ["", "| check | target | value | result |", "|---|---|---:|---|"]
    for c in check_list:
        value = c["value"]
        shown = "—" if value is None else (f"{value:.3f}{' ' + c['unit'] if c['unit'] == 'ms' else c['unit']}"
                                           if isinstance(value, float) else str(value))
        lines.append(f"| {c['name']} | {c['target']} | {shown} | {'PASS' if c['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def results(args: Any, bench: Any, profile_name: str, data: Rounds, *, busy_before: float,
            elapsed: float) -> dict[str, Any]:
    """Everything latest.json holds (README: schema 2); ``bench`` is run.Bench after its rounds."""
    paths = summarize(bench.rows, data)
    comp = comparisons(data)
    p, pl, n = bench.profile, bench.placement, CONNECTIONS
    return {
        "schema": 2,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile_name,
        "elapsed_s": round(elapsed, 1),
        "proxy_cmd": args.proxy_cmd,
        "proxy_is_default": args.proxy_cmd == PROXY_CMD,
        "git": git_state(),
        "settings": {"rounds": p.rounds, "requests_1": p.c1_requests, "warmup_1": p.c1_warmup,
                     f"seconds_{n}": p.c32_seconds, "connections": n, "workloads": list(args.workload_names),
                     "paths": [r.name for r in bench.rows], "decision_log": args.decision_log,
                     "jwt_pool": p.jwt_pool},
        "load_generator": {
            "connections_1": "python sequential client (loadgen.py); asyncio client for python/legacy paths",
            f"connections_{n}": "wrk" if args.use_wrk else "python",
            "wrk_version": version_line(["wrk", "-v"]) if args.use_wrk else None,
            "nginx_version": version_line([nginx.binary() or "nginx", "-v"]) if "nginx" in bench.procs else None,
        },
        "placement": {
            "pinned": pl.enabled, "why": pl.why, "load_cpu": pl.load_cpu, "server_cpu": pl.server_cpu,
            "latency_layout": args.latency_layout,
            "phase_1": ("client, upstream and every server on server_cpu" if args.latency_layout == "shared"
                        else "client on load_cpu; upstream and every server on server_cpu"),
            f"phase_{n}_direct": "load generator on load_cpu; upstream on server_cpu",
            f"phase_{n}_other": "load generator and upstream on load_cpu; nginx or the proxy on server_cpu",
        },
        "host": {**host_info(), "cpu_busy_before": busy_before,
                 "cpu_steal": {"phase_1": stat(list(bench.steal["c1"])), f"phase_{n}": stat(list(bench.steal["c32"]))}},
        "paths": paths,
        "comparisons": comp,
        "checks": checks(paths, comp),
    }
