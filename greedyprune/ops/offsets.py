"""Segments: consecutive runs of a flat tensor, given by int64 offsets [L+1] (0 .. n, non-decreasing)."""
from __future__ import annotations

from typing import Sequence

import torch

from .checks import arg_error, check_dim


def offsets_from_sizes(sizes: Sequence[int], device=None) -> torch.Tensor:
    """Segment offsets [L+1] (int64, starting at 0) for consecutive segments of these sizes."""
    sizes = torch.as_tensor(list(sizes), dtype=torch.int64)
    if bool((sizes < 0).any()):
        raise arg_error("sizes", "must be non-negative")
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(device)


def segment_offsets(offsets, n: int, device) -> torch.Tensor:
    """None means one segment over everything. Structure only: the kernels check
    the values (start 0, end n, non-decreasing); see check_offset_values."""
    if offsets is None:
        return torch.tensor([0, n], dtype=torch.int64, device=device)
    offsets = torch.as_tensor(offsets, device=device)
    if offsets.dtype != torch.int64:
        raise arg_error("offsets", f"must be int64, got {offsets.dtype}")
    check_dim(offsets, 1, "offsets")
    if offsets.numel() == 0:
        raise arg_error("offsets", "must hold at least one entry (L+1 for L segments)")
    return offsets


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
