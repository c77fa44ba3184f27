"""The benchmark's proxy configs (benchmarks/scenarios.py) stay valid as the config evolves: each
one parses, and its policy bundle compiles (what `config check` does)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proxy.config import parse
from proxy.policy.manager import build_policy_set

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import scenarios  # noqa: E402


@pytest.mark.parametrize("name", sorted(n for n, p in scenarios.PROXIES.items() if not p.floor))  # floor: no config
def test_every_benchmark_proxy_config_is_valid(name: str) -> None:
    jwt = {"url_token_key": "k" * 32, "token_hmac": "0" * 64, "issuer": "https://idp.bench.invalid"}
    data = scenarios.proxy_config(scenarios.PROXIES[name], 18080, 18081, decision_log="off", jwt=jwt)
    config = parse(data, str(BENCHMARKS / "config.yaml"))
    policy = build_policy_set(config.policy)
    assert policy.engine.revision

