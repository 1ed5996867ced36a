"""Magnitude pruning as a criterion (method "magnitude"): a unit keeps the channels whose
weights, summed over its whole channel group, have the largest L1 norm (Torch-Pruning's
GroupMagnitudeImportance, p = 1), the baseline users pick most. With the "reconstruct" export it
separates the choice of channels from the refit in comparisons."""
from __future__ import annotations

import time

import torch

from .criterion import UnitContext, WidthCriterion
from .selection import Selection


class Magnitude(WidthCriterion):
    """The max_neurons channels of largest group L1 norm (ties: lower index), to a width."""

    name = "magnitude"

    def select(self, context: UnitContext) -> Selection:
        start = time.perf_counter()
        scores = context.graph.magnitude(context.unit)
        return self.selection(context, torch.sort(-scores, stable=True).indices[:context.max_neurons], start)
