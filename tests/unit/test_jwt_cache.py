"""JWTVerifier's verified-token cache: a repeated token skips the signature check, and the answer is
always the one a full check gives (same claims or same TokenError reason), whatever the times, the
key rotations and the cache size. Keys are generated here (RSA 2048, EC P-256), the JWKS is served
over loopback (tests/peers/jwks_server.py), and the wall clock pyjwt and the verifier read is set
by hand (both modules' `datetime`), so boundaries can be hit to the microsecond.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from unittest import mock

import jwt
import jwt.api_jwt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.auth import jwt_verifier as module
from proxy.auth.jwt_verifier import JWTVerifier, TokenError, parse_jwks
from proxy.config import ConfigError, parse
from tests.peers.jwks_server import JWKSServer, SigningKey, ec_key, jwk_set, rsa_key

ISS = "https://idp.example.com"
AUD = "https://mcp.example.com"
T0 = 1_800_000_000  # the wall clock's start in every test


class Clock:
    """A clock moved by hand: monotonic seconds (key cache, refetch limit) or epoch seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def wall_clock_at(clock: Clock) -> Iterator[Clock]:
    """pyjwt's `exp`/`nbf`/`iat` checks and the cache's re-checks both read `clock`."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Any:
            return datetime.fromtimestamp(clock.now, tz)

    with mock.patch.object(jwt.api_jwt, "datetime", Frozen), mock.patch.object(module, "datetime", Frozen):
        yield clock


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey  # kid rsa-1
    rsa2: SigningKey  # kid rsa-2
    ec: SigningKey  # kid ec-1
    impostor: SigningKey  # kid rsa-1 as well: what a rotation reusing the kid publishes


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa_key("rsa-1"), rsa_key("rsa-2"), ec_key("ec-1"), rsa_key("rsa-1"))


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": T0, "exp": T0 + 300,
                            "scope": "mcp:read", "roles": ["a", "b"], "ext": {"tenant": "t1"}}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[JWKSServer]:
    async with JWKSServer(jwk_set(keys.rsa, keys.ec)) as srv:
        yield srv


@pytest.fixture
def wall() -> Iterator[Clock]:
    with wall_clock_at(Clock(T0)) as clock:
        yield clock


@pytest.fixture
def mono() -> Clock:
    return Clock(1000.0)


Factory = Callable[..., JWTVerifier]


@pytest.fixture
async def make(server: JWKSServer, mono: Clock) -> AsyncIterator[Factory]:
    made: list[JWTVerifier] = []

    def _make(**kwargs: Any) -> JWTVerifier:
        options: dict[str, Any] = {"issuer": ISS, "audience": AUD, "jwks_url": server.url, "clock": mono}
        options.update(kwargs)
        made.append(JWTVerifier(**options))
        return made[-1]

    yield _make
    for verifier in made:
        await verifier.close()


def count_decodes(verifier: JWTVerifier) -> list[int]:
    """A counter of the full checks (pyjwt signature + claims) the verifier makes."""
    calls = [0]
    decode = verifier._jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return decode(*args, **kwargs)

    verifier._jwt.decode = counting  # type: ignore[method-assign]
    return calls


async def reason_of(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    return info.value.reason


# ---- the cache at work ----

async def test_a_repeated_token_is_checked_once(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier = make()
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims())
    first = await verifier.verify(token)
    for _ in range(5):
        assert await verifier.verify(token) == first
    assert full[0] == 1 and len(verifier._verified) == 1
    assert (await verifier.verify(keys.ec.sign(claims())))["sub"] == "alice"
    assert full[0] == 2


async def test_callers_get_claims_of_their_own(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier = make()
    token = keys.rsa.sign(claims())
    first = await verifier.verify(token)
    expected = jwt.decode(token, options={"verify_signature": False})
    assert first == expected
    first["sub"] = "mallory"
    first["roles"].append("admin")
    first["ext"]["tenant"] = "t2"
    second = await verifier.verify(token)
    assert second == expected
    second["roles"].append("admin")
    assert await verifier.verify(token) == expected


async def test_size_zero_turns_the_cache_off(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier = make(verified_cache_size=0)
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims())
    for _ in range(3):
        await verifier.verify(token)
    assert full[0] == 3 and not verifier._verified


async def test_failures_are_not_remembered(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier = make()
    full = count_decodes(verifier)
    bad = {"expired": keys.rsa.sign(claims(exp=T0 - 31)), "wrong_audience": keys.rsa.sign(claims(aud="x")),
           "wrong_issuer": keys.rsa.sign(claims(iss="x")), "bad_signature": keys.impostor.sign(claims()),
           "not_yet_valid": keys.rsa.sign(claims(nbf=T0 + 60))}
    for _ in range(2):
        for reason, token in bad.items():
            assert await reason_of(verifier, token) == reason
    assert full[0] == 2 * len(bad) and not verifier._verified


async def test_entries_never_exceed_the_bound_least_recently_used_go(make: Factory, wall: Clock,
                                                                     keys: Keys) -> None:
    verifier = make(verified_cache_size=3)
    full = count_decodes(verifier)
    tokens = [keys.ec.sign(claims(sub=f"user-{i}")) for i in range(10)]
    for token in tokens:
        await verifier.verify(token)
        await verifier.verify(tokens[0])  # kept in use: never the one evicted
        assert len(verifier._verified) <= 3
    assert full[0] == 10
    await verifier.verify(tokens[0])
    await verifier.verify(tokens[9])
    assert full[0] == 10  # the two most recently used are still there
    await verifier.verify(tokens[1])
    assert full[0] == 11 and len(verifier._verified) == 3


async def test_the_cache_holds_no_token_text(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier = make()
    token = keys.rsa.sign(claims(sub="subject-9f3c2a"))
    await verifier.verify(token)
    ((digest, entry),) = verifier._verified.items()
    assert isinstance(digest, bytes) and len(digest) == 32
    text = f"{digest!r} {digest.hex()} {entry!r}"
    assert token not in text and "subject-9f3c2a" not in text
    for part in token.split("."):
        assert part not in text and part.encode() not in digest
    assert not hasattr(entry, "__dict__")  # slots: nothing else rides along
    other = make()  # another process (another digest key): another digest of the same token
    await other.verify(token)
    assert next(iter(other._verified)) != digest


async def test_concurrent_first_uses_agree(make: Factory, wall: Clock, server: JWKSServer, keys: Keys) -> None:
    server.delay_s = 0.1
    verifier = make(verified_cache_size=2)
    tokens = [keys.rsa.sign(claims(sub=f"u{i % 4}")) for i in range(20)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [r["sub"] for r in results] == [f"u{i % 4}" for i in range(20)]
    assert server.fetches == 1 and len(verifier._verified) <= 2


# ---- token times ----

async def test_expiry_while_cached(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier, plain = make(), make(verified_cache_size=0)
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims(exp=T0 + 60))  # leeway 30 s: valid while int(exp) > now - 30
    await verifier.verify(token)
    wall.advance(89.999999)
    assert (await verifier.verify(token))["exp"] == T0 + 60
    assert full[0] == 1
    wall.advance(0.000001)  # now - leeway == exp
    assert await reason_of(verifier, token) == await reason_of(plain, token) == "expired"
    assert not verifier._verified
    wall.advance(-0.5)  # the clock steps back: valid again, by a full check
    assert (await verifier.verify(token))["exp"] == T0 + 60
    assert full[0] == 3


async def test_fractional_exp_is_compared_as_pyjwt_does(make: Factory, wall: Clock, keys: Keys) -> None:
    verifier, plain = make(leeway_s=0), make(leeway_s=0, verified_cache_size=0)
    token = keys.rsa.sign(claims(exp=T0 + 10.9))  # pyjwt compares int(exp): T0 + 10
    await verifier.verify(token)
    wall.advance(9.5)
    assert await verifier.verify(token) == await plain.verify(token)
    wall.advance(0.5)
    assert await reason_of(verifier, token) == await reason_of(plain, token) == "expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_the_clock_stepping_back_before_nbf_or_iat(make: Factory, wall: Clock, keys: Keys,
                                                         claim: str) -> None:
    verifier, plain = make(), make(verified_cache_size=0)
    token = keys.rsa.sign(claims(**{"iat": None, claim: T0}))
    await verifier.verify(token)
    wall.advance(-30)  # now + leeway == nbf: still valid
    assert await verifier.verify(token) == await plain.verify(token)
    wall.advance(-0.000001)
    assert await reason_of(verifier, token) == await reason_of(plain, token) == "not_yet_valid"


# ---- key rotation ----

async def test_rotation_forgets_every_token(make: Factory, wall: Clock, server: JWKSServer, keys: Keys,
                                            mono: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    full = count_decodes(verifier)
    old, ec = keys.rsa.sign(claims()), keys.ec.sign(claims())
    await verifier.verify(old)
    await verifier.verify(ec)
    server.set_keys(keys.rsa2, keys.ec)  # rsa-1 retired
    mono.advance(61)
    await verifier.verify(old)  # stale: served with the keys held, as a full check would, while they renew
    assert await verifier.refresh()
    assert not verifier._verified
    assert await reason_of(verifier, old) == "unknown_key"
    assert (await verifier.verify(ec))["sub"] == "alice"  # verified again, against the new set
    assert full[0] == 3


async def test_a_new_key_under_the_same_kid_refuses_the_old_tokens(make: Factory, wall: Clock, server: JWKSServer,
                                                                   keys: Keys, mono: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    old = keys.rsa.sign(claims())
    await verifier.verify(old)
    server.set_keys(keys.impostor, keys.ec)  # kid rsa-1, another key
    mono.advance(61)
    assert await verifier.refresh()
    assert await reason_of(verifier, old) == "bad_signature"
    assert (await verifier.verify(keys.impostor.sign(claims())))["sub"] == "alice"


async def test_a_refetch_of_the_same_set_keeps_the_entries(make: Factory, wall: Clock, server: JWKSServer,
                                                           keys: Keys, mono: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims())
    await verifier.verify(token)
    held = verifier._keys
    server.set_keys(keys.rsa, keys.ec)  # the same keys, a new document
    mono.advance(61)
    assert await verifier.refresh()
    assert server.fetches == 2 and verifier._keys is held
    await verifier.verify(token)
    assert full[0] == 1


async def test_an_entry_needs_the_very_key_that_verified_it(make: Factory, wall: Clock, server: JWKSServer,
                                                            keys: Keys) -> None:
    """Defence in depth: even with the cache not emptied, another key object means a full check."""
    verifier = make()
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims())
    await verifier.verify(token)
    verifier._keys = parse_jwks(jwk_set(keys.rsa, keys.ec), verifier.algorithms)  # equal keys, new objects
    await verifier.verify(token)
    assert full[0] == 2
    verifier._keys = parse_jwks(jwk_set(keys.impostor, keys.ec), verifier.algorithms)
    assert await reason_of(verifier, token) == "bad_signature"


async def test_a_failed_refetch_keeps_the_entries(make: Factory, wall: Clock, server: JWKSServer, keys: Keys,
                                                  mono: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    full = count_decodes(verifier)
    token = keys.rsa.sign(claims())
    await verifier.verify(token)
    server.status = 500
    mono.advance(61)
    assert not await verifier.refresh()
    await verifier.verify(token)  # the keys held still verify it, cached or not
    assert full[0] == 1


# ---- exactness: cache on == cache off, always ----

KEY_NAMES = ("rsa", "rsa2", "ec", "impostor")
# What the IdP publishes: mostly the keys the tokens are signed with; sometimes a rotation that
# drops one, or that gives kid rsa-1 to another key.
KEY_SETS = st.sampled_from((["rsa", "ec"],) * 6 + (["ec", "rsa"], ["rsa", "rsa2", "ec"], ["rsa"], ["ec"],
                           ["rsa2", "ec"], ["impostor", "ec"], ["impostor", "ec"], ["impostor", "rsa2"], []))
BOUNDARY = st.sampled_from((-31, -30, -29, 0, 29, 30, 31))
OFFSET = st.one_of(st.integers(-400, 400), BOUNDARY, st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 1)))
FUTURE = st.one_of(*[st.integers(1, 120)] * 3, BOUNDARY, OFFSET)
PAST = st.one_of(*[st.integers(-120, 0)] * 3, BOUNDARY, OFFSET)
MOVE = st.one_of(st.integers(-40, 120), BOUNDARY, st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 6)))
# Where a token's validity starts (nbf, iat) or ends (exp), give or take a microsecond, a second…
NEAR = st.sampled_from((-1e-6, 0.0, 1e-6, -0.5, 0.5, -1.0, 1.0))
# At most one thing wrong with a token besides its times (None: nothing), so that most could verify.
SPOILS = st.sampled_from((None,) * 20 + (
    ("iss", "https://evil.example"), ("iss", None), ("aud", "https://other.example"), ("aud", None),
    ("aud", [AUD, "https://other.example"]), ("kid", None), ("kid", "nope"), ("kid", "cross"), ("alg", "RS512"),
    ("key", "rsa2"), ("key", "impostor")))


@st.composite
def token_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"key": draw(st.sampled_from(("rsa", "ec"))), "kid": True, "alg": None,
                            "iss": ISS, "aud": AUD, "sub": draw(st.sampled_from("abc")), "exp": T0 + draw(FUTURE),
                            "iat": None if draw(st.booleans()) else T0 + draw(PAST),
                            "nbf": None if draw(st.booleans()) else T0 + draw(PAST)}
    spoil = draw(SPOILS)
    if spoil is not None:
        spec[spoil[0]] = spoil[1]
    if spec["kid"] == "cross":
        spec["kid"] = "rsa-1" if spec["key"] == "ec" else "ec-1"
    if spec["key"] == "ec" and spec["alg"] is not None:
        spec["alg"] = None  # an EC key cannot sign RS512
    return spec


STEPS = st.lists(st.one_of(
    *[st.tuples(st.just("verify"), st.integers(0, 3))] * 6,
    st.tuples(st.just("move"), MOVE),  # the wall clock moves by this much (back as well)
    # a token verified, the wall clock set near one of its boundaries, the token verified again
    *[st.tuples(st.just("near"), st.tuples(st.integers(0, 3), st.sampled_from(("exp", "nbf", "iat")), NEAR))] * 2,
    st.tuples(st.just("rotate"), KEY_SETS),  # the IdP publishes this set; both verifiers refetch it
), min_size=1, max_size=30)


@pytest.fixture(scope="module")
def threaded_server(keys: Keys) -> Iterator[JWKSServer]:
    with JWKSServer(jwk_set(keys.rsa, keys.ec)).in_thread() as srv:
        yield srv


async def outcome(verifier: JWTVerifier, token: str) -> Any:
    try:
        return await verifier.verify(token)
    except TokenError as exc:
        return exc.reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(token_specs(), min_size=1, max_size=3), steps=STEPS, size=st.sampled_from((1, 2, 4096, 4096)),
       leeway=st.sampled_from((0, 30)), start=KEY_SETS)
def test_cached_answers_equal_full_checks(threaded_server: JWKSServer, keys: Keys, specs: list[dict[str, Any]],
                                          steps: list[tuple[str, Any]], size: int, leeway: int,
                                          start: list[str]) -> None:
    """Two verifiers on one JWKS, one wall clock and one refetch clock, the cache on and off: every
    token of the example is verified first and last, and in between as the steps say."""
    by_name = {name: getattr(keys, name) for name in KEY_NAMES}
    threaded_server.set_keys(*(by_name[n] for n in start))
    tokens = [by_name[s["key"]].sign({k: s[k] for k in ("iss", "aud", "sub", "exp", "iat", "nbf") if s[k] is not None},
                                     kid=s["kid"], alg=s["alg"]) for s in specs]
    every = [("verify", i) for i in range(len(tokens))]

    def boundary(i: int, claim: str) -> float:
        """The first instant a token is valid (nbf, iat) or the first it is not (exp), for pyjwt."""
        spec = specs[i % len(specs)]
        if spec[claim] is None:
            claim = "exp"
        return int(spec[claim]) + leeway if claim == "exp" else int(spec[claim]) - leeway

    async def run() -> None:
        mono = Clock(1000.0)
        options: dict[str, Any] = {"issuer": ISS, "audience": AUD, "jwks_url": threaded_server.url, "clock": mono,
                                   "leeway_s": leeway, "jwks_cache_s": 1e9, "algorithms": ["RS256", "ES256"]}
        cached, plain = JWTVerifier(**options, verified_cache_size=size), JWTVerifier(**options, verified_cache_size=0)
        full = count_decodes(cached)

        async def compare(token: str) -> None:
            checks = full[0]
            want, got = await outcome(plain, token), await outcome(cached, token)
            assert got == want and repr(got) == repr(want)  # the same types and order too
            event(f"{'checked' if full[0] > checks else 'not checked'}: {got if isinstance(got, str) else 'claims'}")
            if isinstance(got, dict):
                got["sub"] = "changed"  # the next answer is not affected
            assert len(cached._verified) <= size

        try:
            with wall_clock_at(Clock(T0)) as wall:
                for step, arg in (*every, *steps, *every):
                    if step == "verify":
                        await compare(tokens[arg % len(tokens)])
                    elif step == "near":
                        index, claim, delta = arg
                        await compare(tokens[index % len(tokens)])
                        wall.now = boundary(index, claim) + delta
                        await compare(tokens[index % len(tokens)])
                    elif step == "move":
                        wall.advance(arg)
                    else:
                        threaded_server.set_keys(*(by_name[n] for n in arg))
                        mono.advance(11)  # past min_refetch_interval_s: both refetch now
                        assert await plain.refresh() and await cached.refresh()
        finally:
            await cached.close()
            await plain.close()

    asyncio.run(run())


def test_the_wall_clock_patch_reaches_pyjwt(keys: Keys) -> None:
    """The property above compares like with like only if pyjwt reads the clock set here."""
    token = keys.rsa.sign(claims())
    key = jwt.PyJWK(keys.rsa.public_jwk())
    with wall_clock_at(Clock(T0 + 1000)), pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["RS256"], audience=AUD)
    with wall_clock_at(Clock(T0)):
        assert module._wall_clock() == T0
        jwt.decode(token, key, algorithms=["RS256"], audience=AUD)


# ---- configuration ----

def config(jwt_section: dict[str, Any]) -> dict[str, Any]:
    return {"upstream": {"url": "http://127.0.0.1:3000/mcp"}, "public_url": AUD,
            "auth": {"jwt": {"issuer": ISS, "jwks_url": "https://idp.example.com/jwks", **jwt_section}}}


async def test_config_sets_the_size_and_the_verifier_gets_it() -> None:
    from proxy.app import jwt_verifier  # where the proxy builds its verifier

    default = jwt_verifier(parse(config({}), "test"))
    assert isinstance(default, JWTVerifier) and default.verified_cache_size == 4096
    off = jwt_verifier(parse(config({"verified_cache_size": 0}), "test"))
    assert isinstance(off, JWTVerifier) and off.verified_cache_size == 0
    await default.close()
    await off.close()


@pytest.mark.parametrize("value", [-1, 1_000_001, "big", True, 1.5])
def test_config_refuses_bad_sizes(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config({"verified_cache_size": value}), "test")
    assert "auth.jwt.verified_cache_size" in str(info.value)


@pytest.mark.parametrize("value", [-1, True, 1.5, "8"])
def test_verifier_refuses_bad_sizes(value: Any) -> None:
    with pytest.raises(ValueError, match="verified_cache_size"):
        JWTVerifier(issuer=ISS, audience=AUD, jwks_url="https://idp.example.com/jwks", verified_cache_size=value)
