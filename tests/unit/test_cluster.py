"""Several workers and replicas, the parts without processes: the config keys and their checks, the
legacy session ids that name their owner, the signature of internal requests, the metrics merge.
(tests/integration/test_workers.py and test_replicas.py run the real thing.)"""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.auth.sessions import SessionBinder
from proxy.cli import main
from proxy.config import ConfigError, Upstream, load
from proxy.observe.metrics import Metrics
from proxy.observe.metrics_merge import merge
from proxy.transport.cluster import MAX_SKEW_S, UNREACHABLE, Signer, address, sibling_key
from proxy.transport.upstream import UpstreamClient, UpstreamError

UP = {"upstream.url": "http://127.0.0.1:3000/mcp"}
KEY = {"auth.session_key": "a-shared-session-key-0123456789"}


# --- config ---
def test_workers_and_cluster_keys():
    config = load(None, {**UP, **KEY, "listen.workers": 4})
    assert config.listen.workers == 4 and config.cluster is None
    config = load(None, {**UP, **KEY, "cluster": {"listen": "0.0.0.0:9090", "advertise": "10.1.2.3"}})
    assert (config.cluster.host, config.cluster.port, config.cluster.advertise) == ("0.0.0.0", 9090, "10.1.2.3")
    config = load(None, {**UP, **KEY, "cluster": {"listen": "[::1]:0"}})
    assert (config.cluster.host, config.cluster.port, config.cluster.advertise) == ("::1", 0, "::1")
    assert load(None, UP).listen.workers == 1


@pytest.mark.parametrize(("overrides", "key", "words"), [
    ({"listen.workers": 2}, "auth.session_key", "is required with listen.workers > 1"),
    ({"cluster": {"listen": "127.0.0.1:9090"}}, "auth.session_key", "is required with a cluster section"),
    ({"listen.workers": 2, "auth.session_key": "short"}, "auth.session_key", "at least 16 characters"),
    ({**KEY, "listen.workers": 0}, "listen.workers", "between 1 and 64"),
    ({**KEY, "cluster": {"listen": "0.0.0.0:9090"}}, "cluster.advertise", "is required when cluster.listen binds"),
    ({**KEY, "cluster": {"listen": "9090"}}, "cluster.listen", "must be host:port"),
    ({**KEY, "listen.workers": 2, "cluster": {"listen": "127.0.0.1:8079"}}, "cluster.listen", "include listen.port"),
    ({**KEY, "listen.workers": 2, "cluster": {"listen": "127.0.0.1:65535"}}, "cluster.listen", "above 65535"),
    ({**KEY, "cluster": {"listen": "127.0.0.1:0", "advertise": "10.0.0.1:80"}}, "cluster.advertise", "no port"),
    ({**KEY, "cluster": {"listen": "127.0.0.1:0", "port": 1}}, "cluster.port", "unknown key"),
])
def test_what_several_workers_need_is_checked(overrides, key, words):
    with pytest.raises(ConfigError) as caught:
        load(None, {**UP, **overrides})
    assert caught.value.key == key and words in caught.value.message


def test_serve_workers_flag_sets_listen_workers_and_refuses_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("MCP_POLICY_PROXY_CONFIG", raising=False)
    assert main(["serve", "--upstream", "http://127.0.0.1:3000/mcp", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "auth.session_key: is required with listen.workers > 1" in err and "session_key_file" in err


# --- legacy session ids ---
def test_a_legacy_session_id_names_its_owner_under_the_shared_key():
    binder = SessionBinder(b"k" * 32, "10.0.0.7:9091")
    session_id = binder.legacy_id()
    assert session_id != binder.legacy_id()
    assert binder.legacy_owner(session_id) == "10.0.0.7:9091"
    assert SessionBinder(b"k" * 32, "10.0.0.8:9091").legacy_owner(session_id) == "10.0.0.7:9091"  # any sibling
    assert SessionBinder(b"j" * 32, "10.0.0.7:9091").legacy_owner(session_id) is None  # another key


def test_a_legacy_session_id_cannot_be_made_to_name_another_owner():
    binder = SessionBinder(b"k" * 32, "10.0.0.7:9091")
    nonce, owner, tag = binder.legacy_id().split(".")
    other = SessionBinder(b"k" * 32, "169.254.169.254:80").legacy_id().split(".")[1]
    for forged in (f"{nonce}.{other}.{tag}", f"{nonce}.{owner}.{tag[:-1]}A", f"{nonce}.{owner}", nonce,
                   f"{nonce}.{owner}.{tag}.x", "", "../../etc", f"{nonce}.{owner}.{'A' * 24}"):
        assert binder.legacy_owner(forged) is None, forged


def test_without_an_owner_legacy_ids_are_plain_random_ones():
    binder = SessionBinder(b"k" * 32)
    session_id = binder.legacy_id()
    assert len(session_id) == 32 and int(session_id, 16) >= 0
    assert binder.legacy_owner(session_id) is None


def test_an_ipv6_owner_round_trips():
    owner = address("fd00::5", 9090)
    assert owner == "[fd00::5]:9090"
    binder = SessionBinder(b"k" * 32, owner)
    assert binder.legacy_owner(binder.legacy_id()) == owner


# --- signatures of internal requests ---
def test_a_signature_covers_method_target_body_and_time():
    now = [1_800_000_000.0]
    signer = Signer(sibling_key("a-shared-session-key-0123456789"), clock=lambda: now[0])
    header = signer.sign("POST", "/messages/?session_id=abc", b"{}")
    assert signer.refusal(header, "POST", "/messages/?session_id=abc", b"{}") is None
    assert signer.refusal(header, "POST", "/messages/?session_id=abd", b"{}") == "forged"
    assert signer.refusal(header, "POST", "/messages/?session_id=abc", b"{ }") == "forged"
    assert signer.refusal(header, "GET", "/messages/?session_id=abc", b"{}") == "forged"
    other = Signer(sibling_key("another-group-session-key-000"), clock=lambda: now[0])
    assert other.refusal(header, "POST", "/messages/?session_id=abc", b"{}") == "forged"
    assert signer.refusal(None, "POST", "/", b"") == "missing"
    assert signer.refusal("soon:abc", "POST", "/", b"") == "malformed"
    now[0] += MAX_SKEW_S + 1
    assert signer.refusal(header, "POST", "/messages/?session_id=abc", b"{}") == "stale"


def test_the_sibling_key_is_not_the_session_key():
    assert sibling_key("a-shared-session-key-0123456789") != b"a-shared-session-key-0123456789"


async def test_an_owner_that_is_gone_is_told_apart_by_the_client_s_message():
    """cluster.py answers 404 (no such session) only when nothing was sent: the upstream client's
    connect failures say UNREACHABLE."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = UpstreamClient(Upstream(url="http://siblings.invalid/", connect_timeout_s=1))
    with pytest.raises(UpstreamError) as caught:
        await client.send("POST", f"http://127.0.0.1:{port}/messages/", {}, b"{}")
    assert caught.value.message.startswith(UNREACHABLE)


# --- metrics ---
EXPOSITION_A = b"""# HELP mcp_proxy_requests_total MCP endpoint requests, by outcome
# TYPE mcp_proxy_requests_total counter
mcp_proxy_requests_total{server="a b",transport="legacy_sse"} 3.0
# HELP mcp_proxy_open_streams Open SSE streams
# TYPE mcp_proxy_open_streams gauge
mcp_proxy_open_streams 2.0
# HELP mcp_proxy_build_info Version of the proxy
# TYPE mcp_proxy_build_info gauge
mcp_proxy_build_info{version="0.1.0"} 1.0
# HELP mcp_proxy_upstream_ratelimit_remaining Last remaining quota
# TYPE mcp_proxy_upstream_ratelimit_remaining gauge
mcp_proxy_upstream_ratelimit_remaining{server="s"} 40.0
# HELP mcp_proxy_upstream_ratelimit_reset_seconds Seconds until reset
# TYPE mcp_proxy_upstream_ratelimit_reset_seconds gauge
mcp_proxy_upstream_ratelimit_reset_seconds{server="s"} 10.0
# HELP mcp_proxy_overhead_seconds Time in the proxy
# TYPE mcp_proxy_overhead_seconds histogram
mcp_proxy_overhead_seconds_bucket{le="0.001",transport="mcp"} 1.0
mcp_proxy_overhead_seconds_bucket{le="+Inf",transport="mcp"} 2.0
mcp_proxy_overhead_seconds_count{transport="mcp"} 2.0
mcp_proxy_overhead_seconds_sum{transport="mcp"} 0.5
"""
EXPOSITION_B = b"""# HELP mcp_proxy_requests_total MCP endpoint requests, by outcome
# TYPE mcp_proxy_requests_total counter
mcp_proxy_requests_total{server="a b",transport="legacy_sse"} 4.0
mcp_proxy_requests_total{server="c",transport="legacy_sse"} 1.0
# HELP mcp_proxy_open_streams Open SSE streams
# TYPE mcp_proxy_open_streams gauge
mcp_proxy_open_streams 5.0
# HELP mcp_proxy_build_info Version of the proxy
# TYPE mcp_proxy_build_info gauge
mcp_proxy_build_info{version="0.1.0"} 1.0
# HELP mcp_proxy_upstream_ratelimit_remaining Last remaining quota
# TYPE mcp_proxy_upstream_ratelimit_remaining gauge
mcp_proxy_upstream_ratelimit_remaining{server="s"} 7.0
# HELP mcp_proxy_upstream_ratelimit_reset_seconds Seconds until reset
# TYPE mcp_proxy_upstream_ratelimit_reset_seconds gauge
mcp_proxy_upstream_ratelimit_reset_seconds{server="s"} 30.0
# HELP mcp_proxy_overhead_seconds Time in the proxy
# TYPE mcp_proxy_overhead_seconds histogram
mcp_proxy_overhead_seconds_bucket{le="0.001",transport="mcp"} 0.0
mcp_proxy_overhead_seconds_bucket{le="+Inf",transport="mcp"} 1.0
mcp_proxy_overhead_seconds_count{transport="mcp"} 1.0
mcp_proxy_overhead_seconds_sum{transport="mcp"} 0.25
# HELP only_b_total Only in B
# TYPE only_b_total counter
only_b_total 1.0
"""


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_merge_adds_counts_and_keeps_what_is_the_same_everywhere():
    merged = _samples(merge([EXPOSITION_A, EXPOSITION_B]))
    assert merged[("mcp_proxy_requests_total", (("server", "a b"), ("transport", "legacy_sse")))] == 7
    assert merged[("mcp_proxy_requests_total", (("server", "c"), ("transport", "legacy_sse")))] == 1
    assert merged[("mcp_proxy_open_streams", ())] == 7
    assert merged[("mcp_proxy_build_info", (("version", "0.1.0"),))] == 1
    assert merged[("mcp_proxy_upstream_ratelimit_remaining", (("server", "s"),))] == 7  # the least left
    assert merged[("mcp_proxy_upstream_ratelimit_reset_seconds", (("server", "s"),))] == 30  # the latest reset
    assert merged[("mcp_proxy_overhead_seconds_bucket", (("le", "0.001"), ("transport", "mcp")))] == 1
    assert merged[("mcp_proxy_overhead_seconds_bucket", (("le", "+Inf"), ("transport", "mcp")))] == 3
    assert merged[("mcp_proxy_overhead_seconds_count", (("transport", "mcp"),))] == 3
    assert merged[("mcp_proxy_overhead_seconds_sum", (("transport", "mcp"),))] == 0.75
    assert merged[("only_b_total", ())] == 1
    assert merge([EXPOSITION_A]) == EXPOSITION_A  # one worker's exposition comes out as it went in


def test_merge_of_real_expositions_sums_every_counter_sample():
    workers = [Metrics(), Metrics()]
    for i, metrics in enumerate(workers):
        for _ in range(i + 1):
            record, token = metrics.begin("mcp")
            record.server, record.method, record.outcome = "s", "tools/call", "forwarded"
            metrics.finish(record, token)
    merged = _samples(merge([m.render() for m in workers]))
    assert merged[("mcp_proxy_requests_total", (("outcome", "forwarded"), ("server", "s"),
                                                ("transport", "streamable_http")))] == 3
    assert merged[("mcp_server_operation_duration_seconds_count", (
        ("error_type", ""), ("gen_ai_tool_name", ""), ("mcp_method_name", "tools/call"), ("server", "s")))] == 3
    assert [v for (name, _), v in merged.items() if name == "mcp_proxy_build_info"] == [1]
