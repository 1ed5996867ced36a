"""Benchmarks of greedyprune.ops.taylor_scores against its plain-PyTorch baselines (cases.py)."""
import pytest

import cases


@pytest.mark.parametrize("provider", cases.provider_names("taylor_scores"))
def test_taylor_scores(bench, provider):
    bench("taylor_scores", provider)
