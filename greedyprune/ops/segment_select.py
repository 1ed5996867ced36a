"""segment_select and popup_swap: per-segment selections without a sort
(kernels: csrc/cpu/segment_select.cpp, csrc/cuda/segment_select.cu)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..checks import arg_error
from .backend import HAS_C, call, resolve_backend
from .checks import (Require, bool_spec, check_not_nan, check_number, device_spec, dim_spec, float_spec, integer_tensor,
                     require_argument, require_traced)
from .offsets import check_offset_values, offsets_argument, offsets_spec


class PopupSwap(NamedTuple):
    keep: torch.Tensor  # bool, the new mask (same keep count per segment)
    q: torch.Tensor  # [L] int64, entries swapped in (and out of) every segment


def _scores_spec(scores, arg: str, require: Require) -> None:
    """The flat float scores of segment_select (values) and popup_swap (scores)."""
    float_spec(scores, arg, require)
    dim_spec(scores, 1, arg, require)


def _select_spec(values: torch.Tensor, offsets: torch.Tensor, k, eligible, require: Require) -> None:
    """segment_select's k (int64, one per segment) and eligible (bool, one per value, on their device)."""
    dim_spec(k, 1, "k", require)
    require(k.dtype == torch.int64, "k", lambda: f"must be int64, got {k.dtype}")
    segments = offsets.shape[0] - 1
    require(k.shape[0] == segments, "k", lambda: f"must have one entry per segment ({segments}), got {k.numel()}")
    if eligible is not None:
        bool_spec(eligible, values.numel(), "eligible", "values", require)
        device_spec(eligible, values, "eligible", "values", require)


def _popup_spec(scores: torch.Tensor, keep, rate: float, require: Require) -> None:
    """popup_swap's keep (bool [n], on the device of scores) and rate in [0, 1]."""
    bool_spec(keep, scores.numel(), "keep", "scores", require)
    dim_spec(keep, 1, "keep", require)
    device_spec(keep, scores, "keep", "scores", require)
    require(math.isfinite(rate) and 0 <= rate <= 1, "rate", lambda: f"must lie in [0, 1], got {rate}")


def _check_select_values(values, offsets, k, eligible, largest) -> None:
    """segment_select's data checks, on the kernel's arguments."""
    check_offset_values(offsets, values.numel(), "values")
    check_not_nan(values, "values", eligible, "eligible")
    el = torch.ones_like(values, dtype=torch.int64) if eligible is None else eligible.to(torch.int64)
    prefix = torch.cat([el.new_zeros(1), el.cumsum(0)])
    m = prefix[offsets[1:]] - prefix[offsets[:-1]]  # eligible entries per segment
    bad = torch.nonzero((k < 0) | (k > m)).flatten()
    if bad.numel():
        seg = int(bad[0])
        raise arg_error("k", f"must lie in [0, eligible entries of the segment]: segment {seg} has {int(m[seg])}, k = {int(k[seg])}")


def _check_popup_values(scores, offsets, keep, rate) -> None:
    """popup_swap's data checks, on the kernel's arguments."""
    check_offset_values(offsets, scores.numel(), "scores")
    check_not_nan(scores, "scores")


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
    _scores_spec(values, "values", require_argument)
    offsets = offsets_argument(offsets, values, "values")
    k = integer_tensor(k, "k", values.device)
    k = k.expand(offsets.shape[0] - 1).contiguous() if k.dim() == 0 else k
    _select_spec(values, offsets, k, eligible, require_argument)
    name = resolve_backend("segment_select", backend, values)
    return call("segment_select", name, values, offsets, k, eligible, bool(largest), check_values=_check_select_values)


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
    _scores_spec(scores, "scores", require_argument)
    offsets = offsets_argument(offsets, scores, "scores")
    rate = check_number(rate, "rate")
    _popup_spec(scores, keep, rate, require_argument)
    name = resolve_backend("popup_swap", backend, scores)
    return PopupSwap(*call("popup_swap", name, scores, offsets, keep, rate, check_values=_check_popup_values))


if HAS_C:

    @torch.library.register_fake("greedyprune::segment_select")
    def _(values, offsets, k, eligible, largest):
        _scores_spec(values, "values", require_traced)
        offsets_spec(offsets, values, "values", require_traced)
        _select_spec(values, offsets, k, eligible, require_traced)
        return values.new_empty(values.shape, dtype=torch.bool)

    @torch.library.register_fake("greedyprune::popup_swap")
    def _(scores, offsets, keep, rate):
        _scores_spec(scores, "scores", require_traced)
        offsets_spec(offsets, scores, "scores", require_traced)
        _popup_spec(scores, keep, rate, require_traced)
        return keep.new_empty(keep.shape), offsets.new_empty(offsets.shape[0] - 1)
