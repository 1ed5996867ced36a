"""Benchmarks of greedyprune.ops.greedy_local against its plain-PyTorch baselines (cases.py)."""
import pytest

import cases


@pytest.mark.parametrize("provider", cases.provider_names("greedy_local"))
def test_greedy_local(bench, provider):
    bench("greedy_local", provider)
