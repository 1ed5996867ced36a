"""taylor_scores: the first-order scores of global imitation
(kernels: csrc/cpu/taylor_scores.cpp, csrc/cuda/taylor_scores.cu, triton/taylor_scores.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.fx.experimental.symbolic_shapes import sym_and

from .backend import HAS_C, call, resolve_backend
from .checks import Require, check_integer, device_spec, dim_spec, float_spec, require_argument, require_traced


class TaylorScores(NamedTuple):
    r: torch.Tensor  # [N] sum over batch and positions of grad * act, per channel
    gr: torch.Tensor  # [N] r - a.r: directional derivative of the loss towards e_i
    topk: torch.Tensor  # [k] int64, channels with the most negative gr (lowest index on ties)


def _taylor_scores_spec(act, grad, a, k: int, require: Require) -> None:
    """act [B, N, *], grad like it, a [N] on their device, k in [0, N]."""
    float_spec(act, "act", require)
    require(act.dim() >= 2, "act", lambda: f"must be shaped [B, N, *] (at least 2 dimensions), got shape {tuple(act.shape)}")
    require(isinstance(grad, torch.Tensor) and grad.shape == act.shape, "grad",
            lambda: f"must have the shape of 'act' {tuple(act.shape)}, got {tuple(getattr(grad, 'shape', ()))}")
    require(grad.dtype == act.dtype, "grad", lambda: f"must have the dtype of 'act' ({act.dtype}), got {grad.dtype}")
    device_spec(grad, act, "grad", "act", require)
    n = act.shape[1]
    float_spec(a, "a", require)
    dim_spec(a, 1, "a", require)
    require(a.shape[0] == n, "a", lambda: f"must have N = act.size(1) = {n} entries, got {a.shape[0]}")
    device_spec(a, act, "a", "act", require)
    require(sym_and(k >= 0, k <= n), "k", lambda: f"must lie in [0, N = {n}], got {k}")


def taylor_scores(act: torch.Tensor, grad: torch.Tensor, a: torch.Tensor, k: int, *, backend=None) -> TaylorScores:
    """Taylor scores of global imitation (seed 000, section 2.2.1), reading act and grad once.

    act: un-gated hidden activations [B, N, *]; grad: dLoss/d(gated hidden), same
    shape and dtype; a: [N] current gate weights; k: how many candidates to return.
    r and gr are float32 (float64 for float64 inputs), accumulated in float64.
    """
    k = check_integer(k, "k")
    _taylor_scores_spec(act, grad, a, k, require_argument)
    return TaylorScores(*call("taylor_scores", resolve_backend("taylor_scores", backend, act), act, grad, a, k))


if HAS_C:

    @torch.library.register_fake("greedyprune::taylor_scores")
    def _(act, grad, a, k):
        _taylor_scores_spec(act, grad, a, k, require_traced)
        n = act.shape[1]
        out = torch.float64 if act.dtype == torch.float64 else torch.float32
        return act.new_empty(n, dtype=out), act.new_empty(n, dtype=out), act.new_empty(k, dtype=torch.int64)
