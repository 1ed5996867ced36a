"""The protocol of a channel criterion: a way of choosing which of a unit's channels survive.

A criterion says what it needs (a Gram of contributions or the consumer's input moments, the
network discrepancy of gated candidates, true labels, which discrepancy it scores, how many steps
its progress bar counts),
and `select(context)` returns its `Selection` for one unit. `prune_model` prepares the context
from those declarations; criteria are registered by name in `criteria.CRITERIA`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..checks import arg_error
from .selection import Selection

if TYPE_CHECKING:
    from .config import PruneConfig
    from .evaluator import SuffixEvaluator
    from .moments import ConsumerMoments
    from .surgery import Unit, UnitGraph


@dataclass
class UnitContext:
    """What a criterion (and an exporter) may use for one unit.

    moments: the second moments of each reader's input (moments.py, one per reader), None unless the criterion
        needs a Gram or the exporter the moments; gram: the unit's Gram of contributions (float64,
        or float32 on CUDA), None unless the criterion needs one; evaluator: the network discrepancy of gated candidates (it runs
        nothing until asked); measure_network: whether a selection's loss must be the network
        discrepancy (False: the export measures it, so a criterion that can choose without it
        skips it); progress: a tqdm bar the criterion advances per step, or None; width: the
        width to reach, where it is not the config's (a tolerance's width rounded up, layerwise.py).
    """

    graph: UnitGraph
    unit: Unit
    config: PruneConfig
    evaluator: SuffixEvaluator
    moments: list[ConsumerMoments] | None = None
    gram: torch.Tensor | None = None
    measure_network: bool = True
    progress: object = None
    width: int | None = None

    @property
    def max_neurons(self) -> int:
        return self.width or self.config.max_neurons(self.unit.channels, self.unit.kind)


class Criterion:
    """Base of the criteria: `name` is the method name PruneConfig.method takes."""

    name = ""
    needs_gram = False  # prune_model builds the unit's Gram of contributions first
    needs_moments = False  # ... or at least its consumer's input moments (moments.py)
    needs_labels = False  # the calibration batches must carry true labels

    def check(self, config: PruneConfig) -> None:
        """An ArgumentError where the config asks what the criterion cannot do (before any work)."""

    def needs_evaluator(self, config: PruneConfig) -> bool:
        """Whether choosing needs the network discrepancy of gated candidates."""
        return True

    def discrepancy_kind(self, config: PruneConfig) -> str:
        """The discrepancy the criterion scores and each unit's export is measured in."""
        return config.discrepancy

    def progress_total(self, max_neurons: int) -> int | None:
        """Steps its progress bar counts for a unit of at most max_neurons channels (None: no bar)."""
        return None

    def select(self, context: UnitContext) -> Selection:
        raise NotImplementedError


class WidthCriterion(Criterion):
    """A criterion that chooses to a width alone (no tolerance): equal gates on the kept channels,
    whose network discrepancy is measured only where the context asks for it."""

    def needs_evaluator(self, config: PruneConfig) -> bool:
        return False

    def check(self, config: PruneConfig) -> None:
        if config.tol is not None or config.network_budget is not None:
            raise arg_error("tol", f"has no meaning for method {self.name!r}, which chooses to a width: give "
                                   "width_ratio alone")

    def selection(self, context: UnitContext, kept: torch.Tensor, start: float, *, steps: int = 1,
                  path: list[float] | None = None) -> Selection:
        """The Selection keeping `kept` (channel indices), timed from `start` (time.perf_counter)."""
        n = context.unit.channels
        a = torch.zeros(n, dtype=torch.float64)
        a[kept] = 1.0 / len(kept)
        seconds = {"select": time.perf_counter() - start}
        loss = None
        if context.measure_network:
            t = time.perf_counter()
            loss = float(context.evaluator.evaluate((a * n).float())[0])
            seconds["evaluate"] = time.perf_counter() - t
        return Selection(self.name, a, loss, steps, list(path or []), seconds, stop="width")

