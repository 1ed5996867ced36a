"""Algorithm 2 of seed 000: prune every unit from input to output.

For each unit: local imitation (Gram + `greedy_local`) and/or global imitation (fixed
step, exact then Taylor + top-k) with the same stopping rule; keep the one with fewer
channels (ties: lower discrepancy); fold N a_i into the consumer and remove the rest.
Each unit imitates the network as it is when the unit's turn comes (the units before it
already pruned), so `tol` bounds the discrepancy each unit adds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..surgery import Unit, UnitGraph
from .global_imitation import forward_selection, global_imitation
from .gram import contribution_gram
from .local import local_imitation
from .selection import Selection
from .suffix import SuffixEvaluator

METHODS = ("local", "global", "hybrid", "gfs")


@dataclass
class UnitResult:
    unit: str
    channels: int
    kept: list[int]
    scales: list[float]
    method: str
    loss: float
    seconds: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)  # method -> width, loss, steps

    @property
    def width(self) -> int:
        return len(self.kept)

    def plan_entry(self) -> dict:
        return {"unit": self.unit, "channels": self.channels, "keep": self.kept, "scales": self.scales,
                "method": self.method, "discrepancy": self.loss}


def choose(selections: list[Selection]) -> Selection:
    """Fewer channels wins; ties go to the lower discrepancy (Algorithm 2)."""
    return min(selections, key=lambda s: (s.width, s.loss))


def prune_model(model: nn.Module, calib_inputs: torch.Tensor, *, method: str = "hybrid", tol: float | None = None,
                width_ratio: float | None = None, labels: torch.Tensor | None = None, discrepancy: str = "kl",
                gram_batches: Iterable[torch.Tensor] | None = None, positions_per_image: int | None = None,
                exact_until: int = 25, taylor_top: int = 5, max_rows: int = 4096, units: list[str] | None = None,
                progress: bool = True) -> list[UnitResult]:
    """Prune `model` in place; returns one UnitResult per unit (together: the plan).

    calib_inputs: the batch the network discrepancy is measured on (and the Gram's data unless
    gram_batches is given); tol: the discrepancy each unit may add; width_ratio: keep at most
    ceil(width_ratio * N) channels per unit. At least one of tol / width_ratio is required.
    "gfs" (the authors' forward selection) scores with cross-entropy on `labels`.
    """
    if method not in METHODS:
        raise ValueError(f"greedyprune: argument 'method' must be one of {METHODS}, got {method!r}")
    if tol is None and width_ratio is None:
        raise ValueError("greedyprune: give argument 'tol' (discrepancy per unit) or 'width_ratio' (or both)")
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"greedyprune: argument 'tol' must be finite and >= 0, got {tol}")
    if width_ratio is not None and not 0 < width_ratio <= 1:
        raise ValueError(f"greedyprune: argument 'width_ratio' must be in (0, 1], got {width_ratio}")
    if method == "gfs" and labels is None:
        raise ValueError("greedyprune: method 'gfs' needs argument 'labels' (it scores cross-entropy on true labels)")
    gram_batches = [calib_inputs] if gram_batches is None else list(gram_batches)
    was_training = model.training
    model.eval()
    graph = UnitGraph(model, calib_inputs[:2])
    if not graph.units:
        skipped = "; ".join(f"{', '.join(g.producers) or '?'}: {g.reason}" for g in graph.skipped)
        raise ValueError(f"greedyprune: {type(model).__name__} has no prunable unit (channel groups: {skipped})")
    todo = graph.units if units is None else [graph.unit(name) for name in units]
    results = []
    bar = tqdm(todo, desc=f"prune ({method})", unit="unit", disable=not progress)
    try:
        for unit in bar:
            bar.set_postfix_str(unit.name)
            results.append(_prune_unit(graph, unit, calib_inputs, gram_batches, method=method, tol=tol,
                                       width_ratio=width_ratio, labels=labels, discrepancy=discrepancy,
                                       positions_per_image=positions_per_image, exact_until=exact_until,
                                       taylor_top=taylor_top, max_rows=max_rows, progress=progress))
            bar.set_postfix_str(f"{unit.name}: {unit.channels}->{results[-1].width}")
    finally:
        model.train(was_training)
    return results


def _prune_unit(graph: UnitGraph, unit: Unit, calib_inputs, gram_batches, *, method, tol, width_ratio, labels,
                discrepancy, positions_per_image, exact_until, taylor_top, max_rows, progress) -> UnitResult:
    start = time.perf_counter()
    n = unit.channels
    max_neurons = n if width_ratio is None else max(1, math.ceil(width_ratio * n))
    kind = "ce" if method == "gfs" else discrepancy
    evaluator = SuffixEvaluator(graph, unit, calib_inputs, kind=kind, labels=labels, max_rows=max_rows)
    seconds = {"gram": 0.0, "select": 0.0, "evaluate": 0.0, "taylor": 0.0}
    selections = []
    if method in ("local", "hybrid"):
        t = time.perf_counter()
        G = contribution_gram(graph, unit, gram_batches, positions_per_image=positions_per_image)
        seconds["gram"] = time.perf_counter() - t
        if G.is_cuda:
            G = G.float()
        selections.append(local_imitation(G, max_neurons=max_neurons, evaluator=evaluator, tol=tol))
    if method in ("global", "hybrid", "gfs"):
        steps_bar = tqdm(total=4 * max_neurons, desc=f"  {method} {unit.name}", unit="step", leave=False,
                         disable=not progress)
        with steps_bar:
            if method == "gfs":
                selections.append(forward_selection(evaluator, max_neurons=max_neurons, tol=tol, progress=steps_bar))
            else:
                selections.append(global_imitation(evaluator, max_neurons=max_neurons, tol=tol, exact_until=exact_until,
                                                   taylor_top=taylor_top, progress=steps_bar))
    for s in selections:
        for key in ("select", "evaluate", "taylor"):
            seconds[key] += s.seconds.get(key, 0.0)
    chosen = choose(selections)
    a = chosen.a
    if tol is not None and chosen.loss > tol and width_ratio is None:
        # Neither method met tol below N channels: the unit stays as it is.
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        chosen = Selection("none", a, 0.0, 0)
    kept = chosen.kept.cpu()
    scales = (a.cpu() * n)[kept]
    graph.prune(unit, kept, scales)
    seconds["total"] = time.perf_counter() - start
    return UnitResult(unit.name, n, kept.tolist(), scales.tolist(), chosen.method, chosen.loss, seconds,
                      {s.method: {"width": s.width, "discrepancy": s.loss, "steps": s.steps} for s in selections})
