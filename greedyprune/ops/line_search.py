"""line_search and greedy_local: local imitation on the Gram of neuron contributions
(kernels: csrc/cpu/line_search.cpp, csrc/cuda/line_search.cu, triton/line_search.py)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.fx.experimental.symbolic_shapes import sym_and

from ..checks import arg_error
from ..constants import simplex_tolerance, symmetry_tolerance
from .backend import HAS_C, call, resolve_backend
from .checks import (Require, check_finite, check_integer, check_number, device_spec, dim_spec, float_spec,
                     require_argument, require_traced)


class LineSearch(NamedTuple):
    gamma: torch.Tensor  # [N] float64, the clipped optimal step of every candidate
    loss: torch.Tensor  # [N] float64, ||f - F||^2 after that step (inf: skipped)
    best: torch.Tensor  # int64 scalar, argmin of loss (lowest index on ties; -1 if none)


class GreedyPath(NamedTuple):
    a: torch.Tensor  # [N] float64, final weights on the simplex (a_i > 0: neuron kept)
    order: torch.Tensor  # [steps] int64, the neuron touched at every step
    losses: torch.Tensor  # [steps] float64, ||f - F||^2 after every step
    capped: bool  # max_steps ended the path, not tol or max_neurons (see greedy_local)


# The default max_steps per allowed neuron. On random Grams with duplicated columns
# (N = 32..256, each column 2-4 times, 432 paths) the paths re-weight the copies: 60%
# stop by their own rule within 4 steps per neuron, 92% within 64, 96% within 256; the
# rest creep towards loss 0 for up to millions of steps, at the cap of 64 already within
# 1e-4 of w'Gw (median 1e-11). `capped` tells those apart.
MAX_STEPS_PER_NEURON = 64


def _uniform_weights(G, w):
    """w defaults to 1/N (the paper's F is the mean of the N contributions); a bad G is left to _gram_spec."""
    if w is None and isinstance(G, torch.Tensor) and G.dim() == 2 and G.shape[0] > 0:
        return torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=G.dtype, device=G.device)
    return w


def _gram_spec(G, w, require: Require) -> None:
    """G [N, N], N > 0, and w [N] on its device: the Gram pair of line_search and greedy_local."""
    float_spec(G, "G", require)
    dim_spec(G, 2, "G", require)
    require(sym_and(G.shape[0] == G.shape[1], G.shape[0] > 0), "G",
            lambda: f"must be a non-empty square matrix, got shape {tuple(G.shape)}")
    _per_neuron_spec(G, w, "w", require)


def _per_neuron_spec(G: torch.Tensor, v, arg: str, require: Require) -> None:
    """A float [N] on G's device, one entry per neuron: w, and line_search's a."""
    float_spec(v, arg, require)
    dim_spec(v, 1, arg, require)
    require(v.shape[0] == G.shape[0], arg, lambda: f"must have N = {G.shape[0]} entries (G is N x N), got {v.shape[0]}")
    device_spec(v, G, arg, "G", require)


def _path_limits_spec(n, max_neurons: int, tol: float, max_steps: int, require: Require) -> None:
    """greedy_local's stopping rules for a Gram of N = n neurons."""
    require(sym_and(max_neurons >= 1, max_neurons <= n), "max_neurons",
            lambda: f"must lie in [1, N = {n}], got {max_neurons}")
    require(math.isfinite(tol) and tol >= 0, "tol", lambda: f"must be finite and >= 0, got {tol}")
    require(max_steps >= 1, "max_steps", lambda: f"must be >= 1, got {max_steps}")


def _check_gram_values(G, w) -> None:
    """The data checks the C++ kernels make, for the backends without them: finite first,
    so that a NaN or inf is not reported as asymmetry."""
    check_finite(G, "G")
    check_finite(w, "w")
    Gd = G.double()
    d = Gd.diagonal().abs()
    tol = symmetry_tolerance(G.dtype)
    if bool(((Gd - Gd.T).abs() > tol * (Gd.abs() + Gd.T.abs() + (d[:, None] * d[None, :]).sqrt())).any()):
        raise arg_error("G", "must be symmetric (a Gram matrix)")


def _check_simplex_values(a) -> None:
    """a is all zeros or a point of the simplex, as the C++ kernels check it."""
    outside = ~((a >= 0) & (a <= 1))  # NaN is outside too
    if bool(outside.any()):
        i = int(torch.nonzero(outside)[0, 0])
        raise arg_error("a", f"entries must lie in [0, 1], got a[{i}] = {float(a[i])}")
    s = float(a.double().sum())
    if s != 0 and abs(s - 1) > simplex_tolerance(a.dtype):
        raise arg_error("a", f"must be all zeros (empty start) or sum to 1 (a point of the simplex), sums to {s}")


def _check_line_search_values(G, w, a) -> None:
    """line_search's data checks, on the kernel's arguments."""
    _check_gram_values(G, w)
    _check_simplex_values(a)


def _check_greedy_local_values(G, w, *limits) -> None:
    """greedy_local's data checks, on the kernel's arguments: the Gram pair's (_path_limits_spec checks the limits)."""
    _check_gram_values(G, w)


def line_search(G: torch.Tensor, w: torch.Tensor | None = None, a: torch.Tensor | None = None, *, backend=None) -> LineSearch:
    """Closed-form line search of local imitation over all N candidate neurons at once.

    G: [N, N] symmetric Gram of neuron contributions (G_ij = mean <sigma_i, sigma_j>), finite;
    w: [N] weights of the original output F = sum_i w_i sigma_i (default 1/N);
    a: [N] current weights of the pruned output, a point of the simplex, or all
    zeros for the empty start (default). For every i, moving a towards e_i by the
    optimal gamma_i in [lo_i, 1] (gamma_i = lo_i removes neuron i) gives loss_i.
    """
    w = _uniform_weights(G, w)
    _gram_spec(G, w, require_argument)
    a = torch.zeros_like(w) if a is None else a
    _per_neuron_spec(G, a, "a", require_argument)
    name = resolve_backend("line_search", backend, G)
    return LineSearch(*call("line_search", name, G, w, a, check_values=_check_line_search_values))


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
    a neuron). Stops by its own rule when the loss <= tol, nnz(a) == max_neurons
    (default N) or no move lowers the loss; or after max_steps steps (default
    MAX_STEPS_PER_NEURON * max_neurons = 64 * max_neurons). The returned order/losses
    hold the steps taken; capped is True when the path used all max_steps steps and
    neither tol nor max_neurons stopped it (it may have had improving moves left).

    On Grams with duplicated columns the path re-weights the copies for many steps: the
    default lets most such paths reach their own rule (see MAX_STEPS_PER_NEURON); a few
    creep towards loss 0 for millions of steps and are capped. The kernels fill
    max_steps-long outputs (16 bytes a step), and on CUDA with N > 8192 every allowed
    step is three kernel launches even after the path has ended: pass a smaller
    max_steps there.
    """
    w = _uniform_weights(G, w)
    _gram_spec(G, w, require_argument)
    max_neurons = G.shape[0] if max_neurons is None else check_integer(max_neurons, "max_neurons")
    tol = check_number(tol, "tol")
    max_steps = MAX_STEPS_PER_NEURON * max_neurons if max_steps is None else check_integer(max_steps, "max_steps")
    _path_limits_spec(G.shape[0], max_neurons, tol, max_steps, require_argument)
    name = resolve_backend("greedy_local", backend, G)
    a, order, losses = call("greedy_local", name, G, w, max_neurons, tol, max_steps,
                            check_values=_check_greedy_local_values)
    steps = int((order >= 0).sum())
    order, losses = order[:steps], losses[:steps]
    capped = steps == max_steps and not (float(losses[-1]) <= tol or int((a > 0).sum()) >= max_neurons)
    return GreedyPath(a, order, losses, capped)


# ---------------------------------------------------------------- fake kernels


if HAS_C:

    @torch.library.register_fake("greedyprune::line_search")
    def _(G, w, a):
        _gram_spec(G, w, require_traced)
        _per_neuron_spec(G, a, "a", require_traced)
        n = G.shape[0]
        f64 = dict(dtype=torch.float64, device=G.device)
        return G.new_empty(n, **f64), G.new_empty(n, **f64), G.new_empty((), dtype=torch.int64, device=G.device)

    @torch.library.register_fake("greedyprune::greedy_local")
    def _(G, w, max_neurons, tol, max_steps):
        _gram_spec(G, w, require_traced)
        _path_limits_spec(G.shape[0], max_neurons, tol, max_steps, require_traced)
        n = G.shape[0]
        return (G.new_empty(n, dtype=torch.float64), G.new_empty(max_steps, dtype=torch.int64),
                G.new_empty(max_steps, dtype=torch.float64))
