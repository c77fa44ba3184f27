"""A server's `methods` and `tags` must be words the catalog knows.

`methods: [reed]` or `tags: [suport]` would match no tool and silently narrow (or empty) a server;
they are refused instead, naming the file, the key and the nearest known word. The check needs the
config and the catalog both, so it runs where both are at hand: `config check`, the start of the
proxy, a config reload (against the catalog in force) and a policy reload (the new catalog against
the config in force).
"""

from __future__ import annotations

import difflib

from .config import Config, ConfigError
from .enforce.catalog import Catalog

_LISTED = 24  # known words shown in an error before "…"


class UnknownWordError(ConfigError):
    """A server names a method or tag the catalog does not know."""


def check_config_words(config: Config, catalog: Catalog) -> None:
    """Raise UnknownWordError for the first method or tag of a server that `catalog` does not know."""
    methods, tags = set(catalog.known_methods), set(catalog.known_tags)
    for i, server in enumerate(config.servers):
        for field, words, known, ordered in (("methods", server.methods, methods, catalog.known_methods),
                                             ("tags", server.tags, tags, catalog.known_tags)):
            for j, word in enumerate(words):
                if word not in known:
                    raise UnknownWordError(config.source, f"servers[{i}].{field}[{j}]",
                                           unknown_word(field[:-1], word, ordered))


def unknown_word(kind: str, word: str, known: tuple[str, ...]) -> str:
    """`unknown method 'reed' (did you mean 'read'?); known: read, write, …`"""
    nearest = difflib.get_close_matches(word, known, n=1)
    hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
    listed = ", ".join(known[:_LISTED]) + (", …" if len(known) > _LISTED else "")
    return f"unknown {kind} {word!r}{hint}; known: {listed or '(none)'}"
