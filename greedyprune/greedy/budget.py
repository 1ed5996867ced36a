"""Reaching a FLOP budget: the per-unit tolerance (the paper's way: each unit keeps what its own
discrepancy needs) or one uniform width ratio, found by bisection on pruned copies."""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn as nn

from ..checks import check_real
from ..harness.measure import count_flops
from .config import PruneConfig
from .layerwise import prune_model
from .surgery import UnitGraph

FLOPS_SEARCHES = ("epsilon", "width")
MIN_TOL = 1e-10  # the lowest tolerance the bisection tries


def check_target_flops(target: float) -> float:
    return check_real("target_flops", target, low=0.0, high=1.0, low_open=True)


def tol_for_flops(model: nn.Module, calib_x: torch.Tensor, target: float, config: PruneConfig, *,
                  labels: torch.Tensor | None = None, gram_batches=None, iterations: int = 8,
                  bounds: tuple[float, float] = (1e-4, 10.0)) -> float:
    """The per-unit tolerance (epsilon) whose pruned model keeps at most `target` x the FLOPs:
    bisection on a log scale within `bounds` (the lower end moved down 100-fold at a time while it
    still keeps fewer FLOPs, to MIN_TOL), each step pruning a copy with `config` (tol set, no
    width cap). This is how seed 000 reaches a size: each unit then keeps as many channels as
    its own discrepancy needs. Returns the upper end of the final bracket (the larger bound when
    even that keeps more FLOPs)."""
    check_target_flops(target)
    example = calib_x[:1]
    full = count_flops(model, example)

    def flops_at(tol: float) -> int:
        pruned = copy.deepcopy(model)
        prune_model(pruned, calib_x, replace(config, tol=tol, width_ratio=None), labels=labels,
                    gram_batches=gram_batches, progress=False)
        return count_flops(pruned, example)

    lo, hi = bounds
    if flops_at(hi) > target * full:
        return hi
    while lo > MIN_TOL and flops_at(lo) <= target * full:  # even lo prunes below the target: go lower
        hi, lo = lo, lo / 100
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if flops_at(mid) > target * full:
            lo = mid
        else:
            hi = mid
    return hi


def width_ratio_for_flops(model: nn.Module, example: torch.Tensor, target: float, *, iterations: int = 12,
                          config: PruneConfig = PruneConfig()) -> float:
    """The uniform width ratio whose pruned model has about `target` x the FLOPs (bisection
    on copies pruned to the widths `config` gives that ratio, per unit of a kind in config.groups)."""
    check_target_flops(target)
    full = count_flops(model, example)

    def flops_at(ratio: float) -> int:
        return count_flops(uniform_cut(model, example, ratio, config), example)

    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if flops_at(mid) > target * full:
            hi = mid
        else:
            lo = mid
    return max(lo, 1e-3)


def uniform_cut(model: nn.Module, example: torch.Tensor, ratio: float, config: PruneConfig = PruneConfig()
                ) -> nn.Module:
    """A copy (eval mode) with every unit of a kind in config.groups cut to its first channels, as
    many as `config` at width `ratio` keeps (ceil(ratio * N), rounded to config.round_to): the
    widths a uniform ratio gives, whichever channels a criterion would keep."""
    pruned = copy.deepcopy(model).eval()
    graph = UnitGraph(pruned, example)
    widths = replace(config, width_ratio=ratio, tol=None, network_budget=None)
    for unit in (u for u in graph.units if u.kind in config.groups):
        graph.prune(unit, torch.arange(widths.max_neurons(unit.channels, unit.kind)))
    return pruned
