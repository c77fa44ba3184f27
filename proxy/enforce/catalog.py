"""Tool classification: name → method (list/get/create/update/delete/custom), access, tags.

Order of evidence: an explicit catalog entry (`data.catalog.tools`, each field overridable by a
deployment's `data.catalog.overrides.tools`), the managed-MCP naming
convention, the tool's MCP annotations, else custom. Tags come from the entry or from the
catalog's tag rules (a word of the tool name → tags). Results are cached per (name, read-only
hint): classification runs once per tool, not once per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The classification cache: at most this many entries, and this many characters of names in all.
MAX_CACHED = 65536
MAX_CACHED_CHARS = 4 * 1024 * 1024

ACCESS = {"list": "read", "get": "read", "create": "write", "update": "write", "delete": "write"}
KNOWN_ACCESS = ("read", "write", "custom")  # the access levels a server's `methods` may name

# The managed-MCP naming convention (list_all_missive_conversations, get_single_…_by_id, …).
_CONVENTION = (
    (re.compile(r"^list_all_(?P<rest>.+)$"), "list"),
    (re.compile(r"^get_single_(?P<rest>.+)_by_id$"), "get"),
    (re.compile(r"^create_an?_(?P<rest>.+)$"), "create"),
    (re.compile(r"^update_an?_(?P<rest>.+)_by_id$"), "update"),
    (re.compile(r"^delete_an?_(?P<rest>.+)_by_id$"), "delete"),
)


@dataclass(frozen=True, slots=True)
class ToolInfo:
    name: str
    method: str
    access: str
    tags: tuple[str, ...]

    def to_input(self, annotations: dict[str, Any] | None) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "access": self.access, "tags": list(self.tags),
                "annotations": annotations or {}}


class CatalogError(ValueError):
    """Catalog data of the wrong shape at `path` (e.g. `data.catalog.overrides.tools.x.tags`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def _tools(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CatalogError(where, "must be a mapping of tool name to {method, access, tags}")
    for name, entry in value.items():
        if not isinstance(entry, dict) or not set(entry) <= {"method", "access", "tags"}:
            raise CatalogError(f"{where}.{name}", "must be a mapping with method, access and/or tags")
        if not isinstance(entry.get("method", ""), str) or not entry.get("method", "x"):
            raise CatalogError(f"{where}.{name}.method", "must be a non-empty string")
        if entry.get("access", "read") not in ("read", "write", "custom"):
            raise CatalogError(f"{where}.{name}.access", "must be read, write or custom")
        if "tags" in entry and not (isinstance(entry["tags"], list) and all(isinstance(t, str) for t in entry["tags"])):
            raise CatalogError(f"{where}.{name}.tags", "must be a list of strings")
    return value


def _rules(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, list) or not all(isinstance(r, dict) and isinstance(r.get("word"), str)
                                              and isinstance(r.get("tags", []), list) for r in value):
        raise CatalogError(where, "must be a list of {word, tags}")
    return {r["word"]: tuple(str(t) for t in r.get("tags", ())) for r in value}


class Catalog:
    """`data` is `data.catalog`: `tools`, `tag_rules`, and a deployment's `overrides` of both
    (a tool's fields replace the shipped entry's fields; a rule replaces the rule of its word)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        overrides = {} if data.get("overrides") is None else data["overrides"]
        if not isinstance(overrides, dict):
            raise CatalogError("data.catalog.overrides", "must be a mapping with tools and/or tag_rules")
        self._tools = dict(_tools(data.get("tools"), "data.catalog.tools"))
        for name, entry in _tools(overrides.get("tools"), "data.catalog.overrides.tools").items():
            self._tools[name] = {**self._tools.get(name, {}), **entry}
        rules = _rules(data.get("tag_rules"), "data.catalog.tag_rules")
        rules.update(_rules(overrides.get("tag_rules"), "data.catalog.overrides.tag_rules"))
        # Longest words first, so "shared_label" is tried before "label".
        self._rules = sorted(rules.items(), key=lambda rule: -len(rule[0]))
        # The rules by the word of a name they can start at (a one-word rule: singular or plural),
        # so matching costs a dict look-up per word of the name, not a scan per rule.
        self._rules_by_word: dict[str, list[tuple[int, list[str], tuple[str, ...]]]] = {}
        for order, (word, rule_tags) in enumerate(self._rules):
            parts = word.split("_")
            for start in (parts[0], parts[0] + "s") if len(parts) == 1 else (parts[0],):
                self._rules_by_word.setdefault(start, []).append((order, parts, rule_tags))
        self._cache: dict[tuple[str, bool], ToolInfo] = {}
        self._cached_chars = 0
        # The words a server's `methods` and `tags` may use (proxy/config_words.py checks them):
        # the access levels, the convention's methods, and every method and tag the catalog names.
        entries = [self.classify(name) for name in self._tools]
        named = {info.method for info in entries} - set(KNOWN_ACCESS) - set(ACCESS)
        self._known_methods = (*KNOWN_ACCESS, *ACCESS, *sorted(named))
        self._known_tags = tuple(sorted({t for info in entries for t in info.tags}
                                        | {t for _, rule_tags in self._rules for t in rule_tags}))

    @property
    def known_names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    @property
    def known_methods(self) -> tuple[str, ...]:
        """read, write, custom, list, get, create, update, delete, then the catalog's own methods."""
        return self._known_methods

    @property
    def known_tags(self) -> tuple[str, ...]:
        """Every tag of a tool entry or a tag rule, sorted."""
        return self._known_tags

    def classify(self, name: str, annotations: dict[str, Any] | None = None) -> ToolInfo:
        read_only = bool(annotations and annotations.get("readOnlyHint") is True)
        key = (name, read_only)
        info = self._cache.get(key)
        if info is None:
            info = self._classify(name, read_only)
            # Bounded in entries and in the bytes of the names kept (names come from what upstreams
            # declare: a client's name reaches the catalog only once the upstream declared it).
            if len(self._cache) < MAX_CACHED and self._cached_chars + len(name) <= MAX_CACHED_CHARS:
                self._cache[key] = info
                self._cached_chars += len(name)
        return info

    def _classify(self, name: str, read_only: bool) -> ToolInfo:
        entry = self._tools.get(name) or {}
        method = entry.get("method")
        if method is None:
            for pattern, convention in _CONVENTION:
                if pattern.match(name):
                    method = convention
                    break
            else:
                method = "get" if read_only else name
        access = entry.get("access") or ACCESS.get(method, "custom")
        tags = entry.get("tags")
        if tags is None:
            tags = self._tags_from_rules(name)
        return ToolInfo(name, str(method), str(access), tuple(str(t) for t in tags))

    def _tags_from_rules(self, name: str) -> tuple[str, ...]:
        """Rules match whole words of the name (the last one singular or plural), longest rule
        first; words a rule matched are not matched again ("shared_labels" is not also "labels").
        Linear in the name: each word finds the few rules that can start there by one look-up."""
        words = name.lower().replace("-", "_").split("_")
        candidates: list[tuple[int, int, int, tuple[str, ...]]] = []
        for i, first in enumerate(words):
            for order, parts, rule_tags in self._rules_by_word.get(first, ()):
                n = len(parts)
                if i + n <= len(words) and words[i + 1:i + n - 1] == parts[1:-1] \
                        and (n == 1 or words[i + n - 1] in (parts[-1], parts[-1] + "s")):
                    candidates.append((order, i, n, rule_tags))
        candidates.sort(key=lambda c: (c[0], c[1]))  # rule by rule, left to right, as the rules rank
        free = [True] * len(words)
        tags: list[str] = []
        for _, i, n, rule_tags in candidates:
            if all(free[i:i + n]):
                free[i:i + n] = [False] * n
                tags.extend(t for t in rule_tags if t not in tags)
        return tuple(tags)
