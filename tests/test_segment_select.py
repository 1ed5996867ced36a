"""Segmented select and the SR-popup swap: properties (hypothesis) and edge cases."""
import math

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
