"""Every bad input of DESIGN.md gives a clear error naming the argument, on every
backend, both through greedyprune.ops and through torch.ops.greedyprune directly."""
import math

import pytest
import torch

from greedyprune import ops

G = torch.eye(4)
W4 = torch.full((4,), 0.25)
V = torch.randn(10)
OFF = torch.tensor([0, 4, 10])
KEEP = torch.rand(10) > 0.5
ACT = torch.randn(2, 3, 4)

# (call through ops, argument named in the message)
BAD_CALLS = {
    "G not square": (lambda b: ops.line_search(torch.ones(3, 4), backend=b), "G"),
    "G wrong rank": (lambda b: ops.greedy_local(torch.ones(4), W4, backend=b), "G"),
    "G not symmetric": (lambda b: ops.greedy_local(torch.tensor([[1.0, 0.5], [0.1, 1.0]]), backend=b), "G"),
    "G int dtype": (lambda b: ops.line_search(torch.eye(3, dtype=torch.int32), backend=b), "G"),
    "G non-finite": (lambda b: ops.greedy_local(torch.full((4, 4), math.nan), W4, backend=b), "G"),
    "w wrong length": (lambda b: ops.line_search(G, torch.ones(3), backend=b), "w"),
    "a off the simplex": (lambda b: ops.line_search(G, W4, torch.full((4,), 0.5), backend=b), "a"),
    "a negative": (lambda b: ops.line_search(G, W4, torch.tensor([1.5, -0.5, 0, 0]), backend=b), "a"),
    "max_neurons > N": (lambda b: ops.greedy_local(G, W4, 5, backend=b), "max_neurons"),
    "tol negative": (lambda b: ops.greedy_local(G, W4, 2, -1.0, backend=b), "tol"),
    "max_steps zero": (lambda b: ops.greedy_local(G, W4, 2, 0.0, 0, backend=b), "max_steps"),
    "grad shape": (lambda b: ops.taylor_scores(ACT, torch.randn(2, 3, 5), torch.ones(3) / 3, 1, backend=b), "grad"),
    "grad dtype": (lambda b: ops.taylor_scores(ACT, ACT.double(), torch.ones(3) / 3, 1, backend=b), "grad"),
    "act rank": (lambda b: ops.taylor_scores(torch.randn(3), torch.randn(3), torch.ones(3), 1, backend=b), "act"),
    "taylor k > N": (lambda b: ops.taylor_scores(ACT, ACT, torch.ones(3) / 3, 4, backend=b), "k"),
    "taylor a length": (lambda b: ops.taylor_scores(ACT, ACT, torch.ones(2), 1, backend=b), "a"),
    "offsets decreasing": (lambda b: ops.popup_swap(V, KEEP, 0.5, torch.tensor([0, 6, 4, 10]), backend=b), "offsets"),
    "offsets not ending at n": (lambda b: ops.pq_norms(V, [1.0], torch.tensor([0, 4, 9]), backend=b), "offsets"),
    "offsets not starting at 0": (lambda b: ops.segment_select(V, [1, 1], torch.tensor([1, 4, 10]), backend=b), "offsets"),
    "offsets float": (lambda b: ops.segment_select(V, [1, 1], torch.tensor([0.0, 4.0, 10.0]), backend=b), "offsets"),
    "k > eligible": (lambda b: ops.segment_select(V, [5, 1], OFF, backend=b), "k"),
    "k negative": (lambda b: ops.segment_select(V, [-1, 1], OFF, backend=b), "k"),
    "k wrong length": (lambda b: ops.segment_select(V, [1, 1, 1], OFF, backend=b), "k"),
    "values NaN": (lambda b: ops.segment_select(torch.tensor([1.0, math.nan]), 1, backend=b), "values"),
    "values 2-D": (lambda b: ops.segment_select(torch.randn(2, 5), 1, backend=b), "values"),
    "eligible not bool": (lambda b: ops.segment_select(V, [1, 1], OFF, torch.ones(10), backend=b), "eligible"),
    "keep wrong length": (lambda b: ops.popup_swap(V, KEEP[:9], 0.5, OFF, backend=b), "keep"),
    "rate > 1": (lambda b: ops.popup_swap(V, KEEP, 1.5, OFF, backend=b), "rate"),
    "rate NaN": (lambda b: ops.popup_swap(V, KEEP, math.nan, OFF, backend=b), "rate"),
    "scores NaN": (lambda b: ops.popup_swap(torch.tensor([1.0, math.nan]), torch.tensor([True, False]), 0.5, backend=b), "scores"),
    "power zero": (lambda b: ops.pq_norms(V, [0.0, 1.0], backend=b), "powers"),
    "power negative": (lambda b: ops.pq_norms(V, [-1.0], backend=b), "powers"),
    "no powers": (lambda b: ops.pq_norms(V, [], backend=b), "powers"),
    "w non-finite": (lambda b: ops.pq_norms(torch.tensor([1.0, math.inf]), [1.0], backend=b), "w"),
    "mask wrong size": (lambda b: ops.pq_norms(V, [1.0], None, KEEP[:3], backend=b), "mask"),
    "p not below q": (lambda b: ops.pq_index(V, 1.0, 1.0, backend=b), "p"),
    "unknown backend": (lambda b: ops.pq_norms(V, [1.0], backend="gpu-magic"), "backend"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_input_names_the_argument(backend, case):
    call, arg = BAD_CALLS[case]
    with pytest.raises((ValueError, RuntimeError), match=f"argument '{arg}'"):
        call(backend)


# The C++ checks guard direct torch.ops calls, which skip the Python wrapper.
DIRECT_BAD_CALLS = {
    "G not square": (lambda o: o.line_search(torch.ones(3, 4), torch.ones(3), torch.zeros(3)), "G"),
    "G not symmetric": (lambda o: o.line_search(torch.tensor([[1.0, 0.5], [0.1, 1.0]]), torch.ones(2), torch.zeros(2)), "G"),
    "a off the simplex": (lambda o: o.line_search(G, W4, torch.full((4,), 0.5)), "a"),
    "max_neurons": (lambda o: o.greedy_local(G, W4, 9, 0.0, 10), "max_neurons"),
    "grad shape": (lambda o: o.taylor_scores(ACT, torch.randn(2, 3, 5), torch.ones(3), 1), "grad"),
    "offsets decreasing": (lambda o: o.popup_swap(V, torch.tensor([0, 6, 4, 10]), KEEP, 0.5), "offsets"),
    "k > eligible": (lambda o: o.segment_select(V, OFF, torch.tensor([5, 1]), None, True), "k"),
    "values NaN": (lambda o: o.segment_select(torch.tensor([math.nan, 1.0]), torch.tensor([0, 2]), torch.tensor([1]), None, True), "values"),
    "rate": (lambda o: o.popup_swap(V, OFF, KEEP, -0.1), "rate"),
    "powers": (lambda o: o.pq_norms(V, OFF, [0.0], None), "powers"),
    "w non-finite": (lambda o: o.pq_norms(torch.tensor([1.0, math.nan]), torch.tensor([0, 2]), [1.0], None), "w"),
    "float64 dtype ok, int not": (lambda o: o.pq_norms(torch.ones(3, dtype=torch.int64), torch.tensor([0, 3]), [1.0], None), "w"),
}


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("case", list(DIRECT_BAD_CALLS), ids=list(DIRECT_BAD_CALLS))
def test_kernels_check_their_arguments(case):
    call, arg = DIRECT_BAD_CALLS[case]
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        call(torch.ops.greedyprune)


def test_failed_call_leaves_inputs_untouched():
    keep = KEEP.clone()
    with pytest.raises(ValueError):
        ops.popup_swap(torch.tensor([1.0] * 9 + [math.nan]), keep, 0.5, OFF)
    assert torch.equal(keep, KEEP)
