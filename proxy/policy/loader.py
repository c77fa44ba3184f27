"""Read a policy bundle from disk: Rego modules and data, laid out as OPA bundles are.

A data file `<root>/a/b/data.json` (or `data.yaml`/`data.yml`) becomes `data.a.b`; a data file
directly in a root becomes the top of `data`. Every `.rego` file below a root is a module;
`*_test.rego` files only when tests are asked for (`policy test`): a broken test must never stop
a policy from being served. Symlinked directories are followed, so a
Kubernetes ConfigMap mount (`..data` → timestamped directory) reads like a plain directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_FILES = ("data.json", "data.yaml", "data.yml")


class PolicyLoadError(Exception):
    """A policy bundle that cannot be used; the message names the file (and line, if known)."""


@dataclass(frozen=True)
class PolicyBundle:
    modules: tuple[tuple[str, str], ...]  # (path, source)
    data: dict[str, Any] = field(default_factory=dict)
    revision: str = ""  # sha256 of every file's path and content, shortened
    data_files: dict[str, str] = field(default_factory=dict)  # "a.b" → the file that defined data.a.b

    def source_of(self, dotted: str) -> str:
        """The data file behind `data.<dotted>` (its longest defined prefix), or '' if none."""
        parts = dotted.split(".")
        for n in range(len(parts), -1, -1):
            found = self.data_files.get(".".join(parts[:n]))
            if found:
                return found
        return ""


def _files(root: Path, include_tests: bool) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PolicyLoadError(f"{root}: no such file or directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skips ConfigMap's ..data twins
        found.extend(Path(dirpath) / f for f in sorted(filenames)
                     if (f.endswith(".rego") and (include_tests or not f.endswith("_test.rego")))
                     or f in DATA_FILES)
    return found


def _merge(data: dict[str, Any], keys: tuple[str, ...], value: Any, source: Path) -> None:
    node = data
    for key in keys:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise PolicyLoadError(f"{source}: data.{'.'.join(keys)} collides with another data file")
    if not isinstance(value, dict):
        raise PolicyLoadError(f"{source}: a data file must hold an object")
    for key, item in value.items():
        if key in node:
            raise PolicyLoadError(f"{source}: data.{'.'.join((*keys, key))} is defined by two data files")
        node[key] = item


def load_bundle(paths: list[str] | tuple[str, ...], require_modules: bool = True,
                include_tests: bool = False) -> PolicyBundle:
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    data_files: dict[str, str] = {}
    digest = hashlib.sha256()
    for root_name in paths:
        root = Path(root_name)
        for path in _files(root, include_tests):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicyLoadError(f"{path}: cannot read: {exc}") from None
            digest.update(str(path).encode() + b"\0" + text.encode() + b"\0")
            if path.suffix == ".rego":
                modules.append((str(path), text))
                continue
            try:
                value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as exc:
                raise PolicyLoadError(f"{path}: invalid data: {exc}") from None
            keys = path.parent.relative_to(root).parts if root.is_dir() else ()
            _merge(data, keys, value if value is not None else {}, path)
            data_files[".".join(keys)] = str(path)
    if require_modules and not modules:
        raise PolicyLoadError(f"{', '.join(paths)}: no .rego files found")
    return PolicyBundle(tuple(modules), data, digest.hexdigest()[:12], data_files)
