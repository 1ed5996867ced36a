"""Segments: consecutive runs of a flat tensor, given by int64 offsets [L+1] (0 .. n, non-decreasing)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..checks import arg_error
from .checks import Require, as_tensor, device_spec, dim_spec, require_argument


def offsets_from_sizes(sizes: Sequence[int], device=None) -> torch.Tensor:
    """Segment offsets [L+1] (int64, starting at 0) for consecutive segments of these sizes."""
    sizes = torch.as_tensor(list(sizes), dtype=torch.int64)
    if bool((sizes < 0).any()):
        raise arg_error("sizes", "must be non-negative")
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(device)


def offsets_argument(offsets, t: torch.Tensor, t_arg: str) -> torch.Tensor:
    """An op's offsets argument for the segments of tensor `t` (argument `t_arg`), as a tensor on
    its device, checked by offsets_spec; None means one segment over all of t. Its values
    (start 0, end numel, non-decreasing) are checked by the kernels, or check_offset_values."""
    if offsets is None:
        offsets = torch.tensor([0, t.numel()], dtype=torch.int64, device=t.device)
    else:
        offsets = as_tensor(offsets, "offsets", t.device)
    offsets_spec(offsets, t, t_arg, require_argument)
    return offsets


def offsets_spec(offsets: torch.Tensor, t: torch.Tensor, t_arg: str, require: Require) -> None:
    """Offsets [L+1] of the segments of argument `t_arg`: int64, on its device."""
    dim_spec(offsets, 1, "offsets", require)
    require(offsets.dtype == torch.int64, "offsets", lambda: f"must be int64, got {offsets.dtype}")
    require(offsets.shape[0] >= 1, "offsets", "must hold at least one entry (L+1 for L segments)")
    device_spec(offsets, t, "offsets", t_arg, require)


def check_offset_values(offsets: torch.Tensor, n: int, n_arg: str) -> None:
    """The value checks of the C++ kernels, for the backends without them."""
    o = offsets.tolist()
    if o[0] != 0:
        raise arg_error("offsets", f"must start at 0, got {o[0]}")
    if o[-1] != n:
        raise arg_error("offsets", f"must end at numel('{n_arg}') = {n}, got {o[-1]}")
    bad = [i for i in range(1, len(o)) if o[i] < o[i - 1]]
    if bad:
        i = bad[0]
        raise arg_error("offsets", f"must be non-decreasing, but offsets[{i}] = {o[i]} < offsets[{i - 1}] = {o[i - 1]}")
