"""Secrets the tests hand to the proxy (URL tokens, API tokens, JWTs). At the end of the session
every log, record and output file the suite wrote is searched for them (tests/conftest.py)."""

from __future__ import annotations

from proxy.auth.tokens import mint_token

SECRETS: list[str] = []


def secret(value: str | None = None) -> str:
    """Register `value` (default: a new URL-safe token) as a secret and return it."""
    value = value or mint_token()
    SECRETS.append(value)
    return value
