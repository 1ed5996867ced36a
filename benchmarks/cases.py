"""The "ops" benchmark: every greedyprune op on the CPU against plain-PyTorch baselines doing
the same work (and one torch.sum over the same data as a memory-pass yardstick), each case
checked before timing; also the cases of the pytest-benchmark files (test_bench_*.py).

Quick sizes: ResNet-50's conv1 and layer1, N = 256.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from greedyprune import ops
from greedyprune.constants import DIRECTION_EPS
from harness import Benchmark, Case, Target

SEED = 0

# torchvision ResNet-50 conv weights (out, in, kh, kw) in module order; the
# downsample conv of a stage's first block comes after that block's conv3.
RESNET50_CONV_SHAPES = [
    (64, 3, 7, 7),
    # layer1
    (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1), (256, 64, 1, 1),
    (64, 256, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1),
    (64, 256, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1),
    # layer2
    (128, 256, 1, 1), (128, 128, 3, 3), (512, 128, 1, 1), (512, 256, 1, 1),
    (128, 512, 1, 1), (128, 128, 3, 3), (512, 128, 1, 1),
    (128, 512, 1, 1), (128, 128, 3, 3), (512, 128, 1, 1),
    (128, 512, 1, 1), (128, 128, 3, 3), (512, 128, 1, 1),
    # layer3
    (256, 512, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1), (1024, 512, 1, 1),
    (256, 1024, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1),
    (256, 1024, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1),
    (256, 1024, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1),
    (256, 1024, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1),
    (256, 1024, 1, 1), (256, 256, 3, 3), (1024, 256, 1, 1),
    # layer4
    (512, 1024, 1, 1), (512, 512, 3, 3), (2048, 512, 1, 1), (2048, 1024, 1, 1),
    (512, 2048, 1, 1), (512, 512, 3, 3), (2048, 512, 1, 1),
    (512, 2048, 1, 1), (512, 512, 3, 3), (2048, 512, 1, 1),
]
RESNET50_CONV_WEIGHTS = 23_454_912
assert len(RESNET50_CONV_SHAPES) == 53
assert sum(math.prod(s) for s in RESNET50_CONV_SHAPES) == RESNET50_CONV_WEIGHTS

QUICK_LAYERS = 11  # conv1 and layer1
KEEP_FRACTION = 0.1  # per layer, for popup_swap's keep and segment_select's k
POPUP_RATE = 0.5
SCORE_NOISE = 0.02  # relative perturbation of the popup scores, see popup_inputs

TWO_POWERS = (0.5, 1.0)  # PQI's default p and q
GRID_P = [i / 10 for i in range(1, 11)]  # the paper's sweep: p in 0.1 .. 1.0
GRID_Q = [i / 10 for i in range(10, 21)]  # q in 1.0 .. 2.0
GRID_POWERS = sorted(set(GRID_P + GRID_Q))  # 20 distinct powers
TAYLOR_K = 5


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _bounds(offsets: torch.Tensor) -> list[tuple[int, int]]:
    o = offsets.tolist()
    return list(zip(o[:-1], o[1:]))


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest values (1 <= k <= numel; ties: lower index) via torch.kthvalue, no full sort."""
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    mask = values >= threshold
    extra = int(mask.sum()) - k
    if extra > 0:  # ties at the threshold: the highest-index ones drop out, as in greedyprune
        ties = torch.nonzero(values == threshold).flatten()
        mask[ties[-extra:]] = False
    return mask


# ------------------------------------------------------------------ ResNet-50


@dataclass(frozen=True)
class ConvWeights:
    name: str
    shapes: list[tuple[int, int, int, int]]
    flat: torch.Tensor  # float32, every layer's weights one after the other
    layer_offsets: torch.Tensor  # int64 [L+1], one segment per layer
    row_offsets: torch.Tensor  # int64, one segment per output row (neuron) of every layer
    layer_bounds: list[tuple[int, int]]
    layers: list[torch.Tensor]  # [out, in * kh * kw] views of flat
    sizes: str


@functools.cache
def conv_weights(quick: bool) -> ConvWeights:
    """ResNet-50's conv weights (quick: conv1 and layer1) with torchvision's Kaiming-normal (fan_out) init."""
    shapes = RESNET50_CONV_SHAPES[:QUICK_LAYERS] if quick else RESNET50_CONV_SHAPES
    gen = _generator()
    flat = torch.cat([torch.randn(math.prod(s), generator=gen) * math.sqrt(2 / (s[0] * s[2] * s[3])) for s in shapes])
    layer_offsets = ops.offsets_from_sizes([math.prod(s) for s in shapes])
    row_offsets = ops.offsets_from_sizes([math.prod(s[1:]) for s in shapes for _ in range(s[0])])
    layer_bounds = _bounds(layer_offsets)
    layers = [flat[b:e].view(s[0], -1) for s, (b, e) in zip(shapes, layer_bounds)]
    name = f"ResNet-50 conv1 + layer1 ({len(shapes)} conv layers)" if quick else "ResNet-50's 53 conv layers"
    sizes = f"{name}, {flat.numel():,} float32 weights, {row_offsets.numel() - 1:,} output rows"
    return ConvWeights(name, shapes, flat, layer_offsets, row_offsets, layer_bounds, layers, sizes)


def _keep_counts(weights: ConvWeights) -> list[int]:
    return [max(1, round(KEEP_FRACTION * (e - b))) for b, e in weights.layer_bounds]


# --------------------------------------------------------------- greedy_local


@dataclass(frozen=True)
class GreedyInputs:
    G: torch.Tensor
    w: torch.Tensor
    max_neurons: int
    tol: float
    max_steps: int
    sizes: str


@functools.cache
def greedy_inputs(quick: bool) -> GreedyInputs:
    n, samples, max_neurons = (256, 1024, 64) if quick else (1024, 4096, 256)
    gen = _generator()
    # A shared low-rank component correlates the features, as in a real layer.
    shared = torch.randn(samples, 16, generator=gen) @ torch.randn(16, n, generator=gen)
    X = torch.randn(samples, n, generator=gen) + 0.5 * shared
    G = X.T @ X / samples
    w = torch.full((n,), 1 / n)
    tol, max_steps = 0.0, 4 * max_neurons  # stop at max_neurons, not earlier
    steps = ops.greedy_local(G, w, max_neurons, tol, max_steps).order.numel()
    sizes = (f"N = {n} (Gram of {samples} random correlated features, float32), w = 1/N, "
             f"up to {max_neurons} neurons: {steps} steps")
    return GreedyInputs(G, w, max_neurons, tol, max_steps, sizes)


def torch_greedy_local(G: torch.Tensor, w: torch.Tensor, max_neurons: int, tol: float, max_steps: int):
    """Greedy local imitation as a vectorized torch loop (DESIGN.md section 1).

    Every step evaluates all N candidates with tensor ops in float64; the only host
    read per step is the argmin with the stopping flags. Returns (a, order).
    """
    Gd, wd = G.double(), w.double()
    n = Gd.shape[0]
    diag, v = Gd.diagonal(), Gd @ wd
    wGw = wd @ v
    a, u = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    aGa, aGw = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    done = torch.tensor(False)
    order = []
    for step in range(max_steps):
        r2 = aGa - 2 * aGw + wGw
        if step == 0:  # empty start: the best single neuron takes the whole simplex
            gamma, loss = torch.ones_like(diag), diag - 2 * v + wGw
            lo = torch.zeros_like(a)
        else:
            rd = (u - v) - (aGa - aGw)
            dd = diag - 2 * u + aGa
            lo = torch.where(a > 0, -a / (1 - a), 0.0)
            gamma = torch.maximum(-rd / dd, lo).clamp_(max=1.0)
            loss = r2 + 2 * gamma * rd + gamma * gamma * dd
            loss.masked_fill_((dd <= DIRECTION_EPS * (diag.abs() + aGa.abs())) | (a >= 1), math.inf)
        best = torch.argmin(loss)  # first index on ties
        improves = (loss[best] < r2) | (step == 0)
        i, go = torch.stack((best, improves & ~done)).tolist()
        if not go:
            break
        g = gamma[i]
        removes = (a[i] > 0) & (g == lo[i])
        aGa = (1 - g) * (1 - g) * aGa + 2 * g * (1 - g) * u[i] + g * g * diag[i]
        aGw = (1 - g) * aGw + g * v[i]
        u = (1 - g) * u + g * Gd[i]
        a = (1 - g) * a
        a[i] += g
        a[i] = torch.where(removes, 0.0, a[i])
        order.append(i)
        done = (aGa - 2 * aGw + wGw <= tol) | (torch.count_nonzero(a) >= max_neurons)
    return a, torch.tensor(order, dtype=torch.int64)


def _check_greedy_local(x: GreedyInputs, out: dict) -> None:
    path = out["greedyprune"]
    a, order = out["torch_loop"]
    assert torch.equal(order, path.order), "torch_loop took another greedy path than greedyprune"
    torch.testing.assert_close(a, path.a)


GREEDY_LOCAL = Case(
    name="greedy_local",
    title="greedy_local: the whole greedy path of one unit",
    group="greedy_local",
    subject="greedyprune",
    make_inputs=greedy_inputs,
    providers={
        "greedyprune": lambda x: ops.greedy_local(x.G, x.w, x.max_neurons, x.tol, x.max_steps),
        "torch_loop": lambda x: torch_greedy_local(x.G, x.w, x.max_neurons, x.tol, x.max_steps),
    },
    check=_check_greedy_local,
)


# ----------------------------------------------------------------- popup_swap


@dataclass(frozen=True)
class PopupInputs:
    scores: torch.Tensor
    keep: torch.Tensor
    rate: float
    offsets: torch.Tensor
    bounds: list[tuple[int, int]]
    sizes: str


@functools.cache
def popup_inputs(quick: bool) -> PopupInputs:
    weights = conv_weights(quick)
    magnitude = weights.flat.abs()
    keep = ops.segment_select(magnitude, _keep_counts(weights), weights.layer_offsets)
    # An SGD step on the scores moves the entries near each layer's threshold across it.
    scores = magnitude * (1 + SCORE_NOISE * torch.randn(magnitude.shape, generator=_generator()))
    moves = int(ops.popup_swap(scores, keep, POPUP_RATE, weights.layer_offsets).q.sum())
    sizes = (f"{weights.name}, {scores.numel():,} float32 scores, {int(keep.sum()):,} kept "
             f"({KEEP_FRACTION:.0%} per layer), rate {POPUP_RATE}: {moves:,} swaps")
    return PopupInputs(scores, keep, POPUP_RATE, weights.layer_offsets, weights.layer_bounds, sizes)


def torch_popup_swap(scores, keep, rate, bounds, top_mask=None):
    """SR-popup swap per layer with vectorized torch: T from `top_mask` (default kthvalue,
    `top_k_mask`), topk on Phi* and Psi*."""
    top_mask = top_mask or top_k_mask
    new_keep = keep.clone()
    for b, e in bounds:
        s, kept = scores[b:e], keep[b:e]
        top = top_mask(s, int(kept.sum()))
        phi = torch.nonzero(kept & ~top).flatten()  # would be dropped
        psi = torch.nonzero(top & ~kept).flatten()  # would be revived
        q = math.ceil(psi.numel() * rate)
        new_keep[b + phi[torch.topk(s[phi], q, largest=False).indices]] = False
        new_keep[b + psi[torch.topk(s[psi], q).indices]] = True
    return new_keep


def authors_popup_swap(scores, keep, rate, bounds):
    """SR-popup swap the authors' way per layer: full sort, nonzero, two more sorts, Python index lists."""
    new_keep = keep.clone()
    for b, e in bounds:
        s, kept = scores[b:e], keep[b:e]
        ranked = torch.sort(s, descending=True, stable=True).indices
        top = torch.zeros_like(kept)
        top[ranked[: int(kept.sum())]] = True
        phi = torch.nonzero(kept & ~top).flatten().tolist()
        psi = torch.nonzero(top & ~kept).flatten().tolist()
        q = math.ceil(len(psi) * rate)
        leave = torch.sort(s[phi]).indices[:q].tolist()
        join = torch.sort(s[psi], descending=True).indices[:q].tolist()
        new_keep[[b + phi[j] for j in leave]] = False
        new_keep[[b + psi[j] for j in join]] = True
    return new_keep


def _check_popup_swap(x: PopupInputs, out: dict) -> None:
    expected = out["greedyprune"].keep
    assert torch.equal(out["torch_kthvalue"], expected), "torch_kthvalue differs"
    assert torch.equal(out["authors"], expected), "authors differs"


POPUP_SWAP = Case(
    name="popup_swap",
    title="popup_swap: SR-popup's mask update over ResNet-50's conv layers, one segment per layer",
    group="popup_swap",
    subject="greedyprune",
    make_inputs=popup_inputs,
    providers={
        "greedyprune": lambda x: ops.popup_swap(x.scores, x.keep, x.rate, x.offsets),
        "torch_kthvalue": lambda x: torch_popup_swap(x.scores, x.keep, x.rate, x.bounds),
        "authors": lambda x: authors_popup_swap(x.scores, x.keep, x.rate, x.bounds),
        "torch_sum": lambda x: torch.sum(x.scores),
    },
    check=_check_popup_swap,
    calls={"authors": 1},
)


# ------------------------------------------------------------------- pq_norms


def torch_row_log_power_sums(layers: list[torch.Tensor], powers) -> torch.Tensor:
    """log sum_j |W_ij|^p [rows, P] for every output row of every layer: one vectorized pass per layer and power."""
    sums = []
    for W in layers:
        magnitude = W.abs()
        sums.append(torch.stack([magnitude.pow(p).sum(dim=1) for p in powers], dim=1))
    return torch.cat(sums).log()


def authors_pq_norms(layers: list[torch.Tensor], ps, qs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The PQI authors' way: per (p, q) pair and layer, torch.linalg.vector_norm for both norms per row."""
    return [
        (torch.linalg.vector_norm(W, p, dim=1), torch.linalg.vector_norm(W, q, dim=1))
        for p in ps
        for q in qs
        for W in layers
    ]


def _check_log_sums(expected: torch.Tensor, torch_log_sums: torch.Tensor) -> None:
    torch.testing.assert_close(torch_log_sums.double(), expected, rtol=0, atol=1e-4)


def _check_pq_norms_grid(x: ConvWeights, out: dict) -> None:
    expected = out["greedyprune_grid"].log_sums
    _check_log_sums(expected, out["torch_grid_once_per_power"])
    norms = iter(out["authors_grid"])  # per p, per q, per layer
    for p in GRID_P:
        for q in GRID_Q:
            p_norms, q_norms = zip(*(next(norms) for _ in x.layers))
            for power, norm in ((p, torch.cat(p_norms)), (q, torch.cat(q_norms))):
                _check_log_sums(expected[:, GRID_POWERS.index(power)], power * norm.double().log())


PQ_NORMS_TWO_POWERS = Case(
    name="pq_norms_2p",
    title="pq_norms: log power sums of every output row (neuron) for p = 0.5 and q = 1",
    group="pq_norms",
    subject="greedyprune_2p",
    make_inputs=conv_weights,
    providers={
        "greedyprune_2p": lambda x: ops.pq_norms(x.flat, TWO_POWERS, x.row_offsets),
        "torch_sum": lambda x: torch.sum(x.flat),
        "torch_2p": lambda x: torch_row_log_power_sums(x.layers, TWO_POWERS),
    },
    check=lambda x, out: _check_log_sums(out["greedyprune_2p"].log_sums, out["torch_2p"]),
)

PQ_NORMS_GRID = Case(
    name="pq_norms_grid",
    title="pq_norms: the same for the paper's 10 x 11 grid of (p, q) (20 distinct powers)",
    group="pq_norms",
    subject="greedyprune_grid",
    make_inputs=conv_weights,
    providers={
        "greedyprune_grid": lambda x: ops.pq_norms(x.flat, GRID_POWERS, x.row_offsets),
        "torch_grid_once_per_power": lambda x: torch_row_log_power_sums(x.layers, GRID_POWERS),
        "authors_grid": lambda x: authors_pq_norms(x.layers, GRID_P, GRID_Q),
    },
    check=_check_pq_norms_grid,
    calls={"authors_grid": 1},
)


# -------------------------------------------------------------- taylor_scores


@dataclass(frozen=True)
class TaylorInputs:
    act: torch.Tensor
    grad: torch.Tensor
    a: torch.Tensor
    k: int
    sizes: str


@functools.cache
def taylor_inputs(quick: bool) -> TaylorInputs:
    batch, n, side = (8, 256, 28) if quick else (64, 256, 28)
    gen = _generator()
    act = torch.randn(batch, n, side, side, generator=gen).relu_()  # post-ReLU activations
    grad = 1e-3 * torch.randn(batch, n, side, side, generator=gen)
    a = torch.rand(n, generator=gen)
    a /= a.sum()
    sizes = f"act and grad [{batch}, {n}, {side}, {side}] float32 ({act.numel():,} elements each), k = {TAYLOR_K}"
    return TaylorInputs(act, grad, a, TAYLOR_K, sizes)


def torch_taylor_scores(act, grad, a, k):
    r = (act * grad).sum(dim=(0, 2, 3))
    gr = r - a @ r
    return r, gr, torch.topk(gr, k, largest=False).indices


def _check_taylor_scores(x: TaylorInputs, out: dict) -> None:
    expected = out["greedyprune"]
    r, _, topk = out["torch"]
    torch.testing.assert_close(r, expected.r, rtol=1e-3, atol=1e-4 * float(expected.r.abs().max()))
    assert torch.equal(topk, expected.topk), "torch picked other candidates than greedyprune"


TAYLOR_SCORES = Case(
    name="taylor_scores",
    title="taylor_scores: first-order Taylor scores of 256 channels and the 5 lowest",
    group="taylor_scores",
    subject="greedyprune",
    make_inputs=taylor_inputs,
    providers={
        "greedyprune": lambda x: ops.taylor_scores(x.act, x.grad, x.a, x.k),
        "torch": lambda x: torch_taylor_scores(x.act, x.grad, x.a, x.k),
        "torch_sum_act_grad": lambda x: torch.sum(x.act) + torch.sum(x.grad),
    },
    check=_check_taylor_scores,
)


# ------------------------------------------------------------- segment_select


@dataclass(frozen=True)
class SelectInputs:
    values: torch.Tensor
    k: list[int]
    offsets: torch.Tensor
    bounds: list[tuple[int, int]]
    sizes: str


@functools.cache
def select_inputs(quick: bool) -> SelectInputs:
    weights = conv_weights(quick)
    k = _keep_counts(weights)
    sizes = (f"magnitude top-k: |w| of {weights.name}, {weights.flat.numel():,} values, "
             f"{KEEP_FRACTION:.0%} kept per layer")
    return SelectInputs(weights.flat.abs(), k, weights.layer_offsets, weights.layer_bounds, sizes)


def torch_segment_top_k(values, k, bounds):
    """Per-layer top-k mask with torch.kthvalue, Python loop over layers."""
    out = torch.empty(values.shape, dtype=torch.bool)
    for (b, e), k_layer in zip(bounds, k):
        out[b:e] = top_k_mask(values[b:e], k_layer)
    return out


def _check_segment_select(x: SelectInputs, out: dict) -> None:
    assert torch.equal(out["torch_kthvalue"], out["greedyprune"]), "torch_kthvalue differs"


SEGMENT_SELECT = Case(
    name="segment_select",
    title="segment_select: magnitude top-10% of every ResNet-50 conv layer",
    group="segment_select",
    subject="greedyprune",
    make_inputs=select_inputs,
    providers={
        "greedyprune": lambda x: ops.segment_select(x.values, x.k, x.offsets),
        "torch_kthvalue": lambda x: torch_segment_top_k(x.values, x.k, x.bounds),
        "torch_sum": lambda x: torch.sum(x.values),
    },
    check=_check_segment_select,
)


BENCHMARK = Benchmark(
    name="ops",
    title="greedyprune ops on the CPU",
    about="Every greedyprune op against plain-PyTorch baselines doing the same work (the authors' way where "
          "the papers' code does it differently), timed in the same run after a check that they agree; "
          "`torch_sum` (one torch.sum over the same data) is the memory-pass yardstick. The `authors` "
          "providers are timed with one call.",
    cases=[GREEDY_LOCAL, POPUP_SWAP, PQ_NORMS_TWO_POWERS, PQ_NORMS_GRID, TAYLOR_SCORES, SEGMENT_SELECT],
    targets=[
        Target("greedy_local", "greedyprune", "torch_loop", "the torch loop", faster=30),
        Target("greedy_local", "greedyprune", "greedyprune", "its quiet median", at_most=2, under_load=True),
        Target("popup_swap", "greedyprune", "torch_kthvalue", "per-layer kthvalue", faster=3),
        Target("popup_swap", "greedyprune", "authors", "the authors' way", faster=30),
        Target("popup_swap", "greedyprune", "torch_sum", "one torch.sum", at_most=10),
        Target("pq_norms_2p", "greedyprune_2p", "torch_sum", "a sum", at_most=1.5),
        Target("pq_norms_grid", "greedyprune_grid", "torch_grid_once_per_power", "once per power", faster=10),
        Target("pq_norms_grid", "greedyprune_grid", "authors_grid", "the authors' way", faster=100),
        Target("taylor_scores", "greedyprune", "torch_sum_act_grad", "the sums of act and grad", at_most=2),
        Target("segment_select", "greedyprune", "torch_sum", "one torch.sum", at_most=8),
    ],
)


def provider_names(group: str) -> list[str]:
    """The providers of the pytest-benchmark group (test_bench_*.py parametrize over these)."""
    return [name for case in BENCHMARK.cases if case.group == group for name in case.providers]


def case_of(group: str, provider: str) -> Case:
    return next(case for case in BENCHMARK.cases if case.group == group and provider in case.providers)
