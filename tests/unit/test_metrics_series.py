"""The lock-free series (proxy/observe/series.py) export exactly what prometheus_client's own Counter
and Histogram would for the same observations: the exposition text is compared byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.observe.metrics import OPERATION_BUCKETS, Metrics
from proxy.observe.series import Series

LABELS = st.sampled_from([("a", "x"), ("b", "x"), ("a", "é \"quoted\"\n")])
VALUES = st.one_of(st.floats(min_value=0, max_value=400, allow_nan=False),
                   st.sampled_from([0.0, *OPERATION_BUCKETS, 1e-9, 1e9]))


def _pair() -> tuple[CollectorRegistry, CollectorRegistry, Series]:
    theirs, ours, series = CollectorRegistry(), CollectorRegistry(), Series()
    ours.register(series)
    return theirs, ours, series


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, VALUES), max_size=40))
def test_histogram_exposition_is_prometheus_clients(observations):
    theirs, ours, series = _pair()
    reference = Histogram("h_seconds", "help text", ["server", "tool"], buckets=OPERATION_BUCKETS, registry=theirs)
    mine = series.histogram("h_seconds", "help text", ["server", "tool"], OPERATION_BUCKETS)
    for labels, value in observations:
        reference.labels(*labels).observe(value)
        mine.observe(labels, value)
    assert generate_latest(ours) == generate_latest(theirs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, st.integers(min_value=1, max_value=5)), max_size=40))
def test_counter_exposition_is_prometheus_clients(increments):
    theirs, ours, series = _pair()
    reference = Counter("c_total", "help text", ["server", "tool"], registry=theirs)
    mine = series.counter("c_total", "help text", ["server", "tool"])
    for labels, amount in increments:
        reference.labels(*labels).inc(amount)
        mine.inc(labels, amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_the_proxy_registry_has_no_created_series_and_counts_requests():
    metrics = Metrics()
    metrics.decision("default", "allow", "enforce")
    metrics.evaluated("embedded", 0.0001)
    text = metrics.render().decode()
    assert 'mcp_proxy_policy_decisions_total{mode="enforce",outcome="allow",server="default"} 1.0' in text
    assert 'mcp_proxy_policy_evaluation_duration_seconds_bucket{engine="embedded",le="0.0001"} 1.0' in text
    assert "_created" not in text


def test_counters_of_known_labels_start_at_zero_so_rate_sees_their_first_increment():
    from proxy.config import load

    metrics = Metrics()
    config = load(None, {"upstream": {"url": "http://127.0.0.1:9/mcp"}, "servers": [{"name": "triage"}]})
    metrics.servers(config.servers)
    text = metrics.render().decode()
    for series in ('mcp_proxy_policy_reloads_total{result="failure"} 0.0',
                   'mcp_proxy_config_reloads_total{result="failure"} 0.0',
                   'mcp_proxy_policy_errors_total{engine="embedded"} 0.0',
                   'mcp_proxy_limit_rejections_total{limit="limits.max_streams"} 0.0',
                   'mcp_proxy_upstream_rate_limited_total{server="triage"} 0.0'):
        assert series in text, series
