"""The policy pipeline: every message decided by one evaluation, answered as docs/policy-input.md says.

Client→server: requests, notifications and responses are decided before anything reaches the
upstream. Server→client: requests (sampling, elicitation, roots) are decided before they reach
the client, and every `tools/list` page is filtered to the tools the decision lets the client see,
whichever stream it arrives on. An engine failure denies (503); nothing undecided passes.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Server
from ..observe.decision_log import DecisionLog
from ..observe.metrics import Metrics
from ..policy.engine import Decision, PolicyEngine, PolicyError, to_decision
from ..protocol import jsonrpc
from ..protocol.jsonrpc import Kind, Message
from .catalog import Catalog
from .input import CLIENT_TO_SERVER, SERVER_TO_CLIENT, build_input, message_name, rfc3339, server_input
from .pipeline import ALLOW, DROP, Channel, Verdict

log = logging.getLogger("mcp_policy_proxy.enforce")

ENGINE_UNAVAILABLE = "Policy engine unavailable"
LAST_HANDSHAKE_REVISION = "2025-11-25"
_ALLOW_AND_WATCH = Verdict(True, watch_response=True)  # tools/list: its answer gets filtered


@dataclass(frozen=True, slots=True)
class PolicySet:
    """What a policy reload swaps as one: the engine and the catalog built from the same bundle."""

    engine: PolicyEngine
    catalog: Catalog


class DecisionIds:
    """UUID-shaped decision ids: a random 64-bit per-process prefix and a counter. Unique (which is
    all a decision id must be) without a system call for randomness on every decision."""

    def __init__(self) -> None:
        prefix = os.urandom(8).hex()
        self._head = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-"
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        n = next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF
        return f"{self._head}{0x8000 | (n >> 48) & 0x3FFF:04x}-{n & 0xFFFF_FFFF_FFFF:012x}"


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def tool_error(request_id: Any, reasons: tuple[str, ...], protocol_version: str | None) -> dict[str, Any]:
    """A tool result the model can read and correct itself from (not a protocol error)."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": "; ".join(reasons) or "Denied by policy"}],
                              "isError": True}
    if protocol_version is not None and protocol_version > LAST_HANDSHAKE_REVISION:
        result["resultType"] = "complete"  # required on results from revision 2026-07-28 on
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


class Enforcer:
    def __init__(self, policy: PolicySet, servers: tuple[Server, ...], decision_log: DecisionLog, *,
                 mode: str = "enforce", clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        self.policy = policy
        self.metrics = metrics or Metrics()
        self._mode = mode
        self._eval_seconds = {"embedded": self.metrics.evaluation.labels("embedded"),
                              "opa": self.metrics.evaluation.labels("opa")}
        self.dry_run = mode == "dry_run"
        self._servers = {s.name: server_input(s) for s in servers}
        self._log = decision_log
        self._ids = DecisionIds()
        self._clock = clock
        self._now = (0, "")
        # What the upstream said of its tools (annotations), and every tool name known, case-folded.
        self._annotations: dict[str, dict[str, Any]] = {}
        self._folded = {_fold(name): name for name in policy.catalog.known_names}

    def set_servers(self, servers: tuple[Server, ...]) -> None:
        """After a config reload: the servers' policy input, rebuilt once."""
        self._servers = {s.name: server_input(s) for s in servers}

    def _server(self, channel: Channel) -> dict[str, Any]:
        doc = self._servers.get(channel.server.name)
        return doc if doc is not None else server_input(channel.server)  # revoked meanwhile

    # --- Pipeline ---
    async def client_message(self, channel: Channel, msg: Message) -> Verdict:
        if msg.kind is Kind.RESPONSE:
            method = channel.server_requests.pop(msg.id, None)
            name = None
        else:
            method, name = msg.method, message_name(msg)
        extra: dict[str, Any] = {}
        if method == "tools/call" and msg.kind is Kind.REQUEST:
            if name is None or self._lookalike(name):
                return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.INVALID_PARAMS, f"Unknown tool: {name}"))
            extra["tool"] = self._tool_input(name, msg.params.get("arguments"))
        input = build_input(channel, self._server(channel), self._time(), kind=msg.kind.value,
                            direction=CLIENT_TO_SERVER, method=method, name=name, **extra)
        decision, decision_id = await self._decide(input)
        if decision is None:
            error = jsonrpc.error_response(msg.id, jsonrpc.INTERNAL_ERROR, ENGINE_UNAVAILABLE)
            return Verdict(False, error, status=503)
        if decision.allow or self.dry_run:
            return _ALLOW_AND_WATCH if method == "tools/list" else ALLOW
        if msg.kind is not Kind.REQUEST:
            return Verdict(False)  # nobody waits for an answer: not forwarded, logged
        scope = decision.result.get("insufficient_scope")
        scope = scope if isinstance(scope, str) and scope else None
        if method == "tools/call" and scope is None:
            if name not in decision.visible_tools:
                return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.INVALID_PARAMS, f"Unknown tool: {name}"))
            return Verdict(False, tool_error(msg.id, decision.reasons, channel.protocol_version))
        data = {"reasons": list(decision.reasons), "decision_id": decision_id}
        forbidden = jsonrpc.error_response(msg.id, jsonrpc.FORBIDDEN, "Forbidden by policy", data)
        if scope is not None:
            return Verdict(False, forbidden, status=403, scope=scope)
        return Verdict(False, forbidden)

    async def server_message(self, channel: Channel, msg: Message) -> Message | None:
        if msg.kind is Kind.RESPONSE:
            result = msg.data.get("result")
            if isinstance(result, dict) and isinstance(result.get("tools"), list):
                return await self._filter_tools(channel, msg, result)
            return None
        if msg.kind is Kind.NOTIFICATION:
            return None  # progress, logging, list_changed: they carry nothing the policy gates
        input = build_input(channel, self._server(channel), self._time(), kind="request",
                            direction=SERVER_TO_CLIENT, method=msg.method, name=message_name(msg))
        decision, _ = await self._decide(input)
        if decision is None or not (decision.allow or self.dry_run):
            log.info("dropped server→client request %s", msg.method)
            return DROP
        if msg.id is not None:
            channel.server_requests[msg.id] = msg.method or ""
        return None

    # --- helpers ---
    async def _filter_tools(self, channel: Channel, msg: Message, result: dict[str, Any]) -> Message | None:
        """One evaluation for the whole page; the page keeps only the visible tools."""
        tools = [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)]
        entries = []
        for tool in tools:
            annotations = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else None
            self._remember(tool["name"], annotations)
            entries.append(self.policy.catalog.classify(tool["name"], annotations).to_input(annotations))
        input = build_input(channel, self._server(channel), self._time(), kind="response",
                            direction=SERVER_TO_CLIENT, method="tools/list", tools=entries)
        decision, _ = await self._decide(input)
        if decision is None:
            error = jsonrpc.error_response(msg.id, jsonrpc.INTERNAL_ERROR, ENGINE_UNAVAILABLE)
            return Message(error, Kind.RESPONSE)
        if self.dry_run:
            return None
        visible = decision.visible_tools if decision.allow else frozenset()
        kept = [t for t in tools if t["name"] in visible]
        page = {**result, "tools": kept}
        # Answers depend on who asks and on policy that can change: no client may cache them.
        if "ttlMs" in page:
            page["ttlMs"] = 0
        if "cacheScope" in page:
            page["cacheScope"] = "private"
        if page == result:
            return None
        return Message({**msg.data, "result": page}, Kind.RESPONSE)

    def _tool_input(self, name: str, arguments: Any) -> dict[str, Any]:
        annotations = self._annotations.get(name)
        return {**self.policy.catalog.classify(name, annotations).to_input(annotations),
                "arguments": arguments if isinstance(arguments, dict) else {}}

    def _remember(self, name: str, annotations: dict[str, Any] | None) -> None:
        if len(self._annotations) < 65536:
            self._annotations[name] = annotations or {}
            self._folded.setdefault(_fold(name), name)

    def _lookalike(self, name: str) -> bool:
        """A name that is not a known tool but folds (case, Unicode compatibility) onto one."""
        if name in self._annotations:
            return False
        known = self._folded.get(_fold(name))
        return known is not None and known != name

    def _time(self) -> str:
        second = int(self._clock())
        if self._now[0] != second:
            self._now = (second, rfc3339(second))
        return self._now[1]

    async def _decide(self, input: dict[str, Any]) -> tuple[Decision | None, str]:
        engine = self.policy.engine
        decision_id = self._ids.next()
        start = time.perf_counter_ns()
        decision: Decision | None
        try:
            decision = to_decision(await engine.evaluate(input))
            result: Any = decision.result
            outcome = "allow" if decision.allow else "deny"
        except PolicyError as exc:
            log.warning("policy evaluation failed (%s engine): %s", engine.name, exc)
            decision, result, outcome = None, {"error": str(exc)}, "error"
            self.metrics.errors.labels(engine.name).inc()
        elapsed = time.perf_counter_ns() - start
        self._eval_seconds[engine.name].observe(elapsed / 1e9)
        self.metrics.decision(input["server"]["name"], outcome, self._mode)
        self._log.log(decision_id, input["time"], input, result, elapsed,
                      {"engine": engine.name, "revision": engine.revision, "mode": self._mode})
        return decision, decision_id
