"""Choosing a unit's channels for the least-squares refit (method "refit"): greedy forward
selection on the refit's error instead of the gated one; with a tolerance, the network
discrepancy of the refit unit decides the width.

Each step adds the channel (a block of the consumer's input columns) whose columns lower the
ridge regression's residual E|Y - X_S W'^T - b'|^2 the most (refit.py: same system, damping and
target). With R the Schur complement of the selected columns in the damped E[X^T X] and C the
residual cross-moment with Y, channel j lowers the residual by tr(C_j^T R_jj^-1 C_j); adding it
downdates R and C by its block (orthogonal matching pursuit by blocks), so a step costs one
batched b x b solve per channel and one rank-b update of R, b the block size.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from .criterion import Criterion, UnitContext
from .moments import columns_per_channel
from .refit import damping_of, expectations, normal_equations, refit_consumer
from .selection import Selection


class RefitSelection(Criterion):
    """The channels whose least-squares refit reproduces the consumer's target output best: to a
    width, or with a tolerance the fewest along the path whose network discrepancy, with the
    consumer refit on them to its output before the unit, meets it (bisection over the path's
    length: each prefix is a shorter path). Its natural export is "reconstruct"."""

    name = "refit"
    needs_moments = True

    def needs_evaluator(self, config) -> bool:
        return not config.fill

    def select(self, context: UnitContext) -> Selection:
        start = time.perf_counter()
        config, unit = context.config, context.unit
        consumer = context.graph.module(unit.consumer)
        weight = consumer.weight.detach().reshape(consumer.weight.shape[0], -1).to(torch.float64)
        bias = None if consumer.bias is None else consumer.bias.detach().to(torch.float64)
        block = columns_per_channel(consumer, unit)
        path = RefitPath(expectations(context.moments, weight, bias), unit.channels, block, centred=bias is not None,
                         damping=config.refit_damping)
        timing = {"select": 0.0, "evaluate": 0.0}
        # The tolerance bounds what the unit adds to the network as it is before the unit: candidates
        # are refit to the consumer's output there (the export may refit to the unpruned network's).
        current = replace(context.moments, xty=None, y_sum=None, yy=None)

        def channels(width: int) -> list[int]:
            t = time.perf_counter()
            kept = path.extend(width)
            timing["select"] += time.perf_counter() - t
            return kept

        def network_loss(width: int) -> float:
            """The network discrepancy with the consumer refit on the path's first `width` channels."""
            kept = torch.tensor(sorted(channels(width)))
            t = time.perf_counter()
            columns = (kept[:, None] * block + torch.arange(block)).flatten()
            fit = refit_consumer(current, weight, bias, columns, damping=config.refit_damping, unit=unit.name)
            loss = math.inf if fit is None else context.evaluator.evaluate_refit(fit.weight, fit.bias, columns)
            timing["evaluate"] += time.perf_counter() - t
            return loss

        width, loss, stop = context.max_neurons, None, "width"
        if config.tol is not None:
            # the path grows only as far as needed: widths 1, 2, 4, ... until one meets tol, then bisection
            lo, probe = 1, 1
            while True:
                probe_loss = network_loss(probe)
                if probe_loss <= config.tol or probe == context.max_neurons:
                    break
                lo, probe = probe + 1, min(2 * probe, context.max_neurons)
            width, loss = probe, probe_loss
            if loss <= config.tol:
                hi = probe
                while lo < hi:
                    mid = (lo + hi) // 2
                    mid_loss = network_loss(mid)
                    if mid_loss <= config.tol:
                        hi, width, loss = mid, mid, mid_loss
                    else:
                        lo = mid + 1
                stop = "tol"
        elif context.measure_network:
            loss = network_loss(width)
        order = channels(width)
        a = torch.zeros(unit.channels, dtype=torch.float64)
        a[torch.tensor(order)] = 1.0 / width
        timing["total"] = time.perf_counter() - start
        return Selection(self.name, a, loss, width, path.residuals[:width], timing, stop=stop)


class RefitPath:
    """The greedy path on the refit error, grown on demand: `extend(width)` picks channels until
    `order` holds `width` (ties: lowest index); `residuals[i]` is the refit's residual relative to
    E|Y|^2 after pick i (the damped fit's, as the refit computes it)."""

    def __init__(self, t, channels: int, block: int, *, centred: bool, damping: float):
        xx, xy = normal_equations(t, None, centred=centred)
        self.channels, self.block = channels, block
        self.total = float(t.yy) if t.yy > 0 else 1.0
        self.residual = float(t.yy - (t.y @ t.y if centred else 0.0))  # what an intercept alone leaves
        self.schur = xx + damping_of(xx, damping) * torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
        self.cross = xy.clone()
        self.eye = torch.eye(block, dtype=xx.dtype, device=xx.device)
        self.taken = torch.zeros(channels, dtype=torch.bool, device=xx.device)
        self.order: list[int] = []
        self.residuals: list[float] = []

    def extend(self, width: int) -> list[int]:
        n, b, schur, cross = self.channels, self.block, self.schur, self.cross
        while len(self.order) < width:
            blocks = schur.view(n, b, n, b).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
            tiny = 1e-12 * float(blocks.diagonal(dim1=1, dim2=2).abs().max())  # taken blocks are ~0: keep them solvable
            cb = cross.view(n, b, -1)
            gain = (cb * torch.linalg.solve(blocks + tiny * self.eye, cb)).sum(dim=(1, 2))
            j = int(torch.argmax(gain.masked_fill(self.taken, -torch.inf)))
            cols = slice(j * b, (j + 1) * b)
            rj = schur[:, cols].clone()
            step = torch.linalg.solve(schur[cols, cols], torch.cat([rj.T, cross[cols]], dim=1))
            schur -= rj @ step[:, :schur.shape[0]]
            cross -= rj @ step[:, schur.shape[0]:]
            self.taken[j] = True
            self.residual -= float(gain[j])
            self.order.append(j)
            self.residuals.append(max(self.residual, 0.0) / self.total)
        return self.order[:width]


def forward_selection_by_refit(t, channels: int, block: int, width: int, *, centred: bool, damping: float
                               ) -> tuple[list[int], list[float]]:
    """The first `width` channels of the RefitPath and the residual after each."""
    path = RefitPath(t, channels, block, centred=centred, damping=damping)
    return path.extend(width), path.residuals
