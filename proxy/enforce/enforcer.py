"""The policy pipeline: every message decided by one evaluation, answered as docs/policy-input.md says.

Client→server: requests, notifications and responses are decided before anything reaches the
upstream. Server→client: requests (sampling, elicitation, roots) are decided before they reach
the client, and every `tools/list` page is filtered to the tools the decision lets the client see,
whichever stream it arrives on. An engine failure denies (503); nothing undecided passes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..config import Server
from ..observe import tracing
from ..observe.decision_log import DecisionLog
from ..observe.log_context import note_decision
from ..observe.metrics import MCP_METHODS, OTHER, Metrics, current, error_type_of
from ..policy.engine import PolicyEngine, PolicyError, to_decision
from ..protocol import jsonrpc
from ..protocol.headers import META_PROTOCOL_VERSION
from ..protocol.jsonrpc import Kind, Message
from .catalog import Catalog
from .input import CLIENT_TO_SERVER, SERVER_TO_CLIENT, build_input, message_name, rfc3339, server_input
from .inventory import MAX_NAME_LENGTH, PARAM_HEADER_PREFIX, InventoryUnavailable, ToolDefinition, ToolInventory
from .pipeline import DROP, Channel, Verdict

log = logging.getLogger("mcp_policy_proxy.enforce")

ENGINE_UNAVAILABLE = "Policy engine unavailable"
# A message this large costs the event loop milliseconds at each step (the policy engine reading its
# input, the schema check): it is decided in several turns, so other clients are served between.
LARGE_MESSAGE_BYTES = 64 * 1024
# The longest name or URI a client may name in a request, checked before anything else looks at it
# (MCP: a tool name SHOULD be 1 to 128 characters, prompts are named alike; a URI has no limit
# there, so the length HTTP asks every server to take in a request line, RFC 9110 §4.1).
NAME_LIMITS = {"tools/call": ("tool names", MAX_NAME_LENGTH), "prompts/get": ("prompt names", MAX_NAME_LENGTH),
               "resources/read": ("resource URIs", 8192)}


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


def tool_error(request_id: Any, reasons: tuple[str, ...], revision: str | None) -> dict[str, Any]:
    """A tool result the model can read and correct itself from (not a protocol error), in the
    shape `revision` requires (Channel.revision: whatever transport carries it)."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": "; ".join(reasons) or "Denied by policy"}],
                              "isError": True}
    if jsonrpc.result_type_needed(revision):
        result["resultType"] = "complete"
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _has_tools(result: dict[str, Any]) -> bool:
    """A result carrying a tool list in any spelling a case-insensitive client would read."""
    return "tools" in result or any(k.casefold() == "tools" for k in result)


class Refusal(StrEnum):
    """Why the proxy itself refused a message (decision-log `result.refused_by_proxy`)."""

    INVALID_NAME = "invalid_name"  # tools/call without a name; a tool, prompt or resource name too long
    UNKNOWN_TOOL = "unknown_tool"  # the upstream declares no such tool
    INVENTORY_UNAVAILABLE = "inventory_unavailable"  # the upstream's tools could not be listed
    HEADER_MISMATCH = "header_mismatch"  # Mcp-Param-* headers disagree with the arguments
    INVALID_ARGUMENTS = "invalid_arguments"  # the arguments fail the tool's declared inputSchema
    ENGINE_ERROR = "engine_error"  # the policy engine gave no valid decision


@dataclass(frozen=True, slots=True)
class Ruling:
    """What was decided about one message, by the policy or by the proxy's own checks."""

    allow: bool
    reasons: tuple[str, ...] = ()
    visible_tools: frozenset[str] = frozenset()
    refusal: Refusal | None = None
    scope: str | None = None  # a scope the decision says the client lacks (403 insufficient_scope)
    result: Any = None  # what the decision log records as the result
    eval_ns: int = 0

    @staticmethod
    def refused(refusal: Refusal, reason: str) -> Ruling:
        return Ruling(False, (reason,), refusal=refusal,
                      result={"allow": False, "reasons": [reason], "refused_by_proxy": refusal.value})


@dataclass(frozen=True, slots=True)
class _Call:
    """A tools/call after the proxy's own checks: the policy's `tool` input, and what went wrong."""

    tool: dict[str, Any]
    refusal: Ruling | None = None  # refused before the policy runs (nothing to reveal)
    definition: ToolDefinition | None = None  # the upstream's, whose schema the arguments must satisfy
    # Refused after it (its headers or arguments are wrong), once the policy said whether the tool is
    # visible at all: a hidden tool is unknown, whatever is wrong with the call.
    faults: tuple[Refusal, tuple[str, ...]] | None = None
    forward_headers: tuple[tuple[str, str], ...] = ()


class Enforcer:
    def __init__(self, policy: PolicySet, servers: tuple[Server, ...], decision_log: DecisionLog, *,
                 mode: str = "enforce", clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, inventory: ToolInventory | None = None,
                 inventories: Callable[[Server], ToolInventory] | None = None) -> None:
        """`inventories`: each server's upstream's tools (servers[].upstream); without it, `inventory`
        is every server's."""
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.inventory = inventory or ToolInventory(None)
        self._inventories = inventories
        self._named = {s.name: s for s in servers}
        self._mode = mode
        self.dry_run = mode == "dry_run"
        self._servers = {s.name: server_input(s) for s in servers}
        self._log = decision_log
        self._ids = DecisionIds()
        self._clock = clock
        self._now = (0, "")
        self._catalog_names: tuple[Catalog | None, frozenset[str]] = (None, frozenset())

    def set_servers(self, servers: tuple[Server, ...]) -> None:
        """After a config reload: the servers' policy input, rebuilt once."""
        self._servers = {s.name: server_input(s) for s in servers}
        self._named = {s.name: s for s in servers}

    def _inventory(self, server: Server | None) -> ToolInventory:
        """The tools of `server`'s upstream: a tool list of one upstream never decides a call to another."""
        return self._inventories(server) if self._inventories is not None and server is not None else self.inventory

    def _server(self, channel: Channel) -> dict[str, Any]:
        doc = self._servers.get(channel.server.name)
        return doc if doc is not None else server_input(channel.server)  # revoked meanwhile

    # --- Pipeline ---
    async def client_message(self, channel: Channel, msg: Message,
                             headers: Iterable[tuple[str, str]] = ()) -> Verdict:
        """The one decision path of a client message: input, evaluation (or the proxy's own refusal),
        one decision-log entry, one count, dry_run applied once, one verdict."""
        if msg.kind is Kind.RESPONSE:
            method, name = channel.server_requests.pop(msg.id, None), None
        else:
            method, name = msg.method, message_name(msg)
        # A name longer than any the upstream may declare is refused before anything (the tool
        # inventory, the catalog, the policy, the log) looks at more of it than its first characters.
        refused: Ruling | None = None
        if msg.kind is Kind.REQUEST and name is not None and (bound := NAME_LIMITS.get(method or "")):
            what, limit = bound
            if len(name) > limit:
                refused = Ruling.refused(Refusal.INVALID_NAME, f"{what} are at most {limit} characters")
                name = name[:limit]
        call = await self._check_call(channel, msg, name, headers, refused) \
            if method == "tools/call" and msg.kind is Kind.REQUEST else None
        extra: dict[str, Any] = {}
        if call is not None:
            extra["tool"] = call.tool
            refused = call.refusal
        input = build_input(channel, self._server(channel), self._time(), kind=msg.kind.value,
                            direction=CLIENT_TO_SERVER, method=method, name=name, **extra)
        if refused is not None:
            ruling = refused
        else:
            large = msg.canonical is not None and len(msg.canonical) > LARGE_MESSAGE_BYTES
            if large:
                await asyncio.sleep(0)
            ruling = await self._evaluate(input)
            faults = call.faults if call is not None else None
            if call is not None and faults is None and call.definition is not None and ruling.refusal is None \
                    and (ruling.allow or call.tool["name"] in ruling.visible_tools):
                # The schema is checked where it decides the answer: a tool the policy hides is
                # unknown whatever its arguments (and checking megabytes of them takes milliseconds).
                if large:
                    await asyncio.sleep(0)
                violations = call.definition.violations(call.tool["arguments"])
                faults = (Refusal.INVALID_ARGUMENTS, tuple(violations)) if violations else None
            if faults is not None and ruling.refusal is None:
                refusal, reasons = faults
                ruling = dataclasses.replace(
                    ruling, allow=False, reasons=reasons, refusal=refusal,
                    result={**ruling.result, "allow": False, "reasons": list(reasons),
                            "refused_by_proxy": refusal.value})
        decision_id = self._record(input, ruling)
        if ruling.allow or self.dry_run:
            return Verdict(True, headers=call.forward_headers if call is not None else ())
        verdict = self._refusal_verdict(channel, msg, method, name, ruling, decision_id)
        current().error_type = error_type_of(verdict.reply)
        return verdict

    async def server_message(self, channel: Channel, msg: Message) -> Message | None:
        if msg.kind is Kind.RESPONSE:
            if msg.id is not None and msg.id == channel.request_id:  # the answer to this request's message
                current().error_type = error_type_of(msg.data)
            result = msg.data.get("result")
            page = channel.watched.get(msg.id) == "tools/list" or (isinstance(result, dict) and _has_tools(result))
            if not page or "error" in msg.data:
                return None
            if not (isinstance(result, dict) and isinstance(result.get("tools"), list)):
                return Message(jsonrpc.undecided(msg.id, "a tools/list result without a list of tools"), Kind.RESPONSE)
            if twins := jsonrpc.case_twins(result):
                return Message(jsonrpc.undecided(msg.id, f"result keys {twins[0]!r} and {twins[1]!r} differ only "
                                                         "in case"), Kind.RESPONSE)
            # Only an answer to a tools/list request declares tools; a page elsewhere (a GET stream,
            # another request's answer) is filtered but teaches the inventory nothing.
            return await self._filter_tools(channel, msg, result, declares=channel.watched.get(msg.id) == "tools/list")
        if msg.kind is Kind.NOTIFICATION:
            if msg.method == "notifications/tools/list_changed":
                self._inventory(channel.server).invalidate()
            return None  # progress, logging, list_changed: they carry nothing the policy gates
        input = build_input(channel, self._server(channel), self._time(), kind="request",
                            direction=SERVER_TO_CLIENT, method=msg.method, name=message_name(msg))
        ruling = await self._evaluate(input)
        self._record(input, ruling)
        if not (ruling.allow or self.dry_run):
            log.info("dropped server→client request %s", msg.method)
            return DROP
        if msg.id is not None:
            channel.remember(channel.server_requests, msg.id, msg.method or "")
        return None

    # --- the proxy's own checks of a tools/call ---
    async def _check_call(self, channel: Channel, msg: Message, name: str | None, headers: Iterable[tuple[str, str]],
                          refused: Ruling | None) -> _Call:
        """`name`: the called name, cut to the limit when `refused` (too long) already."""
        arguments = msg.params.get("arguments") or {}  # intake refused anything but an object or null
        if refused is not None or not name:
            refused = refused or Ruling.refused(Refusal.INVALID_NAME, "tools/call needs params.name, a tool name")
            return _Call({"name": name, "arguments": arguments}, refused)
        # Only a name the upstream declared goes further (a set look-up): the catalog, the schema
        # check and the policy never see one it did not.
        try:
            definition = await self._inventory(channel.server).lookup(name)
        except InventoryUnavailable as exc:
            reason = f"the upstream's tools could not be listed to check this call: {exc}"
            return _Call({"name": name, "arguments": arguments},
                         Ruling.refused(Refusal.INVENTORY_UNAVAILABLE, reason))
        if definition is None:
            return _Call({"name": name, "arguments": arguments},
                         Ruling.refused(Refusal.UNKNOWN_TOOL, f"the upstream declares no tool {name}"))
        tool = {**self.policy.catalog.classify(name, definition.annotations).to_input(definition.annotations),
                "arguments": arguments}
        # Mcp-Param-* exist from revision 2026-07-28 on (params._meta names it): there they must mirror
        # the arguments, as the SDK's servers check; an older request's are never forwarded at all.
        forwarded: tuple[tuple[str, str], ...] = ()
        meta = msg.params.get("_meta")
        if isinstance(meta, dict) and META_PROTOCOL_VERSION in meta:
            pairs = [(n, v) for n, v in headers if n.startswith(PARAM_HEADER_PREFIX)]
            if pairs or definition.param_headers:
                mismatch = definition.param_header_mismatch(pairs, arguments)
                if mismatch is not None:
                    return _Call(tool, faults=(Refusal.HEADER_MISMATCH, (f"Header mismatch: {mismatch}",)))
            forwarded = tuple((n, v) for n, v in pairs if n in definition.param_headers)
        return _Call(tool, definition=definition, forward_headers=forwarded)

    # --- outcome → answer: the one mapping, for every transport ---
    def _refusal_verdict(self, channel: Channel, msg: Message, method: str | None, name: str | None,
                         ruling: Ruling, decision_id: str) -> Verdict:
        if ruling.refusal is Refusal.ENGINE_ERROR:
            error = jsonrpc.error_response(msg.id, jsonrpc.INTERNAL_ERROR, ENGINE_UNAVAILABLE)
            return Verdict(False, error, status=503)
        if msg.kind is not Kind.REQUEST:
            return Verdict(False)  # nobody waits for an answer: not forwarded, logged
        refusal, reason = ruling.refusal, "; ".join(ruling.reasons)
        if refusal is Refusal.INVENTORY_UNAVAILABLE:
            return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.INTERNAL_ERROR, reason), status=502)
        if refusal is Refusal.INVALID_NAME:
            return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.INVALID_PARAMS, f"Invalid params: {reason}"))
        if method == "tools/call" and ruling.scope is None:
            if refusal is Refusal.UNKNOWN_TOOL or name not in ruling.visible_tools:
                return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.INVALID_PARAMS, f"Unknown tool: {name}"))
            if refusal is Refusal.HEADER_MISMATCH:
                return Verdict(False, jsonrpc.error_response(msg.id, jsonrpc.HEADER_MISMATCH, reason), status=400)
            return Verdict(False, tool_error(msg.id, ruling.reasons, channel.revision(msg)))
        data = {"reasons": list(ruling.reasons), "decision_id": decision_id}
        forbidden = jsonrpc.error_response(msg.id, jsonrpc.FORBIDDEN, "Forbidden by policy", data)
        if ruling.scope is not None:
            return Verdict(False, forbidden, status=403, scope=ruling.scope)
        return Verdict(False, forbidden)

    # --- helpers ---
    async def _filter_tools(self, channel: Channel, msg: Message, result: dict[str, Any], *, declares: bool
                            ) -> Message:
        """One evaluation for the whole page; the page keeps only the visible tools. The page is always
        re-encoded from what was parsed, so the client sees exactly what was decided."""
        # Entries without a string name, or with a case twin of a field ("Name"), are no tools a client
        # may see: they are dropped.
        tools = [t for t in result["tools"]
                 if isinstance(t, dict) and isinstance(t.get("name"), str) and not jsonrpc.case_twins(t)]
        if declares:
            self._inventory(channel.server).learn(tools)
        entries = []
        for tool in tools:
            annotations = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else None
            entries.append(self.policy.catalog.classify(tool["name"], annotations).to_input(annotations))
        input = build_input(channel, self._server(channel), self._time(), kind="response",
                            direction=SERVER_TO_CLIENT, method="tools/list", tools=entries)
        ruling = await self._evaluate(input)
        self._record(input, ruling)
        if ruling.refusal is Refusal.ENGINE_ERROR and not self.dry_run:
            return Message(jsonrpc.error_response(msg.id, jsonrpc.INTERNAL_ERROR, ENGINE_UNAVAILABLE), Kind.RESPONSE)
        visible = ruling.visible_tools if ruling.allow else frozenset()
        page = {**result, "tools": tools if self.dry_run else [t for t in tools if t["name"] in visible]}
        # Answers depend on who asks and on policy that can change: no client may cache them.
        if "ttlMs" in page:
            page["ttlMs"] = 0
        if "cacheScope" in page:
            page["cacheScope"] = "private"
        return Message({**msg.data, "result": page}, Kind.RESPONSE)

    def _time(self) -> str:
        second = int(self._clock())
        if self._now[0] != second:
            self._now = (second, rfc3339(second))
        return self._now[1]

    async def _evaluate(self, input: dict[str, Any]) -> Ruling:
        """One evaluation of the policy; an engine failure is a refusal, never an allow."""
        engine = self.policy.engine
        start = time.perf_counter_ns()
        try:
            decision = to_decision(await engine.evaluate(input))
        except PolicyError as exc:
            log.warning("policy evaluation failed (%s engine): %s", engine.name, exc)
            self.metrics.errors.labels(engine.name).inc()
            elapsed = time.perf_counter_ns() - start
            self.metrics.evaluated(engine.name, elapsed / 1e9)
            return Ruling(False, (ENGINE_UNAVAILABLE,), refusal=Refusal.ENGINE_ERROR, result={"error": str(exc)},
                          eval_ns=elapsed)
        elapsed = time.perf_counter_ns() - start
        self.metrics.evaluated(engine.name, elapsed / 1e9)
        scope = decision.result.get("insufficient_scope")
        return Ruling(decision.allow, decision.reasons, decision.visible_tools,
                      scope=scope if isinstance(scope, str) and scope else None, result=decision.result,
                      eval_ns=elapsed)

    def _tool_label(self, name: str | None, server: str) -> str:
        """A tool name as a metric label: only one the catalog names or the upstream declared."""
        catalog = self.policy.catalog
        if self._catalog_names[0] is not catalog:  # a policy reload brought another catalog
            self._catalog_names = (catalog, frozenset(catalog.known_names))
        if name is not None and (name in self._inventory(self._named.get(server)) or name in self._catalog_names[1]):
            return name
        return OTHER

    def _record(self, input: dict[str, Any], ruling: Ruling) -> str:
        """The decision's one log entry and one count; its decision id."""
        engine = self.policy.engine
        decision_id = self._ids.next()
        outcome = "error" if ruling.refusal is Refusal.ENGINE_ERROR else "allow" if ruling.allow else "deny"
        server = input["server"]["name"]
        self.metrics.decision(server, outcome, self._mode)
        message = input["message"]
        if message["direction"] == CLIENT_TO_SERVER and message["kind"] != "response":
            # The request's own decision (a tools/list page's is the answer's): its metric labels.
            record, method = current(), message["method"]
            record.method, record.decision = method if method in MCP_METHODS else OTHER, outcome
            if method == "tools/call":
                record.tool = tool = self._tool_label(message["name"], server)
                self.metrics.tool_call(server, tool, outcome)
        labels = {"engine": engine.name, "revision": engine.revision, "mode": self._mode}
        trace = tracing.decided(decision_id, outcome, message, ruling.eval_ns, labels,
                                ruling.refusal.value if ruling.refusal is not None else None)  # None: not traced
        self._log.log(decision_id, input["time"], input, ruling.result, ruling.eval_ns, labels, trace)
        note_decision(decision_id)  # for the request's access-log line
        return decision_id
