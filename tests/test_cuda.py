"""CUDA kernels (csrc/cuda) against the float64 oracle on CPU copies of their inputs.

Runs only where torch sees a GPU and greedyprune._C was built with CUDA kernels
("skipped: no CUDA" otherwise). Calls torch.ops.greedyprune directly, so the kernels'
own argument checks are tested, plus once through greedyprune.ops. CUDA takes
float32/float16/bfloat16, so float64 samples are left out.
"""
import math

import pytest
import torch

from greedyprune import ops, reference
from samples import SAMPLES, Sample, gram, simplex_point
from test_against_reference import check_greedy_local, check_line_search

CUDA_OPS = ("pq_norms", "taylor_scores", "line_search", "greedy_local", "segment_select", "popup_swap")
LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def _has_cuda_kernels() -> bool:
    if not (ops.HAS_C and torch.cuda.is_available()):
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"greedyprune::{op}", "CUDA") for op in CUDA_OPS)


pytestmark = pytest.mark.skipif(not _has_cuda_kernels(), reason="skipped: no CUDA")


def to_cuda(args):
    return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)


def run_cuda(op, args):
    out = getattr(torch.ops.greedyprune, op)(*to_cuda(args))
    assert all(t.device.type == "cuda" for t in out)
    return tuple(t.cpu() for t in out)


# ------------------------------------------------------------------ pq_norms


def pq_oracle(w, offsets, powers, mask=None):
    """reference.pq_norms, vectorized over segments (float64 throughout)."""
    x = w.reshape(-1).double().abs()
    L = offsets.numel() - 1
    seg = torch.repeat_interleave(torch.arange(L), offsets.diff())
    if mask is not None:
        keep = mask.reshape(-1)
        x, seg = x[keep], seg[keep]
    counts = torch.zeros(L, dtype=torch.int64).index_add_(0, seg, torch.ones_like(seg))
    sums = torch.stack([torch.zeros(L, dtype=torch.float64).index_add_(0, seg, x**p) for p in powers], 1)
    return torch.log(sums.reshape(L, len(powers))), counts


def check_pq(out, args, atol=1e-6):
    """log sums within atol: power sums within atol relative of float64."""
    log_sums, counts = out
    expected = pq_oracle(*args)
    assert log_sums.dtype == torch.float64 and counts.dtype == torch.int64
    assert torch.equal(counts, expected[1])
    torch.testing.assert_close(log_sums, expected[0], rtol=0, atol=atol)


def resnet50_conv_rows():
    """(output channels, fan-in) of ResNet-50's 53 conv layers: 26,560 rows, 23,454,912 weights."""
    rows, inplanes = [(64, 3 * 7 * 7)], 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            rows += [(planes, inplanes), (planes, planes * 9), (planes * 4, planes)]
            if b == 0:
                rows.append((planes * 4, inplanes))  # downsample
            inplanes = planes * 4
    return rows


def pq_extra_samples():
    """Segment borders around tile and warp sizes, many tiny segments, long all-zero and
    masked-out segments, magnitudes that overflow or underflow |w|^p in float32, > 64 powers."""
    g = torch.Generator().manual_seed(21)
    offsets = ops.offsets_from_sizes
    out = []
    sizes = [8191, 1, 8192, 8193, 0, 1024, 1025, 16384, 3, 0, 40000, 0, 1]
    w = torch.randn(sum(sizes), generator=g)
    mask = torch.rand(w.numel(), generator=g) > 0.25
    for dtype in LOW_PRECISION:
        out.append(Sample(f"{dtype}-borders", (w.to(dtype), offsets(sizes), [0.5, 1.0, 2.0], None)))
        out.append(Sample(f"{dtype}-borders-mask", (w.to(dtype), offsets(sizes), [0.1, 1.0, 7.5], mask)))
    tiny = torch.randint(0, 4, (30000,), generator=g).tolist()
    out.append(Sample("tiny-segments", (torch.randn(sum(tiny), generator=g), offsets(tiny), [0.5, 1.0], None)))
    # zeros | masked out, with NaN there | ordinary
    w = torch.cat([torch.zeros(20000), torch.full((20000,), math.nan), torch.randn(10000, generator=g)])
    mask = torch.cat([torch.ones(20000, dtype=torch.bool), torch.zeros(20000, dtype=torch.bool),
                      torch.rand(10000, generator=g) > 0.5])
    out.append(Sample("zero-and-masked-out", (w, offsets([20000, 20000, 10000]), [0.5, 1.0], mask)))
    w = torch.cat([torch.randn(10000, generator=g) * 1e30, torch.randn(10000, generator=g) * 1e-30,
                   torch.randn(10000, generator=g) * 1e-40])  # the last ones are float32 denormals
    out.append(Sample("range", (w, offsets([10000] * 3), [0.1, 1.0, 3.0, 7.5], None)))
    out.append(Sample("70-powers", (torch.randn(29005, generator=g), offsets([5, 9000, 20000]),
                                    [round(0.05 * i, 2) for i in range(1, 71)], None)))
    return out


PQ_SAMPLES = [s for s in SAMPLES["pq_norms"]() if s.args[0].dtype != torch.float64] + pq_extra_samples()


@pytest.mark.parametrize("sample", PQ_SAMPLES, ids=repr)
def test_pq_norms_matches_oracle(sample):
    check_pq(run_cuda("pq_norms", sample.args), sample.args)


@pytest.mark.parametrize("scope", ["rows", "layers", "global"])
def test_pq_norms_resnet50_scale(scope):
    """ResNet-50's conv weights per output row (26,560 segments), per layer and globally:
    power sums within 1e-6 relative of float64, and the same bits on a second run."""
    rows = resnet50_conv_rows()
    sizes = {"rows": [fan for out, fan in rows for _ in range(out)], "layers": [out * fan for out, fan in rows],
             "global": [sum(out * fan for out, fan in rows)]}[scope]
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    w = torch.randn(n, generator=g) * torch.rand(n, generator=g) * 0.1
    mask = torch.rand(n, generator=g) > 0.3
    args = (w, ops.offsets_from_sizes(sizes), [0.1, 0.5, 1.0, 2.0], mask)
    out = run_cuda("pq_norms", args)
    check_pq(out, args)
    again = run_cuda("pq_norms", args)
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_pq_norms_23M_within_1e5_of_float64(dtype):
    g = torch.Generator().manual_seed(1)
    n = 23_454_912
    w = (torch.randn(n, generator=g) * torch.rand(n, generator=g) * 0.1).to(dtype)
    powers = [0.1, 0.5, 1.0, 2.0]
    out = torch.ops.greedyprune.pq_norms(w.cuda(), torch.tensor([0, n], device="cuda"), powers, None)[0].cpu()
    x = w.double().abs()
    exact = torch.tensor([[float(torch.log(torch.sum(x**p))) for p in powers]], dtype=torch.float64)
    rel = (out - exact).exp() - 1
    assert float(rel.abs().max()) < 1e-5, rel


# ------------------------------------------------------------- taylor_scores


def check_taylor(out, args):
    ref = reference.taylor_scores(*args)
    act = args[0]
    per_channel = act[0].numel() * max(1, act.shape[0]) if act.numel() else 1
    atol = 1e-6 * math.sqrt(per_channel)
    for x, y in zip(out[:2], ref[:2]):
        assert x.dtype == torch.float32 and x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-5, atol=atol)
    assert out[2].dtype == torch.int64 and out[2].tolist() == ref[2].tolist()


def taylor_extra_samples():
    """Row lengths S on both sides of the kernels' layouts (S = 1 is a Linear layer), empty
    maps, and integer-valued data (exact sums, many ties) where every k must match exactly."""
    g = torch.Generator().manual_seed(5)
    out = []
    shapes = [(7, 9, 1), (300, 70), (5, 6, 31), (4, 6, 32), (3, 5, 33), (6, 8, 7, 7), (2, 4, 14, 14),
              (2, 3, 56, 56), (1, 3, 300), (3, 4, 0)]
    for dtype in LOW_PRECISION:
        for shape in shapes:
            act = torch.randn(shape, generator=g).to(dtype)
            grad = torch.randn(shape, generator=g).to(dtype)
            n = shape[1]
            a = simplex_point(n, min(n, 3)).to(dtype)
            out.append(Sample(f"{dtype}-{'x'.join(map(str, shape))}", (act, grad, a, min(3, n))))
    for B, N, S, ks in ((4, 5000, 3, (5, 16, 17, 5000)), (2, 300, 40, (0, 1, 300)), (64, 2000, 1, (1000,))):
        act = torch.randint(-3, 4, (B, N, S), generator=g).float()
        grad = torch.randint(-3, 4, (B, N, S), generator=g).float()
        a = torch.full((N,), 1.0 / N)
        for k in ks:
            out.append(Sample(f"integers-{B}x{N}x{S}-k{k}", (act, grad, a, k)))
    return out


TAYLOR_SAMPLES = [s for s in SAMPLES["taylor_scores"]() if s.args[0].dtype != torch.float64] + taylor_extra_samples()


@pytest.mark.parametrize("sample", TAYLOR_SAMPLES, ids=repr)
def test_taylor_scores_matches_reference(sample):
    check_taylor(run_cuda("taylor_scores", sample.args), sample.args)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_taylor_scores_unaligned_and_repeatable(dtype):
    """Inputs that start off a 16-byte boundary (no vector loads), at ResNet scale; same bits twice."""
    shape = (16, 64, 28, 28)
    numel = math.prod(shape)
    act = torch.randn(numel + 1, device="cuda").to(dtype)[1:].view(shape)
    grad = torch.randn(numel + 1, device="cuda").to(dtype)[1:].view(shape)
    a = torch.full((64,), 1 / 64, device="cuda")
    out = torch.ops.greedyprune.taylor_scores(act, grad, a, 5)
    check_taylor(tuple(t.cpu() for t in out), (act.cpu(), grad.cpu(), a.cpu(), 5))
    again = torch.ops.greedyprune.taylor_scores(act, grad, a, 5)
    assert all(torch.equal(x, y) for x, y in zip(out, again))


def test_ops_wrappers_pick_the_cuda_kernels():
    w = torch.randn(1000, device="cuda")
    offsets = ops.offsets_from_sizes([300, 700], device="cuda")
    res = ops.pq_norms(w, [0.5, 1.0], offsets)  # backend "auto"
    assert res.log_sums.is_cuda
    check_pq(tuple(t.cpu() for t in res), (w.cpu(), offsets.cpu(), [0.5, 1.0], None))
    act, grad = torch.randn(4, 6, 5, device="cuda"), torch.randn(4, 6, 5, device="cuda")
    a = torch.full((6,), 1 / 6, device="cuda")
    res = ops.taylor_scores(act, grad, a, 2, backend="cuda")
    assert res.gr.is_cuda
    check_taylor(tuple(t.cpu() for t in res), (act.cpu(), grad.cpu(), a.cpu(), 2))


# ------------------------------------------------------ line_search, greedy_local


def line_search_extra_samples():
    """Exact ties (G = identity: lowest index wins) and a vertex start, where every move is
    a removal or skipped."""
    out = []
    for dtype in LOW_PRECISION:
        for n in (7, 40):
            eye, w = torch.eye(n, dtype=dtype), torch.full((n,), 1.0 / n, dtype=dtype)
            e = torch.zeros(n, dtype=dtype)
            e[n - 1] = 1
            out.append(Sample(f"{dtype}-eye{n}-empty", (eye, w, torch.zeros(n, dtype=dtype))))
            out.append(Sample(f"{dtype}-eye{n}-vertex", (eye, w, e)))
    return out


def greedy_local_extra_samples():
    """Ties, the tol and max_steps stops, and a non-uniform target w (removals happen)."""
    out = []
    for dtype in LOW_PRECISION:
        for n in (7, 40):
            w = torch.full((n,), 1.0 / n, dtype=dtype)
            G = gram(n, dtype, seed=100 + n)
            wr = torch.rand(n, generator=torch.Generator().manual_seed(n)).to(dtype)
            out += [Sample(f"{dtype}-eye{n}", (torch.eye(n, dtype=dtype), w, n, 0.0, 2 * n)),
                    Sample(f"{dtype}-N{n}-tol", (G, w, n, 1e-2, 50)),
                    Sample(f"{dtype}-N{n}-steps3", (G, w, n, 0.0, 3)),
                    Sample(f"{dtype}-N{n}-random-w", (G, wr, max(1, n // 2), 0.0, 3 * n))]
    return out


LINE_SEARCH_SAMPLES = [s for s in SAMPLES["line_search"]() if s.args[0].dtype != torch.float64] + \
    line_search_extra_samples()
GREEDY_SAMPLES = [s for s in SAMPLES["greedy_local"]() if s.args[0].dtype != torch.float64] + \
    greedy_local_extra_samples()


@pytest.mark.parametrize("sample", LINE_SEARCH_SAMPLES, ids=repr)
def test_line_search_matches_oracle(sample):
    out = run_cuda("line_search", sample.args)
    check_line_search(out, reference.line_search(*sample.args), sample.args)


@pytest.mark.parametrize("sample", GREEDY_SAMPLES, ids=repr)
def test_greedy_local_matches_oracle(sample):
    out = run_cuda("greedy_local", sample.args)
    check_greedy_local(out, reference.greedy_local(*sample.args), sample.args)


@pytest.mark.parametrize("n", [8192, 10000])
def test_greedy_local_large_matches_cpu(n):
    """N = 8192 is the largest single-block run, N = 10000 takes the multi-block path: the same
    path as the CPU kernel, and the same bits on a second run."""
    G = gram(n, torch.float32, rows=256, seed=3)
    w = torch.full((n,), 1.0 / n)
    args = (G, w, 60, 0.0, 80)
    out = run_cuda("greedy_local", args)
    check_greedy_local(out, torch.ops.greedyprune.greedy_local(*args), args)
    again = run_cuda("greedy_local", args)
    assert all(torch.equal(x, y) for x, y in zip(out, again))


def test_line_search_large_matches_cpu():
    n = 10000
    G = gram(n, torch.float32, rows=256, seed=4)
    args = (G, torch.full((n,), 1.0 / n), simplex_point(n, 50).float())
    check_line_search(run_cuda("line_search", args), torch.ops.greedyprune.line_search(*args), args)


def test_ops_wrappers_pick_the_cuda_line_search():
    G = gram(12, torch.float32, seed=2).cuda()
    res = ops.greedy_local(G, backend="cuda")
    assert res.a.is_cuda
    cpu = ops.greedy_local(G.cpu(), backend="cpu")
    assert res.order.tolist() == cpu.order.tolist()


# ------------------------------------------------------ segment_select, popup_swap


def select_extra_samples():
    """Segments longer than one block selects alone (16384 entries: tiles of 8192 then) in every
    dtype, borders around those sizes, signed zeros, infinities, all-equal segments (ties across
    tiles), and k = 0 / k = all eligible."""
    g = torch.Generator().manual_seed(8)
    offsets = ops.offsets_from_sizes
    layouts = {"long": [40000, 3, 0, 16385], "borders": [16384, 8192, 1, 24576, 8191, 16385, 0]}
    kinds = {
        "continuous": lambda n: torch.randn(n, generator=g),
        "ties": lambda n: torch.randint(-3, 4, (n,), generator=g) / 2,
        "signed-zeros-inf": lambda n: torch.tensor([-0.0, 0.0, math.inf, -math.inf, 1.0])[torch.randint(0, 5, (n,), generator=g)],
        "all-equal": lambda n: torch.full((n,), 0.75),
    }
    out = []
    for lname, sizes in layouts.items():
        n, off = sum(sizes), offsets(sizes)
        eligible = torch.rand(n, generator=g) > 0.3
        m = torch.tensor([int(eligible[b:e].sum()) for b, e in zip(off[:-1].tolist(), off[1:].tolist())])
        full = torch.tensor(sizes, dtype=torch.int64)
        for kname, make in kinds.items():
            base = make(n)
            for dtype in LOW_PRECISION:
                v = base.to(dtype)
                tag = f"{dtype}-{lname}-{kname}"
                out += [Sample(tag + "-largest", (v, off, full // 3, None, True)),
                        Sample(tag + "-smallest-eligible", (v, off, m // 2, eligible, False)),
                        Sample(tag + "-k0-kN", (v, off, torch.where(m % 2 == 0, m, 0), eligible, True))]
    return out


def popup_extra_samples():
    g = torch.Generator().manual_seed(9)
    out = []
    for sizes in ([40000, 3, 0, 16385], [16384, 8192, 1, 24576, 8191, 16385, 0]):
        n, off = sum(sizes), ops.offsets_from_sizes(sizes)
        keep = torch.rand(n, generator=g) > 0.8
        for kname, scores in {"continuous": torch.randn(n, generator=g),
                              "ties": torch.randint(-3, 4, (n,), generator=g) / 2}.items():
            for dtype in LOW_PRECISION:
                for rate in (0.0, 0.37, 1.0):
                    out.append(Sample(f"{dtype}-{len(sizes)}seg-{kname}-rate{rate}", (scores.to(dtype), off, keep, rate)))
    return out


SELECT_SAMPLES = [s for s in SAMPLES["segment_select"]() if s.args[0].dtype != torch.float64] + select_extra_samples()
POPUP_SAMPLES = [s for s in SAMPLES["popup_swap"]() if s.args[0].dtype != torch.float64] + popup_extra_samples()


@pytest.mark.parametrize("sample", SELECT_SAMPLES, ids=repr)
def test_segment_select_matches_oracle(sample):
    out = run_cuda("segment_select", sample.args)
    assert out[0].dtype == torch.bool and torch.equal(out[0], reference.segment_select(*sample.args))


@pytest.mark.parametrize("sample", POPUP_SAMPLES, ids=repr)
def test_popup_swap_matches_oracle(sample):
    keep, q = run_cuda("popup_swap", sample.args)
    ref_keep, ref_q = reference.popup_swap(*sample.args)
    assert torch.equal(keep, ref_keep) and q.dtype == torch.int64 and torch.equal(q, ref_q)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_popup_swap_resnet50_scale(dtype):
    """ResNet-50's 53 conv layers as segments (23.45M scores, up to 2.4M per layer): the CPU
    kernel's result, the same bits on a second run; then magnitude top-k with segment_select."""
    sizes = [out * fan for out, fan in resnet50_conv_rows()]
    g = torch.Generator().manual_seed(2)
    n = sum(sizes)
    magnitude = (torch.randn(n, generator=g).abs() * 0.05).to(dtype)
    keep = torch.rand(n, generator=g) > 0.9
    scores = (magnitude.float() * (1 + 0.02 * torch.randn(n, generator=g))).to(dtype)
    args = (scores, ops.offsets_from_sizes(sizes), keep, 0.5)
    out = run_cuda("popup_swap", args)
    cpu = torch.ops.greedyprune.popup_swap(*args)
    assert torch.equal(out[0], cpu[0]) and torch.equal(out[1], cpu[1])
    again = run_cuda("popup_swap", args)
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    k = torch.tensor([s // 10 for s in sizes])
    select_args = (magnitude, args[1], k, None, True)
    assert torch.equal(run_cuda("segment_select", select_args)[0], torch.ops.greedyprune.segment_select(*select_args))


def test_ops_wrappers_pick_the_cuda_select():
    values = torch.randn(30000, device="cuda")
    offsets = ops.offsets_from_sizes([20000, 10000], device="cuda")
    sel = ops.segment_select(values, [5, 7], offsets, largest=False)  # backend "auto"
    assert sel.is_cuda
    assert torch.equal(sel.cpu(), reference.segment_select(values.cpu(), offsets.cpu(), torch.tensor([5, 7]), None, False))
    keep = torch.rand(30000, device="cuda") > 0.5
    res = ops.popup_swap(values, keep, 0.5, offsets, backend="cuda")
    assert res.keep.is_cuda and res.q.is_cuda
    ref = reference.popup_swap(values.cpu(), offsets.cpu(), keep.cpu(), 0.5)
    assert torch.equal(res.keep.cpu(), ref[0]) and torch.equal(res.q.cpu(), ref[1])


# ---------------------------------------------------------------- bad input

NAN_IN_LONG_SEGMENT = torch.randn(100000)
NAN_IN_LONG_SEGMENT[54321] = math.nan


def _cu(*xs):
    return [x.cuda() for x in xs]


ONES10 = torch.ones(10)
NAN_IN_INELIGIBLE = torch.tensor([1.0, math.nan, 2.0, 3.0])
OFF_5_5 = torch.tensor([0, 5, 10])
ASYMMETRIC = torch.tensor([[1.0, 0.5], [0.1, 1.0]])
BAD_CALLS = {
    "w inf": (lambda o: o.pq_norms(*_cu(torch.tensor([1.0, math.inf]), torch.tensor([0, 2])), [1.0], None), "w"),
    "w NaN across tiles": (lambda o: o.pq_norms(*_cu(NAN_IN_LONG_SEGMENT, torch.tensor([0, 100000])), [0.5],
                                                None), "w"),
    "w float64": (lambda o: o.pq_norms(*_cu(ONES10.double(), torch.tensor([0, 10])), [1.0], None), "w"),
    "offsets decreasing": (lambda o: o.pq_norms(*_cu(ONES10, torch.tensor([0, 6, 4, 10])), [1.0], None), "offsets"),
    "offsets not ending at n": (lambda o: o.pq_norms(*_cu(ONES10, torch.tensor([0, 9])), [1.0], None), "offsets"),
    "offsets on the CPU": (lambda o: o.pq_norms(ONES10.cuda(), torch.tensor([0, 10]), [1.0], None), "offsets"),
    "powers zero": (lambda o: o.pq_norms(*_cu(ONES10, torch.tensor([0, 10])), [0.0], None), "powers"),
    "mask on the CPU": (lambda o: o.pq_norms(*_cu(ONES10, torch.tensor([0, 10])), [1.0], ONES10.bool()), "mask"),
    "act float64": (lambda o: o.taylor_scores(*_cu(torch.ones(2, 3).double(), torch.ones(2, 3).double(),
                                                   torch.ones(3)), 1), "act"),
    "grad shape": (lambda o: o.taylor_scores(*_cu(torch.ones(2, 3, 4), torch.ones(2, 3, 5), torch.ones(3)), 1), "grad"),
    "taylor k > N": (lambda o: o.taylor_scores(*_cu(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3)), 4), "k"),
    "a on the CPU": (lambda o: o.taylor_scores(*_cu(torch.ones(2, 3), torch.ones(2, 3)), torch.ones(3), 1), "a"),
    "G not symmetric": (lambda o: o.line_search(*_cu(ASYMMETRIC, torch.ones(2), torch.zeros(2))), "G"),
    "G not symmetric, greedy": (lambda o: o.greedy_local(*_cu(ASYMMETRIC, torch.ones(2)), 1, 0.0, 3), "G"),
    "G NaN": (lambda o: o.greedy_local(*_cu(torch.full((4, 4), math.nan), torch.ones(4)), 1, 0.0, 3), "G"),
    "G inf": (lambda o: o.line_search(*_cu(torch.tensor([[math.inf, 0.0], [0.0, 1.0]]), torch.ones(2), torch.zeros(2))),
              "G"),
    "G float64": (lambda o: o.line_search(*_cu(torch.eye(2).double(), torch.ones(2), torch.zeros(2))), "G"),
    "a off the simplex": (lambda o: o.line_search(*_cu(torch.eye(4), torch.ones(4), torch.full((4,), 0.5))), "a"),
    "w on the CPU": (lambda o: o.greedy_local(torch.eye(2).cuda(), torch.ones(2), 1, 0.0, 3), "w"),
    "max_neurons > N": (lambda o: o.greedy_local(*_cu(torch.eye(2), torch.ones(2)), 3, 0.0, 3), "max_neurons"),
    "values NaN in a long segment": (lambda o: o.segment_select(*_cu(NAN_IN_LONG_SEGMENT, torch.tensor([0, 100000]),
                                                                     torch.tensor([5])), None, True), "values"),
    "values NaN where eligible": (lambda o: o.segment_select(*_cu(NAN_IN_INELIGIBLE, torch.tensor([0, 4]),
                                                                  torch.tensor([1]), torch.isnan(NAN_IN_INELIGIBLE)),
                                                              True), "values"),
    "values float64": (lambda o: o.segment_select(*_cu(ONES10.double(), OFF_5_5, torch.tensor([1, 1])), None, True),
                       "values"),
    "k > eligible": (lambda o: o.segment_select(*_cu(ONES10, OFF_5_5, torch.tensor([1, 6])), None, True), "k"),
    "k > eligible, long segment": (lambda o: o.segment_select(*_cu(NAN_IN_LONG_SEGMENT.nan_to_num(), torch.tensor(
        [0, 100000]), torch.tensor([100001])), None, True), "k"),
    "k negative": (lambda o: o.segment_select(*_cu(ONES10, OFF_5_5, torch.tensor([-1, 1])), None, False), "k"),
    "k wrong length": (lambda o: o.segment_select(*_cu(ONES10, OFF_5_5, torch.tensor([1])), None, True), "k"),
    "eligible on the CPU": (lambda o: o.segment_select(*_cu(ONES10, OFF_5_5, torch.tensor([1, 1])), ONES10.bool(), True),
                            "eligible"),
    "scores NaN": (lambda o: o.popup_swap(*_cu(NAN_IN_LONG_SEGMENT, torch.tensor([0, 100000]),
                                               NAN_IN_LONG_SEGMENT > 0), 0.5), "scores"),
    "keep wrong length": (lambda o: o.popup_swap(*_cu(ONES10, OFF_5_5, torch.ones(9, dtype=torch.bool)), 0.5), "keep"),
    "rate > 1": (lambda o: o.popup_swap(*_cu(ONES10, OFF_5_5, ONES10.bool()), 1.5), "rate"),
    "select offsets on the CPU": (lambda o: o.popup_swap(ONES10.cuda(), OFF_5_5, ONES10.bool().cuda(), 0.5), "offsets"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_input_names_the_argument(case):
    call, arg = BAD_CALLS[case]
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        call(torch.ops.greedyprune)


@pytest.mark.parametrize("values,offsets", [(NAN_IN_INELIGIBLE, torch.tensor([0, 4])),
                                           (NAN_IN_LONG_SEGMENT, torch.tensor([0, 30000, 100000]))], ids=["short", "long"])
def test_values_that_are_not_eligible_may_be_nan(values, offsets):
    """As on the CPU: entries that are not eligible are never read."""
    eligible = ~torch.isnan(values)
    for largest in (True, False):
        args = (values, offsets, torch.tensor([1] * (offsets.numel() - 1)), eligible, largest)
        assert torch.equal(run_cuda("segment_select", args)[0], torch.ops.greedyprune.segment_select(*args))


def test_popup_swap_ties_leave_from_the_higher_index():
    """A long segment (several tiles) of tied scores: Phi*'s highest indices leave, Psi*'s lowest join."""
    n = 40000
    keep = torch.arange(n) < n // 2
    scores = (~keep).float()
    keep_out, q = run_cuda("popup_swap", (scores, torch.tensor([0, n]), keep, 0.25))
    expected = keep.clone()
    expected[15000:20000] = False
    expected[20000:25000] = True
    assert q.tolist() == [5000] and torch.equal(keep_out, expected)


def test_non_finite_g_is_not_called_asymmetric():
    G = torch.eye(4)
    G[1, 2] = math.inf
    with pytest.raises(ValueError, match="argument 'G' must be finite"):
        torch.ops.greedyprune.line_search(*_cu(G, torch.ones(4), torch.zeros(4)))
    with pytest.raises(ValueError, match="argument 'G' must be finite"):
        torch.ops.greedyprune.greedy_local(*_cu(G, torch.ones(4)), 1, 0.0, 3)


def test_non_finite_values_masked_out_are_ignored():
    w = NAN_IN_LONG_SEGMENT.clone()
    mask = ~torch.isnan(w)
    args = (w, torch.tensor([0, 30000, 100000]), [0.5, 1.0], mask)
    check_pq(run_cuda("pq_norms", args), args)


# ----------------------------------------------------------------- opcheck

OPCHECK_CASES = ([("pq_norms", s) for s in PQ_SAMPLES[::6]] + [("taylor_scores", s) for s in TAYLOR_SAMPLES[::6]] +
                 [("line_search", s) for s in LINE_SEARCH_SAMPLES[::6]] + [("greedy_local", s) for s in GREEDY_SAMPLES[::6]] +
                 [("segment_select", s) for s in SELECT_SAMPLES[::12]] + [("popup_swap", s) for s in POPUP_SAMPLES[::8]])


@pytest.mark.parametrize("op,sample", OPCHECK_CASES, ids=[f"{op}-{s.name}" for op, s in OPCHECK_CASES])
def test_opcheck(op, sample):
    torch.library.opcheck(getattr(torch.ops.greedyprune, op).default, to_cuda(sample.args))
