"""Triton kernels against the oracle: on the GPU when there is one, else in
interpreter mode on small CPU tensors (conftest sets TRITON_INTERPRET=1)."""
import math

import pytest
import torch

from greedyprune import ops, reference
from greedyprune import triton as gp_triton
from samples import SAMPLES
from test_against_reference import CHECKS

pytestmark = pytest.mark.skipif(not gp_triton.HAS_TRITON, reason="skipped: triton not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MAX_INTERPRETED = 20_000  # elements per input in interpreter mode: numpy runs every program


def _small(sample) -> bool:
    tensors = [a for a in sample.args if isinstance(a, torch.Tensor)]
    if any(t.dtype == torch.float64 for t in tensors):
        return False  # GPU dtypes only
    return DEVICE == "cuda" or max(t.numel() for t in tensors) <= MAX_INTERPRETED


CASES = [(op, s) for op in gp_triton.OPS for s in SAMPLES[op]() if _small(s)]


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("op,sample", CASES, ids=[f"{op}-{s.name}" for op, s in CASES])
def test_triton_kernel_matches_reference(op, sample):
    out = getattr(torch.ops.greedyprune_triton, op)(*_to(sample.args, DEVICE))
    out = tuple(t.cpu() for t in out)
    ref = getattr(reference, op)(*sample.args)
    if op == "pq_norms":  # float32 tile sums: log sums within 1e-5 (sums within 1e-5 relative)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-5, equal_nan=True)
        assert torch.equal(out[1], ref[1])
    else:
        CHECKS[op](out, ref, sample.args)


OPCHECK_CASES = [(op, s) for op, s in CASES][::9]
OPCHECK_UTILS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("util", OPCHECK_UTILS)
@pytest.mark.parametrize("op,sample", OPCHECK_CASES, ids=[f"{op}-{s.name}" for op, s in OPCHECK_CASES])
def test_triton_opcheck(op, sample, util):
    if util != "test_schema" and DEVICE == "cpu":
        pytest.skip("skipped: no CUDA (the Triton interpreter runs kernels even on fake tensors)")
    torch.library.opcheck(getattr(torch.ops.greedyprune_triton, op).default, _to(sample.args, DEVICE),
                          test_utils=(util,))


def test_backend_choice_through_ops():
    w = torch.randn(3000, device=DEVICE)
    offsets = torch.tensor([0, 1000, 3000], device=DEVICE)
    got = ops.pq_norms(w, [0.5, 1.0], offsets, backend="triton")
    ref = reference.pq_norms(w.cpu(), offsets.cpu(), [0.5, 1.0])
    torch.testing.assert_close(got.log_sums.cpu(), ref[0], rtol=0, atol=1e-5)
    ops.set_backend("triton")
    try:
        assert torch.equal(ops.pq_norms(w, [0.5, 1.0], offsets).counts.cpu(), ref[1])
    finally:
        ops.set_backend("auto")


def test_triton_backend_checks_data_and_names_arguments():
    with pytest.raises(ValueError, match="argument 'w'"):
        ops.pq_norms(torch.tensor([1.0, math.inf], device=DEVICE), [1.0], backend="triton")
    with pytest.raises(ValueError, match="argument 'G'"):
        ops.line_search(torch.tensor([[1.0, 0.5], [0.1, 1.0]], device=DEVICE), backend="triton")


def test_unserved_backends_fail_clearly():
    v = torch.randn(10)
    with pytest.raises(RuntimeError, match="backend 'triton' cannot serve popup_swap"):
        ops.popup_swap(v, v > 0, 0.5, backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot serve"):
            ops.pq_norms(v, [1.0], backend="cuda")
