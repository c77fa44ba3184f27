"""URL tokens and API tokens: secrets the proxy stores only as digests.

A URL token is 256 random bits (43 URL-safe characters) in the server's URL; the config holds only
HMAC-SHA256(url_token_key, token). An API token is a bearer token the config holds as SHA-256.
Look-ups go by digest: what an attacker can time is a dictionary probe of an HMAC output they
cannot choose, never a comparison with the secret itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

TOKEN_BYTES = 32
# What a token the proxy minted can look like; anything else is not looked up at all.
_PLAUSIBLE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")

T = TypeVar("T")


def mint_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def url_token_hmac(key: str, token: str) -> str:
    return hmac.new(key.encode(), token.encode(), hashlib.sha256).hexdigest()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DigestIndex(Generic[T]):
    """Values by the hex digest of their secret; `find` digests a presented secret and looks it up."""

    def __init__(self, entries: Iterable[tuple[str, T]], digest: Callable[[str], str]) -> None:
        self._by_digest = {d.lower(): v for d, v in entries}
        self._digest = digest

    def find(self, secret: str) -> T | None:
        if not _PLAUSIBLE.match(secret):
            return None
        return self._by_digest.get(self._digest(secret))

    def __len__(self) -> int:
        return len(self._by_digest)
