"""Secrets the tests hand to the proxy (URL tokens, API tokens, JWTs). At the end of the session
every log, record and output file the suite wrote is searched for them (tests/conftest.py).

A secret counts as leaked when a text holds it whole, or any 16-character piece of it (a
mistyped, truncated or split token), in the text as written or percent-decoded up to three times.
A 16-character piece of a random URL-safe token is 96 bits: it is never there by chance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from proxy.auth.tokens import mint_token

SECRETS: list[str] = []
PIECE = 16
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{PIECE},}}")


def secret(value: str | None = None) -> str:
    """Register `value` (default: a new URL-safe token) as a secret and return it."""
    value = value or mint_token()
    SECRETS.append(value)
    return value


def forms(text: str) -> list[str]:
    """`text` and its percent-decodings, three deep (`%2541` is `A` to whoever decodes twice)."""
    out = [text]
    for _ in range(3):
        decoded = unquote(out[-1])
        if decoded == out[-1]:
            break
        out.append(decoded)
    return out


def _pieces(value: str) -> set[str]:
    return {run[i:i + PIECE] for run in _RUN.findall(value) for i in range(len(run) - PIECE + 1)}


def leaked(text: str, secrets: Iterable[str] | None = None) -> list[str]:
    """The secrets (default: every registered one) that `text` holds, whole or in pieces."""
    candidates = list(SECRETS if secrets is None else secrets)
    owners: dict[str, list[str]] = {}
    for value in candidates:
        for piece in _pieces(value):
            owners.setdefault(piece, []).append(value)
    known = set(owners)
    found: dict[str, None] = {}
    for form in forms(text):
        found.update((value, None) for value in candidates if value in form)
        for run in _RUN.findall(form):
            for piece in {run[i:i + PIECE] for i in range(len(run) - PIECE + 1)} & known:
                found.update((value, None) for value in owners[piece])
    return list(found)
