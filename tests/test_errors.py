"""Every bad input of docs/DESIGN.md §2 gives a clear error naming the argument, on every
backend (samples.BAD_CALLS), both through greedyprune.ops (an ArgumentError) and through
torch.ops.greedyprune directly (the C++ checks' ValueError, or the fake kernels' RuntimeError)."""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from greedyprune import ops
from greedyprune import triton as gp_triton
from greedyprune.checks import ArgumentError
from samples import BACKEND_FREE, BAD_CALLS

G = torch.eye(4)
W4 = torch.full((4,), 0.25)
V = torch.randn(10)
OFF = torch.tensor([0, 4, 10])
KEEP = torch.rand(10) > 0.5
ACT = torch.randn(2, 3, 4)

# Triton serves CUDA tensors, or CPU tensors in interpreter mode (conftest).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_KERNELS = ops.HAS_C and torch.cuda.is_available() and \
    torch._C._dispatch_has_kernel_for_dispatch_key("greedyprune::line_search", "CUDA")
# what each wrapper runs on the backend (pq_index is pq_norms there)
BACKEND_OP = {"pq_index": "pq_norms"}


def _device(backend: str, op: str) -> str:
    """Where the backend runs op; skips the test where it cannot."""
    if backend == "cpu" and not ops.HAS_C:
        pytest.skip("compiled extension greedyprune._C not built")
    if backend == "cuda":
        if not CUDA_KERNELS:
            pytest.skip("skipped: no CUDA")
        return "cuda"
    if backend == "triton":
        if not gp_triton.HAS_TRITON:
            pytest.skip("skipped: triton not installed")
        if BACKEND_OP.get(op, op) not in gp_triton.OPS:
            pytest.skip(f"Triton has no {op}")
        return TRITON_DEVICE
    return "cpu"


def _on(device, args):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


CASES = [(backend, bad) for backend in ("reference", "cpu", "cuda", "triton") for bad in BAD_CALLS
         if bad.op not in BACKEND_FREE and (bad.backends is None or backend in bad.backends)]


@pytest.mark.parametrize("backend,bad", CASES, ids=[f"{b}-{bad.name}" for b, bad in CASES])
def test_bad_input_names_the_argument(backend, bad):
    device = _device(backend, bad.op)
    with pytest.raises(ArgumentError, match=f"argument '{bad.arg}' {bad.says}"):
        getattr(ops, bad.op)(*_on(device, bad.args), **{"backend": backend, **bad.kwargs})


@pytest.mark.parametrize("bad", [b for b in BAD_CALLS if b.op in BACKEND_FREE], ids=repr)
def test_bad_input_of_backend_free_helpers_names_the_argument(bad):
    with pytest.raises(ArgumentError, match=f"argument '{bad.arg}' {bad.says}"):
        getattr(ops, bad.op)(*bad.args, **bad.kwargs)


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


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("op,args,arg", [
    ("line_search", (torch.tensor([[1.0, 0.5], [0.1, 1.0]]), torch.full((2,), 0.5), torch.zeros(2)), "G"),
    ("popup_swap", (V, torch.tensor([0, 6, 4, 10]), KEEP, 0.5), "offsets"),
    ("pq_norms", (torch.tensor([1.0, math.nan]), torch.tensor([0, 2]), [1.0], None), "w"),
], ids=["symmetry", "offsets", "finite"])
def test_kernel_argument_errors_reach_the_caller_as_argument_error(op, args, arg):
    """The data checks of the cpu backend are the C++ kernel's, which raise a plain ValueError:
    the wrapper raises it as ArgumentError with the same message and no chained traceback."""
    with pytest.raises(ValueError, match=f"argument '{arg}'") as direct:
        getattr(torch.ops.greedyprune, op)(*args)
    assert type(direct.value) is ValueError
    wrapper_args = {"line_search": args, "popup_swap": (V, KEEP, 0.5, args[1]), "pq_norms": (args[0], [1.0])}[op]
    with pytest.raises(ArgumentError) as wrapped:
        getattr(ops, op)(*wrapper_args, backend="cpu")
    assert str(wrapped.value) == str(direct.value)
    assert wrapped.value.__cause__ is None and wrapped.value.__suppress_context__


def test_errors_not_about_an_argument_keep_their_type():
    with pytest.raises(RuntimeError, match="backend 'triton' cannot serve popup_swap"):
        ops.popup_swap(V, KEEP, 0.5, OFF, backend="triton")


def test_failed_call_leaves_inputs_untouched():
    keep = KEEP.clone()
    with pytest.raises(ArgumentError):
        ops.popup_swap(torch.tensor([1.0] * 9 + [math.nan]), keep, 0.5, OFF)
    assert torch.equal(keep, KEEP)


# The fake (meta) kernels check shapes with torch._check, so tracing fails as early and as clearly.
FAKE_BAD_CALLS = {
    "w length": (lambda o, e: o.line_search(e(4, 4), e(3), e(4)), "w"),
    "a length": (lambda o, e: o.line_search(e(4, 4), e(4), e(5)), "a"),
    "G not square": (lambda o, e: o.greedy_local(e(4, 3), e(4), 2, 0.0, 8), "G"),
    "grad shape": (lambda o, e: o.taylor_scores(e(2, 3, 4), e(2, 3, 5), e(3), 1), "grad"),
    "taylor k > N": (lambda o, e: o.taylor_scores(e(2, 3), e(2, 3), e(3), 4), "k"),
    "k length": (lambda o, e: o.segment_select(e(10), torch.tensor([0, 4, 10]), torch.tensor([1]), None, True), "k"),
    "keep shape": (lambda o, e: o.popup_swap(e(10), torch.tensor([0, 10]), torch.ones(9, dtype=torch.bool), 0.5), "keep"),
    "mask size": (lambda o, e: o.pq_norms(e(10), torch.tensor([0, 10]), [1.0], torch.ones(3, dtype=torch.bool)), "mask"),
    "G int dtype": (lambda o, e: o.line_search(e(4, 4, dtype=torch.int32), e(4), e(4)), "G"),
    "G empty": (lambda o, e: o.line_search(e(0, 0), e(0), e(0)), "G"),
    "max_neurons > N": (lambda o, e: o.greedy_local(e(4, 4), e(4), 5, 0.0, 8), "max_neurons"),
    "k int32": (lambda o, e: o.segment_select(e(10), torch.tensor([0, 10]), torch.tensor([1], dtype=torch.int32),
                                              None, True), "k"),
    "offsets float": (lambda o, e: o.popup_swap(e(10), torch.tensor([0.0, 10.0]), torch.ones(10, dtype=torch.bool),
                                                0.5), "offsets"),
    "rate > 1": (lambda o, e: o.popup_swap(e(10), torch.tensor([0, 10]), torch.ones(10, dtype=torch.bool), 1.5), "rate"),
    "power zero": (lambda o, e: o.pq_norms(e(10), torch.tensor([0, 10]), [0.0], None), "powers"),
}


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("case", list(FAKE_BAD_CALLS), ids=list(FAKE_BAD_CALLS))
def test_fake_kernels_check_shapes(case):
    call, arg = FAKE_BAD_CALLS[case]
    with FakeTensorMode():
        with pytest.raises(RuntimeError, match=f"argument '{arg}'"):
            call(torch.ops.greedyprune, torch.empty)


# The wrapper and the fake kernel call the same spec, so they say the same.
SPEC_BAD_CALLS = {
    "w length": (lambda o, e: o.line_search(e(4, 4), e(3), e(4)), lambda: ops.line_search(torch.eye(4), torch.ones(3))),
    "grad shape": (lambda o, e: o.taylor_scores(e(2, 3, 4), e(2, 3, 5), e(3), 1),
                   lambda: ops.taylor_scores(ACT, torch.randn(2, 3, 5), torch.ones(3), 1)),
    "keep shape": (lambda o, e: o.popup_swap(e(10), torch.tensor([0, 10]), torch.ones(9, dtype=torch.bool), 0.5),
                   lambda: ops.popup_swap(V, KEEP[:9], 0.5)),
}


@pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")
@pytest.mark.parametrize("case", list(SPEC_BAD_CALLS), ids=list(SPEC_BAD_CALLS))
def test_fake_kernels_and_wrappers_give_the_same_message(case):
    fake_call, wrapper_call = SPEC_BAD_CALLS[case]
    with pytest.raises(ArgumentError) as wrapped:
        wrapper_call()
    with FakeTensorMode():
        with pytest.raises(RuntimeError) as traced:
            fake_call(torch.ops.greedyprune, torch.empty)
    assert str(traced.value) == str(wrapped.value)
