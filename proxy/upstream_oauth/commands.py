"""`upstream login` and `upstream status` (the command line's part; the login itself: login.py).

`status` reads the token file only: it says what the grant is (scopes, expiry, client), never a
token, and contacts nobody.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from ..config import Config, UpstreamOAuth
from . import store
from .store import Grant, GrantFileError


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "no expiry given"
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds = abs(ts - now)
    span = f"{math.ceil(seconds)} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"
    return f"{stamp} (in {span})" if ts > now else f"{stamp} ({span} ago)"


def status_lines(settings: UpstreamOAuth, grant: Grant, now: float) -> list[str]:
    """Everything about the grant but its secrets."""
    if grant.expires_at is not None and grant.expired(now):
        access = f"expired {_when(grant.expires_at, now)}" + (
            "; refreshed on the next request" if grant.refresh_token else "; a new login is needed")
    else:
        access = f"expires {_when(grant.expires_at, now)}"
    how = "registered by `upstream login`, RFC 7591" if grant.registered else "upstream.oauth.client_id"
    return [f"resource:             {grant.resource}",
            f"authorization server: {grant.issuer}",
            f"client:               {grant.client_id} ({how})",
            f"scopes:               {grant.scope}",
            f"access token:         {access}",
            f"refresh token:        {'yes' if grant.refresh_token else 'no'}",
            f"obtained:             {_when(grant.obtained_at, now)}",
            f"token file:           {settings.token_file}" + (" (encrypted)" if settings.token_key else "")]


def status(config: Config, out: TextIO) -> int:
    """0: a usable grant (valid, or refreshable); 1: none."""
    settings = config.upstream.oauth
    assert settings is not None
    try:
        grant = store.load(settings.token_file, settings.token_key)
    except GrantFileError as exc:
        print(f"mcp-policy-proxy: upstream status: {exc.message}: run `mcp-policy-proxy upstream login "
              f"--config {config.source}`", file=sys.stderr)
        return 1
    now = time.time()
    for line in status_lines(settings, grant, now):
        print(line, file=out)
    if (warning := store.mode_problem(settings.token_file)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if grant.expired(now) and grant.refresh_token is None else 0


def command(name: str, config: Config, timeout_s: float) -> int:
    """`upstream login` / `upstream status`; exit codes as the rest of the command line."""
    if config.upstream.oauth is None:
        print(f"mcp-policy-proxy: {config.source}: upstream.oauth: is not configured", file=sys.stderr)
        return 2
    if name == "status":
        return status(config, sys.stdout)
    from .login import LoginError, login  # the SDK and authlib: imported only to log in

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request would bury the URL to open
    try:
        grant = asyncio.run(login(config, sys.stdout, timeout_s))
    except LoginError as exc:
        print(f"mcp-policy-proxy: upstream login: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"mcp-policy-proxy: upstream login: cannot write {config.upstream.oauth.token_file}: {exc.strerror}",
              file=sys.stderr)
        return 1
    print(f"Logged in: scopes {grant.scope}; the access token expires {_when(grant.expires_at, time.time())}; "
          f"the grant is in {config.upstream.oauth.token_file}", file=sys.stderr)
    return 0
