"""Every compiled op against the oracle on the shared samples, plus opcheck."""
import math

import pytest
import torch

from greedyprune import ops, reference
from samples import SAMPLES

pytestmark = pytest.mark.skipif(not ops.HAS_C, reason="compiled extension greedyprune._C not built")

CASES = [(op, s) for op, make in SAMPLES.items() for s in make()]


def _close(x, y, rtol, atol):
    assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
    torch.testing.assert_close(x, y, rtol=rtol, atol=atol, equal_nan=True)


def check_line_search(out, ref, args):
    scale = float(args[0].double().diagonal().abs().max()) + 1e-30
    _close(out[0], ref[0], 1e-9, 1e-9)
    _close(out[1], ref[1], 1e-9, 1e-9 * scale)
    assert int(out[2]) == int(ref[2])


def check_greedy_local(out, ref, args):
    assert out[1].tolist() == ref[1].tolist()
    _close(out[0], ref[0], 1e-9, 1e-12)
    scale = float(args[0].double().diagonal().abs().max()) + 1e-30
    _close(out[2], ref[2], 1e-9, 1e-9 * scale)


def check_taylor_scores(out, ref, args):
    act = args[0]
    per_channel = act[0].numel() * max(1, act.shape[0]) if act.numel() else 1
    atol = 1e-6 * math.sqrt(per_channel) if act.dtype != torch.float64 else 1e-10
    _close(out[0], ref[0], 1e-5, atol)
    _close(out[1], ref[1], 1e-5, atol)
    assert out[2].tolist() == ref[2].tolist()


def check_exact(out, ref, args):
    for x, y in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert x.dtype == y.dtype and torch.equal(x, y)


def check_pq_norms(out, ref, args):
    # log sums within 1e-6 absolute: power sums within ~1e-6 relative of float64
    _close(out[0], ref[0], 0, 1e-6)
    assert torch.equal(out[1], ref[1])


CHECKS = {
    "line_search": check_line_search,
    "greedy_local": check_greedy_local,
    "taylor_scores": check_taylor_scores,
    "segment_select": check_exact,
    "popup_swap": check_exact,
    "pq_norms": check_pq_norms,
}


@pytest.mark.parametrize("op,sample", CASES, ids=[f"{op}-{s.name}" for op, s in CASES])
def test_cpu_kernel_matches_reference(op, sample):
    out = getattr(torch.ops.greedyprune, op)(*sample.args)
    ref = getattr(reference, op)(*sample.args)
    CHECKS[op](out, ref, sample.args)


# opcheck runs every op several times (schema, fake tensors, AOT dispatch): a few samples per op
OPCHECK_CASES = [(op, s) for op, make in SAMPLES.items() for s in make()[::7]]


@pytest.mark.parametrize("op,sample", OPCHECK_CASES, ids=[f"{op}-{s.name}" for op, s in OPCHECK_CASES])
def test_opcheck(op, sample):
    torch.library.opcheck(getattr(torch.ops.greedyprune, op).default, sample.args)


def test_torch_compile_traces_ops():
    """Fake kernels let torch.compile trace the ops in one graph."""
    w = torch.randn(1000)
    offsets = torch.tensor([0, 300, 1000])
    keep = torch.rand(1000) > 0.5

    def step(w, offsets, keep):
        log_sums, counts = torch.ops.greedyprune.pq_norms(w, offsets, [0.5, 1.0], keep)
        new_keep, q = torch.ops.greedyprune.popup_swap(w.abs(), offsets, keep, 0.5)
        return log_sums, counts, new_keep, q

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for x, y in zip(compiled(w, offsets, keep), step(w, offsets, keep)):
        torch.testing.assert_close(x, y)
