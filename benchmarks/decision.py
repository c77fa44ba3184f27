"""Decision latency: the policy pipeline alone, no HTTP.

Measures, with the bundled policies and the embedded engine (regorus):
- `tools/call`: Enforcer.client_message for one call (input built, one evaluation, verdict);
- `tools/list page`: Enforcer.server_message filtering a 60-tool page (one evaluation per page);
- the engine's evaluation alone for the same `tools/call` input.
Decision logging is off (its cost is a serialization; see the end-to-end benchmark for it on).

    python benchmarks/decision.py [--count N] [--check]

Targets (docs/: issue 3): decision p50 ≤ 250 µs; filtering a 60-tool page ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import Server, load  # noqa: E402
from proxy.enforce.enforcer import Enforcer  # noqa: E402
from proxy.enforce.input import CLIENT_TO_SERVER, build_input, server_input  # noqa: E402
from proxy.enforce.inventory import ToolInventory  # noqa: E402
from proxy.enforce.pipeline import Channel  # noqa: E402
from proxy.observe.decision_log import DecisionLog  # noqa: E402
from proxy.policy.manager import build_policy_set  # noqa: E402
from proxy.protocol.jsonrpc import parse_client_body, to_message  # noqa: E402

RESOURCES = ["conversation", "message", "comment", "post", "draft", "task", "user", "team", "contact",
             "shared_label", "organization", "response"]


def page_of_60() -> dict:
    tools = []
    for verb in ("list_all_missive_{}s", "get_single_missive_{}_by_id", "create_a_missive_{}",
                 "update_a_missive_{}_by_id", "delete_a_missive_{}_by_id"):
        tools += [{"name": verb.format(r), "inputSchema": {"type": "object"}} for r in RESOURCES]
    return {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}


def pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q / 100))] / 1000


async def measure(count: int) -> dict:
    server = Server(name="support", methods=("read", "create"), tags=("conversations", "posts", "tasks"))
    config = load(None, {"upstream.url": "http://127.0.0.1:1/mcp"})
    policy = build_policy_set(config.policy)
    inventory = ToolInventory(None)  # what the upstream declares: the page's tools (listed once)
    inventory.learn(page_of_60()["result"]["tools"])
    enforcer = Enforcer(policy, (server,), DecisionLog("off"), inventory=inventory)
    channel = Channel("streamable_http", server, "POST", "2025-11-25")
    call = parse_client_body(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "create_a_missive_post", "arguments": {"conversation": "c-1", "text": "hello"}}}).encode())
    page = to_message(page_of_60())
    call_input = build_input(channel, server_input(server), "2026-11-23T20:00:00Z", kind="request",
                             direction=CLIENT_TO_SERVER, method="tools/call", name="create_a_missive_post",
                             tool={**policy.catalog.classify("create_a_missive_post").to_input(None),
                                   "arguments": {"conversation": "c-1", "text": "hello"}})
    results = {}
    for name, op in (
        ("engine.evaluate(tools/call)", lambda: policy.engine.evaluate(call_input)),
        ("tools/call decision", lambda: enforcer.client_message(channel, call)),
        ("tools/list page of 60", lambda: enforcer.server_message(channel, page)),
    ):
        for _ in range(count // 10):  # warm-up
            await op()
        samples = []
        for _ in range(count):
            start = time.perf_counter_ns()
            await op()
            samples.append(time.perf_counter_ns() - start)
        results[name] = {"p50_us": round(pct(samples, 50), 1), "p99_us": round(pct(samples, 99), 1)}
    filtered = await enforcer.server_message(channel, page)
    results["visible of 60"] = len(filtered.data["result"]["tools"]) if filtered else 60
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    results = asyncio.run(measure(args.count))
    print("| measurement | p50 (µs) | p99 (µs) | target |\n|---|---:|---:|---|")
    targets = {"tools/call decision": 250, "tools/list page of 60": 1000}
    ok = True
    for name, value in results.items():
        if not isinstance(value, dict):
            continue
        target = targets.get(name)
        passed = target is None or value["p50_us"] <= target
        ok &= passed
        verdict = f"p50 ≤ {target} µs: {'PASS' if passed else 'FAIL'}" if target else "—"
        print(f"| {name} | {value['p50_us']} | {value['p99_us']} | {verdict} |")
    print(f"\n{results['visible of 60']} of 60 tools visible to the example server")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
