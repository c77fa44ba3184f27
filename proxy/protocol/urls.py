"""Upstream URLs: checked and percent-encoded once, so what goes on the request line is what was meant.

A request target must be ASCII without spaces or control characters: anything else either cannot be
encoded at all or splits the request line differently for different parsers. Non-ASCII and other
unsafe characters of the path and query are percent-encoded (UTF-8) once; what no encoding can fix
(credentials in the URL, a fragment, whitespace, a bad port, a stray `%`) is refused with a reason
an operator can act on.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

# RFC 3986 pchar and "/" (plus "%": triplets already encoded stay as they are); the query adds "?".
_PATH_SAFE = "/!$&'()*+,;=:@-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"[A-Za-z0-9._~-]+")


class UrlError(ValueError):
    """A URL that cannot be sent; the message says why and what to write instead."""


def _unprintable(text: str) -> bool:
    return any(c.isspace() or c < " " or "\x7f" <= c <= "\x9f" for c in text)


def split_url(url: str) -> SplitResult:
    """`url` (http or https) split, its path and query percent-encoded; UrlError if it cannot be sent."""
    if _unprintable(url):
        raise UrlError("must not contain spaces or control characters (percent-encode them: %20)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise UrlError(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlError("must be an http(s) URL with a host")
    if "@" in parts.netloc:
        raise UrlError("must not carry credentials (user:password@): send them in upstream.headers")
    if parts.fragment or url.endswith("#"):
        raise UrlError("must not have a fragment (#…): it is never sent")
    host = parts.hostname
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlError("has an invalid IPv6 address") from None
    elif not _HOST.fullmatch(host):
        raise UrlError("host must be an ASCII name or address (write an internationalised name as xn--…)")
    for part in (parts.path, parts.query):
        if _BAD_PERCENT.search(part):
            raise UrlError("has a '%' that is not followed by two hex digits (write a literal % as %25)")
    return parts._replace(path=quote(parts.path, safe=_PATH_SAFE), query=quote(parts.query, safe=_QUERY_SAFE))


def normalize_url(url: str) -> str:
    """`url` with its path and query percent-encoded (idempotent); UrlError if it cannot be sent."""
    return urlunsplit(split_url(url))
