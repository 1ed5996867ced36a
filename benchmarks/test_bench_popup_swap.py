"""Benchmarks of greedyprune.ops.popup_swap against its plain-PyTorch baselines (cases.py)."""
import pytest

import cases


@pytest.mark.parametrize("provider", cases.provider_names("popup_swap"))
def test_popup_swap(bench, provider):
    bench("popup_swap", provider)
