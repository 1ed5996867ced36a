"""Benchmarks of greedyprune.ops.segment_select against its plain-PyTorch baselines (cases.py)."""
import pytest

import cases


@pytest.mark.parametrize("provider", cases.provider_names("segment_select"))
def test_segment_select(bench, provider):
    bench("segment_select", provider)
