"""proxy/ratelimit.py: every rate-limit dialect read, one normalized view, never more permissive."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import ratelimit
from proxy.config import ConfigError, parse
from proxy.protocol.headers import client_response_headers
from proxy.ratelimit import Quota, RateLimits, normalize, observe, read
from proxy.transport import answers
from proxy.transport.relay import RateLimited

NOW = 1_700_000_000.0
DATE_IN_40S = "Tue, 14 Nov 2023 22:14:00 GMT"  # NOW + 40 s (NOW is 22:13:20 GMT)

# (upstream fields, expected (limit, remaining, reset_s, window_s, retry_after_s))
CASES = {
    "missive 429: X-RateLimit-*, reset in epoch seconds": (
        [("X-RateLimit-Limit", "300"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1700000042"),
         ("Retry-After", "42")], (300, 0, 42, None, 42)),
    "X-Rate-Limit-*, reset in epoch milliseconds": (
        [("x-rate-limit-limit", "60"), ("x-rate-limit-remaining", "59"), ("x-rate-limit-reset", "1700000010500")],
        (60, 59, 11, None, None)),
    "X-RateLimit-Reset as delay seconds": ([("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "30")],
                                           (None, 4, 30, None, None)),
    "X-RateLimit-Reset as an HTTP-date": ([("x-ratelimit-reset", DATE_IN_40S)], (None, None, 40, None, None)),
    "a fractional reset is rounded up (never earlier)": ([("x-ratelimit-reset", "1.2")], (None, None, 2, None, None)),
    "epoch reset in the past: 0": ([("x-ratelimit-reset", "1699999000")], (None, None, 0, None, None)),
    "draft <= 03: RateLimit-Limit with policies": (
        [("RateLimit-Limit", "10, 10;w=1, 50;w=60"), ("RateLimit-Remaining", "3"), ("RateLimit-Reset", "7")],
        (10, 3, 7, 1, None)),
    "drafts 04-06: RateLimit-Policy gives the window": (
        [("RateLimit-Limit", "100"), ("RateLimit-Remaining", "50"), ("RateLimit-Reset", "5"),
         ("RateLimit-Policy", "100;w=60, 1000;w=3600")], (100, 50, 5, 60, None)),
    "draft 07: a Dictionary": ([("RateLimit", "limit=100, remaining=50, reset=5"), ("RateLimit-Policy", "100;w=60")],
                               (100, 50, 5, 60, None)),
    "drafts 08-10: the policy closest to exhaustion names the limit; the latest reset": (
        [("RateLimit-Policy", '"permin";q=50;w=60, "perhr";q=1000;w=3600'),
         ("RateLimit", '"permin";r=10;t=30, "perhr";r=5;t=1800')], (1000, 5, 1800, 3600, None)),
    "drafts 08-10 split over two lines, token names": (
        [("RateLimit-Policy", "quota;q=100;w=1"), ("RateLimit", "quota;r=0;t=1"), ("RateLimit", '"other";r=9')],
        (100, 0, 1, 1, None)),
    "a policy stated without a RateLimit item still limits": (
        [("RateLimit-Policy", '"day";q=10;w=86400')], (10, None, None, 86400, None)),
    "several sources: smallest remaining, latest reset": (
        [("X-RateLimit-Limit", "300"), ("X-RateLimit-Remaining", "120"), ("X-RateLimit-Reset", "1700000060"),
         ("RateLimit", '"burst";r=2;t=5'), ("RateLimit-Policy", '"burst";q=10;w=10')], (10, 2, 60, 10, None)),
    "a field repeated: the most restrictive line": (
        [("X-RateLimit-Remaining", "7"), ("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", "5"),
         ("X-RateLimit-Reset", "9")], (None, 3, 9, None, None)),
    "Retry-After as an HTTP-date": ([("Retry-After", DATE_IN_40S)], (None, None, None, None, 40)),
    "two Retry-After: the later": ([("Retry-After", "3"), ("Retry-After", "8")], (None, None, None, None, 8)),
}

UNPARSEABLE = {
    "no rate-limit field": [("content-type", "application/json")],
    "words and signs": [("X-RateLimit-Remaining", "many"), ("X-RateLimit-Limit", "-5"), ("Retry-After", "soon")],
    "a structured field that is none": [("RateLimit", 'garbage;;,'), ("RateLimit-Policy", '"x";q=-1')],
    "an unterminated string": [("RateLimit", '"default;r=5')],
    "numbers too long to be real": [("X-RateLimit-Remaining", "9" * 40), ("RateLimit", '"d";r=' + "9" * 40)],
    "a date that is none": [("Retry-After", "Mon, 99 Foo 20000 99:99:99 GMT"), ("X-RateLimit-Reset", "yesterday!!")],
    "a trailing comma": [("RateLimit", '"d";r=5,')],
    "r is no integer": [("RateLimit", '"d";r=5.5;t=1'), ("RateLimit", '"e";r="5"')],
}


@pytest.mark.parametrize("fields,expected", CASES.values(), ids=CASES.keys())
def test_normalized(fields: list[tuple[str, str]], expected: tuple) -> None:
    limits = read(fields, NOW)
    assert limits is not None
    assert (limits.limit, limits.remaining, limits.reset_s, limits.window_s, limits.retry_after_s) == expected


@pytest.mark.parametrize("fields", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_unparseable_values_are_ignored(fields: list[tuple[str, str]]) -> None:
    assert read(fields, NOW) is None  # nothing invented, nothing raised


@pytest.mark.parametrize("value,delay", [
    ("30", 30.0), ("0", 0.0), ("1000000000", 1000000000.0),  # 10^9 itself: still a delay
    ("1700000030", 30.0), ("1700000030.5", 30.5), ("1700000030000", 30.0), (DATE_IN_40S, 40.0),
    ("Tuesday, 14-Nov-23 22:14:00 GMT", 40.0), ("-3", None), ("", None), ("0x10", None)])
def test_reset_heuristic(value: str, delay: float | None) -> None:
    assert ratelimit.reset_delay(value, NOW) == delay


def test_emitted_fields_replace_the_old_drafts_and_keep_the_rest() -> None:
    upstream = [("Content-Type", "application/json"), ("X-RateLimit-Limit", "300"), ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", "1700000042"), ("Retry-After", "42"), ("RateLimit-Reset", "1700000042"),
                ("RateLimit", "limit=300, remaining=0, reset=42")]
    limits = read(upstream, NOW)
    assert limits is not None
    relayed = [(n.decode(), v.decode()) for n, v in client_response_headers(upstream, limits.fields())]
    assert relayed == [
        ("content-type", "application/json"), ("x-ratelimit-limit", "300"), ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000042"), ("retry-after", "42"),
        ("ratelimit-limit", "300"), ("ratelimit-remaining", "0"), ("ratelimit-reset", "42"),
        ("ratelimit-policy", '"default";q=300'), ("ratelimit", '"default";r=0;t=42')]


def test_current_draft_fields_are_relayed_as_sent() -> None:
    upstream = [("RateLimit-Policy", '"permin";q=50;w=60'), ("RateLimit", '"permin";r=10;t=30')]
    limits = read(upstream, NOW)
    assert limits is not None and limits.policy == "permin"
    assert limits.fields() == [("ratelimit-limit", "50"), ("ratelimit-remaining", "10"), ("ratelimit-reset", "30")]
    relayed = [(n.decode(), v.decode()) for n, v in client_response_headers(upstream, limits.fields())]
    assert relayed[:2] == [("ratelimit-policy", '"permin";q=50;w=60'), ("ratelimit", '"permin";r=10;t=30')]


def test_emitted_policy_name_is_a_valid_string() -> None:
    limits = RateLimits(limit=5, remaining=1, reset_s=2, window_s=60, policy='we"ird\\näme')
    assert limits.fields()[3:] == [("ratelimit-policy", '"we\\"ird\\\\nme";q=5;w=60'),
                                   ("ratelimit", '"we\\"ird\\\\nme";r=1;t=2')]


def test_carried_fields_of_a_surfaced_answer() -> None:
    upstream = [("content-type", "application/json"), ("x-ratelimit-remaining", "0"), ("retry-after", "5"),
                ("x-request-id", "abc")]
    limits = read(upstream, NOW)
    assert limits is not None
    assert ratelimit.carried(upstream, limits) == [("x-ratelimit-remaining", "0"), ("retry-after", "5"),
                                                   ("ratelimit-remaining", "0"), ("ratelimit", '"default";r=0')]


# --- the retry hint (answers.rate_limited) ---

def test_tool_call_hint_is_a_tool_result() -> None:
    limits = RateLimits(limit=300, remaining=0, reset_s=42, retry_after_s=40)
    answer = answers.upstream_failure(RateLimited(limits, "tools/call", "2025-11-25", (("retry-after", "40"),)), 7)
    assert answer.status == 200 and answer.headers == (("retry-after", "40"),)
    assert answer.message == {"jsonrpc": "2.0", "id": 7, "result": {
        "content": [{"type": "text", "text": "rate limited by the upstream; retry after 40 s"}], "isError": True,
        "_meta": {"ratelimit": {"limit": 300, "remaining": 0, "reset_s": 42, "retry_after_s": 40}}}}


def test_tool_call_hint_carries_result_type_where_the_revision_needs_it() -> None:
    limits = RateLimits(remaining=0, reset_s=9)
    answer = answers.rate_limited(RateLimited(limits, "tools/call", "2026-07-28", ()), "a")
    assert answer.message is not None
    result = answer.message["result"]
    assert result["resultType"] == "complete"
    assert result["content"][0]["text"] == "rate limited by the upstream; retry after 9 s"  # no Retry-After: the reset


def test_other_requests_get_an_error_with_retry_after() -> None:
    answer = answers.rate_limited(RateLimited(RateLimits(retry_after_s=3), "resources/read", None, ()), 1)
    assert answer.status == 200 and answer.message is not None
    error = answer.message["error"]
    assert error["message"] == "rate limited by the upstream; retry after 3 s"
    assert error["data"] == {"retry_after_s": 3, "ratelimit": {"retry_after_s": 3}}


def test_a_hint_without_any_wait_invents_none() -> None:
    answer = answers.rate_limited(RateLimited(RateLimits(), "tools/call", None, ()), 1)
    assert answer.message is not None
    assert answer.message["result"]["content"][0]["text"] == "rate limited by the upstream; retry later"
    assert answer.message["result"]["_meta"] == {"ratelimit": {}}


# --- config ---

def test_config_rate_limit_section() -> None:
    base = {"upstream": {"url": "http://127.0.0.1:1/mcp"}}
    assert parse(base, "c.yaml").rate_limit.surface_to_agent is False
    assert parse(base, "c.yaml").servers[0].surface_rate_limit is False
    on = parse({**base, "rate_limit": {"surface_to_agent": True},
                "servers": [{"name": "a", "methods": ["read"]},
                            {"name": "b", "token_hmac": "0" * 64, "surface_rate_limit": False}],
                "auth": {"url_token_key": "k" * 16}}, "c.yaml")
    assert [s.surface_rate_limit for s in on.servers] == [True, False]
    with pytest.raises(ConfigError, match=r"c.yaml: rate_limit.surface: unknown key"):
        parse({**base, "rate_limit": {"surface": True}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"rate_limit.surface_to_agent: must be true or false"):
        parse({**base, "rate_limit": {"surface_to_agent": "yes"}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"servers\[0\].surface_rate_limit: must be true or false"):
        parse({**base, "servers": [{"name": "a", "surface_rate_limit": 1}]}, "c.yaml")


# --- properties ---

_NAMES = st.sampled_from(["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-rate-limit-limit",
                          "x-rate-limit-remaining", "x-rate-limit-reset", "ratelimit-limit", "ratelimit-remaining",
                          "ratelimit-reset", "ratelimit", "ratelimit-policy", "retry-after", "RateLimit"])
_NUMBER = st.one_of(st.integers(0, 10**14).map(str), st.floats(0, 1e13, allow_nan=False).map(lambda f: f"{f:.3f}"))
_ITEM = st.builds(lambda name, r, t, q, w: f'"{name}";r={r};t={t}, "{name}";q={q};w={w}',
                  st.sampled_from(["a", "b", "default"]), st.integers(0, 10**6), st.integers(0, 10**10),
                  st.integers(0, 10**6), st.integers(1, 10**5))
_VALUE = st.one_of(_NUMBER, _ITEM, st.text(max_size=60),
                   st.sampled_from([DATE_IN_40S, "limit=5, remaining=2, reset=9"]))
_HEADERS = st.lists(st.tuples(_NAMES, _VALUE), max_size=8)


@settings(max_examples=300, deadline=None)
@given(_HEADERS, st.floats(0, 4e9, allow_nan=False))
def test_no_header_input_crashes_and_nothing_looks_more_permissive(headers: list[tuple[str, str]], now: float) -> None:
    quotas, retry_after, keeps = observe(headers, now)
    limits = normalize(quotas, retry_after, keeps)
    if limits is None:
        assert not quotas and retry_after is None
        return
    remaining = [q.remaining for q in quotas if q.remaining is not None]
    resets = [q.reset_s for q in quotas if q.reset_s is not None]
    assert limits.remaining == (min(remaining) if remaining else None)
    assert all(limits.remaining is not None and limits.remaining <= r for r in remaining)
    assert all(limits.reset_s is not None and limits.reset_s >= t for t in resets)
    if retry_after is not None:
        assert limits.retry_after_s is not None and limits.retry_after_s >= retry_after
    limits.fields()  # always encodable
    limits.meta()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=200)), max_size=6))
def test_arbitrary_fields_never_crash(headers: list[tuple[str, str]]) -> None:
    read(headers, NOW)


@given(st.lists(st.builds(Quota, limit=st.none() | st.integers(0, 10**6), remaining=st.none() | st.integers(0, 10**6),
                          reset_s=st.none() | st.floats(0, 1e7), window_s=st.none() | st.integers(1, 10**5)),
                min_size=1, max_size=5))
def test_normalize_is_the_most_restrictive(quotas: list[Quota]) -> None:
    limits = normalize(quotas, None)
    assert limits is not None
    for q in quotas:
        if q.remaining is not None:
            assert limits.remaining is not None and limits.remaining <= q.remaining
        if q.reset_s is not None:
            assert limits.reset_s is not None and limits.reset_s >= q.reset_s
