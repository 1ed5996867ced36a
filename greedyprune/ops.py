"""Public op API: argument checks, backend choice, fake (meta) kernels.

Every op exists as `torch.ops.greedyprune.<name>` (schemas in csrc/greedyprune.cpp)
and as a documented wrapper here. Contracts: DESIGN.md, "The ops"; the oracle of
every op is in `greedyprune.reference`.

Backends: "auto" (the compiled kernel for the tensor's device), "cpu" (the C++
kernels), "reference" (plain PyTorch). Choose per call with `backend=` or for
the process with `set_backend()`. Without the compiled extension, ops fall back
to the reference with a warning.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import torch

from . import reference

try:
    from . import _C  # noqa: F401  (registers torch.ops.greedyprune.*)

    HAS_C = True
except ImportError as _err:  # pragma: no cover - exercised only in broken installs
    HAS_C = False
    warnings.warn(
        f"greedyprune._C could not be loaded ({_err}); greedyprune ops fall back to the "
        "plain-PyTorch reference (correct but slow). Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

from . import triton as _triton

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_default_backend = "auto"

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def set_backend(name: str) -> None:
    """Set the process-wide default backend: "auto", "cpu", "cuda", "triton" or "reference"."""
    global _default_backend
    _default_backend = _check_backend_name(name)


def get_backend() -> str:
    return _default_backend


def _check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"greedyprune: argument 'backend' must be one of {BACKENDS}, got {name!r}")
    return name


def _has_cuda_kernel(op: str) -> bool:
    return HAS_C and torch._C._dispatch_has_kernel_for_dispatch_key(f"greedyprune::{op}", "CUDA")


def _triton_serves(op: str, t: torch.Tensor) -> bool:
    on_device = t.device.type == "cuda" or (_triton.INTERPRETED and t.device.type == "cpu")
    return _triton.HAS_TRITON and op in _triton.OPS and on_device


def _resolve_backend(op: str, backend: str | None, t: torch.Tensor) -> str:
    """The backend that runs `op` on tensors like `t`; a clear error if the choice cannot."""
    name = _check_backend_name(backend or _default_backend)
    device = t.device.type
    if name == "auto":
        if device == "cpu":
            return "cpu" if HAS_C else "reference"
        if _has_cuda_kernel(op):
            return "cuda"
        if _triton_serves(op, t):
            return "triton"
        raise RuntimeError(f"greedyprune: no backend serves {op} on {t.device}: this build has no CUDA kernels "
                           f"and Triton {'has no kernel for it' if _triton.HAS_TRITON else 'is not installed'}")
    if name == "reference":
        if device != "cpu":
            raise RuntimeError(f"greedyprune: backend 'reference' runs on CPU tensors, got {t.device}")
    elif name == "cpu":
        if not HAS_C:
            raise RuntimeError("greedyprune: backend 'cpu' needs the compiled extension greedyprune._C")
        if device != "cpu":
            raise RuntimeError(f"greedyprune: backend 'cpu' cannot serve tensors on {t.device}")
    elif name == "cuda":
        if device != "cuda" or not _has_cuda_kernel(op):
            raise RuntimeError(f"greedyprune: backend 'cuda' cannot serve {op} on {t.device}: it needs CUDA tensors "
                               "and a build with CUDA kernels (see README, 'Building')")
    elif not _triton_serves(op, t):
        raise RuntimeError(f"greedyprune: backend 'triton' cannot serve {op} on {t.device}: it needs triton, an op "
                           f"among {_triton.OPS}, and CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)")
    return name


# Backends whose data checks (offsets, NaN, simplex, symmetry) run here, not in a C++ kernel.
_PYTHON_CHECKED = ("reference", "triton")


def _call(op: str, name: str, *args):
    """Run op on the resolved backend: the dispatcher picks the CPU or CUDA kernel."""
    if name == "reference":
        return getattr(reference, op)(*args)
    if name == "triton":
        return getattr(torch.ops.greedyprune_triton, op)(*args)
    return getattr(torch.ops.greedyprune, op)(*args)


def _arg_error(arg: str, msg: str) -> ValueError:
    return ValueError(f"greedyprune: argument '{arg}' {msg}")


def _check_float(t, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise _arg_error(arg, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES or (t.dtype == torch.float64 and t.device.type != "cpu"):
        raise _arg_error(arg, f"must be float32, float16 or bfloat16 (or float64 on CPU), got {t.dtype} on {t.device}")


def _check_dim(t: torch.Tensor, dim: int, arg: str) -> None:
    if t.dim() != dim:
        raise _arg_error(arg, f"must have {dim} dimension(s), got shape {tuple(t.shape)}")


def _check_bool(t, n: int, arg: str, n_arg: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
        raise _arg_error(arg, f"must be a bool tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.numel() != n:
        raise _arg_error(arg, f"must have as many entries as '{n_arg}' ({n}), got {t.numel()}")


def _check_finite(t: torch.Tensor, arg: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise _arg_error(arg, "must be finite")


def offsets_from_sizes(sizes: Sequence[int], device=None) -> torch.Tensor:
    """Segment offsets [L+1] (int64, starting at 0) for consecutive segments of these sizes."""
    sizes = torch.as_tensor(list(sizes), dtype=torch.int64)
    if bool((sizes < 0).any()):
        raise _arg_error("sizes", "must be non-negative")
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(device)


def _offsets(offsets, n: int, device) -> torch.Tensor:
    """None means one segment over everything. Structure only: the kernels check
    the values (start 0, end n, non-decreasing); see _check_offset_values."""
    if offsets is None:
        return torch.tensor([0, n], dtype=torch.int64, device=device)
    offsets = torch.as_tensor(offsets, device=device)
    if offsets.dtype != torch.int64:
        raise _arg_error("offsets", f"must be int64, got {offsets.dtype}")
    _check_dim(offsets, 1, "offsets")
    if offsets.numel() == 0:
        raise _arg_error("offsets", "must hold at least one entry (L+1 for L segments)")
    return offsets


def _check_offset_values(offsets: torch.Tensor, n: int, n_arg: str) -> None:
    """The value checks of the C++ kernels, for the reference backend."""
    o = offsets.tolist()
    if o[0] != 0:
        raise _arg_error("offsets", f"must start at 0, got {o[0]}")
    if o[-1] != n:
        raise _arg_error("offsets", f"must end at numel('{n_arg}') = {n}, got {o[-1]}")
    bad = [i for i in range(1, len(o)) if o[i] < o[i - 1]]
    if bad:
        i = bad[0]
        raise _arg_error("offsets", f"must be non-decreasing, but offsets[{i}] = {o[i]} < offsets[{i - 1}] = {o[i - 1]}")


# --------------------------------------------------------------- line search


class LineSearch(NamedTuple):
    gamma: torch.Tensor  # [N] float64, the clipped optimal step of every candidate
    loss: torch.Tensor  # [N] float64, ||f - F||^2 after that step (inf: skipped)
    best: torch.Tensor  # int64 scalar, argmin of loss (lowest index on ties; -1 if none)


class GreedyPath(NamedTuple):
    a: torch.Tensor  # [N] float64, final weights on the simplex (a_i > 0: neuron kept)
    order: torch.Tensor  # [steps] int64, the neuron touched at every step
    losses: torch.Tensor  # [steps] float64, ||f - F||^2 after every step


def _uniform_weights(G, w):
    """w defaults to 1/N (the paper's F is the mean of the N contributions)."""
    if w is None and isinstance(G, torch.Tensor) and G.dim() == 2:
        return torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=G.dtype, device=G.device)
    return w


def _check_gram(G, w) -> None:
    _check_float(G, "G")
    _check_dim(G, 2, "G")
    if G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise _arg_error("G", f"must be a non-empty square matrix, got shape {tuple(G.shape)}")
    _check_float(w, "w")
    _check_dim(w, 1, "w")
    if w.shape[0] != G.shape[0]:
        raise _arg_error("w", f"must have N = {G.shape[0]} entries (G is N x N), got {w.shape[0]}")


_SYMMETRY_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def _check_gram_values(G, w) -> None:
    """The data checks the C++ kernels make, for the reference backend."""
    _check_finite(G, "G")
    _check_finite(w, "w")
    Gd = G.double()
    d = Gd.diagonal().abs()
    tol = _SYMMETRY_TOL.get(G.dtype, 1e-2)
    if bool(((Gd - Gd.T).abs() > tol * (Gd.abs() + Gd.T.abs() + (d[:, None] * d[None, :]).sqrt())).any()):
        raise _arg_error("G", "must be symmetric (a Gram matrix)")


def line_search(G: torch.Tensor, w: torch.Tensor | None = None, a: torch.Tensor | None = None, *, backend=None) -> LineSearch:
    """Closed-form line search of local imitation over all N candidate neurons at once.

    G: [N, N] symmetric Gram of neuron contributions (G_ij = mean <sigma_i, sigma_j>);
    w: [N] weights of the original output F = sum_i w_i sigma_i (default 1/N);
    a: [N] current weights of the pruned output, a point of the simplex, or all
    zeros for the empty start (default). For every i, moving a towards e_i by the
    optimal gamma_i in [lo_i, 1] (gamma_i = lo_i removes neuron i) gives loss_i.
    """
    w = _uniform_weights(G, w)
    _check_gram(G, w)
    a = torch.zeros_like(w) if a is None else a
    _check_float(a, "a")
    _check_dim(a, 1, "a")
    if a.shape[0] != G.shape[0]:
        raise _arg_error("a", f"must have N = {G.shape[0]} entries (G is N x N), got {a.shape[0]}")
    name = _resolve_backend("line_search", backend, G)
    if name in _PYTHON_CHECKED:
        _check_gram_values(G, w)
        if bool(((a < 0) | (a > 1)).any()):
            raise _arg_error("a", "entries must lie in [0, 1]")
        s = float(a.double().sum())
        if s != 0 and abs(s - 1) > (1e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4):
            raise _arg_error("a", f"must be all zeros (empty start) or sum to 1 (a point of the simplex), sums to {s}")
    return LineSearch(*_call("line_search", name, G, w, a))


def greedy_local(
    G: torch.Tensor,
    w: torch.Tensor | None = None,
    max_neurons: int | None = None,
    tol: float = 0.0,
    max_steps: int | None = None,
    *,
    backend=None,
) -> GreedyPath:
    """The whole greedy path of local imitation with line search, in one call.

    Starts from the empty network (the first step takes the best single neuron),
    then repeatedly takes the best move of `line_search` (add, re-weight or remove
    a neuron). Stops when the loss <= tol, nnz(a) == max_neurons (default N), no
    move lowers the loss, or after max_steps steps (default 4 * max_neurons).
    The returned order/losses hold the steps taken.
    """
    w = _uniform_weights(G, w)
    _check_gram(G, w)
    n = G.shape[0]
    max_neurons = n if max_neurons is None else int(max_neurons)
    if not 1 <= max_neurons <= n:
        raise _arg_error("max_neurons", f"must lie in [1, N = {n}], got {max_neurons}")
    if not (math.isfinite(tol) and tol >= 0):
        raise _arg_error("tol", f"must be finite and >= 0, got {tol}")
    max_steps = 4 * max_neurons if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise _arg_error("max_steps", f"must be >= 1, got {max_steps}")
    name = _resolve_backend("greedy_local", backend, G)
    if name in _PYTHON_CHECKED:
        _check_gram_values(G, w)
    a, order, losses = _call("greedy_local", name, G, w, max_neurons, float(tol), max_steps)
    steps = int((order >= 0).sum())
    return GreedyPath(a, order[:steps], losses[:steps])


# ------------------------------------------------------------- taylor scores


class TaylorScores(NamedTuple):
    r: torch.Tensor  # [N] sum over batch and positions of grad * act, per channel
    gr: torch.Tensor  # [N] r - a.r: directional derivative of the loss towards e_i
    topk: torch.Tensor  # [k] int64, channels with the most negative gr (lowest index on ties)


def taylor_scores(act: torch.Tensor, grad: torch.Tensor, a: torch.Tensor, k: int, *, backend=None) -> TaylorScores:
    """Taylor scores of global imitation (seed 000, section 2.2.1), reading act and grad once.

    act: un-gated hidden activations [B, N, *]; grad: dLoss/d(gated hidden), same
    shape and dtype; a: [N] current gate weights; k: how many candidates to return.
    r and gr are float32 (float64 for float64 inputs), accumulated in float64.
    """
    _check_float(act, "act")
    if act.dim() < 2:
        raise _arg_error("act", f"must be shaped [B, N, *] (at least 2 dimensions), got shape {tuple(act.shape)}")
    if not isinstance(grad, torch.Tensor) or grad.shape != act.shape:
        raise _arg_error("grad", f"must have the shape of 'act' {tuple(act.shape)}, got {tuple(getattr(grad, 'shape', ()))}")
    if grad.dtype != act.dtype:
        raise _arg_error("grad", f"must have the dtype of 'act' ({act.dtype}), got {grad.dtype}")
    n = act.shape[1]
    _check_float(a, "a")
    _check_dim(a, 1, "a")
    if a.shape[0] != n:
        raise _arg_error("a", f"must have N = act.size(1) = {n} entries, got {a.shape[0]}")
    k = int(k)
    if not 0 <= k <= n:
        raise _arg_error("k", f"must lie in [0, N = {n}], got {k}")
    return TaylorScores(*_call("taylor_scores", _resolve_backend("taylor_scores", backend, act), act, grad, a, k))


# ---------------------------------------------------------- segmented select


class PopupSwap(NamedTuple):
    keep: torch.Tensor  # bool, the new mask (same keep count per segment)
    q: torch.Tensor  # [L] int64, entries swapped in (and out of) every segment


def _check_no_nan(t: torch.Tensor, arg: str) -> None:
    if bool(torch.isnan(t).any()):
        raise _arg_error(arg, "must not contain NaN")


def segment_select(
    values: torch.Tensor,
    k,
    offsets=None,
    eligible: torch.Tensor | None = None,
    largest: bool = True,
    *,
    backend=None,
) -> torch.Tensor:
    """Per segment l, mark the k[l] largest (or smallest) eligible values; ties: lower index.

    values: flat [n] scores; offsets: int64 [L+1] segment borders (None: one segment);
    k: int or [L] counts, each at most the segment's eligible entries; eligible: bool [n]
    (None: all). Returns a bool [n] mask. Magnitude top-k init: values=|w|, largest=True;
    SAP's "drop the c smallest among kept": values=|w|, eligible=keep, largest=False.
    """
    _check_float(values, "values")
    _check_dim(values, 1, "values")
    n = values.numel()
    offsets = _offsets(offsets, n, values.device)
    L = offsets.numel() - 1
    k = torch.as_tensor(k, dtype=torch.int64, device=values.device)
    k = k.expand(L).contiguous() if k.dim() == 0 else k
    _check_dim(k, 1, "k")
    if k.numel() != L:
        raise _arg_error("k", f"must have one entry per segment ({L}), got {k.numel()}")
    if eligible is not None:
        _check_bool(eligible, n, "eligible", "values")
    name = _resolve_backend("segment_select", backend, values)
    if name in _PYTHON_CHECKED:
        _check_offset_values(offsets, n, "values")
        _check_no_nan(values, "values")
        el = torch.ones_like(values, dtype=torch.int64) if eligible is None else eligible.to(torch.int64)
        prefix = torch.cat([el.new_zeros(1), el.cumsum(0)])
        m = prefix[offsets[1:]] - prefix[offsets[:-1]]  # eligible entries per segment
        bad = torch.nonzero((k < 0) | (k > m)).flatten()
        if bad.numel():
            seg = int(bad[0])
            raise _arg_error("k", f"must lie in [0, eligible entries of the segment]: segment {seg} has {int(m[seg])}, k = {int(k[seg])}")
    return _call("segment_select", name, values, offsets, k, eligible, bool(largest))


def popup_swap(scores: torch.Tensor, keep: torch.Tensor, rate: float, offsets=None, *, backend=None) -> PopupSwap:
    """SR-popup restricted swap over all segments (layers) in one call (seed 002, eqs. 28-30).

    With n_l = keep count of segment l and T_l its n_l highest scores (ties: lower
    index), the q_l = ceil(|T_l minus keep| * rate) lowest-scored kept entries outside
    T_l leave and the q_l highest-scored pruned entries inside T_l join. rate = 1 is
    plain per-layer top-k (edge-popup); the paper uses rate = (1 - t/t_f)^4.
    """
    _check_float(scores, "scores")
    _check_dim(scores, 1, "scores")
    n = scores.numel()
    offsets = _offsets(offsets, n, scores.device)
    _check_bool(keep, n, "keep", "scores")
    _check_dim(keep, 1, "keep")
    rate = float(rate)
    if not (math.isfinite(rate) and 0 <= rate <= 1):
        raise _arg_error("rate", f"must lie in [0, 1], got {rate}")
    name = _resolve_backend("popup_swap", backend, scores)
    if name in _PYTHON_CHECKED:
        _check_offset_values(offsets, n, "scores")
        _check_no_nan(scores, "scores")
    return PopupSwap(*_call("popup_swap", name, scores, offsets, keep, rate))


# -------------------------------------------------------------- PQ norms


class PQNorms(NamedTuple):
    log_sums: torch.Tensor  # [L, P] float64, log sum |w|^p_j over masked entries (-inf if none/all zero)
    counts: torch.Tensor  # [L] int64, masked entries per segment


def _check_powers(powers) -> list[float]:
    powers = [float(p) for p in (powers if isinstance(powers, (list, tuple)) else [powers])]
    if not powers:
        raise _arg_error("powers", "must name at least one power")
    for p in powers:
        if not (math.isfinite(p) and p > 0):
            raise _arg_error("powers", f"must all be finite and > 0, got {p}")
    return powers


def pq_norms(w: torch.Tensor, powers, offsets=None, mask: torch.Tensor | None = None, *, backend=None) -> PQNorms:
    """Log power sums for many powers per segment in one pass over w (and mask).

    w: any shape, read flat; offsets: int64 [L+1] (None: one segment, the global
    scope); powers: floats > 0; mask: bool like w (None: all entries).
    """
    _check_float(w, "w")
    n = w.numel()
    offsets = _offsets(offsets, n, w.device)
    powers = _check_powers(powers)
    if mask is not None:
        _check_bool(mask, n, "mask", "w")
        mask = mask.reshape(-1)
    flat = w.reshape(-1)
    name = _resolve_backend("pq_norms", backend, w)
    if name in _PYTHON_CHECKED:
        _check_offset_values(offsets, n, "w")
        _check_finite(flat if mask is None else flat[mask], "w")
    return PQNorms(*_call("pq_norms", name, flat, offsets, powers, mask))


def pq_index_from_log_sums(log_sum_p: torch.Tensor, log_sum_q: torch.Tensor, counts: torch.Tensor, p: float, q: float) -> torch.Tensor:
    """PQI_{p,q} = 1 - d^(1/q - 1/p) ||w||_p / ||w||_q, from log power sums (no overflow).

    Empty and all-zero segments give NaN.
    """
    log_d = torch.log(counts.to(torch.float64))
    return 1 - torch.exp((1 / q - 1 / p) * log_d + log_sum_p / p - log_sum_q / q)


def pq_index(w: torch.Tensor, p=0.5, q=1.0, offsets=None, mask=None, *, backend=None) -> torch.Tensor:
    """PQ Index per segment (seed 003), all (p, q) pairs from one `pq_norms` pass.

    With scalar p and q (0 < p < q) returns [L]; with sequences returns the grid
    [L, len(p), len(q)], NaN where p >= q (e.g. the paper's p in 0.1..1.0, q in 1.0..2.0).
    """
    grid = isinstance(p, (list, tuple)) or isinstance(q, (list, tuple))
    ps = [float(x) for x in (p if isinstance(p, (list, tuple)) else [p])]
    qs = [float(x) for x in (q if isinstance(q, (list, tuple)) else [q])]
    if not grid and not 0 < ps[0] < qs[0]:
        raise _arg_error("p", f"must satisfy 0 < p < q, got p = {ps[0]}, q = {qs[0]}")
    powers = sorted(set(ps + qs))
    sums, counts = pq_norms(w, powers, offsets, mask, backend=backend)
    col = {x: i for i, x in enumerate(powers)}
    out = torch.full((counts.numel(), len(ps), len(qs)), math.nan, dtype=torch.float64)
    for i, pi in enumerate(ps):
        for j, qj in enumerate(qs):
            if pi < qj:
                out[:, i, j] = pq_index_from_log_sums(sums[:, col[pi]], sums[:, col[qj]], counts, pi, qj)
    return out if grid else out[:, 0, 0]


def sap_prune_count(pqi: torch.Tensor, counts: torch.Tensor, p: float, q: float, eta: float = 0.0,
                    gamma: float = 1.0, beta: float = 0.9) -> torch.Tensor:
    """How many weights SAP prunes per scope (seed 003, Algorithm 1), as int64.

    r = d (1+eta)^(-q/(q-p)) (1-PQI)^(qp/(q-p)) (in logs), c = floor(d * clamp(gamma (1 - r/d), 0, beta)).
    NaN PQI (empty or all-zero scope) prunes nothing.
    """
    if not 0 < p < q:
        raise _arg_error("p", f"must satisfy 0 < p < q, got p = {p}, q = {q}")
    if eta < 0 or gamma < 0 or not 0 <= beta <= 1:
        raise _arg_error("eta/gamma/beta", f"must satisfy eta >= 0, gamma >= 0, 0 <= beta <= 1; got {eta}, {gamma}, {beta}")
    d = counts.to(torch.float64)
    log_ratio = -q / (q - p) * math.log1p(eta) + q * p / (q - p) * torch.log1p(-pqi.to(torch.float64))  # log(r/d)
    frac = torch.clamp(gamma * (1 - torch.exp(log_ratio)), 0.0, beta)
    c = torch.floor(d * frac)
    c = torch.where(torch.isnan(c), torch.zeros_like(c), c)
    return torch.minimum(c, d).to(torch.int64)


# ---------------------------------------------------------- fake kernels

if HAS_C:

    @torch.library.register_fake("greedyprune::line_search")
    def _(G, w, a):
        n = G.shape[0]
        f64 = dict(dtype=torch.float64, device=G.device)
        return G.new_empty(n, **f64), G.new_empty(n, **f64), G.new_empty((), dtype=torch.int64, device=G.device)

    @torch.library.register_fake("greedyprune::greedy_local")
    def _(G, w, max_neurons, tol, max_steps):
        n = G.shape[0]
        return (G.new_empty(n, dtype=torch.float64), G.new_empty(max_steps, dtype=torch.int64),
                G.new_empty(max_steps, dtype=torch.float64))

    @torch.library.register_fake("greedyprune::taylor_scores")
    def _(act, grad, a, k):
        out = torch.float64 if act.dtype == torch.float64 else torch.float32
        n = act.shape[1]
        return act.new_empty(n, dtype=out), act.new_empty(n, dtype=out), act.new_empty(k, dtype=torch.int64)

    @torch.library.register_fake("greedyprune::segment_select")
    def _(values, offsets, k, eligible, largest):
        return values.new_empty(values.shape, dtype=torch.bool)

    @torch.library.register_fake("greedyprune::popup_swap")
    def _(scores, offsets, keep, rate):
        return keep.new_empty(keep.shape), offsets.new_empty(offsets.shape[0] - 1)

    @torch.library.register_fake("greedyprune::pq_norms")
    def _(w, offsets, powers, mask):
        L = offsets.shape[0] - 1
        return w.new_empty((L, len(powers)), dtype=torch.float64), w.new_empty(L, dtype=torch.int64)
