"""JWTVerifier against a JWKS served over loopback, with keys generated here (RSA 2048, EC P-256)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from proxy.auth.jwt_verifier import JWTVerifier, TokenError
from tests.peers.jwks_server import JWKSServer, SigningKey, ec_key, jwk_set, rsa_key

ISS = "https://idp.example.com"
AUD = "https://mcp.example.com"


class Clock:
    """Monotonic time for the cache and the refetch rate limit, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey  # kid rsa-1, published
    ec: SigningKey  # kid ec-1, published
    rsa2: SigningKey  # kid rsa-2, published after a rotation
    attacker: SigningKey  # kid rsa-1 too, never published


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa_key("rsa-1"), ec_key("ec-1"), rsa_key("rsa-2"), rsa_key("rsa-1"))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300,
                            "scope": "mcp:read"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[JWKSServer]:
    async with JWKSServer(jwk_set(keys.rsa, keys.ec)) as srv:
        yield srv


@pytest.fixture
def clock() -> Clock:
    return Clock()


Factory = Callable[..., JWTVerifier]


@pytest.fixture
async def make(server: JWKSServer, clock: Clock) -> AsyncIterator[Factory]:
    made: list[JWTVerifier] = []

    def _make(**kwargs: Any) -> JWTVerifier:
        options: dict[str, Any] = {"issuer": ISS, "audience": AUD, "jwks_url": server.url, "clock": clock}
        options.update(kwargs)
        verifier = JWTVerifier(**options)
        made.append(verifier)
        return verifier

    yield _make
    for verifier in made:
        await verifier.close()


@pytest.fixture
def verifier(make: Factory) -> JWTVerifier:
    return make()


async def rejected(verifier: JWTVerifier, token: Any, reason: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    assert info.value.reason == reason, str(info.value)
    assert_no_token_in(info.value, token)
    return info.value


def assert_no_token_in(exc: TokenError, token: Any) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)  # pyjwt's not chained
    if isinstance(token, str) and token:
        assert token not in text
        for part in token.split("."):
            if len(part) >= 4:
                assert part not in text


# ---- valid tokens ----

async def test_valid_rs256(verifier: JWTVerifier, server: JWKSServer, keys: Keys) -> None:
    got = await verifier.verify(keys.rsa.sign(claims()))
    assert got["sub"] == "alice" and got["aud"] == AUD and got["scope"] == "mcp:read"
    assert server.fetches == 1
    await verifier.verify(keys.rsa.sign(claims(sub="bob")))
    assert server.fetches == 1  # cached


async def test_valid_es256(verifier: JWTVerifier, keys: Keys) -> None:
    assert (await verifier.verify(keys.ec.sign(claims())))["iss"] == ISS


async def test_audience_list_containing_ours(verifier: JWTVerifier, keys: Keys) -> None:
    got = await verifier.verify(keys.rsa.sign(claims(aud=["https://other.example.com", AUD])))
    assert AUD in got["aud"]


async def test_expired_within_leeway_is_accepted(verifier: JWTVerifier, keys: Keys) -> None:
    now = int(time.time())
    await verifier.verify(keys.rsa.sign(claims(iat=now - 600, exp=now - 10)))  # leeway 30 s
    await verifier.verify(keys.rsa.sign(claims(nbf=now + 10, iat=now + 10)))


async def test_token_without_kid_when_one_key_fits(make: Factory, server: JWKSServer, keys: Keys) -> None:
    verifier = make()
    assert (await verifier.verify(keys.rsa.sign(claims(), kid=None)))["sub"] == "alice"
    assert (await verifier.verify(keys.ec.sign(claims(), kid=None)))["sub"] == "alice"
    server.set_keys(keys.rsa, keys.rsa2, keys.ec)  # two RSA keys: a kid-less RS256 token is ambiguous
    other = make()
    await rejected(other, keys.rsa.sign(claims(), kid=None), "unknown_key")
    assert (await other.verify(keys.ec.sign(claims(), kid=None)))["sub"] == "alice"


# ---- algorithms and keys ----

async def test_alg_none_is_rejected(verifier: JWTVerifier, keys: Keys) -> None:
    payload = b64(claims())
    for alg in ("none", "None", "NONE"):
        token = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': 'rsa-1'})}.{payload}."
        await rejected(verifier, token, "disallowed_algorithm")
    # ... also with a signature segment, and without a kid
    await rejected(verifier, f"{b64({'alg': 'none'})}.{payload}.{b64(b'x' * 32)}", "disallowed_algorithm")


async def test_hs256_with_the_public_key_as_secret_is_rejected(verifier: JWTVerifier, keys: Keys) -> None:
    """The classic confusion attack: HMAC keyed with the RSA public key (PEM), which anyone can get."""
    pem = keys.rsa.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_n = keys.rsa.public_jwk()["n"].encode()
    for secret in (pem, jwk_n):
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await rejected(verifier, f"{signing_input}.{b64(mac)}", "disallowed_algorithm")


async def test_algorithm_outside_the_allow_list(verifier: JWTVerifier, keys: Keys) -> None:
    await rejected(verifier, keys.rsa.sign(claims(), alg="RS384"), "disallowed_algorithm")
    await rejected(verifier, keys.rsa.sign(claims(), alg="PS256"), "disallowed_algorithm")


async def test_key_type_must_fit_the_algorithm(make: Factory, server: JWKSServer, keys: Keys) -> None:
    verifier = make()
    # an ES256 token naming the RSA key's kid (signed with the EC key): the RSA key cannot verify ES256
    await rejected(verifier, keys.ec.sign(claims(), kid="rsa-1"), "disallowed_algorithm")
    # the JWK declares alg RS256; a PS256 token with the same key is refused although PS256 is allowed
    ps = make(algorithms=["RS256", "PS256", "ES256"])
    await rejected(ps, keys.rsa.sign(claims(), alg="PS256"), "disallowed_algorithm")
    # without a declared alg, the RSA key serves every allowed RSA algorithm
    server.set_keys({k: v for k, v in keys.rsa.public_jwk().items() if k != "alg"})
    undeclared = make(algorithms=["RS256", "PS256"])
    assert (await undeclared.verify(keys.rsa.sign(claims(), alg="PS256")))["sub"] == "alice"
    assert (await undeclared.verify(keys.rsa.sign(claims())))["sub"] == "alice"


async def test_unpublished_key_with_a_known_kid(verifier: JWTVerifier, keys: Keys) -> None:
    await rejected(verifier, keys.attacker.sign(claims()), "bad_signature")


async def test_keys_in_token_headers_are_ignored(verifier: JWTVerifier, server: JWKSServer, keys: Keys) -> None:
    async with JWKSServer(jwk_set(keys.attacker)) as evil:
        headers = {"jwk": keys.attacker.public_jwk(), "jku": evil.url, "x5u": evil.url}
        await rejected(verifier, keys.attacker.sign(claims(), headers=headers), "bad_signature")
        assert evil.fetches == 0 and server.fetches == 1


async def test_unusable_jwks_entries_are_skipped(make: Factory, server: JWKSServer, keys: Keys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = rsa_key("small", bits=1024)
        small_token = small.sign(claims())
    enc = rsa_key("enc")
    server.set_keys(keys.rsa, small, enc.public_jwk(use="enc"), {"kty": "oct", "kid": "sym", "k": b64(b"secret")},
                    {"kty": "RSA", "kid": "broken", "n": "AA", "e": "AQAB"},
                    {**keys.rsa2.public_jwk(), "d": "AQAB"},  # private material published by mistake
                    {**keys.ec.public_jwk(), "kid": "ops", "key_ops": ["encrypt"]})
    server.jwks["keys"] += ["not a jwk", 42, {"kid": "no-kty"}]
    verifier = make()
    assert (await verifier.verify(keys.rsa.sign(claims())))["sub"] == "alice"
    await rejected(verifier, small_token, "unknown_key")
    await rejected(verifier, enc.sign(claims()), "unknown_key")
    await rejected(verifier, keys.rsa2.sign(claims()), "unknown_key")
    await rejected(verifier, keys.ec.sign(claims(), kid="ops"), "unknown_key")
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'sym'})}.{b64(claims())}"
    mac = hmac.new(b"secret", signing_input.encode(), hashlib.sha256).digest()
    await rejected(verifier, f"{signing_input}.{b64(mac)}", "disallowed_algorithm")


# ---- claims ----

async def test_wrong_audience(verifier: JWTVerifier, keys: Keys) -> None:
    await rejected(verifier, keys.rsa.sign(claims(aud="https://other.example.com")), "wrong_audience")
    await rejected(verifier, keys.rsa.sign(claims(aud=["https://a.example", "https://b.example"])), "wrong_audience")
    await rejected(verifier, keys.rsa.sign(claims(aud=None)), "wrong_audience")
    await rejected(verifier, keys.rsa.sign(claims(aud=AUD + "/")), "wrong_audience")


async def test_wrong_issuer(verifier: JWTVerifier, keys: Keys) -> None:
    await rejected(verifier, keys.rsa.sign(claims(iss="https://evil.example.com")), "wrong_issuer")
    await rejected(verifier, keys.rsa.sign(claims(iss=None)), "wrong_issuer")


async def test_expired(verifier: JWTVerifier, keys: Keys) -> None:
    now = int(time.time())
    await rejected(verifier, keys.rsa.sign(claims(iat=now - 3600, exp=now - 31)), "expired")


async def test_not_yet_valid(verifier: JWTVerifier, keys: Keys) -> None:
    now = int(time.time())
    await rejected(verifier, keys.rsa.sign(claims(nbf=now + 120)), "not_yet_valid")
    await rejected(verifier, keys.rsa.sign(claims(iat=now + 120)), "not_yet_valid")


async def test_leeway_is_configurable(make: Factory, keys: Keys) -> None:
    now = int(time.time())
    await rejected(make(leeway_s=0), keys.rsa.sign(claims(exp=now - 2)), "expired")


async def test_exp_is_required_and_times_are_numbers(verifier: JWTVerifier, keys: Keys) -> None:
    now = int(time.time())
    await rejected(verifier, keys.rsa.sign(claims(exp=None)), "malformed")
    await rejected(verifier, keys.rsa.sign(claims(exp=str(now + 300))), "malformed")
    await rejected(verifier, keys.rsa.sign(claims(exp=True)), "expired")  # int(True) == 1
    await rejected(verifier, keys.rsa.sign(claims(nbf="soon")), "malformed")
    await rejected(verifier, keys.rsa.sign(claims(iat=[1])), "malformed")
    await rejected(verifier, keys.rsa.sign(claims(sub=42)), "malformed")
    assert (await verifier.verify(keys.rsa.sign(claims(exp=now + 300.5))))["exp"] == now + 300.5


async def test_forged_token_fails_on_signature_before_claims(verifier: JWTVerifier, keys: Keys) -> None:
    """No claim oracle for forgers: a bad signature is reported as such whatever the claims say."""
    token = keys.attacker.sign(claims(aud="x", iss="y", exp=1))
    await rejected(verifier, token, "bad_signature")


# ---- malformed input; messages never hold the token ----

async def test_malformed_tokens(verifier: JWTVerifier, keys: Keys) -> None:
    good = keys.rsa.sign(claims())
    head, payload, sig = good.split(".")
    bad_payload = jwt.api_jws.encode(b"not json", keys.rsa.private_key, algorithm="RS256",
                                     headers={"kid": "rsa-1"})
    array_payload = jwt.api_jws.encode(b"[1, 2]", keys.rsa.private_key, algorithm="RS256",
                                       headers={"kid": "rsa-1"})
    cases: list[Any] = [
        "", "abc", "a.b", "a.b.c", "a.b.c.d.e", "...", f"{head}.{payload}", f"{good}.{sig}",
        f"{b64(b'not json')}.{payload}.{sig}", f"{b64(b'[1]')}.{payload}.{sig}",
        f"{head}!.{payload}.{sig}", f"{head}.{payload}.{sig}%%", f"{head}.{payload}\u00e9.{sig}",
        f"{b64({'alg': 'RS256', 'kid': 7})}.{payload}.{sig}", f"{head}.{payload}.{sig}" + "A" * 20000,
        f"{b64({'alg': 'RS256', 'kid': 'rsa-1', 'crit': ['exp']})}.{payload}.{sig}",
        bad_payload, array_payload, None, b"bytes.are.not.str", 42,
    ]
    for token in cases:
        await rejected(verifier, token, "malformed")
    # a valid signature on a tampered payload
    await rejected(verifier, f"{head}.{b64(claims(sub='mallory'))}.{sig}", "bad_signature")
    await rejected(verifier, f"{head}.{payload}.{b64(b'x' * 256)}", "bad_signature")
    await rejected(verifier, f"{head}.{payload}.", "bad_signature")


async def test_messages_never_hold_the_token(make: Factory, server: JWKSServer, keys: Keys) -> None:
    verifier = make()
    now = int(time.time())
    tokens = {
        "expired": keys.rsa.sign(claims(exp=now - 100)),
        "wrong_audience": keys.rsa.sign(claims(aud="https://elsewhere.example")),
        "wrong_issuer": keys.rsa.sign(claims(iss="https://elsewhere.example")),
        "not_yet_valid": keys.rsa.sign(claims(nbf=now + 1000)),
        "bad_signature": keys.attacker.sign(claims()),
        "unknown_key": keys.rsa2.sign(claims()),
        "disallowed_algorithm": keys.rsa.sign(claims(), alg="RS512"),
    }
    for reason, token in tokens.items():
        error = await rejected(verifier, token, reason)
        assert "rsa-" not in str(error)  # not even the kid
    await server.stop()
    cold = make()
    error = await rejected(cold, keys.rsa.sign(claims()), "jwks_unavailable")
    assert "rsa-" not in str(error)


# ---- the key set: refetch, rotation, rate limit, coalescing, outages ----

async def test_unknown_kid_refetches_once_then_rotation(make: Factory, server: JWKSServer, keys: Keys,
                                                        clock: Clock) -> None:
    verifier = make()
    await verifier.verify(keys.rsa.sign(claims()))
    assert server.fetches == 1
    clock.advance(11)
    await rejected(verifier, keys.rsa2.sign(claims()), "unknown_key")
    assert server.fetches == 2  # one refetch for the unknown kid
    await rejected(verifier, keys.rsa2.sign(claims()), "unknown_key")
    assert server.fetches == 2  # rate-limited
    server.set_keys(keys.rsa, keys.rsa2, keys.ec)  # the IdP rotates
    clock.advance(11)
    assert (await verifier.verify(keys.rsa2.sign(claims())))["sub"] == "alice"
    assert server.fetches == 3
    assert (await verifier.verify(keys.rsa.sign(claims())))["sub"] == "alice"
    assert server.fetches == 3


async def test_retired_key_stops_working_after_the_cache_expires(make: Factory, server: JWKSServer, keys: Keys,
                                                                 clock: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    old = keys.rsa.sign(claims())
    await verifier.verify(old)
    server.set_keys(keys.rsa2)
    clock.advance(30)
    await verifier.verify(old)  # still cached
    assert server.fetches == 1
    clock.advance(31)
    await verifier.verify(old)  # stale: served while a background fetch renews the set
    assert await verifier.refresh()  # waits for that fetch
    assert server.fetches == 2
    await rejected(verifier, old, "unknown_key")
    assert (await verifier.verify(keys.rsa2.sign(claims())))["sub"] == "alice"


async def test_refetch_is_rate_limited(make: Factory, server: JWKSServer, keys: Keys, clock: Clock) -> None:
    verifier = make()
    await verifier.verify(keys.rsa.sign(claims()))
    clock.advance(11)
    for _ in range(100):
        await rejected(verifier, keys.attacker.sign(claims(), kid=uuid.uuid4().hex), "unknown_key")
        clock.advance(0.05)  # 5 s in all, under min_refetch_interval_s
    assert server.fetches == 2
    clock.advance(6)
    await rejected(verifier, keys.attacker.sign(claims(), kid="another"), "unknown_key")
    assert server.fetches == 3


async def test_refetch_is_rate_limited_concurrently(verifier: JWTVerifier, server: JWKSServer, keys: Keys) -> None:
    await verifier.verify(keys.rsa.sign(claims()))
    tokens = [keys.attacker.sign(claims(), kid=uuid.uuid4().hex) for _ in range(100)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, TokenError) and r.reason == "unknown_key" for r in results)
    assert server.fetches <= 2


async def test_concurrent_first_verifications_share_one_fetch(verifier: JWTVerifier, server: JWKSServer,
                                                              keys: Keys) -> None:
    server.delay_s = 0.2
    tokens = [keys.rsa.sign(claims(sub=f"u{i}")) for i in range(10)] + [keys.ec.sign(claims()) for _ in range(10)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert len(results) == 20 and server.fetches == 1


async def test_concurrent_new_kid_shares_one_refetch(verifier: JWTVerifier, server: JWKSServer, keys: Keys,
                                                     clock: Clock) -> None:
    await verifier.verify(keys.rsa.sign(claims()))
    server.set_keys(keys.rsa, keys.rsa2)
    server.delay_s = 0.2
    clock.advance(11)
    token = keys.rsa2.sign(claims())
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert all(r["sub"] == "alice" for r in results) and server.fetches == 2


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(verifier: JWTVerifier, server: JWKSServer,
                                                                 keys: Keys) -> None:
    server.delay_s = 0.2
    token = keys.rsa.sign(claims())
    first = asyncio.create_task(verifier.verify(token))
    second = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second)["sub"] == "alice"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert server.fetches == 1


async def test_jwks_down_from_the_start(make: Factory, server: JWKSServer, keys: Keys, clock: Clock) -> None:
    await server.stop()
    verifier = make()
    await rejected(verifier, keys.rsa.sign(claims()), "jwks_unavailable")
    await rejected(verifier, keys.rsa.sign(claims()), "jwks_unavailable")  # rate-limited, still unavailable
    await server.start()  # the IdP comes back on the same port
    await rejected(verifier, keys.rsa.sign(claims()), "jwks_unavailable")  # no retry within the interval
    clock.advance(11)
    assert (await verifier.verify(keys.rsa.sign(claims())))["sub"] == "alice"


async def test_cached_keys_survive_an_outage(make: Factory, server: JWKSServer, keys: Keys, clock: Clock) -> None:
    verifier = make(jwks_cache_s=60)
    await verifier.verify(keys.rsa.sign(claims()))
    await server.stop()
    clock.advance(61)  # stale, and the IdP is down
    await verifier.verify(keys.rsa.sign(claims()))
    assert not await verifier.refresh()
    assert (await verifier.verify(keys.ec.sign(claims())))["sub"] == "alice"
    clock.advance(11)
    await rejected(verifier, keys.rsa2.sign(claims()), "jwks_unavailable")  # the key might be new: cannot tell
    await rejected(verifier, keys.attacker.sign(claims()), "bad_signature")  # known kid: still checked


@pytest.mark.parametrize("fault", ["status500", "garbage", "not_a_set", "huge"])
async def test_bad_jwks_answers(make: Factory, server: JWKSServer, keys: Keys, clock: Clock, fault: str) -> None:
    verifier = make()
    await verifier.verify(keys.rsa.sign(claims()))
    if fault == "status500":
        server.status = 500
    elif fault == "garbage":
        server.body = b"<html>"
    elif fault == "not_a_set":
        server.body = b'{"keys": {"kid": "x"}}'
    else:
        server.body = b'{"keys": [], "pad": "' + b"x" * (2 << 20) + b'"}'
    clock.advance(301)
    await verifier.verify(keys.rsa.sign(claims()))  # stale keys kept
    assert not await verifier.refresh()
    await rejected(verifier, keys.rsa2.sign(claims()), "jwks_unavailable")
    assert (await verifier.verify(keys.ec.sign(claims())))["sub"] == "alice"


async def test_jwks_timeout(make: Factory, server: JWKSServer, keys: Keys) -> None:
    server.delay_s = 2
    verifier = make(timeout_s=0.2)
    started = time.monotonic()
    await rejected(verifier, keys.rsa.sign(claims()), "jwks_unavailable")
    assert time.monotonic() - started < 1.5


async def test_close_is_idempotent_and_cancels_a_fetch(make: Factory, server: JWKSServer, keys: Keys) -> None:
    await make().close()
    server.delay_s = 1
    verifier = make()
    task = asyncio.create_task(verifier.verify(keys.rsa.sign(claims())))
    await asyncio.sleep(0.05)
    await verifier.close()
    await verifier.close()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_threaded_server_for_synchronous_tests(keys: Keys) -> None:
    import urllib.request

    with JWKSServer(jwk_set(keys.rsa)).in_thread() as srv:
        with urllib.request.urlopen(srv.url, timeout=5) as response:
            assert json.load(response)["keys"][0]["kid"] == "rsa-1"
        assert srv.fetches == 1


# ---- configuration ----

@pytest.mark.parametrize("algorithms", [["none"], ["RS256", "none"], ["None"], ["HS256"], ["RS256", "HS512"],
                                        ["hs384"], ["XY256"], [], "RS256"])
def test_config_refuses_bad_algorithms(algorithms: Any) -> None:
    with pytest.raises(ValueError):
        JWTVerifier(issuer=ISS, audience=AUD, jwks_url="https://idp.example.com/jwks", algorithms=algorithms)


@pytest.mark.parametrize("override", [{"issuer": ""}, {"audience": ""}, {"jwks_url": "file:///etc/jwks"},
                                      {"jwks_url": "idp.example.com/jwks"}, {"leeway_s": -1},
                                      {"jwks_cache_s": float("nan")}])
def test_config_refuses_bad_values(override: dict[str, Any]) -> None:
    options: dict[str, Any] = {"issuer": ISS, "audience": AUD, "jwks_url": "https://idp.example.com/jwks"}
    with pytest.raises(ValueError):
        JWTVerifier(**{**options, **override})


def test_config_accepts_the_design_defaults() -> None:
    verifier = JWTVerifier(issuer=ISS, audience=AUD, jwks_url="https://idp.example.com/jwks",
                           algorithms=("RS256", "ES256", "PS256", "EdDSA"), leeway_s=30)
    assert verifier.algorithms == ("RS256", "ES256", "PS256", "EdDSA")


@pytest.fixture(autouse=True)
def _no_pyjwt_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", jwt.warnings.InsecureKeyLengthWarning)
        yield
