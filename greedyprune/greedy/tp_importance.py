"""Greedy imitation's channel choice as a Torch-Pruning `Importance`, so users of that
library can pick greedy imitation's channels inside their own pruner and schedule."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch_pruning as tp

from ..models.heads import head_layouts
from .plan import select_channels


class GreedyImportance(tp.importance.Importance):
    """Scores every channel of the groups a greedy-imitation plan covers.

    Channels the plan keeps score >= 1, most important (largest gate) highest; the others
    score in [0, 1) by `fallback` (default: L2 magnitude), so a pruner that keeps fewer
    channels than the plan drops the plan's least important ones first, and one that keeps
    more adds the largest of the rest. Groups outside the plan (e.g. residual-tied channels)
    are scored by `fallback`, or skipped (None) with fallback=None; so are the q/k/v groups of
    attention modules, whose plan units are whole heads where Torch-Pruning's groups are channels.

    The plan must come from the model being pruned, before the pruner changes it
    (`GreedyImportance.from_model` makes one with `select_channels`). A pruner of several
    iterative steps changes the model between them: built by `from_model`, the importance then
    re-plans on the model as it is (the same calibration inputs and options) the first time a
    group's width differs from its plan's; built from a plan, it refuses.
    """

    def __init__(self, model: nn.Module, plan: dict, *, fallback: tp.importance.Importance | None = "magnitude",
                 replan: Callable[[nn.Module], dict] | None = None):
        self.model, self._replan = model, replan
        self.fallback = tp.importance.GroupMagnitudeImportance(p=2) if fallback == "magnitude" else fallback
        self._use(plan)

    def _use(self, plan: dict) -> None:
        self._names = {m: n for n, m in self.model.named_modules()}
        heads = {p.name for layout in head_layouts(self.model) for p in layout.projections}
        self._entries = {producer: entry for entry in plan["units"]
                         if (producer := entry["unit"].split("->")[0]) not in heads}

    @classmethod
    def from_model(cls, model: nn.Module, calib_inputs: torch.Tensor, *, fallback="magnitude",
                   **prune_options) -> "GreedyImportance":
        """Run greedy imitation on a copy of `model` (prune_model's options, e.g. method and
        width_ratio: the widths the pruner will ask for) and score by its plan."""
        def plan_of(current: nn.Module) -> dict:
            return select_channels(current, calib_inputs, **prune_options)

        return cls(model, plan_of(model), fallback=fallback, replan=plan_of)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        root = group[0].dep.target.module
        entry = self._entries.get(self._names.get(root))
        rest = self.fallback(group) if self.fallback is not None else None
        if entry is None:
            return rest
        idxs = group[0].idxs
        if len(idxs) != entry["channels"] and self._replan is not None:  # an earlier step pruned the model
            with torch.enable_grad():  # the pruner scores without grad; tracing the model needs autograd
                self._use(self._replan(self.model))
            entry = self._entries.get(self._names.get(root))
            if entry is None:
                return rest
        n = entry["channels"]
        if len(idxs) != n:
            raise ValueError(f"greedyprune: the plan's unit {entry['unit']} has {n} channels, the model's group has "
                             f"{len(idxs)}; make the plan from the model before pruning it, or build the importance "
                             "with GreedyImportance.from_model to re-plan at each iterative step")
        order = entry.get("order") or entry["keep"]
        scores = torch.zeros(n, dtype=torch.float64)
        if rest is not None:
            rest = rest.detach().double().cpu()
            scores = rest / (rest.max() * (1 + 1e-6)) if float(rest.max()) > 0 else scores
        scores[torch.tensor(order, dtype=torch.long)] = 2.0 - torch.arange(len(order), dtype=torch.float64) / len(order)
        return scores.float()
