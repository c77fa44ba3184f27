"""What the upstream declares of its tools: names, annotations and argument schemas.

A `tools/call` is decided only for a tool the upstream declared, and only after its arguments
passed the tool's declared `inputSchema` strictly (JSON types, no coercion: `"yes"` is not a
boolean), because the upstream will coerce what it is sent and act on the coerced value.

Definitions are learnt from every `tools/list` page the proxy relays; a call naming a tool the
inventory does not hold (or holds longer than its time to live, or since the upstream announced
`notifications/tools/list_changed`) makes the proxy list the upstream's tools itself, with its own
credential. Schemas are compiled once per definition (jsonschema-rs: benchmarks/README.md has the
measurement), never per call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
from mcp.shared.inbound import find_invalid_x_mcp_header, validate_mcp_param_headers, x_mcp_header_map

log = logging.getLogger("mcp_policy_proxy.inventory")

MAX_NAME_LENGTH = 128  # MCP: a tool name SHOULD be 1 to 128 characters
MAX_TOOLS = 10_000  # definitions kept per upstream (an upstream listing more is cut, logged)
MAX_VIOLATIONS = 5  # schema violations named in one answer
PARAM_HEADER_PREFIX = "mcp-param-"

Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]

# How every schema is compiled (benchmarks/README.md, "Argument schema validation"): no `$ref` is
# ever fetched (http or file: the upstream does not get to make the proxy read or connect
# anywhere); regular expressions run in linear time (a `pattern` that needs backtracking makes
# the schema unusable rather than a client's string a denial of service); argument values are
# masked in error messages (they reach the decision log as reasons).
_VALIDATOR_OPTIONS: dict[str, Any] = {"offline": True, "pattern_options": jsonschema_rs.RegexOptions(),
                                      "mask": "the value"}


class InventoryUnavailable(Exception):
    """The upstream's tools could not be listed (it is down, or answered something unusable)."""


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    annotations: dict[str, Any] | None
    schema: Any
    validator: Any = None  # a compiled jsonschema-rs validator; None when the schema is unusable
    schema_error: str | None = None
    # Lowercase `mcp-param-*` header names the schema declares (x-mcp-header, revision 2026-07-28).
    param_headers: frozenset[str] = frozenset()

    def violations(self, arguments: dict[str, Any]) -> list[str]:
        """What is wrong with `arguments` for this tool, in sentences a model can act on; [] if nothing."""
        if self.validator is None:
            return [f"the upstream declares no usable inputSchema for tool {self.name} ({self.schema_error}), "
                    "so its arguments cannot be checked"]
        try:
            if self.validator.is_valid(arguments):
                return []
            # Only the errors named in the answer: collecting every one would cost per wrong value.
            errors = list(itertools.islice(self.validator.iter_errors(arguments), MAX_VIOLATIONS))
        except Exception as exc:  # e.g. text the validator cannot take: not checked, so not valid
            return [f"the arguments cannot be checked against the inputSchema of tool {self.name} "
                    f"({type(exc).__name__})"]
        found = []
        for error in errors:
            path = "/".join(str(p) for p in error.instance_path)
            where = f"argument {path}" if path else "the arguments"
            found.append(f"{where}: {error.message}{_expected(self.schema, list(error.schema_path))}")
            if len(found) == MAX_VIOLATIONS:
                break
        return found

    def param_header_mismatch(self, headers: list[tuple[str, str]], arguments: dict[str, Any]) -> str | None:
        """Why the request's `Mcp-Param-*` headers (raw pairs: a repeated one counts) disagree with
        the arguments they mirror, or None. The SDK's own check, as its servers run it."""
        rejection = validate_mcp_param_headers(self.schema, arguments, _Pairs(headers))  # type: ignore[arg-type]
        return None if rejection is None else rejection.message


class _Pairs:
    """Raw header pairs with the `.items()` the SDK's check reads (it folds a mapping's items itself)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs


def _expected(schema: Any, schema_path: list[Any]) -> str:
    """' (expected: boolean or null)' for a type-like failure, from the failing keyword's schema."""
    node = schema
    try:
        for step in schema_path[:-1]:
            node = node[step]
    except (KeyError, IndexError, TypeError):
        return ""
    types: list[str] = []
    for branch in [node, *(node.get("anyOf") or []), *(node.get("oneOf") or [])] if isinstance(node, dict) else []:
        t = branch.get("type") if isinstance(branch, dict) else None
        types.extend(x for x in ([t] if isinstance(t, str) else t if isinstance(t, list) else [])
                     if isinstance(x, str) and x not in types)
    return f" (expected: {' or '.join(types)})" if types and schema_path[-1] in ("anyOf", "oneOf", "type") else ""


def define(tool: dict[str, Any]) -> ToolDefinition:
    """A definition from one entry of a tools/list result, its schema compiled."""
    name = tool["name"]
    annotations = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else None
    schema = tool.get("inputSchema")
    if not isinstance(schema, dict):
        return ToolDefinition(name, annotations, schema, None, "inputSchema is missing or not an object")
    try:
        validator = jsonschema_rs.validator_for(schema, **_VALIDATOR_OPTIONS)
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        return ToolDefinition(name, annotations, schema, None, str(exc).split("\n", 1)[0])
    headers: frozenset[str] = frozenset()
    if find_invalid_x_mcp_header(schema) is None:
        headers = frozenset(PARAM_HEADER_PREFIX + token.lower() for token in x_mcp_header_map(schema).values())
    return ToolDefinition(name, annotations, schema, validator, None, headers)


class ToolInventory:
    """The tools one upstream declares, kept fresh; `lookup` lists the upstream itself when it must.

    `ttl_s` bounds how long a definition is trusted without being seen again; misses refetch at
    most once per `min_refetch_s`, so clients naming tools at random cannot make the proxy list
    the upstream on every call.
    """

    def __init__(self, fetch: Fetch | None, *, ttl_s: float = 300.0, min_refetch_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._ttl_s, self._min_refetch_s, self._clock = ttl_s, min_refetch_s, clock
        self._tools: dict[str, ToolDefinition] = {}
        self._seen: dict[str, float] = {}  # when each definition was last listed by the upstream
        self._stale_before = float("-inf")  # definitions seen before this instant are stale (list_changed)
        self._last_fetch = float("-inf")
        self._last_error: str | None = None  # why the last listing failed, if it did
        self._fetching: asyncio.Future[None] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def learn(self, tools: Iterable[dict[str, Any]]) -> None:
        """Definitions from a relayed tools/list page (entries already checked to have a string name)."""
        now = self._clock()
        known, seen = self._tools, self._seen
        for tool in tools:
            name = tool["name"]
            if name not in known and len(known) >= MAX_TOOLS:
                log.warning("upstream lists more than %d tools; later ones are not kept", MAX_TOOLS)
                return
            self._define(known, tool)
            seen[name] = now

    def _define(self, into: dict[str, ToolDefinition], tool: dict[str, Any]) -> None:
        """`tool` into `into`; compiled anew only when its schema or annotations changed."""
        name = tool["name"]
        current = self._tools.get(name)
        annotations = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else None
        if current is None or current.schema != tool.get("inputSchema"):
            into[name] = define(tool)
        elif current.annotations != annotations:
            into[name] = dataclasses.replace(current, annotations=annotations)
        else:
            into[name] = current

    def invalidate(self) -> None:
        """The upstream announced notifications/tools/list_changed: every definition must be seen again."""
        self._stale_before = self._clock()

    def _fresh(self, name: str) -> bool:
        seen = self._seen.get(name)
        return seen is not None and seen >= self._stale_before and self._clock() - seen < self._ttl_s

    async def lookup(self, name: str) -> ToolDefinition | None:
        """The upstream's current definition of `name`, or None if it declares no such tool.

        Raises InventoryUnavailable when the upstream must be listed and cannot be.
        """
        definition = self._tools.get(name)
        if definition is not None and self._fresh(name):
            return definition
        if self._fetching is None and self._clock() - self._last_fetch < self._min_refetch_s:
            # Listed a moment ago: at most one listing per min_refetch_s, whatever clients call.
            if self._last_error is not None:
                raise InventoryUnavailable(self._last_error)  # and in vain
            if definition is None:
                return None  # it was not there
        await self.refresh()
        definition = self._tools.get(name)
        if definition is not None and self._seen[name] < self._stale_before:
            # A list_changed arrived while the upstream was being listed (a server announcing one as
            # each session starts does): what was listed may predate it, so list once more.
            await self.refresh()
            definition = self._tools.get(name)
        return definition if definition is not None and self._fresh(name) else None

    async def refresh(self) -> None:
        """List the upstream's tools anew (one listing at a time, shared by every caller waiting;
        a caller that goes away does not cancel it for the others)."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._refresh())
            self._fetching.add_done_callback(self._listed)
        await asyncio.shield(self._fetching)

    def _listed(self, listing: asyncio.Future[None]) -> None:
        if self._fetching is listing:
            self._fetching = None
        if not listing.cancelled():
            listing.exception()  # retrieved here too, in case every waiter went away

    async def _refresh(self) -> None:
        if self._fetch is None:
            raise InventoryUnavailable("the proxy has no way to list the upstream's tools")
        # Stamped with when the listing began: a list_changed that arrives meanwhile may postdate
        # what the upstream listed, so it still makes these definitions stale.
        started = self._last_fetch = self._clock()
        try:
            tools = await self._fetch()
        except Exception as exc:  # whatever the upstream did, the call cannot be checked: refused
            self._last_error = str(exc) or type(exc).__name__
            raise InventoryUnavailable(self._last_error) from None
        self._last_error = None
        # A full listing replaces the whole inventory: tools the upstream no longer lists are gone.
        fetched: dict[str, ToolDefinition] = {}
        for tool in tools[:MAX_TOOLS]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                self._define(fetched, tool)
        self._tools, self._seen = fetched, dict.fromkeys(fetched, started)
