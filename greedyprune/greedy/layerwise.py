"""Algorithm 2 of seed 000: prune every unit from input to output.

For each unit: local imitation (Gram + `greedy_local`) and/or global imitation (fixed
step, exact then Taylor + top-k) with the same stopping rule; among the methods that meet
it keep the one with fewer channels (ties: lower discrepancy); fold the gates N a_i into
the weights (`fold`) and remove the rest. Each unit imitates the network as it is when the
unit's turn comes (the units before it already pruned), so `tol` bounds the discrepancy
each unit adds.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..checks import arg_error, check_finite_weights
from ..harness.training import recalibrate_batchnorm
from .config import PruneConfig
from .evaluator import CalibrationBatches, InputsOf, SuffixEvaluator, calibration_batches, is_sequence
from .global_imitation import forward_selection, global_imitation
from .gram import contribution_gram
from .local import local_imitation
from .selection import Selection, UnitResult
from .surgery import Unit, UnitGraph


def choose(selections: list[Selection], tol: float | None) -> Selection:
    """Algorithm 2: among the selections that meet tol (all of them without one), fewer
    channels wins, ties go to the lower discrepancy; if none meets it, the lower discrepancy."""
    met = [s for s in selections if tol is None or s.loss <= tol]
    if met:
        return min(met, key=lambda s: (s.width, s.loss))
    return min(selections, key=lambda s: s.loss)


def prune_model(model: nn.Module, calib, config: PruneConfig | None = None, *, labels: torch.Tensor | None = None,
                gram_batches: Iterable[torch.Tensor] | None = None, units: list[str] | None = None,
                progress: bool = True, **options) -> list[UnitResult]:
    """Prune `model` in place; returns one UnitResult per unit (together: the plan).

    config: a PruneConfig, or its fields as keyword options (method, tol, width_ratio, fold, ...).
    calib: the calibration images the network discrepancy is measured on: a tensor (with
    `labels` for "gfs", which scores cross-entropy on true labels) or an iterable of batches
    (tensors or (inputs, labels) pairs, e.g. a DataLoader); with config.step_batch they are cut
    into mini-batches of that size, one per global-imitation step. gram_batches: the inputs the
    Grams and BN re-estimation stream (default: the calibration inputs).
    Memory: a sequence of batches (a list, or any object with len() and [i] that loads batch i,
    e.g. from disk) is read batch by batch whenever needed and never held whole, so memory does
    not grow with the calibration set; other iterables (a DataLoader) are read once and kept.
    units: only these (names as "producer->consumer"); default all.
    The channels are chosen with the gates N a_i in place (exact imitation); `config.fold` says
    where they end: with fold "none" and recalibrate_bn they are dropped right after each unit,
    so the next unit imitates the network as it will be exported.
    """
    if config is None:
        config = PruneConfig(**options)
    elif options:
        raise ValueError(f"greedyprune: give 'config' or keyword options, not both (got {sorted(options)})")
    check_finite_weights("model", model)
    batches = calibration_batches(calib, labels)
    if config.method == "gfs" and any(y is None for _, y in batches):
        raise arg_error("labels", "are needed by method 'gfs' (it scores cross-entropy on true labels)")
    if config.step_batch is not None:
        batches = CalibrationBatches(batches, step=config.step_batch)
    grams_on_calibration = gram_batches is None
    if grams_on_calibration:
        gram_batches = InputsOf(batches)
    elif not is_sequence(gram_batches):  # streamed once per unit, so it must be re-readable
        gram_batches = list(gram_batches)
    was_training = model.training
    model.eval()
    # batches may stay on the host (each use moves them); the tracing example goes where the model is
    graph = UnitGraph(model, batches[0][0][:2].to(next(model.parameters()).device))
    if not graph.units:
        skipped = "; ".join(f"{', '.join(g.producers) or '?'}: {g.reason}" for g in graph.skipped)
        raise ValueError(f"greedyprune: {type(model).__name__} has no prunable unit (channel groups: {skipped})")
    todo = graph.units if units is None else [graph.unit(name) for name in units]
    if config.network_budget is not None:  # split evenly: each unit may add its share
        config = replace(config, tol=config.network_budget / len(todo), network_budget=None)
    results = []
    logits_now = None  # per calibration batch, after the last unit's export: the next unit's targets
    # Where every unit's Gram pass reads the calibration images and runs on to the logits (local
    # imitation measured on export), that pass also measures the previous unit's exported
    # discrepancy: the model's logits before a unit are those after the previous one's export.
    defer_discrepancy = config.measured_on_export and grams_on_calibration
    pending = None  # (result, evaluator) of the unit whose exported discrepancy the next Gram pass measures
    bar = tqdm(todo, desc=f"prune ({config.method})", unit="unit", disable=not progress)
    try:
        for number, unit in enumerate(bar):
            bar.set_postfix_str(unit.name)
            result, evaluator, logits_before = _prune_unit(graph, unit, batches, gram_batches, config, progress,
                                                           logits_now, grams_on_calibration)
            if pending is not None:
                _record_exported(*pending, logits_before)
                pending = None
            results.append(result)
            bar.set_postfix_str(f"{unit.name}: {unit.channels}->{result.width}")
            if config.recalibrate_bn:
                start = time.perf_counter()
                if config.fold == "none":
                    _drop_gates(graph, unit, result)
                recalibrate_batchnorm(model, gram_batches)
                if defer_discrepancy and number + 1 < len(todo):
                    pending = (result, evaluator)
                else:  # what the unit adds as exported (without gates, BN re-estimated): one forward
                    _record_exported(result, evaluator, None)
                    logits_now = evaluator.logits_now
                result.seconds["export"] = time.perf_counter() - start
                result.seconds["total"] += result.seconds["export"]
        if config.fold == "none" and not config.recalibrate_bn:
            for unit, result in zip(todo, results):
                _drop_gates(graph, unit, result)
    finally:
        model.train(was_training)
    return results


def _record_exported(result: UnitResult, evaluator: SuffixEvaluator, logits: dict | None) -> None:
    """The unit's discrepancy as exported, from the model's logits now (None: one forward, timed
    as seconds["discrepancy"], within "export")."""
    start = time.perf_counter()
    result.exported_loss = evaluator.discrepancy_now() if logits is None else evaluator.discrepancy_of(logits)
    if result.loss is None:  # not measured before the export (local imitation to a width)
        result.loss = result.exported_loss
    result.seconds["discrepancy"] = time.perf_counter() - start


def _drop_gates(graph: UnitGraph, unit: Unit, result: UnitResult) -> None:
    """Undo the consumer fold of a pruned unit's gates (the kept channels are renumbered 0..k-1)."""
    graph.rescale(unit, torch.arange(result.width), 1.0 / torch.tensor(result.scales, dtype=torch.float64))


def _prune_unit(graph: UnitGraph, unit: Unit, batches, gram_batches, config: PruneConfig, progress: bool,
                logits_now=None, grams_on_calibration: bool = False
                ) -> tuple[UnitResult, SuffixEvaluator, dict[int, torch.Tensor] | None]:
    """Choose and cut one unit's channels. Returns its result, its evaluator and, where the Gram's
    pass ran on to the logits, the model's logits before the unit (batch index -> logits)."""
    start = time.perf_counter()
    n = unit.channels
    method, tol = config.method, config.tol
    max_neurons, fill = config.max_neurons(n), config.fill
    kind = "ce" if method == "gfs" else config.discrepancy
    evaluator = SuffixEvaluator(graph, unit, batches, kind=kind, per_step=config.step_batch is not None,
                                memory_budget=config.memory_budget)
    # "export": BN re-estimation and the exported discrepancy after the choice (prune_model)
    seconds = {"gram": 0.0, "select": 0.0, "evaluate": 0.0, "taylor": 0.0, "export": 0.0}
    selections = []
    logits_before = None
    if method in ("local", "hybrid"):
        # Local imitation to a width needs no network discrepancy to choose; when the export
        # measures it anyway (plain removal, BN re-estimated), the gated one would cost a forward.
        measured_on_export = config.measured_on_export
        # The export compares with the model's logits before this unit: when the Gram's pass reads
        # the calibration images anyway it runs on to the end for them, else the previous unit's
        # export left them (or, on the first unit, one forward records them).
        if measured_on_export and grams_on_calibration:
            logits_before = {}
        t = time.perf_counter()
        G = contribution_gram(graph, unit, gram_batches, positions_per_image=config.positions_per_image,
                              logits=logits_before)
        seconds["gram"] = time.perf_counter() - t
        if G.is_cuda:
            G = G.float()
        selections.append(local_imitation(G, max_neurons=max_neurons, evaluator=None if measured_on_export else evaluator,
                                          tol=tol, fill=fill))
        if measured_on_export:
            selections[-1].loss = None  # prune_model records the exported discrepancy
            t = time.perf_counter()
            evaluator.record_targets(logits_before if logits_before is not None else logits_now)
            seconds["evaluate"] += time.perf_counter() - t
    if method in ("global", "hybrid", "gfs"):
        steps_bar = tqdm(total=4 * max_neurons, desc=f"  {method} {unit.name}", unit="step", leave=False,
                         disable=not progress)
        with steps_bar:
            if method == "gfs":
                selections.append(forward_selection(evaluator, max_neurons=max_neurons, tol=tol, fill=fill,
                                                    progress=steps_bar))
            else:
                selections.append(global_imitation(evaluator, max_neurons=max_neurons, tol=tol,
                                                   exact_until=config.exact_until, taylor_top=config.taylor_top,
                                                   fill=fill, progress=steps_bar))
    for s in selections:
        for key in ("select", "evaluate", "taylor"):
            seconds[key] += s.seconds.get(key, 0.0)
    chosen = choose(selections, tol)
    a = chosen.a
    if tol is not None and chosen.loss > tol and config.width_ratio is None:
        # Neither method met tol below N channels: the unit stays as it is.
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        chosen = Selection("none", a, 0.0, 0, stop="unpruned: no method met tol")
    kept = chosen.kept.cpu()
    scales = (a.cpu() * n)[kept]
    fold = config.fold
    used = graph.prune(unit, kept, scales, fold="consumer" if fold == "none" else fold)
    seconds["total"] = time.perf_counter() - start
    # Most important first: the larger gate (the greedy paths give bigger weights to earlier picks).
    order = kept[torch.sort(-scales, stable=True).indices].tolist()
    result = UnitResult(unit.name, n, kept.tolist(), scales.tolist(), chosen.method, chosen.loss, seconds,
                        {s.method: {"width": s.width, "discrepancy": s.loss, "steps": s.steps, "stop": s.stop,
                                    "filled": s.filled} for s in selections},
                        asked=None if config.width_ratio is None else max_neurons, stop=chosen.stop,
                        fold="none" if fold == "none" else used, order=order,
                        exported_loss=None if fold == "none" else chosen.loss)
    return result, evaluator, logits_before