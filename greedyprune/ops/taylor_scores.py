"""taylor_scores: the first-order scores of global imitation
(kernels: csrc/cpu/taylor_scores.cpp, csrc/cuda/taylor_scores.cu, triton/taylor_scores.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .backend import HAS_C, call, resolve_backend
from .checks import arg_error, check_dim, check_float, check_integer, check_shape


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
    check_float(act, "act")
    if act.dim() < 2:
        raise arg_error("act", f"must be shaped [B, N, *] (at least 2 dimensions), got shape {tuple(act.shape)}")
    if not isinstance(grad, torch.Tensor) or grad.shape != act.shape:
        raise arg_error("grad", f"must have the shape of 'act' {tuple(act.shape)}, got {tuple(getattr(grad, 'shape', ()))}")
    if grad.dtype != act.dtype:
        raise arg_error("grad", f"must have the dtype of 'act' ({act.dtype}), got {grad.dtype}")
    n = act.shape[1]
    check_float(a, "a")
    check_dim(a, 1, "a")
    if a.shape[0] != n:
        raise arg_error("a", f"must have N = act.size(1) = {n} entries, got {a.shape[0]}")
    k = check_integer(k, "k")
    if not 0 <= k <= n:
        raise arg_error("k", f"must lie in [0, N = {n}], got {k}")
    return TaylorScores(*call("taylor_scores", resolve_backend("taylor_scores", backend, act), act, grad, a, k))


if HAS_C:

    @torch.library.register_fake("greedyprune::taylor_scores")
    def _(act, grad, a, k):
        check_shape(act.dim() >= 2, "act", "must be shaped [B, N, *]")
        check_shape(grad.shape == act.shape, "grad", "must have the shape of 'act'")
        n = act.shape[1]
        check_shape(a.dim() == 1, "a", "must have 1 dimension")
        check_shape(a.shape[0] == n, "a", "must have N = act.size(1) entries")
        check_shape(k >= 0, "k", "must be >= 0")
        check_shape(k <= n, "k", "must be <= N")
        out = torch.float64 if act.dtype == torch.float64 else torch.float32
        return act.new_empty(n, dtype=out), act.new_empty(n, dtype=out), act.new_empty(k, dtype=torch.int64)
