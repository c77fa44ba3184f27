"""Availability: one client sending the worst bodies it can does not stall the proxy for the others.

The real proxy (a subprocess; bundled policy, a read-only server) in front of the official SDK's
stateless upstream. An attacker — a separate process, `python -m tests.e2e.test_availability
--port P --seconds S --tasks N`, so its own CPU use does not slow the measuring client here —
sends from a few concurrent connections, in a loop, bodies up to the 4 MiB limit built to cost the
proxy the most: a 4 MiB tool name, nesting at the depth limit, case-twin keys, objects and arrays
of as many values as a message may hold and of far more, a 4 MiB string full of commas, a 4 MiB
array of empty objects. Meanwhile another client calls `/healthz` and a visible tool (relayed to
the upstream and answered) over and over: both must stay under 100 ms at the 99th percentile (or
under 3x the tail the same loop sees without the attack, on a machine busy with other work).
The figures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.proxy_harness import start_proxy
from tests.peers.harness import REPO_ROOT

LIMIT = 4 * 1024 * 1024
ATTACK_SECONDS = 5.0
ATTACK_TASKS = 2  # connections sending the bodies the event loop parses (one more sends the dense ones)
P99_BUDGET_S = 0.100
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-11-25"}


def _call(name: str, arguments: str) -> bytes:
    return ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + name + '","arguments":'
            + arguments + "}}").encode()


def worst_bodies() -> dict[str, bytes]:
    """Each within the body limit; the hidden tool is refused by the proxy after the full decision
    (inventory, schema, policy, decision log), the others earlier."""
    hidden = "create_a_missive_post"
    keys = 9_000  # near jsonrpc.MAX_VALUES: the most a message may hold, all decided
    bodies = {
        "4 MiB tool name": _call("x_" * ((LIMIT - 200) // 2), "{}"),
        "nesting at the limit, many times": _call(hidden, '{"x":[' + ",".join(["[" * 60 + "]" * 60] * 150) + "]}"),
        "case-twin keys": _call(hidden, "{" + ",".join(f'"k{i}":1,"K{i}":1' for i in range(4_000)) + "}"),
        "case-twin keys, 4 MiB": _call(hidden, "{" + ",".join(f'"k{i}":1' for i in range(LIMIT // 12 - 10))
                                       + ',"K0":1}'),
        "an object of as many keys as allowed": _call(hidden, "{" + ",".join(f'"key{i}":{i}' for i in range(keys))
                                                      + "}"),
        "an object of 4 MiB of keys": _call(hidden, "{" + ",".join(f'"k{i}":1' for i in range(LIMIT // 12 - 10)) + "}"),
        "a 10k-element array": _call(hidden, '{"x":[' + ",".join(["1.5"] * 10_000) + "]}"),
        "an array of as many elements as allowed": _call(hidden, '{"x":[' + ",".join(["1.5"] * 9_990) + "]}"),
        "a 4 MiB array of empty objects": _call(hidden, '{"x":[' + ",".join(["{}"] * ((LIMIT - 200) // 3)) + "]}"),
        "a 4 MiB string of commas": _call(hidden, '{"x":"' + "a," * ((LIMIT - 200) // 2) + '"}'),
    }
    assert all(len(b) <= LIMIT for b in bodies.values()), {k: len(b) for k, b in bodies.items()}
    return bodies


# Bodies of more values than the proxy parses on its event loop: they go to its body checker.
DENSE = ("case-twin keys, 4 MiB", "an object of 4 MiB of keys", "a 4 MiB array of empty objects")


async def attack(port: int, seconds: float, tasks: int) -> dict[str, int]:
    """Until `seconds` pass, send the worst bodies in turn: those the event loop parses from `tasks`
    keep-alive connections, the dense ones from one more (they take the body checker a second or
    two each, so a connection sending them would mostly wait)."""
    def wire(body: bytes) -> bytes:
        return (b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"accept: application/json, text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    bodies = worst_bodies()
    inline = [wire(b) for name, b in bodies.items() if name not in DENSE]
    dense = [wire(bodies[name]) for name in DENSE]
    deadline = time.monotonic() + seconds
    statuses: dict[str, int] = {}

    async def one(requests: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        while time.monotonic() < deadline:
            writer.write(requests[i % len(requests)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            status = head.split(b" ")[1].decode()
            statuses[status] = statuses.get(status, 0) + 1
            i += 1
        writer.close()

    await asyncio.gather(one(dense), *(one(inline[i:] + inline[:i]) for i in range(tasks)))
    return statuses


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_the_worst_client_bodies_do_not_stall_other_clients(sdk_upstream, tmp_path: Path):
    upstream = sdk_upstream("stateless-json")
    proxy = start_proxy(tmp_path, upstream.base, {"servers": [{"name": "readonly", "methods": ["read"]}],
                                                  "decision_log": {"sink": "off"}})
    try:
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "list_all_missive_conversations", "arguments": {"inbox": True}}}
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(proxy.url, json=call, headers=HEADERS)  # the inventory is listed once, here
            assert r.status_code == 200 and r.json()["result"]["isError"] is False, r.text
            async def sample(seconds: float) -> tuple[list[float], list[float]]:
                health: list[float] = []
                calls: list[float] = []
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    assert (await http.get(f"{proxy.base}/healthz")).status_code == 200
                    health.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    r = await http.post(proxy.url, json=call, headers=HEADERS)
                    calls.append(time.perf_counter() - start)
                    assert r.status_code == 200 and r.json()["result"]["isError"] is False, r.text
                    await asyncio.sleep(0.005)
                return health, calls

            quiet_health, quiet_calls = await sample(1.5)  # the same loop, no attack: this machine's own tail
            attacker = subprocess.Popen([sys.executable, "-m", "tests.e2e.test_availability", "--port",
                                         str(proxy.port), "--seconds", str(ATTACK_SECONDS), "--tasks",
                                         str(ATTACK_TASKS)], cwd=REPO_ROOT, stdout=subprocess.PIPE)
            try:
                await asyncio.sleep(0.5)  # the attack is under way (its bodies are built first)
                health, calls = await sample(ATTACK_SECONDS - 1.0)
                out, _ = attacker.communicate(timeout=30)
            finally:
                if attacker.poll() is None:
                    attacker.kill()
        statuses = json.loads(out)
        for what, samples in (("/healthz, no attack", quiet_health), ("tools/call, no attack", quiet_calls),
                              ("/healthz", health), ("tools/call", calls)):
            print(f"{what}: {len(samples)} samples, median {statistics.median(samples) * 1000:.1f} ms, "
                  f"p99 {_p(samples, 0.99) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms")
        print(f"attacker: {sum(statuses.values())} answers by status {statuses}")
        assert sum(statuses.values()) >= ATTACK_TASKS * 2, statuses  # the attack did run
        assert not [s for s in statuses if s.startswith("5")], statuses
        # A stall (a body parsed on the event loop) costs seconds. On a machine busy with other work the
        # quiet tail is already long: the budget is 100 ms or 3x that tail, whichever is larger.
        assert _p(health, 0.99) < max(P99_BUDGET_S, 3 * _p(quiet_health, 0.99))
        assert _p(calls, 0.99) < max(P99_BUDGET_S, 3 * _p(quiet_calls, 0.99))
        assert "Traceback" not in proxy.handle.stderr(), proxy.handle.stderr()[-3000:]
    finally:
        proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the attacker of test_availability")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(attack(args.port, args.seconds, args.tasks))))
