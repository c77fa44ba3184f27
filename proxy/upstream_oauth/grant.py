"""The grant in `serve`: the `Authorization` value on every upstream request, kept fresh.

The hot path reads one attribute (`authorization()`); the header value is built once per token. A
refresh starts ahead of expiry (in the background while the token is still valid; requests wait
for it only once it has expired) and runs once however many requests need it: they share one task,
shielded, so a client that leaves does not cancel it for the others. It runs under the token file's
lock and reads the file first: a sibling worker or a new `upstream login` may have written a newer
grant, which is then used as it is (an authorization server that rotates refresh tokens accepts
each one once).

A grant only a person can mend (none yet, unreadable, revoked, expired, refused by the upstream,
issued for another upstream) answers every request 503 with what to run, without reaching the
upstream, until the token file changes (looked at once a second at most, and at each /readyz). A
refresh that fails for a reason that may pass (the authorization server unreachable) keeps the
current token while it is valid and is tried again RETRY_S later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable

from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url

from ..config import Upstream
from ..transport.upstream import UpstreamError, UpstreamResponse
from . import client, store
from .store import Grant, GrantFileError

log = logging.getLogger("mcp_policy_proxy.upstream_oauth")

RETRY_S = 5.0  # after a refresh failed for a reason that may pass
RECHECK_S = 1.0  # while there is no usable grant: how often the token file is looked at
REJECTED_HOLD_S = 30.0  # the upstream refused a fresh token: no request is sent for this long
# Why no request can be sent (the metric's `reason`, /readyz), and how a client is told.
WHY = {
    "no_grant": "is missing (nobody has logged in yet)",
    "unreadable": "cannot be read",
    "other_upstream": "was issued for another upstream than upstream.url",
    "revoked": "is expired or revoked",
    "expired": "is expired (it has no refresh token)",
    "rejected": "is refused by the upstream",
}
REASONS = (*WHY, "unavailable", "insufficient_scope")
_SCOPE = re.compile(r'scope="([A-Za-z0-9:._/ -]{1,200})"')


class UpstreamGrant:
    def __init__(self, upstream: Upstream, config_source: str,
                 on_refused: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        """`on_refused(reason)`: for every request not sent (or answered by the proxy) for want of a
        usable grant (a metric); `reason` is one of REASONS."""
        assert upstream.oauth is not None
        self.settings = settings = upstream.oauth
        self._upstream = upstream
        self._path, self._key = settings.token_file, settings.token_key
        self._resource = resource_url_from_server_url(upstream.url)
        self._login = f"mcp-policy-proxy upstream login --config {config_source}"
        self._on_refused = on_refused or (lambda reason: None)
        self._clock = clock
        self._grant: Grant | None = None
        self._value: str | None = None
        self._refresh_at = 0.0  # from then on a request starts a refresh
        self._expires_at = 0.0
        self._problem: str | None = None  # a key of WHY
        self._problem_until = math.inf
        self._stamp: tuple[int, int, int] | None = None  # the token file as last read
        self._looked = -math.inf
        self._retry_at = 0.0
        self._task: asyncio.Future[None] | None = None
        self._look(clock(), initial=True)

    # --- what the upstream client asks ---
    def authorization(self) -> str | None:
        """The header value while no refresh is due (the hot path); None: ask `current()`."""
        return self._value if self._clock() < self._refresh_at else None

    async def current(self) -> str:
        """A usable header value (a refresh due is started in the background while the token is
        valid, awaited once it has expired). UpstreamError (503) when there is none."""
        now = self._clock()
        if self._problem is not None and not self._look(now):
            raise self._refusal(self._problem)
        if now < self._refresh_at:
            return self._usable()
        if now < self._expires_at:
            if now >= self._retry_at:
                self._start(None)
            return self._usable()
        if self._task is None and now < self._retry_at:  # expired, and a refresh failed moments ago
            raise self._unavailable()
        await asyncio.shield(self._start(None))
        return self._usable()

    async def rejected(self, used: str) -> str:
        """The upstream answered 401 to `used` (it did not act on the request): the value a refresh
        brought since, or the one a refresh now brings (shared by every request that found the same)."""
        if self._problem is not None and not self._look(self._clock()):
            raise self._refusal(self._problem)
        if self._value is not None and self._value != used:
            return self._value
        await asyncio.shield(self._start(used))
        value = self._usable()
        if value == used:  # the refresh failed and kept the token the upstream just refused
            raise self._unavailable()
        return value

    def refused(self, resp: UpstreamResponse) -> None:
        """After the retry: a 401 (to a token just refreshed) or a 403 for a scope the grant lacks is
        about the proxy's own credential, which no client can mend: answered here, not relayed."""
        if resp.status == 401:
            resp.close()
            self._fail("rejected", "the upstream answered 401 to a freshly refreshed access token")
            raise self._refusal("rejected")
        if resp.status == 403:
            challenge = ", ".join(v for n, v in resp.headers if n == "www-authenticate")
            if "insufficient_scope" in challenge:
                resp.close()
                self._on_refused("insufficient_scope")
                found = _SCOPE.search(challenge)
                needs = f" (the upstream asks for: {found.group(1)})" if found else ""
                raise UpstreamError(403, f"The proxy's OAuth grant to the upstream lacks a scope this request "
                                         f"needs{needs}: an operator must add it to upstream.oauth.scopes and run "
                                         "`mcp-policy-proxy upstream login`")

    def readiness(self) -> str | None:
        """For /readyz: why no request can be sent, or None (a new login is looked for first)."""
        if self._problem is None or self._look(self._clock()):
            return None
        return f"upstream grant {WHY[self._problem]}: run `mcp-policy-proxy upstream login`"

    # --- state ---
    def _usable(self) -> str:
        if self._problem is not None:
            raise self._refusal(self._problem)
        if self._value is None or self._clock() >= self._expires_at:
            raise self._unavailable()
        return self._value

    def _adopt(self, grant: Grant, stamp: tuple[int, int, int] | None) -> None:
        self._grant, self._stamp, self._retry_at = grant, stamp, 0.0
        self._value = f"Bearer {grant.access_token}"
        expires = grant.expires_at
        if expires is None:  # no lifetime given: refreshed only when the upstream refuses it
            self._expires_at = self._refresh_at = math.inf
        else:
            life = max(expires - grant.obtained_at, 0.0)
            self._expires_at, self._refresh_at = expires, expires - min(self.settings.refresh_margin_s, life / 2)
        if self._problem is not None:
            log.info("upstream grant in force (%s; scopes: %s)", self._path, grant.scope)
            self._problem, self._problem_until = None, math.inf

    def _fail(self, reason: str, message: str) -> None:
        if self._problem != reason:  # logged once per change of state
            log.error("upstream grant %s: %s; run `%s`", WHY[reason], message, self._login)
        self._problem, self._value, self._refresh_at, self._expires_at = reason, None, 0.0, 0.0
        self._problem_until = self._clock() + REJECTED_HOLD_S if reason == "rejected" else math.inf

    def _refusal(self, reason: str) -> UpstreamError:
        self._on_refused(reason)
        return UpstreamError(503, f"The proxy's OAuth grant to the upstream {WHY[reason]}: an operator must run "
                                  "`mcp-policy-proxy upstream login --config <the proxy's config file>`")

    def _unavailable(self) -> UpstreamError:
        self._on_refused("unavailable")
        return UpstreamError(503, "The proxy could not refresh its OAuth grant to the upstream (the authorization "
                                  "server is unreachable or failing); retry later",
                             (("retry-after", str(math.ceil(RETRY_S))),))

    def _look(self, now: float, initial: bool = False) -> bool:
        """Without a usable grant: adopt the token file's, if it changed (a new login). Whether one is usable."""
        if not initial and now - self._looked < RECHECK_S:
            return False
        self._looked = now
        stamp = store.stamp(self._path)
        if not initial and stamp == self._stamp:
            if self._problem == "rejected" and now >= self._problem_until and self._grant is not None:
                log.info("trying the upstream grant again (%s)", self._path)
                self._problem = None
                self._adopt(self._grant, stamp)  # expired meanwhile: the next request refreshes it
                return True
            return False
        self._stamp = stamp
        try:
            grant = store.load(self._path, self._key)
        except GrantFileError as exc:
            self._fail(exc.reason, exc.message)
            return False
        if not check_resource_allowed(requested_resource=self._resource, configured_resource=grant.resource):
            self._fail("other_upstream", f"{self._path} holds a grant for {grant.resource}")
            return False
        if grant.refresh_token is None and grant.expired(now):
            self._fail("expired", f"{self._path} holds an access token that expired")
            return False
        if self._problem in ("revoked", "expired") and grant == self._grant:
            return False  # the file was touched, not replaced: the same grant the server refused
        if (warning := store.mode_problem(self._path)) is not None:
            log.warning("%s", warning)
        self._adopt(grant, stamp)
        return True

    # --- the one refresh ---
    def _start(self, rejected: str | None) -> asyncio.Future[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._refresh(rejected))
        return self._task

    async def _refresh(self, rejected: str | None) -> None:
        try:
            async with store.locked(self._path) as held:
                if not held:
                    log.warning("cannot lock %s.lock: refreshing unlocked (workers sharing the token file may "
                                "each use the same refresh token)", self._path)
                base = self._grant
                stamp = store.stamp(self._path)
                try:
                    on_file: Grant | None = store.load(self._path, self._key)
                except GrantFileError as exc:
                    log.warning("refreshing with the grant in memory: %s", exc.message)
                    on_file = None
                if on_file is not None and on_file != base:  # written by a sibling worker, or a new login
                    if not check_resource_allowed(requested_resource=self._resource,
                                                  configured_resource=on_file.resource):
                        self._fail("other_upstream", f"{self._path} now holds a grant for {on_file.resource}")
                        return  # and it stays as it is: someone logged in for another upstream
                    if on_file.access_token != rejected and not self._due(on_file):
                        self._adopt(on_file, stamp)
                        return
                    base = on_file  # its refresh token is the newest
                if base is None:
                    return
                if base.refresh_token is None:
                    self._fail("expired", "the access token expired and the grant has no refresh token")
                    return
                grant = await client.refresh(self._upstream, base, self.settings.client_secret)
                try:
                    await asyncio.to_thread(store.save, self._path, grant, self._key)
                except OSError as exc:
                    log.error("could not write the refreshed upstream grant to %s (%s): after a restart the "
                              "grant may be gone (a refresh token used once)", self._path, exc.strerror)
                self._adopt(grant, store.stamp(self._path))
                log.info("refreshed the upstream grant (scopes: %s)", grant.scope)
        except client.OAuthFailure as exc:
            if exc.gone:
                self._fail("revoked", exc.message)
            else:
                self._retry_later(exc.message)
        except TimeoutError as exc:
            self._retry_later(str(exc))
        except Exception as exc:  # whatever it was, requests must get an answer, and the next one a try
            log.exception("refreshing the upstream grant failed")
            self._retry_later(type(exc).__name__)
        finally:
            self._task = None

    def _due(self, grant: Grant) -> bool:
        if grant.expires_at is None:
            return False
        life = max(grant.expires_at - grant.obtained_at, 0.0)
        return self._clock() >= grant.expires_at - min(self.settings.refresh_margin_s, life / 2)

    def _retry_later(self, why: str) -> None:
        valid = self._value is not None and self._clock() < self._expires_at
        log.warning("could not refresh the upstream grant (%s): %s; trying again in %g s", why,
                    "the current access token is used until it expires" if valid else "requests get 503", RETRY_S)
        self._retry_at = self._clock() + RETRY_S


def upstream_grant(upstream: Upstream, config_source: str,
                   on_refused: Callable[[str], None] | None = None) -> UpstreamGrant | None:
    """The grant for `serve` when upstream.oauth is configured (else None: upstream.headers only)."""
    return None if upstream.oauth is None else UpstreamGrant(upstream, config_source, on_refused)
