"""PQ Index from log power sums: range, the six sparsity properties, the PQI bound,
huge vectors (no overflow), float64-grade accuracy at ResNet-50 scale, SAP counts."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from greedyprune import ops, reference

PQ_PAIRS = [(0.5, 1.0), (1.0, 2.0), (0.1, 1.5), (0.7, 3.0)]


def pqi(w, p, q, backend="cpu"):
    return float(ops.pq_index(w.double() if backend == "reference" else w, p, q, backend=backend)[0])


@pytest.mark.parametrize("p,q", PQ_PAIRS)
def test_range_uniform_and_one_hot(backend, p, q):
    d = 37
    assert pqi(torch.full((d,), 0.3, dtype=torch.float64), p, q, backend) == pytest.approx(0, abs=1e-9)
    one_hot = torch.zeros(d, dtype=torch.float64)
    one_hot[5] = -2.0
    assert pqi(one_hot, p, q, backend) == pytest.approx(1 - d ** (1 / q - 1 / p), rel=1e-9)
    w = torch.randn(d, dtype=torch.float64)
    assert 0 <= pqi(w, p, q, backend) <= 1 - d ** (1 / q - 1 / p)


def test_empty_and_all_zero_segments_are_nan_and_never_pruned(backend):
    w = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])
    offsets = torch.tensor([0, 2, 2, 5])
    index = ops.pq_index(w, 0.5, 1.0, offsets, backend=backend)
    assert math.isnan(index[0]) and math.isnan(index[1]) and not math.isnan(index[2])
    counts = ops.pq_norms(w, [0.5], offsets, backend=backend).counts
    assert ops.sap_prune_count(index, counts, 0.5, 1.0).tolist()[:2] == [0, 0]


def test_grid_is_nan_where_p_is_not_below_q(backend):
    ps = [round(0.1 * i, 1) for i in range(1, 11)]
    qs = [round(1.0 + 0.1 * i, 1) for i in range(11)]
    grid = ops.pq_index(torch.randn(500), ps, qs, backend=backend)
    assert grid.shape == (1, 10, 11)
    assert math.isnan(grid[0, 9, 0])  # p = q = 1
    assert bool(torch.isfinite(grid[0, :9]).all()) and bool(torch.isfinite(grid[0, 9, 1:]).all())


def test_non_finite_values_masked_out_are_ignored(backend):
    w = torch.tensor([1.0, math.nan, -2.0, math.inf, 0.5, -math.inf])
    mask = torch.isfinite(w)
    offsets = torch.tensor([0, 3, 6])
    got = ops.pq_norms(w, [0.5, 1.0], offsets, mask, backend=backend)
    expected = ops.pq_norms(w.nan_to_num(0.0, 0.0, 0.0), [0.5, 1.0], offsets, mask, backend=backend)
    assert torch.equal(got.log_sums, expected.log_sums) and got.counts.tolist() == [2, 1]


positive = st.lists(st.floats(0.01, 10.0), min_size=3, max_size=30)


@settings(max_examples=60, deadline=None)
@given(positive, st.sampled_from([(0.5, 1.5), (1.0, 2.0), (0.3, 1.2), (0.8, 4.0)]), st.floats(0.05, 0.45))
def test_six_sparsity_properties(values, pq, frac):
    """Hurley & Rickard's properties, which PQI satisfies for p <= 1 < q (seed 003, Theorem 1)."""
    p, q = pq
    w = torch.tensor(values, dtype=torch.float64)
    s = pqi(w, p, q)
    tol = 1e-9
    # (D1) Robin Hood: moving wealth from the richest to the poorest lowers sparsity
    i, j = int(w.argmax()), int(w.argmin())
    if float(w[i] - w[j]) > 1e-3:
        rh = w.clone()
        alpha = frac * float(w[i] - w[j])
        rh[i] -= alpha
        rh[j] += alpha
        assert pqi(rh, p, q) <= s + tol
    # (D2) scaling
    assert pqi(w * 1e-30, p, q) == pytest.approx(s, abs=1e-9)
    assert pqi(w * 1e30, p, q) == pytest.approx(s, abs=1e-9)
    # (D3) rising tide: adding a constant lowers sparsity
    assert pqi(w + 1.0, p, q) <= s + tol
    # (D4) cloning
    assert pqi(torch.cat([w, w]), p, q) == pytest.approx(s, abs=1e-9)
    # (P1) Bill Gates: one entry growing large raises sparsity
    gates = w.clone()
    gates[i] *= 1e4
    assert pqi(gates, p, q) >= s - tol
    # (P2) babies: adding zeros raises sparsity
    assert pqi(torch.cat([w, torch.zeros(3, dtype=torch.float64)]), p, q) >= s - tol


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=40).filter(lambda v: any(abs(x) > 1e-3 for x in v)),
       st.sampled_from(PQ_PAIRS))
def test_pqi_bound_theorem_2(values, pq):
    """r >= d (1 + eta_r)^(-q/(q-p)) (1 - I)^(qp/(q-p)) for every r."""
    p, q = pq
    w = torch.tensor(values, dtype=torch.float64)
    d = w.numel()
    index = pqi(w, p, q)
    mags = torch.sort(w.abs(), descending=True).values ** p
    for r in range(1, d + 1):
        head, tail = float(mags[:r].sum()), float(mags[r:].sum())
        if head == 0:
            continue
        eta = tail / head
        bound = d * (1 + eta) ** (-q / (q - p)) * (1 - index) ** (q * p / (q - p))
        assert r >= bound * (1 - 1e-9)


def test_ten_million_entries_with_p_one_tenth_stay_finite():
    """||w||_0.1 of 10M weights overflows float32 (the authors' way gives inf); log sums do not."""
    w = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0)) * 0.05
    direct = torch.linalg.vector_norm(w, 0.1)
    assert not math.isfinite(float(direct))  # the failure this op exists to avoid
    index = float(ops.pq_index(w, 0.1, 1.0)[0])
    assert math.isfinite(index) and 0 < index < 1
    ref = reference.pq_norms(w, torch.tensor([0, w.numel()]), [0.1, 1.0])[0]
    torch.testing.assert_close(ops.pq_norms(w, [0.1, 1.0]).log_sums, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-40, 1e-300, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_magnitudes_match_float64(backend, scale, dtype):
    """Subnormal or huge largest |w| (float32 subnormal below 1.2e-38): no overflow of 1/max."""
    w = (torch.randn(3000, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * scale).to(dtype)
    if not bool(torch.isfinite(w).all()) or not bool((w != 0).any()):
        pytest.skip(f"{scale} is outside {dtype}")
    powers = [0.1, 1.0, 2.0, 7.5]
    offsets = torch.tensor([0, 1000, 3000])
    got = ops.pq_norms(w, powers, offsets, backend=backend).log_sums
    exact = reference.pq_norms(w, offsets, powers)[0]
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-40, 1e-15, 1e-6, 1.0, 1e15])
@pytest.mark.parametrize("masked", [False, True])
def test_square_root_chain_matches_float64(backend, scale, masked):
    """Powers 0.5 .. 2 (PQI's default pair and its chain): rows of odd lengths with zeros and
    subnormal entries among normal ones, largest |w| from subnormal to huge, masked or not."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5000, generator=g, dtype=torch.float64) * scale
    w[::7] = 0.0
    w[3::11] = 1e-42  # float32 subnormals beside the normal entries
    w = w.float()
    offsets = torch.tensor([0, 1, 17, 300, 1283, 3001, 5000])
    mask = torch.rand(5000, generator=g) < 0.7 if masked else None
    for powers in ([0.5, 1.0], [0.5, 1.0, 1.5, 2.0]):
        got = ops.pq_norms(w, powers, offsets, mask, backend=backend)
        exact = reference.pq_norms(w.double(), offsets, powers, mask)
        torch.testing.assert_close(got.log_sums, exact[0], rtol=0, atol=1e-5)
        assert torch.equal(got.counts, exact[1])


RESNET50_CONV_WEIGHTS = 23_454_912  # 53 conv layers of torchvision's ResNet-50


def test_resnet50_scale_power_sums_within_1e5_of_float64():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(RESNET50_CONV_WEIGHTS, generator=g) * torch.rand(RESNET50_CONV_WEIGHTS, generator=g) * 0.1
    x = w.double().abs()
    for powers in ([0.1, 0.5, 1.0, 2.0], [0.5, 1.0]):  # a general chain, and the square-root one
        out = ops.pq_norms(w, powers).log_sums
        exact = torch.tensor([[float(torch.log(torch.sum(x**p))) for p in powers]], dtype=torch.float64)
        rel = (out - exact).exp() - 1  # relative error of the power sums
        assert float(rel.abs().max()) < 1e-5, rel


def test_sap_prune_count_follows_the_bound_and_beta():
    w = torch.randn(10, 200, dtype=torch.float64)
    w[:5, :150] = 0  # sparse rows: more compressible
    offsets = ops.offsets_from_sizes([200] * 10)
    p, q, eta, gamma, beta = 0.5, 1.0, 0.0, 1.0, 0.3
    index = ops.pq_index(w, p, q, offsets)
    counts = ops.pq_norms(w, [p], offsets).counts
    c = ops.sap_prune_count(index, counts, p, q, eta, gamma, beta)
    d = counts.double()
    r = d * (1 + eta) ** (-q / (q - p)) * (1 - index) ** (q * p / (q - p))
    expected = torch.floor(d * torch.clamp(gamma * (1 - r / d), 0, beta)).to(torch.int64)
    assert torch.equal(c, expected)
    assert bool((c <= torch.floor(beta * d)).all()) and bool((c < counts).all())
    assert c[:5].min() > c[5:].max()  # sparser rows lose more
