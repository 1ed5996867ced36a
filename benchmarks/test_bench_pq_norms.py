"""Benchmarks of greedyprune.ops.pq_norms against its plain-PyTorch baselines (cases.py)."""
import pytest

import cases


@pytest.mark.parametrize("provider", cases.provider_names("pq_norms"))
def test_pq_norms(bench, provider):
    bench("pq_norms", provider)
