"""Shared fixtures of the unit tests."""

from __future__ import annotations

import pytest

from proxy.config import BUNDLED_POLICIES
from proxy.policy.testing import TestResult, run_rego_tests


@pytest.fixture(scope="session")
def bundled_rego_results() -> list[TestResult]:
    """The Rego tests of the bundled policies (default policy and Missive pack), run once."""
    return run_rego_tests([BUNDLED_POLICIES])
