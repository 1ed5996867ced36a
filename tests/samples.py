"""One list of sample inputs per op, in schema argument order: it feeds the
correctness tests (every backend against greedyprune.reference) and opcheck.

Odd shapes, every dtype, and the edge cases of docs/DESIGN.md §2: ties, empty segments,
k = 0 and k = N, all-zero vectors, segments big enough for the parallel paths.
BAD_CALLS: the bad inputs that every backend must refuse with an ArgumentError naming the argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Sample:
    name: str
    args: tuple

    def __repr__(self) -> str:  # pytest ids
        return self.name


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gram(n: int, dtype=torch.float32, rows: int = 64, seed: int = 0) -> torch.Tensor:
    """Gram of n correlated random contributions (a real problem has correlated neurons)."""
    g = _gen(seed)
    basis = torch.randn(rows, max(2, n // 2), generator=g, dtype=torch.float64)
    mix = torch.randn(max(2, n // 2), n, generator=g, dtype=torch.float64)
    x = basis @ mix + 0.3 * torch.randn(rows, n, generator=g, dtype=torch.float64)
    return (x.T @ x / rows).to(dtype)


def simplex_point(n: int, nnz: int, seed: int = 1) -> torch.Tensor:
    g = _gen(seed)
    a = torch.zeros(n, dtype=torch.float64)
    idx = torch.randperm(n, generator=g)[:nnz]
    a[idx] = torch.rand(nnz, generator=g, dtype=torch.float64) + 0.1
    return a / a.sum()


def line_search_samples():
    out = []
    for dtype in DTYPES:
        for n in (1, 7, 33):
            G = gram(n, dtype, seed=n)
            w = torch.full((n,), 1.0 / n, dtype=dtype)
            out.append(Sample(f"{dtype}-N{n}-empty", (G, w, torch.zeros(n, dtype=dtype))))
            if n > 1:
                a = simplex_point(n, min(n - 1, 4), seed=n).to(dtype)
                a = a / a.double().sum().to(dtype)  # re-normalise after rounding
                out.append(Sample(f"{dtype}-N{n}-simplex", (G, w, a)))
                e = torch.zeros(n, dtype=dtype)
                e[n // 2] = 1
                out.append(Sample(f"{dtype}-N{n}-vertex", (G, w, e)))
    return out


def greedy_local_samples():
    out = []
    for dtype in DTYPES:
        for n, max_neurons, tol, steps in ((1, 1, 0.0, 3), (9, 4, 0.0, 20), (40, 40, 0.0, 200), (33, 20, 1e-3, 5)):
            G = gram(n, dtype, seed=n + 11)
            w = torch.full((n,), 1.0 / n, dtype=dtype)
            out.append(Sample(f"{dtype}-N{n}-max{max_neurons}-tol{tol}-steps{steps}", (G, w, max_neurons, tol, steps)))
    return out


def taylor_samples():
    out = []
    shapes = ((5, 7, 3, 3), (3, 5, 17, 17), (4, 6), (2, 3, 1, 129), (0, 4, 3))
    for dtype in DTYPES:
        for shape in shapes:
            g = _gen(len(shape) + shape[1])
            act = torch.randn(shape, generator=g).to(dtype)
            grad = torch.randn(shape, generator=g).to(dtype)
            n = shape[1]
            a = simplex_point(n, min(n, 3)).to(dtype)
            for k in sorted({0, min(3, n), n}):
                out.append(Sample(f"{dtype}-{'x'.join(map(str, shape))}-k{k}", (act, grad, a, k)))
    # ties: identical channels give identical gr; the lower index must come first
    act = torch.ones(2, 5, 4)
    out.append(Sample("ties", (act, torch.ones(2, 5, 4), torch.full((5,), 0.2), 3)))
    return out


def _segments(sizes):
    return torch.tensor([0] + list(torch.tensor(sizes).cumsum(0).tolist()), dtype=torch.int64)


SEGMENT_SIZES = {
    "small": [5, 0, 17, 1, 64],
    "mid": [3000, 0, 5001, 7],  # above the no-histogram threshold
    "big": [70001, 12, 140000],  # parallel histogram path
}


def _values(n: int, dtype, seed: int, ties: bool):
    g = _gen(seed)
    v = torch.randn(n, generator=g)
    if ties:
        v = torch.round(v * 2) / 2  # few distinct values: many ties
    return v.to(dtype)


def _segment_layouts():
    """(dtype, layout name, sizes, n, offsets) for every dtype and segment layout
    (the big layout in 32/64-bit floats only: it exists for the parallel paths)."""
    for dtype in DTYPES:
        for name, sizes in SEGMENT_SIZES.items():
            if name == "big" and dtype not in (torch.float32, torch.float64):
                continue
            yield dtype, name, sizes, sum(sizes), _segments(sizes)


def segment_select_samples():
    out = []
    for dtype, name, sizes, n, offsets in _segment_layouts():
        for ties in (False, True):
            values = _values(n, dtype, len(sizes), ties)
            eligible = torch.rand(n, generator=_gen(3)) > 0.4
            m = torch.tensor([int(eligible[b:e].sum()) for b, e in zip(offsets[:-1], offsets[1:])])
            full = torch.tensor(sizes, dtype=torch.int64)
            for largest in (True, False):
                tag = f"{dtype}-{name}-ties{ties}-largest{largest}"
                out.append(Sample(tag + "-all", (values, offsets, full // 3, None, largest)))
                out.append(Sample(tag + "-eligible", (values, offsets, m // 2, eligible, largest)))
                out.append(Sample(tag + "-k0-kN", (values, offsets, torch.where(m % 2 == 0, m, 0), eligible, largest)))
    return out


def popup_swap_samples():
    out = []
    for dtype, name, sizes, n, offsets in _segment_layouts():
        for ties in (False, True):
            scores = _values(n, dtype, 7, ties)
            keep = torch.rand(n, generator=_gen(5)) > 0.7
            for rate in (0.0, 0.37, 1.0):
                out.append(Sample(f"{dtype}-{name}-ties{ties}-rate{rate}", (scores, offsets, keep, rate)))
    # SR-popup's own initialisation: scores 1 (kept) and 0.99 (pruned) give no swap
    keep = torch.rand(1000, generator=_gen(9)) > 0.5
    scores = torch.where(keep, torch.tensor(1.0), torch.tensor(0.99))
    out.append(Sample("init-scores", (scores, _segments([400, 600]), keep, 1.0)))
    return out


def pq_norms_samples():
    out = []
    grid = [round(0.1 * i, 1) for i in range(1, 21)]
    for dtype, name, sizes, n, offsets in _segment_layouts():
        w = _values(n, dtype, 11, ties=False)
        w[: min(n, 40)] = 0  # zeros inside a segment, and an all-zero first segment
        mask = torch.rand(n, generator=_gen(13)) > 0.3
        out.append(Sample(f"{dtype}-{name}-p0.5q1", (w, offsets, [0.5, 1.0], None)))
        out.append(Sample(f"{dtype}-{name}-grid-mask", (w, offsets, grid, mask)))
        out.append(Sample(f"{dtype}-{name}-irregular", (w, offsets, [0.3, math.pi / 2, 1.0, 7.5], mask)))
    return out


SAMPLES = {
    "line_search": line_search_samples,
    "greedy_local": greedy_local_samples,
    "taylor_scores": taylor_samples,
    "segment_select": segment_select_samples,
    "popup_swap": popup_swap_samples,
    "pq_norms": pq_norms_samples,
}


# ------------------------------------------------------------------ bad inputs


@dataclass
class BadCall:
    """greedyprune.ops.<op>(*args, **kwargs) must raise greedyprune.checks.ArgumentError whose message
    says "argument '<arg>' <says>". backends: where it applies (None: every backend that serves op)."""
    name: str
    op: str
    args: tuple
    arg: str
    kwargs: dict = field(default_factory=dict)
    says: str = ""
    backends: tuple | None = None

    def __repr__(self) -> str:  # pytest ids
        return self.name


def _bad_calls() -> list[BadCall]:
    G, W4 = torch.eye(4), torch.full((4,), 0.25)
    inf_G = torch.eye(4)
    inf_G[1, 2] = math.inf  # also asymmetric: the message must still say "finite"
    V, OFF = torch.randn(10, generator=_gen(0)), torch.tensor([0, 4, 10])
    KEEP = torch.rand(10, generator=_gen(1)) > 0.5
    ACT, A3 = torch.randn(2, 3, 4, generator=_gen(2)), torch.ones(3) / 3
    LOG3, C3 = torch.zeros(3, dtype=torch.float64), torch.tensor([4, 5, 6])
    return [
        BadCall("G not square", "line_search", (torch.ones(3, 4),), "G"),
        BadCall("G not a tensor", "line_search", ([[1.0]],), "G", says="must be a torch.Tensor"),
        BadCall("w not a tensor", "line_search", (G, [0.25] * 4), "w", says="must be a torch.Tensor"),
        BadCall("a not a tensor", "line_search", (G, W4, [1.0, 0, 0, 0]), "a", says="must be a torch.Tensor"),
        BadCall("G empty", "greedy_local", (torch.empty(0, 0),), "G"),
        BadCall("G empty, line search", "line_search", (torch.empty(0, 0),), "G"),
        BadCall("G wrong rank", "greedy_local", (torch.ones(4), W4), "G"),
        BadCall("G not symmetric", "greedy_local", (torch.tensor([[1.0, 0.5], [0.1, 1.0]]),), "G", says="must be symmetric"),
        BadCall("G not symmetric, line search", "line_search", (torch.tensor([[1.0, 0.5], [0.1, 1.0]]),), "G"),
        BadCall("G int dtype", "line_search", (torch.eye(3, dtype=torch.int32),), "G"),
        BadCall("G NaN", "greedy_local", (torch.full((4, 4), math.nan), W4), "G", says="must be finite"),
        BadCall("G inf", "greedy_local", (inf_G, W4), "G", says="must be finite"),
        BadCall("G inf, line search", "line_search", (inf_G, W4), "G", says="must be finite"),
        BadCall("w wrong length", "line_search", (G, torch.ones(3)), "w"),
        BadCall("a off the simplex", "line_search", (G, W4, torch.full((4,), 0.5)), "a"),
        BadCall("a negative", "line_search", (G, W4, torch.tensor([1.5, -0.5, 0, 0])), "a"),
        BadCall("a NaN", "line_search", (G, W4, torch.tensor([math.nan, 1.0, 0, 0])), "a"),
        BadCall("max_neurons > N", "greedy_local", (G, W4, 5), "max_neurons"),
        BadCall("max_neurons fractional", "greedy_local", (G, W4, 2.5), "max_neurons"),
        BadCall("tol negative", "greedy_local", (G, W4, 2, -1.0), "tol"),
        BadCall("tol not a number", "greedy_local", (G, W4, 2, "small"), "tol", says="must be a number"),
        BadCall("max_steps zero", "greedy_local", (G, W4, 2, 0.0, 0), "max_steps"),
        BadCall("max_steps fractional", "greedy_local", (G, W4, 2, 0.0, 7.5), "max_steps"),
        BadCall("grad shape", "taylor_scores", (ACT, torch.randn(2, 3, 5), A3, 1), "grad"),
        BadCall("grad dtype", "taylor_scores", (ACT, ACT.double(), A3, 1), "grad"),
        BadCall("grad not a tensor", "taylor_scores", (ACT, ACT.tolist(), A3, 1), "grad"),
        BadCall("act rank", "taylor_scores", (torch.randn(3), torch.randn(3), torch.ones(3), 1), "act"),
        BadCall("taylor k > N", "taylor_scores", (ACT, ACT, A3, 4), "k"),
        BadCall("taylor k fractional", "taylor_scores", (ACT, ACT, A3, 1.5), "k"),
        BadCall("taylor a length", "taylor_scores", (ACT, ACT, torch.ones(2), 1), "a"),
        BadCall("offsets decreasing", "popup_swap", (V, KEEP, 0.5, torch.tensor([0, 6, 4, 10])), "offsets"),
        BadCall("offsets not ending at n", "pq_norms", (V, [1.0], torch.tensor([0, 4, 9])), "offsets"),
        BadCall("offsets not starting at 0", "segment_select", (V, [1, 1], torch.tensor([1, 4, 10])), "offsets"),
        BadCall("offsets float", "segment_select", (V, [1, 1], torch.tensor([0.0, 4.0, 10.0])), "offsets"),
        BadCall("offsets empty", "pq_norms", (V, [1.0], torch.tensor([], dtype=torch.int64)), "offsets"),
        BadCall("offsets 2-D", "popup_swap", (V, KEEP, 0.5, torch.tensor([[0, 10]])), "offsets"),
        BadCall("offsets not numbers", "segment_select", (V, 1, "0:10"), "offsets"),
        BadCall("k > eligible", "segment_select", (V, [5, 1], OFF), "k"),
        BadCall("k negative", "segment_select", (V, [-1, 1], OFF), "k"),
        BadCall("k wrong length", "segment_select", (V, [1, 1, 1], OFF), "k"),
        BadCall("k fractional", "segment_select", (V, 1.5), "k"),
        BadCall("k fractional, per segment", "segment_select", (V, torch.tensor([1.0, 2.5]), OFF), "k"),
        BadCall("values NaN", "segment_select", (torch.tensor([1.0, math.nan]), 1), "values"),
        BadCall("values NaN where eligible", "segment_select",
                (torch.tensor([1.0, math.nan, 2.0]), 1, None, torch.tensor([False, True, True])), "values"),
        BadCall("values 2-D", "segment_select", (torch.zeros(2, 5), 1), "values"),
        BadCall("eligible not bool", "segment_select", (V, [1, 1], OFF, torch.ones(10)), "eligible"),
        BadCall("keep wrong length", "popup_swap", (V, KEEP[:9], 0.5, OFF), "keep"),
        BadCall("keep not bool", "popup_swap", (V, KEEP.float(), 0.5, OFF), "keep", says="must be a bool tensor"),
        BadCall("rate not a number", "popup_swap", (V, KEEP, "half", OFF), "rate", says="must be a number"),
        BadCall("rate > 1", "popup_swap", (V, KEEP, 1.5, OFF), "rate"),
        BadCall("rate NaN", "popup_swap", (V, KEEP, math.nan, OFF), "rate"),
        BadCall("scores NaN", "popup_swap", (torch.tensor([1.0, math.nan]), torch.tensor([True, False]), 0.5), "scores"),
        BadCall("power zero", "pq_norms", (V, [0.0, 1.0]), "powers"),
        BadCall("power negative", "pq_norms", (V, [-1.0]), "powers"),
        BadCall("no powers", "pq_norms", (V, []), "powers"),
        BadCall("power not a number", "pq_norms", (V, ["one"]), "powers", says="must be a number"),
        BadCall("mask not a tensor", "pq_norms", (V, [1.0], None, [True] * 10), "mask"),
        BadCall("w non-finite", "pq_norms", (torch.tensor([1.0, math.inf]), [1.0]), "w"),
        BadCall("w non-finite where masked in", "pq_norms",
                (torch.tensor([math.nan, 1.0, math.inf]), [1.0], None, torch.tensor([False, True, True])), "w"),
        BadCall("w float64 on Triton", "pq_norms", (torch.tensor([1e300, 1.0], dtype=torch.float64), [0.5]), "w",
                backends=("triton",)),
        BadCall("mask wrong size", "pq_norms", (V, [1.0], None, KEEP[:3]), "mask"),
        BadCall("p not below q", "pq_index", (V, 1.0, 1.0), "p"),
        BadCall("p zero", "pq_index", (V, 0.0, 1.0), "p"),
        BadCall("p negative in a grid", "pq_index", (V, [-0.5, 0.5], [1.0, 2.0]), "p"),
        BadCall("q infinite", "pq_index", (V, 0.5, math.inf), "q"),
        BadCall("unknown backend", "pq_norms", (V, [1.0]), "backend", kwargs={"backend": "gpu-magic"}),
        # helpers without a backend: called once
        BadCall("log sums p not below q", "pq_index_from_log_sums", (LOG3, LOG3, C3, 1.0, 0.5), "p"),
        BadCall("log sums p zero", "pq_index_from_log_sums", (LOG3, LOG3, C3, 0.0, 1.0), "p"),
        BadCall("log sums q infinite", "pq_index_from_log_sums", (LOG3, LOG3, C3, 0.5, math.inf), "q"),
        BadCall("log sums lengths", "pq_index_from_log_sums", (LOG3, LOG3[:2], C3, 0.5, 1.0), "log_sum_q"),
        BadCall("log sums counts length", "pq_index_from_log_sums", (LOG3, LOG3, C3[:2], 0.5, 1.0), "counts"),
        BadCall("log sums p not a number", "pq_index_from_log_sums", (LOG3, LOG3, C3, "half", 1.0), "p"),
        BadCall("log sums p length", "pq_index_from_log_sums", (LOG3, LOG3, C3, torch.tensor([0.5, 0.6]), 1.0), "p"),
        BadCall("prune counts negative", "sap_prune_count", (LOG3, torch.tensor([4, -1, 6]), 0.5, 1.0), "counts"),
        BadCall("prune counts length", "sap_prune_count", (LOG3, C3[:2], 0.5, 1.0), "counts"),
        BadCall("prune eta NaN", "sap_prune_count", (LOG3, C3, 0.5, 1.0, math.nan), "eta"),
        BadCall("prune eta not a number", "sap_prune_count", (LOG3, C3, 0.5, 1.0, "none"), "eta", says="must be a number"),
        BadCall("prune gamma negative", "sap_prune_count", (LOG3, C3, 0.5, 1.0, 0.0, -1.0), "gamma"),
        BadCall("prune beta > 1", "sap_prune_count", (LOG3, C3, 0.5, 1.0, 0.0, 1.0, 1.5), "beta"),
        BadCall("prune p zero", "sap_prune_count", (LOG3, C3, 0.0, 1.0), "p"),
    ]


BAD_CALLS = _bad_calls()
# ops of greedyprune.ops that take no backend (plain torch on any device)
BACKEND_FREE = ("pq_index_from_log_sums", "sap_prune_count")
