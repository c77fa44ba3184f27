"""Bearer JWTs checked against the authorization server's JWKS (MCP authorization: the proxy is an
OAuth 2.1 resource server; the token's audience must be its canonical URL, RFC 8707).

What a token can choose, and what it cannot:
- its `alg` must be in the configured allow-list, which only ever holds public-key algorithms (`none`
  and HS* are refused at construction), so a public key can never be read as an HMAC secret;
- the key comes from the JWKS entry named by `kid` (never from `jwk`/`jku`/`x5u` headers), its `kty`
  (and curve) must fit the `alg`, and when the JWK declares an `alg` the token's must equal it;
- a token without `kid` is accepted only when exactly one key of the set fits its `alg`.

The JWKS is fetched with aiohttp and cached for `jwks_cache_s`; a stale set keeps serving the keys
it holds while one background fetch renews it. An unknown `kid` waits for a refetch, at most one per
`min_refetch_interval_s` (garbage kids cannot hammer the IdP), and concurrent refetches share one
request. A failed fetch keeps the keys already held; `jwks_unavailable` is raised only when no key
fits and the last fetch failed.

Tokens that verified are remembered (`verified_cache_size` of them, least recently used evicted; 0:
none), so an agent's bearer token, sent on every request, costs one signature check. An entry is
keyed by a keyed digest of the token and holds neither the token nor its claims: a hit re-checks
`iat`/`nbf`/`exp` against the wall clock exactly as pyjwt does (the clock may step back), asks the
key set for the token's key again (the same lookup and background renewal a full check does) and
requires the very key object that verified it, then decodes the payload afresh, so the caller gets
the claims a full check would return, in a dict of its own. Anything else (a time check failing, the
key gone or replaced) is a full check. A fetch that changes the key set empties the cache; a fetch
answering the same set keeps the key objects, and so the entries. Failures are never remembered.

Errors are `TokenError(reason)`: `reason` is a short word for metrics and logs, the message a fixed
sentence. Neither ever holds the token or any part of it (not even its `kid` or `alg`), and pyjwt's
exceptions are not chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from jwt import PyJWK
from jwt import exceptions as jwt_errors
from jwt.utils import base64url_decode

log = logging.getLogger(__name__)

# Token algorithms this verifier can use, with the JWK `kty` (and curves) each one needs.
KEY_TYPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", ("P-256",)), "ES384": ("EC", ("P-384",)), "ES512": ("EC", ("P-521",)),
    "ES256K": ("EC", ("secp256k1",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
}
MAX_TOKEN_CHARS = 16384
MAX_JWKS_BYTES = 1 << 20
# JWK members that only a private (or symmetric) key has: such an entry is never used.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

MESSAGES: dict[str, str] = {
    "malformed": "The bearer token is not a well-formed JWT",
    "bad_signature": "The bearer token's signature does not verify",
    "expired": "The bearer token has expired",
    "not_yet_valid": "The bearer token is not valid yet",
    "wrong_audience": "The bearer token was not issued for this resource",
    "wrong_issuer": "The bearer token was not issued by the expected authorization server",
    "unknown_key": "The bearer token is signed with a key the authorization server does not publish",
    "disallowed_algorithm": "The bearer token's signing algorithm is not accepted",
    "jwks_unavailable": "The authorization server's signing keys could not be fetched",
}


class TokenError(Exception):
    """A rejected token. `reason` is one of MESSAGES' keys; the message never holds the token."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or MESSAGES.get(reason, "The bearer token is not valid"))
        self.reason = reason


@dataclass(frozen=True)
class _KeySet:
    by_kid: dict[str, dict[str, PyJWK]] = field(default_factory=dict)  # kid → alg → key
    by_alg: dict[str, list[PyJWK]] = field(default_factory=dict)  # alg → every key fitting it

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.by_alg.values())


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified: what re-checking it takes (never the token, never its claims)."""

    kid: str | None
    alg: str
    key: PyJWK  # the key object that verified it: any other (a rotation) means a full check
    iat: int | None  # int() of the claims, as pyjwt compares them
    nbf: int | None
    exp: int

    def current(self, now: float, leeway: float) -> bool:
        """pyjwt's time checks (api_jwt._validate_iat/_nbf/_exp), same expressions."""
        return ((self.iat is None or not self.iat > (now + leeway))
                and (self.nbf is None or not self.nbf > (now + leeway))
                and not self.exp <= (now - leeway))


def _wall_clock() -> float:
    """Now, read the way pyjwt reads it for `exp`/`nbf`/`iat`."""
    return datetime.now(tz=UTC).timestamp()


def _payload(token: str) -> dict[str, Any]:
    """The claims of a token that verified, decoded the way pyjwt decodes them."""
    claims: dict[str, Any] = json.loads(base64url_decode(token.split(".")[1].encode()))
    return claims


def _fits(jwk_data: Mapping[str, Any], alg: str) -> bool:
    kty, curves = KEY_TYPES[alg]
    return jwk_data.get("kty") == kty and (curves is None or jwk_data.get("crv") in curves)


def parse_jwks(document: Any, algorithms: Sequence[str]) -> _KeySet:
    """The usable signature keys of a JWKS document, per kid and per algorithm.

    Raises ValueError when the document is not a JWK set at all; entries that are not usable
    (another key type, `use` other than `sig`, private members, RSA under 2048 bits, …) are skipped.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set (an object with a 'keys' list)")
    keys = _KeySet()
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kty"), str):
            continue
        if entry.get("use", "sig") != "sig" or _PRIVATE_MEMBERS.intersection(entry):
            continue
        ops = entry.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        declared = entry.get("alg")
        if declared is not None and not isinstance(declared, str):
            continue
        kid = entry.get("kid")
        kid = kid if isinstance(kid, str) else None
        for alg in (declared,) if declared else algorithms:
            if alg not in algorithms or not _fits(entry, alg):
                continue
            try:
                key = PyJWK(entry, algorithm=alg)
                weak = key.Algorithm.check_key_length(key.Algorithm.prepare_key(key.key))
            except (jwt_errors.PyJWTError, ValueError, TypeError) as exc:
                log.warning("JWKS entry %r skipped for %s: %s", kid, alg, type(exc).__name__)
                continue
            if weak:
                log.warning("JWKS entry %r skipped for %s: %s", kid, alg, weak)
                continue
            keys.by_alg.setdefault(alg, []).append(key)
            if kid is not None:
                keys.by_kid.setdefault(kid, {}).setdefault(alg, key)  # a duplicate kid: the first wins
    return keys


class JWTVerifier:
    """Verifies bearer JWTs; one per process (it owns an aiohttp session and the key cache).

    `clock` (monotonic seconds) times the key cache and the refetch rate limit only; token times are
    checked against the wall clock. `verified_cache_size`: how many verified tokens are remembered.
    """

    def __init__(self, *, issuer: str, audience: str, jwks_url: str,
                 algorithms: Sequence[str] = ("RS256", "ES256"), leeway_s: float = 30,
                 jwks_cache_s: float = 300, min_refetch_interval_s: float = 10, timeout_s: float = 5,
                 verified_cache_size: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if not issuer or not isinstance(issuer, str):
            raise ValueError("issuer is required")
        if not audience or not isinstance(audience, str):
            raise ValueError("audience is required (the proxy's canonical URL)")
        if urlsplit(jwks_url).scheme not in ("http", "https") or not urlsplit(jwks_url).hostname:
            raise ValueError("jwks_url must be an http(s) URL")
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("algorithms must be a non-empty list")
        for alg in algorithms:
            if not isinstance(alg, str) or alg.lower() == "none":
                raise ValueError("algorithm 'none' is never accepted")
            if alg.upper().startswith("HS"):
                raise ValueError(f"{alg} is a symmetric algorithm; JWKS keys are public keys")
            if alg not in KEY_TYPES:
                raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(KEY_TYPES)})")
        for name, value in (("leeway_s", leeway_s), ("jwks_cache_s", jwks_cache_s),
                            ("min_refetch_interval_s", min_refetch_interval_s), ("timeout_s", timeout_s)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
        if isinstance(verified_cache_size, bool) or not isinstance(verified_cache_size, int) or verified_cache_size < 0:
            raise ValueError("verified_cache_size must be a non-negative integer")
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.algorithms: tuple[str, ...] = tuple(dict.fromkeys(algorithms))
        self.leeway_s, self.jwks_cache_s = float(leeway_s), float(jwks_cache_s)
        self.min_refetch_interval_s, self.timeout_s = float(min_refetch_interval_s), float(timeout_s)
        self._clock = clock
        self._jwt = jwt.PyJWT(options={"require": ["exp"], "verify_signature": True, "verify_exp": True,
                                       "verify_nbf": True, "verify_iat": True, "verify_aud": True,
                                       "verify_iss": True, "strict_aud": False})
        self._keys: _KeySet | None = None
        self._keys_digest = b""  # of the JWKS `keys` list the key set was parsed from
        self.verified_cache_size = verified_cache_size
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()  # digest → entry, oldest use first
        self._digest_key = os.urandom(32)  # the cache's keys mean nothing outside this process
        self._fetched_at = -math.inf  # clock() of the last successful fetch
        self._last_attempt = -math.inf  # clock() of the last fetch started
        self._last_ok = False
        self._inflight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # ---- verification ----

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims (a dict of the caller's own), or TokenError."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise TokenError("malformed")
        if not self.verified_cache_size:
            return (await self._verify_fully(token))[0]
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=32,
                                 key=self._digest_key).digest()
        entry = self._verified.get(digest)
        if entry is not None:
            if entry.current(_wall_clock(), self.leeway_s) and await self._key_for(entry.kid, entry.alg) is entry.key:
                if digest in self._verified:  # (a fetch during the lookup may have emptied the cache)
                    self._verified.move_to_end(digest)
                return _payload(token)
            self._verified.pop(digest, None)
        claims, entry = await self._verify_fully(token)
        self._verified[digest] = entry
        if len(self._verified) > self.verified_cache_size:
            self._verified.popitem(last=False)
        return claims

    async def _verify_fully(self, token: str) -> tuple[dict[str, Any], _Verified]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt_errors.PyJWTError, ValueError, TypeError):
            raise TokenError("malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("disallowed_algorithm")
        key = await self._key_for(kid, alg)
        try:
            claims = self._jwt.decode(token, key=key, algorithms=self.algorithms, audience=self.audience,
                                      issuer=self.issuer, leeway=self.leeway_s)
        except jwt_errors.PyJWTError as exc:
            raise TokenError(_reason(exc)) from None
        except (ValueError, TypeError, OverflowError):
            raise TokenError("malformed") from None
        for name in ("exp", "nbf", "iat"):  # pyjwt takes int(value): "123" or true would pass
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TokenError("malformed")
        iat, nbf = claims.get("iat"), claims.get("nbf")  # finite: pyjwt's int() of them succeeded
        return claims, _Verified(kid, alg, key, None if iat is None else int(iat), None if nbf is None else int(nbf),
                                 int(claims["exp"]))

    async def _key_for(self, kid: str | None, alg: str) -> PyJWK:
        if self._keys is None:
            await self.refresh()
        elif self._stale():
            self._start_fetch()  # serve the keys held while one fetch renews them
        key = self._lookup(kid, alg)
        if key is None:
            await self.refresh()  # an unknown kid: rate-limited, shared with concurrent callers
            key = self._lookup(kid, alg)
        if key is None:
            raise TokenError("unknown_key" if self._last_ok else "jwks_unavailable")
        return key

    def _lookup(self, kid: str | None, alg: str) -> PyJWK | None:
        keys = self._keys
        if keys is None:
            return None
        if kid is None:
            candidates = keys.by_alg.get(alg, ())
            return candidates[0] if len(candidates) == 1 else None
        by_alg = keys.by_kid.get(kid)
        if by_alg is None:
            return None
        key = by_alg.get(alg)
        if key is None:  # the kid is published, for another key type or algorithm
            raise TokenError("disallowed_algorithm")
        return key

    # ---- the key set ----

    def _stale(self) -> bool:
        return self._clock() - self._fetched_at >= self.jwks_cache_s

    async def refresh(self) -> bool:
        """Fetch the JWKS now unless a fetch is under way (then wait for it) or one started less than
        `min_refetch_interval_s` ago. True when the last fetch succeeded."""
        task = self._start_fetch()
        if task is not None:
            await asyncio.shield(task)  # a cancelled caller does not cancel the others' fetch
        return self._last_ok

    def _start_fetch(self) -> asyncio.Task[None] | None:
        if self._inflight is not None:
            return self._inflight
        now = self._clock()
        if now - self._last_attempt < self.min_refetch_interval_s:
            return None
        self._last_attempt = now
        task = asyncio.get_running_loop().create_task(self._fetch(), name="jwks-fetch")
        self._inflight = task

        def _done(t: asyncio.Task[None]) -> None:
            if self._inflight is t:
                self._inflight = None

        task.add_done_callback(_done)
        return task

    async def _fetch(self) -> None:
        try:
            document = await self._get_json()
            keys = parse_jwks(document, self.algorithms)
            digest = hashlib.sha256(json.dumps(document["keys"], sort_keys=True).encode()).digest()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the keys held
            self._last_ok = False
            log.warning("JWKS fetch from %s failed (%s); keeping %d cached key(s)", self.jwks_url,
                        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                        len(self._keys) if self._keys else 0)
            return
        if not len(keys):
            log.warning("JWKS at %s holds no key usable for %s", self.jwks_url, ", ".join(self.algorithms))
        if self._keys is None or digest != self._keys_digest:
            self._keys, self._keys_digest = keys, digest
            self._verified.clear()  # a rotation: every token is checked against the new set
        self._fetched_at, self._last_ok = self._clock(), True

    async def _get_json(self) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                  headers={"Accept": "application/json"})
        async with self._session.get(self.jwks_url) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            if (response.content_length or 0) > MAX_JWKS_BYTES:
                raise ValueError("response too large")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("response too large")
        return json.loads(body)

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# pyjwt's exceptions → TokenError reasons; subclasses before their bases.
_REASONS: tuple[tuple[type[jwt_errors.PyJWTError], str], ...] = (
    (jwt_errors.InvalidSignatureError, "bad_signature"),
    (jwt_errors.ExpiredSignatureError, "expired"),
    (jwt_errors.ImmatureSignatureError, "not_yet_valid"),
    (jwt_errors.InvalidAudienceError, "wrong_audience"),
    (jwt_errors.InvalidIssuerError, "wrong_issuer"),
    (jwt_errors.InvalidAlgorithmError, "disallowed_algorithm"),
)


def _reason(exc: jwt_errors.PyJWTError) -> str:
    """The TokenError reason for one of pyjwt's exceptions."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, jwt_errors.MissingRequiredClaimError):
        return {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(exc.claim, "malformed")
    return "malformed"
