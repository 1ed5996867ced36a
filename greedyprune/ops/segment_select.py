"""segment_select and popup_swap: per-segment selections without a sort
(kernels: csrc/cpu/segment_select.cpp, csrc/cuda/segment_select.cu)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .backend import HAS_C, PYTHON_CHECKED, call, resolve_backend
from .checks import arg_error, check_bool, check_dim, check_float, check_not_nan, check_shape, integer_tensor
from .offsets import check_offset_values, segment_offsets


class PopupSwap(NamedTuple):
    keep: torch.Tensor  # bool, the new mask (same keep count per segment)
    q: torch.Tensor  # [L] int64, entries swapped in (and out of) every segment


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

    values: flat [n] scores, no NaN where eligible (an entry that is not eligible may
    hold anything, NaN included: it is ignored); offsets: int64 [L+1] segment borders
    (None: one segment); k: whole number or [L] counts, each at most the segment's
    eligible entries; eligible: bool [n] (None: all). Returns a bool [n] mask. Magnitude
    top-k init: values=|w|, largest=True; SAP's "drop the c smallest among kept":
    values=|w|, eligible=keep, largest=False.
    """
    check_float(values, "values")
    check_dim(values, 1, "values")
    n = values.numel()
    offsets = segment_offsets(offsets, n, values.device)
    L = offsets.numel() - 1
    k = integer_tensor(k, "k", values.device)
    k = k.expand(L).contiguous() if k.dim() == 0 else k
    check_dim(k, 1, "k")
    if k.numel() != L:
        raise arg_error("k", f"must have one entry per segment ({L}), got {k.numel()}")
    if eligible is not None:
        check_bool(eligible, n, "eligible", "values")
    name = resolve_backend("segment_select", backend, values)
    if name in PYTHON_CHECKED:
        check_offset_values(offsets, n, "values")
        check_not_nan(values, "values", eligible, "eligible")
        el = torch.ones_like(values, dtype=torch.int64) if eligible is None else eligible.to(torch.int64)
        prefix = torch.cat([el.new_zeros(1), el.cumsum(0)])
        m = prefix[offsets[1:]] - prefix[offsets[:-1]]  # eligible entries per segment
        bad = torch.nonzero((k < 0) | (k > m)).flatten()
        if bad.numel():
            seg = int(bad[0])
            raise arg_error("k", f"must lie in [0, eligible entries of the segment]: segment {seg} has {int(m[seg])}, k = {int(k[seg])}")
    return call("segment_select", name, values, offsets, k, eligible, bool(largest))


def popup_swap(scores: torch.Tensor, keep: torch.Tensor, rate: float, offsets=None, *, backend=None) -> PopupSwap:
    """SR-popup restricted swap over all segments (layers) in one call (seed 002, eqs. 28-30).

    With n_l = keep count of segment l and T_l its n_l highest scores (ties: lower
    index), the q_l = ceil(|T_l minus keep| * rate) lowest-scored kept entries outside
    T_l (Phi*) leave and the q_l highest-scored pruned entries inside T_l (Psi*) join.
    Ties follow T's order: among equal scores of Phi* the higher index leaves first,
    among equal scores of Psi* the lower index joins first. rate = 1 is plain per-layer
    top-k (edge-popup); the paper uses rate = (1 - t/t_f)^4. Every score takes part in
    T, so none may be NaN.
    """
    check_float(scores, "scores")
    check_dim(scores, 1, "scores")
    n = scores.numel()
    offsets = segment_offsets(offsets, n, scores.device)
    check_bool(keep, n, "keep", "scores")
    check_dim(keep, 1, "keep")
    rate = float(rate)
    if not (math.isfinite(rate) and 0 <= rate <= 1):
        raise arg_error("rate", f"must lie in [0, 1], got {rate}")
    name = resolve_backend("popup_swap", backend, scores)
    if name in PYTHON_CHECKED:
        check_offset_values(offsets, n, "scores")
        check_not_nan(scores, "scores")
    return PopupSwap(*call("popup_swap", name, scores, offsets, keep, rate))


if HAS_C:

    @torch.library.register_fake("greedyprune::segment_select")
    def _(values, offsets, k, eligible, largest):
        check_shape(values.dim() == 1, "values", "must have 1 dimension")
        check_shape(offsets.dim() == 1, "offsets", "must have 1 dimension")
        check_shape(offsets.shape[0] >= 1, "offsets", "must hold at least one entry")
        check_shape(k.dim() == 1, "k", "must have 1 dimension")
        check_shape(k.shape[0] == offsets.shape[0] - 1, "k", "must have one entry per segment")
        if eligible is not None:
            check_shape(eligible.shape == values.shape, "eligible", "must have the shape of 'values'")
        return values.new_empty(values.shape, dtype=torch.bool)

    @torch.library.register_fake("greedyprune::popup_swap")
    def _(scores, offsets, keep, rate):
        check_shape(scores.dim() == 1, "scores", "must have 1 dimension")
        check_shape(offsets.dim() == 1, "offsets", "must have 1 dimension")
        check_shape(offsets.shape[0] >= 1, "offsets", "must hold at least one entry")
        check_shape(keep.shape == scores.shape, "keep", "must have the shape of 'scores'")
        return keep.new_empty(keep.shape), offsets.new_empty(offsets.shape[0] - 1)
