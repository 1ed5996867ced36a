"""Choosing a unit's channels for the least-squares refit (method "refit"): greedy forward
selection on the refit's error instead of the gated one; with a tolerance, the network
discrepancy of the refit unit decides the width.

Each step adds the channel (a block of the consumer's input columns) whose columns lower the
ridge regression's residual E|Y - X_S W'^T - b'|^2 the most (refit.py: same system, damping and
target). With R the Schur complement of the selected columns in the damped E[X^T X] and C the
residual cross-moment with Y, channel j lowers the residual by tr(C_j^T R_jj^-1 C_j); adding it
downdates R and C by its block (orthogonal matching pursuit by blocks), so a step costs one
batched b x b solve per channel and one rank-b update of R, b the block size. A unit with several
readers (a residual stream) keeps one system per reader and adds their gains, each weighted by
the reader's output positions per image relative to the first reader's (as gram.py weighs them).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from .criterion import Criterion, UnitContext
from .moments import columns_per_channel, reader_columns, reader_weights
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
        readers = [_ReaderSystem(context.graph.module(reader.name), reader, moments, unit.channels)
                   for reader, moments in zip(unit.readers, context.moments)]
        path = RefitPath([(r.expectations, r.block, r.bias is not None, r.window) for r in readers], unit.channels,
                         damping=config.refit_damping, weights=reader_weights(context.moments))
        timing = {"select": 0.0, "evaluate": 0.0}

        def channels(width: int) -> list[int]:
            t = time.perf_counter()
            kept = path.extend(width)
            timing["select"] += time.perf_counter() - t
            return kept

        def network_loss(width: int) -> float:
            """The network discrepancy with every reader refit on the path's first `width` channels."""
            kept = torch.tensor(sorted(channels(width)))
            t = time.perf_counter()
            fits = [r.refit(kept, config.refit_damping, unit.name) for r in readers]
            loss = math.inf if any(f is None for f in fits) else context.evaluator.evaluate_refit(fits)
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


class _ReaderSystem:
    """One reader's weights and the expectations its refit reads."""

    def __init__(self, consumer, reader, moments, channels: int):
        self.weight = consumer.weight.detach().reshape(consumer.weight.shape[0], -1).to(torch.float64)
        self.bias = None if consumer.bias is None else consumer.bias.detach().to(torch.float64)
        self.block = columns_per_channel(consumer, reader)
        self.name, self.reader, self.consumer, self.window = reader.name, reader, consumer, reader.window
        self.channels = channels
        self.expectations = expectations(moments, self.weight, self.bias)
        # The tolerance bounds what the unit adds to the network as it is before the unit: candidates
        # are refit to the reader's output there (the export may refit to the unpruned network's).
        self.current = replace(moments, xty=None, y_sum=None, yy=None)

    def refit(self, kept: torch.Tensor, damping: float, unit: str):
        """(reader name, weight, bias, columns) of the refit on `kept`, or None where it cannot be solved."""
        columns = reader_columns(self.reader, self.consumer, kept, self.channels)
        fit = refit_consumer(self.current, self.weight, self.bias, columns, damping=damping, unit=unit)
        return None if fit is None else (self.name, fit.weight, fit.bias, columns)


class RefitPath:
    """The greedy path on the refit error, grown on demand: `extend(width)` picks channels until
    `order` holds `width` (ties: lowest index); `residuals[i]` is the refit's residual relative to
    E|Y|^2 after pick i (the damped fit's, as the refit computes it; over several systems, the
    weighted sums').

    systems: (expectations, block, centred) per reader, with the reader's Window fourth where it
    reads through a concat; weights: each system's weight (default 1).
    """

    def __init__(self, systems, channels: int, *, damping: float, weights: list[float] | None = None):
        self.channels = channels
        self.systems = [_System(t, channels, block, centred=centred, damping=damping, window=window[0] if window else None)
                        for t, block, centred, *window in systems]
        self.weights = [1.0] * len(self.systems) if weights is None else list(weights)
        self.total = sum(w * s.total for w, s in zip(self.weights, self.systems)) or 1.0
        self.residual = sum(w * s.residual for w, s in zip(self.weights, self.systems))
        self.taken = torch.zeros(channels, dtype=torch.bool)
        self.order: list[int] = []
        self.residuals: list[float] = []

    def extend(self, width: int) -> list[int]:
        while len(self.order) < width:
            gain = sum(w * s.gains().cpu() for w, s in zip(self.weights, self.systems))
            j = int(torch.argmax(gain.masked_fill(self.taken, -torch.inf)))
            for s in self.systems:
                s.take(j)
            self.taken[j] = True
            self.residual -= float(gain[j])
            self.order.append(j)
            self.residuals.append(max(self.residual, 0.0) / self.total)
        return self.order[:width]


class _System:
    """One reader's damped normal equations as channels are taken: the Schur complement of the
    taken columns and the residual cross-moment. Through a concat (`window`), the columns of other
    layers' channels are always kept: they are taken first, leaving a system over the unit's."""

    def __init__(self, t, channels: int, block: int, *, centred: bool, damping: float, window=None):
        xx, xy = normal_equations(t, None, centred=centred)
        self.channels, self.block = channels, block
        self.total = float(t.yy) if t.yy > 0 else 1.0
        self.residual = float(t.yy - (t.y @ t.y if centred else 0.0))  # what an intercept alone leaves
        self.schur = xx + damping_of(xx, damping) * torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
        self.cross = xy.clone()
        self.eye = torch.eye(block, dtype=xx.dtype, device=xx.device)
        if window is not None:
            self._take_other_layers(window.offset * block, (window.offset + channels) * block)

    def _take_other_layers(self, start: int, end: int) -> None:
        """Take every column outside start..end-1 (the unit's) and keep the system over those."""
        columns = torch.arange(self.schur.shape[0], device=self.schur.device)
        ours = (columns >= start) & (columns < end)
        fixed, free = columns[~ours], columns[ours]
        coupling = self.schur[free][:, fixed]
        step = torch.linalg.solve(self.schur[fixed][:, fixed], torch.cat([coupling.T, self.cross[fixed]], dim=1))
        self.residual -= float((self.cross[fixed] * step[:, free.numel():]).sum())
        self.cross = self.cross[free] - coupling @ step[:, free.numel():]
        self.schur = self.schur[free][:, free] - coupling @ step[:, :free.numel()]

    def gains(self) -> torch.Tensor:
        """How much taking each channel lowers the residual [channels] (taken ones: ~0)."""
        n, b = self.channels, self.block
        blocks = self.schur.view(n, b, n, b).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        tiny = 1e-12 * float(blocks.diagonal(dim1=1, dim2=2).abs().max())  # taken blocks are ~0: keep them solvable
        cb = self.cross.view(n, b, -1)
        return (cb * torch.linalg.solve(blocks + tiny * self.eye, cb)).sum(dim=(1, 2))

    def take(self, j: int) -> None:
        schur, cols = self.schur, slice(j * self.block, (j + 1) * self.block)
        rj = schur[:, cols].clone()
        step = torch.linalg.solve(schur[cols, cols], torch.cat([rj.T, self.cross[cols]], dim=1))
        schur -= rj @ step[:, :schur.shape[0]]
        self.cross -= rj @ step[:, schur.shape[0]:]


def forward_selection_by_refit(t, channels: int, block: int, width: int, *, centred: bool, damping: float
                               ) -> tuple[list[int], list[float]]:
    """The first `width` channels of the RefitPath of one system and the residual after each."""
    path = RefitPath([(t, block, centred)], channels, damping=damping)
    return path.extend(width), path.residuals
