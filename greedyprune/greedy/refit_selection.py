"""Choosing a unit's channels for the least-squares refit (method "refit"): greedy forward
selection on the refit's error instead of the gated one.

Each step adds the channel (a block of the consumer's input columns) whose columns lower the
ridge regression's residual E|Y - X_S W'^T - b'|^2 the most (refit.py: same system, damping and
target). With R the Schur complement of the selected columns in the damped E[X^T X] and C the
residual cross-moment with Y, channel j lowers the residual by tr(C_j^T R_jj^-1 C_j); adding it
downdates R and C by its block (orthogonal matching pursuit by blocks), so a step costs one
batched b x b solve per channel and one rank-b update of R, b the block size.
"""
from __future__ import annotations

import time

import torch

from ..checks import arg_error
from .criterion import Criterion, UnitContext
from .moments import columns_per_channel
from .refit import damping_of, expectations, normal_equations
from .selection import Selection


class RefitSelection(Criterion):
    """The channels whose least-squares refit reproduces the consumer's target output best, to a
    width (width_ratio; no tolerance). Its natural export is "reconstruct"."""

    name = "refit"
    needs_moments = True

    def needs_evaluator(self, config) -> bool:
        return False

    def check(self, config) -> None:
        if config.tol is not None or config.network_budget is not None:
            raise arg_error("tol", f"has no meaning for method {self.name!r}, which chooses to a width: give "
                                   "width_ratio alone")

    def select(self, context: UnitContext) -> Selection:
        start = time.perf_counter()
        unit, n = context.unit, context.unit.channels
        consumer = context.graph.module(unit.consumer)
        weight = consumer.weight.detach().reshape(consumer.weight.shape[0], -1).to(torch.float64)
        bias = None if consumer.bias is None else consumer.bias.detach().to(torch.float64)
        t = expectations(context.moments, weight, bias)
        order, residuals = forward_selection_by_refit(t, n, columns_per_channel(consumer, unit), context.max_neurons,
                                                      centred=bias is not None, damping=context.config.refit_damping)
        a = torch.zeros(n, dtype=torch.float64)
        a[torch.tensor(order)] = 1.0 / len(order)
        seconds = {"select": time.perf_counter() - start}
        loss = None
        if context.measure_network:
            t0 = time.perf_counter()
            loss = float(context.evaluator.evaluate((a * n).float())[0])
            seconds["evaluate"] = time.perf_counter() - t0
        return Selection(self.name, a, loss, len(order), residuals, seconds, stop="width")


def forward_selection_by_refit(t, channels: int, block: int, width: int, *, centred: bool, damping: float
                               ) -> tuple[list[int], list[float]]:
    """The `width` channels picked one by one (ties: lowest index), and after each pick the
    refit's residual relative to E|Y|^2 (the damped fit's, as the refit computes it)."""
    xx, xy = normal_equations(t, None, centred=centred)
    total = float(t.yy) if t.yy > 0 else 1.0
    residual = float(t.yy - (t.y @ t.y if centred else 0.0))  # what an intercept alone leaves
    schur = xx + damping_of(xx, damping) * torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
    cross = xy.clone()
    eye = torch.eye(block, dtype=xx.dtype, device=xx.device)
    taken = torch.zeros(channels, dtype=torch.bool, device=xx.device)
    order, residuals = [], []
    for _ in range(width):
        blocks = schur.view(channels, block, channels, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        tiny = 1e-12 * float(blocks.diagonal(dim1=1, dim2=2).abs().max())  # taken blocks are ~0: keep them solvable
        cb = cross.view(channels, block, -1)
        gain = (cb * torch.linalg.solve(blocks + tiny * eye, cb)).sum(dim=(1, 2))
        j = int(torch.argmax(gain.masked_fill(taken, -torch.inf)))
        cols = slice(j * block, (j + 1) * block)
        rj = schur[:, cols].clone()
        step = torch.linalg.solve(schur[cols, cols], torch.cat([rj.T, cross[cols]], dim=1))
        schur -= rj @ step[:, :schur.shape[0]]
        cross -= rj @ step[:, schur.shape[0]:]
        taken[j] = True
        residual -= float(gain[j])
        order.append(j)
        residuals.append(max(residual, 0.0) / total)
    return order, residuals
