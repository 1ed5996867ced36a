"""Segmented select and the SR-popup swap: properties (hypothesis) and edge cases."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greedyprune import ops, reference


@st.composite
def segmented(draw):
    sizes = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5))
    n = sum(sizes)
    # few distinct values so ties are common
    values = draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rate = draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1))
    return (torch.tensor(values, dtype=torch.float32) / 2, ops.offsets_from_sizes(sizes),
            torch.tensor(keep, dtype=torch.bool), rate)


def _segments(offsets):
    o = offsets.tolist()
    return list(zip(o[:-1], o[1:]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segmented())
def test_popup_swap_properties(case):
    scores, offsets, keep, rate = case
    new_keep, q = ops.popup_swap(scores, keep, rate, offsets)
    for seg, (b, e) in enumerate(_segments(offsets)):
        kp, nk = keep[b:e], new_keep[b:e]
        assert int(nk.sum()) == int(kp.sum())  # keep count constant
        n = int(kp.sum())
        top = torch.zeros(e - b, dtype=torch.bool)
        top[torch.sort(scores[b:e], descending=True, stable=True).indices[:n]] = True
        phi, psi = kp & ~top, top & ~kp
        left, joined = kp & ~nk, nk & ~kp
        assert not bool((left & ~phi).any()) and not bool((joined & ~psi).any())  # only Phi*/Psi* move
        assert int(q[seg]) == math.ceil(int(psi.sum()) * rate) == int(left.sum()) == int(joined.sum())
        if rate == 1.0:
            assert torch.equal(nk, top)  # plain per-segment top-k (edge-popup)
    assert torch.equal(new_keep, reference.popup_swap(scores, offsets, keep, rate)[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segmented(), st.booleans(), st.data())
def test_segment_select_properties(case, largest, data):
    values, offsets, eligible, _ = case
    counts = [int(eligible[b:e].sum()) for b, e in _segments(offsets)]
    k = torch.tensor([data.draw(st.integers(0, c)) for c in counts], dtype=torch.int64)
    sel = ops.segment_select(values, k, offsets, eligible, largest)
    assert not bool((sel & ~eligible).any())
    for seg, (b, e) in enumerate(_segments(offsets)):
        s, el, v = sel[b:e], eligible[b:e], values[b:e]
        assert int(s.sum()) == int(k[seg])
        if 0 < int(k[seg]) < counts[seg]:
            chosen, rest = v[s], v[el & ~s]
            if largest:
                assert float(chosen.min()) >= float(rest.max())
            else:
                assert float(chosen.max()) <= float(rest.min())
            # ties at the border: every selected entry of the border value precedes the unselected ones
            border = float(chosen.min() if largest else chosen.max())
            at_border = torch.nonzero(el & (v == border)).flatten()
            picked = s[at_border]
            assert torch.equal(picked, torch.sort(picked, descending=True, stable=True).values)
    assert torch.equal(sel, reference.segment_select(values, offsets, k, eligible, largest))


def test_magnitude_init_and_sap_drop(backend):
    """The two uses named in docs/DESIGN.md §2.3: magnitude top-k and 'drop the c smallest among kept'."""
    w = torch.tensor([0.5, -2.0, 0.1, 3.0, -0.2, 1.0, 0.0, -0.7])
    offsets = torch.tensor([0, 4, 8])
    keep = ops.segment_select(w.abs(), torch.tensor([2, 3]), offsets, backend=backend)
    assert keep.tolist() == [False, True, False, True, True, True, False, True]
    drop = ops.segment_select(w.abs(), torch.tensor([1, 1]), offsets, eligible=keep, largest=False, backend=backend)
    assert drop.tolist() == [False, True, False, False, True, False, False, False]


def test_negative_zero_ties_with_zero(backend):
    v = torch.tensor([0.0, -0.0, 0.0, -0.0])
    sel = ops.segment_select(v, 2, backend=backend)
    assert sel.tolist() == [True, True, False, False]


def test_infinities_are_ordered(backend):
    v = torch.tensor([1.0, float("inf"), -float("inf"), 0.0])
    assert ops.segment_select(v, 1, backend=backend).tolist() == [False, True, False, False]
    assert ops.segment_select(v, 1, largest=False, backend=backend).tolist() == [False, False, True, False]


def test_large_segment_with_heavy_ties_matches_reference():
    """The radix path when the threshold bin holds most entries (SR-popup's 1 / 0.99 init)."""
    n = 300_000
    keep = torch.rand(n, generator=torch.Generator().manual_seed(0)) > 0.9
    scores = torch.where(keep, torch.tensor(1.0), torch.tensor(0.99))
    scores[::1000] = 1.0  # pruned entries that tie with the kept ones
    offsets = torch.tensor([0, n])
    out = ops.popup_swap(scores, keep, 0.5, offsets)
    ref = reference.popup_swap(scores, offsets, keep, 0.5)
    assert torch.equal(out.keep, ref[0]) and torch.equal(out.q, ref[1])


def test_values_that_are_not_eligible_may_be_nan(backend):
    """The one rule for non-finite inputs: entries the op leaves out are never judged."""
    v = torch.tensor([3.0, math.nan, 1.0, -math.nan, 2.0, math.inf])
    eligible = ~torch.isnan(v)
    for largest in (True, False):
        sel = ops.segment_select(v, 2, eligible=eligible, largest=largest, backend=backend)
        assert torch.equal(sel, ops.segment_select(v.nan_to_num(0.0), 2, eligible=eligible, largest=largest,
                                                   backend=backend))
    assert ops.segment_select(v, 2, eligible=eligible, backend=backend).tolist() == [True] + [False] * 4 + [True]


def test_popup_swap_ties_leave_from_the_higher_index(backend):
    """Phi* ties: the higher index leaves first (T's order reversed); Psi* ties: the lower index joins first."""
    scores = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    keep = torch.tensor([True, True, True, False, False, False, True, True, False, False])
    offsets = torch.tensor([0, 6, 10])
    out = ops.popup_swap(scores, keep, 0.5, offsets, backend=backend)  # q = ceil(3 * 0.5) = 2, ceil(2 * 0.5) = 1
    assert out.q.tolist() == [2, 1]
    assert out.keep.tolist() == [True, False, False, True, True, False] + [True, False, True, False]


# ----------------------------------------------------------- the sampled path (big segments)
# The CPU kernel takes one pass over segments of at least 65536 entries, around a bracket
# drawn from a strided sample (csrc/cpu/segment_select.cpp); these check it against the
# oracle at the edges of that bracket and where the sample misleads it.

# normal values (negative ones too), one small segment, few levels (heavy ties), all equal
SAMPLED_SIZES = [65536, 12, 70001, 65536]


def _sampled_values(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    normal, small, ties = (torch.randn(n, generator=g) for n in SAMPLED_SIZES[:3])
    ties = torch.round(ties * 2) / 2  # the threshold's level holds thousands of entries
    return torch.cat([normal, small, ties, torch.full((SAMPLED_SIZES[3],), 0.5)]).to(dtype)


def _ks(counts, which):
    """Per segment k: a tenth, half, ...; or none, one, all, all but one; or the same rotated."""
    picks = [[lambda m: m // 10, lambda m: m // 2, lambda m: m // 2, lambda m: m // 3],
             [lambda m: 0, lambda m: min(m, 1), lambda m: m, lambda m: max(m - 1, 0)],
             [lambda m: max(m - 1, 0), lambda m: 0, lambda m: min(m, 1), lambda m: m]][which % 3]
    return torch.tensor([pick(m) for pick, m in zip(picks, counts)], dtype=torch.int64)


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("case", range(4))
def test_segment_select_sampled_path_matches_reference(case):
    dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][case]
    values = _sampled_values(dtype, seed=0)
    offsets = ops.offsets_from_sizes(SAMPLED_SIZES)
    eligible = torch.rand(values.numel(), generator=torch.Generator().manual_seed(1)) > 0.3
    for which, mask in enumerate([None, eligible]):
        largest = (case + which) % 2 == 0  # each dtype both ways, with and without a mask
        counts = [e - b if mask is None else int(mask[b:e].sum()) for b, e in _segments(offsets)]
        k = _ks(counts, case + which)
        sel = ops.segment_select(values, k, offsets, mask, largest, backend="cpu")
        assert torch.equal(sel, reference.segment_select(values, offsets, k, mask, largest)), (which, largest)


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("case", range(4))
def test_popup_swap_sampled_path_matches_reference(case):
    dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][case]
    scores = _sampled_values(dtype, seed=2)
    offsets = ops.offsets_from_sizes(SAMPLED_SIZES)
    bounds = _segments(offsets)
    # The benchmark's kind of keep in the first segment: the top tenth of slightly different
    # scores, so that the entries near the threshold swap; half, some or none or all elsewhere.
    first = scores[: SAMPLED_SIZES[0]].float()
    noisy = first * (1 + 0.02 * torch.randn(first.shape, generator=torch.Generator().manual_seed(3)))
    u = torch.rand(scores.numel(), generator=torch.Generator().manual_seed(4))
    last = [0.3, 0.0, 1.0, 0.3][case]
    fractions = torch.cat([torch.full((e - b,), f) for (b, e), f in zip(bounds, [0, 0.5, 0.5, last])])
    keep = u < fractions
    keep[: SAMPLED_SIZES[0]] = noisy > torch.quantile(noisy, 0.9)
    rate = [0.37, 1.0, 0.5, 0.37][case]
    out = ops.popup_swap(scores, keep, rate, offsets, backend="cpu")
    ref = reference.popup_swap(scores, offsets, keep, rate)
    assert torch.equal(out.keep, ref[0]) and torch.equal(out.q, ref[1])


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
def test_sample_miss_falls_back_to_the_exact_path():
    """Zeros at the multiples of the primes near the sample's stride (every stride-th entry
    from the segment's start, stride the least prime >= isqrt(n) / 8: 37 here): the sample
    sees only zeros while nine in ten entries are positive, so its bracket misses the
    threshold and the segment is redone by the exact path."""
    n = 65536
    assert math.isqrt(n) // 8 == 32
    g = torch.Generator().manual_seed(5)
    values = torch.rand(n, generator=g) + 0.5
    index = torch.arange(n)
    for p in (31, 37, 41, 43):
        values[index % p == 0] = 0.0
    offsets = torch.tensor([0, n])
    for k in (n // 2, n // 10):
        sel = ops.segment_select(values, torch.tensor([k]), offsets, backend="cpu")
        assert torch.equal(sel, reference.segment_select(values, offsets, torch.tensor([k])))
    keep = torch.rand(n, generator=g) < 0.5
    out = ops.popup_swap(values, keep, 0.5, offsets, backend="cpu")
    ref = reference.popup_swap(values, offsets, keep, 0.5)
    assert torch.equal(out.keep, ref[0]) and torch.equal(out.q, ref[1])


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
def test_sampled_path_same_result_on_one_and_two_threads():
    values = _sampled_values(torch.float32, seed=6)
    offsets = ops.offsets_from_sizes(SAMPLED_SIZES)
    k = _ks(SAMPLED_SIZES, 0)
    keep = torch.rand(values.numel(), generator=torch.Generator().manual_seed(7)) < 0.2
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append((ops.segment_select(values, k, offsets, backend="cpu"),
                            ops.popup_swap(values, keep, 0.5, offsets, backend="cpu")))
    finally:
        torch.set_num_threads(threads)
    (sel1, pop1), (sel2, pop2) = results
    assert torch.equal(sel1, sel2) and torch.equal(pop1.keep, pop2.keep) and torch.equal(pop1.q, pop2.q)


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
def test_sampled_path_errors_name_the_argument():
    n = 140_000
    values = torch.rand(n, generator=torch.Generator().manual_seed(8))
    offsets = torch.tensor([0, 70_000, n])
    values[80_000] = math.nan  # in the second segment
    eligible = torch.ones(n, dtype=torch.bool)
    with pytest.raises(ValueError, match="argument 'values'"):
        ops.segment_select(values, torch.tensor([10, 10]), offsets, eligible, backend="cpu")
    with pytest.raises(ValueError, match="argument 'scores'"):
        ops.popup_swap(values, eligible, 0.5, offsets, backend="cpu")
    eligible[80_000] = False  # a NaN that is not eligible is never judged
    sel = ops.segment_select(values, torch.tensor([10, 10]), offsets, eligible, backend="cpu")
    assert torch.equal(sel, reference.segment_select(values.nan_to_num(0.0), offsets, torch.tensor([10, 10]), eligible))
    with pytest.raises(ValueError, match="argument 'k'"):
        ops.segment_select(values, torch.tensor([10, 70_000]), offsets, eligible, backend="cpu")
