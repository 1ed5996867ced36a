"""Algorithm 2 of seed 000: prune every unit from input to output.

For each unit the configured criterion (criteria.CRITERIA: local, global, hybrid, gfs) chooses
the channels with the gates N a_i in place; the configured exporter (exporters.EXPORTERS)
removes the rest and puts the gates into the weights or drops them; BatchNorm statistics are
re-estimated. Each unit imitates the network as it is when the unit's turn comes (the units
before it already exported), so `tol` bounds the discrepancy each unit adds. The logits that
pass from one unit to the next live in one `ForwardCache`.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..checks import ArgumentError, arg_error, check_finite_weights
from ..harness.training import recalibrate_batchnorm
from .calibration import CalibrationBatches, InputsOf, calibration_batches, is_sequence
from .keyword_batches import keyword_inputs, pack_keyword_batches
from .config import PruneConfig
from .criteria import CRITERIA
from .criterion import Criterion, UnitContext
from .evaluator import SuffixEvaluator
from .exporters import EXPORTERS, Exported, Exporter
from .forward_cache import ForwardCache, Targets
from .gram import gram_of
from .moments import stream_moments
from .precision import forwards_in, lay_out, uses_channels_last
from .resume import load_progress, run_settings, save_progress
from .selection import Selection, UnitResult
from .surgery import Unit, UnitGraph


def prune_model(model: nn.Module, calib, config: PruneConfig | None = None, *, labels: torch.Tensor | None = None,
                gram_batches: Iterable[torch.Tensor] | None = None, units: list[str] | None = None,
                graph: UnitGraph | None = None, progress: bool = True,
                ignored_layers: Iterable[str | nn.Module] | None = None, width_ratios: Mapping[str, float] | None = None,
                checkpoint: str | os.PathLike | None = None, resume: bool = False, **options) -> list[UnitResult]:
    """Prune `model` in place; returns one UnitResult per unit (together: the plan).

    config: a PruneConfig, or its fields as keyword options (method, tol, width_ratio, fold, ...).
    calib: the calibration images the network discrepancy is measured on: a tensor (with
    `labels` for "gfs", which scores cross-entropy on true labels) or an iterable of batches
    (tensors, (inputs, labels) pairs, or dicts of keyword inputs such as a tokenizer's
    `input_ids` and `attention_mask`, with any "labels": keyword_batches.py; e.g. a DataLoader);
    with config.step_batch they are cut
    into mini-batches of that size, one per global-imitation step. gram_batches: the inputs the
    Grams and BN re-estimation stream (default: the calibration inputs).
    Memory: a sequence of batches (a list, or any object with len() and [i] that loads batch i,
    e.g. from disk) is read batch by batch whenever needed and never held whole, so memory does
    not grow with the calibration set; other iterables (a DataLoader) are read once and kept.
    units: only these (names as UnitResult.unit gives them); default every unit of a kind in
    config.groups. ignored_layers: modules (or their names) whose output channels stay whole:
    every unit they produce (for heads: any of the attention's projections) is left out.
    width_ratios: a width ratio per unit, by the unit's name or the name of a module that produces
    it (a producer, a co-producer, an attention module), instead of config.width_ratio. graph:
    the model's UnitGraph when the caller has built one (it is traced once).
    checkpoint: a file written atomically after every unit (resume.py); with resume, a run that
    stopped continues after its last finished unit, as the uninterrupted run would (`model` must be
    the unpruned model again; other settings are refused, named).
    """
    config = _config(config, options)
    config.check_stopping_rule()
    check_finite_weights("model", model)
    calib, keys = pack_keyword_batches(calib)
    gram_batches, keys = pack_keyword_batches(gram_batches, "gram_batches", keys)
    if keys is not None and gram_batches is not None:
        gram_batches = InputsOf(calibration_batches(gram_batches))  # packed dicts may carry labels
    with keyword_inputs(model, keys):
        return _prune(model, calib, config, labels, gram_batches, units, graph, progress,
                      _UnitChoices(ignored_layers, width_ratios), _Progress(checkpoint, resume))


@dataclass
class _Progress:
    """Where a run checkpoints after every unit (None: nowhere), and whether it resumes from there."""

    checkpoint: str | os.PathLike | None
    resume: bool

    def __post_init__(self):
        if self.resume and self.checkpoint is None:
            raise arg_error("resume", "needs 'checkpoint' (the file to resume from)")

    def resumes(self) -> bool:
        return self.resume and Path(self.checkpoint).is_file()


@dataclass
class _UnitChoices:
    """Which units a caller leaves out (ignored_layers) and the width ratios it gives some."""

    ignored_layers: Iterable[str | nn.Module] | None
    width_ratios: Mapping[str, float] | None

    def kept(self, graph: UnitGraph, todo: list[Unit]) -> list[Unit]:
        if self.ignored_layers is None:
            return todo
        names = {graph.name_of(layer, "ignored_layers") for layer in self.ignored_layers}
        return [u for u in todo if not names & set(_producer_names(u))]

    def configs(self, graph: UnitGraph, todo: list[Unit], config: PruneConfig) -> dict[str, PruneConfig]:
        """unit name -> its config, for the units given a width ratio."""
        if not self.width_ratios:
            return {}
        if not isinstance(self.width_ratios, Mapping):
            raise arg_error("width_ratios", f"must map unit or module names to ratios, got {type(self.width_ratios).__name__}")
        configs = {}
        for key, ratio in self.width_ratios.items():
            found = [u for u in todo if key == u.name or key in _producer_names(u)]
            if not found:
                raise arg_error("width_ratios", f"names {key!r}, which is no unit pruned here nor a module producing "
                                                f"one; units: {[u.name for u in todo][:6]}{' ...' if len(todo) > 6 else ''}")
            for unit in found:
                configs[unit.name] = replace(config, width_ratio=ratio)  # PruneConfig checks the ratio
        return configs


def _producer_names(unit: Unit) -> list[str]:
    names = [unit.producer, *unit.co_producers]
    return names + [unit.heads.attention] if unit.heads is not None else names


def _prune(model: nn.Module, calib, config: PruneConfig, labels: torch.Tensor | None,
           gram_batches: Iterable[torch.Tensor] | None, units: list[str] | None, graph: UnitGraph | None,
           progress: bool, choices_asked: _UnitChoices, saving: _Progress) -> list[UnitResult]:
    criterion, exporter = CRITERIA[config.method], EXPORTERS[config.fold]
    batches = calibration_batches(calib, labels)
    if criterion.needs_labels and any(y is None for _, y in batches):
        raise arg_error("labels", f"are needed by method {config.method!r} (it scores cross-entropy on true labels)")
    if config.step_batch is not None:
        batches = CalibrationBatches(batches, step=config.step_batch)
    grams_on_calibration = gram_batches is None
    if grams_on_calibration:
        gram_batches = InputsOf(batches)
    elif not is_sequence(gram_batches):  # streamed once per unit, so it must be re-readable
        gram_batches = list(gram_batches)
    was_training = model.training
    model.eval()
    if graph is None:  # batches may stay on the host (each use moves them); the example goes where the model is
        graph = UnitGraph(model, batches[0][0][:2].to(next(model.parameters()).device))
    elif graph.model is not model:
        raise arg_error("graph", "must be the UnitGraph of 'model'")
    if not graph.units:
        skipped = "; ".join(f"{', '.join(g.producers) or '?'}: {g.reason}" for g in graph.skipped)
        raise ValueError(f"greedyprune: {type(model).__name__} has no prunable unit (channel groups: {skipped})")
    todo = [u for u in graph.units if u.kind in config.groups] if units is None else [graph.unit(n) for n in units]
    kept = choices_asked.kept(graph, todo)
    if todo and not kept:
        raise arg_error("ignored_layers", f"leaves none of the {len(todo)} unit(s) to prune")
    todo = kept
    if not todo:
        raise arg_error("groups", f"{list(config.groups)} select no unit of {type(model).__name__} (its units are of "
                                  f"kinds {sorted({u.kind for u in graph.units})})")
    config = config.per_unit(len(todo))
    unit_configs = choices_asked.configs(graph, todo, config)
    criterion.check(config)
    narrow = [u for u in todo if u.kind != "heads" and u.channels < config.round_to]
    if narrow:
        more = f" and {len(narrow) - 1} more" if len(narrow) > 1 else ""
        raise arg_error("round_to", f"({config.round_to}) is larger than unit {narrow[0].name} ({narrow[0].channels} "
                                    f"channels){more}")
    # Where every unit's Gram pass streams the calibration images and the export measures the
    # discrepancy, the pass runs on to the logits: they are the unit's targets and measure the
    # previous unit's export (the model before a unit is the model after the previous export).
    reads_moments = criterion.needs_gram or criterion.needs_moments or exporter.needs_moments
    nhwc = uses_channels_last(config.channels_last, model)
    if nhwc:
        lay_out(model, True)  # before the reference copy, which then runs channels-last too
    cache = ForwardCache(model, batches, criterion.discrepancy_kind(config),
                         fused=config.measured_on_export and grams_on_calibration and reads_moments)
    # the unpruned network, whose consumer outputs a refit matches
    reference = copy.deepcopy(model).eval() if exporter.needs_reference(config) else None
    settings = None if saving.checkpoint is None else run_settings(config, [u.name for u in todo], len(batches), model)
    done: list[UnitResult] = []
    if saving.resumes():
        done = load_progress(saving.checkpoint, settings, model, cache)
        graph = UnitGraph(model, batches[0][0][:2].to(next(model.parameters()).device))  # at the resumed widths
        todo = [graph.unit(u.name) for u in todo[len(done):]]
        if nhwc:
            lay_out(model, True)
    steps = _UnitSteps(graph, batches, gram_batches, config, unit_configs, criterion, exporter, cache, reference,
                       progress, nhwc)
    choices = []
    bar = tqdm(todo, desc=f"prune ({config.method})", unit="unit", disable=not progress, initial=len(done),
               total=len(done) + len(todo))
    try:
        for number, unit in enumerate(bar):
            bar.set_postfix_str(unit.name)
            choices.append(steps.run(unit, last=number + 1 == len(todo)))
            bar.set_postfix_str(f"{unit.name}: {unit.channels}->{choices[-1].selection.width}")
            if settings is not None:
                cache.settle()
                save_progress(saving.checkpoint, settings, model, done + [c.result(cache) for c in choices], cache)
    finally:
        model.train(was_training)
        if nhwc:
            lay_out(model, False)
    return done + [choice.result(cache) for choice in choices]


def _config(config: PruneConfig | None, options: dict) -> PruneConfig:
    if config is None:
        return PruneConfig(**options)
    if options:
        raise ArgumentError(f"greedyprune: give 'config' or keyword options, not both (got {sorted(options)})")
    return config


@dataclass
class _UnitChoice:
    """One unit's choice and export, before the cache knows its exported discrepancy."""

    unit: Unit
    config: PruneConfig
    selection: Selection
    exported: Exported
    seconds: dict[str, float]

    def result(self, cache: ForwardCache) -> UnitResult:
        chosen, n, config = self.selection, self.unit.channels, self.config
        exported = cache.exported.get(self.unit.name)
        seconds = dict(self.seconds)
        if self.unit.name in cache.seconds:
            seconds["discrepancy"] = cache.seconds[self.unit.name]
        kept = chosen.kept.cpu()
        scales = (chosen.a.cpu() * n)[kept]
        # Most important first: the larger gate (the greedy paths give bigger weights to earlier picks).
        order = kept[torch.sort(-scales, stable=True).indices].tolist()
        return UnitResult(self.unit.name, n, kept.tolist(), scales.tolist(), chosen.method,
                          exported if chosen.loss is None else chosen.loss, seconds,
                          {s.method: {"width": s.width, "discrepancy": s.loss, "steps": s.steps, "stop": s.stop,
                                      "filled": s.filled} for s in chosen.outcomes},
                          asked=None if config.width_ratio is None else config.max_neurons(n, self.unit.kind),
                          stop=chosen.stop,
                          fold=self.exported.how, order=order, exported_loss=exported, gated_loss=chosen.loss,
                          refit_error=self.exported.refit_error, removal_error=self.exported.removal_error)


class _UnitSteps:
    """The steps of one unit, with what every unit of a prune_model run shares."""

    def __init__(self, graph: UnitGraph, batches, gram_batches, config: PruneConfig,
                 unit_configs: dict[str, PruneConfig], criterion: Criterion, exporter: Exporter, cache: ForwardCache,
                 reference: nn.Module | None, progress: bool, channels_last: bool):
        self.graph, self.batches, self.gram_batches, self.config = graph, batches, gram_batches, config
        self.unit_configs = unit_configs  # units given their own width ratio
        self.criterion, self.exporter, self.cache, self.progress = criterion, exporter, cache, progress
        self.reference, self.channels_last = reference, channels_last

    def run(self, unit: Unit, *, last: bool) -> _UnitChoice:
        """Choose the unit's channels, export it, re-estimate BatchNorm, and have its exported
        discrepancy measured (now, or by the next unit's Gram pass)."""
        start = time.perf_counter()
        config, cache = self.unit_configs.get(unit.name, self.config), self.cache
        targets = Targets()
        context = UnitContext(self.graph, unit, config,
                              SuffixEvaluator(self.graph, unit, self.batches, kind=cache.kind, target=targets,
                                              per_step=config.step_batch is not None,
                                              memory_budget=config.memory_budget),
                              measure_network=not config.measured_on_export)
        seconds = {"gram": 0.0, "select": 0.0, "evaluate": 0.0, "taylor": 0.0, "export": 0.0}
        if self.criterion.needs_gram or self.criterion.needs_moments or self.exporter.needs_moments:
            self._moments(context, targets, seconds)
        selection = self._select(context)
        for outcome in selection.outcomes:
            for key in ("select", "evaluate", "taylor"):
                seconds[key] += outcome.seconds.get(key, 0.0)
        if not context.measure_network:  # the export is measured against the model before the unit
            t = time.perf_counter()
            cache.complete(targets)
            seconds["evaluate"] += time.perf_counter() - t
        selection = _whole_if_unmet(selection, config, unit.channels)
        selection = self._rounded(context, selection)
        exported = self.exporter.export(selection, context)
        if self.channels_last:  # the surgery's new tensors are contiguous
            lay_out(self.graph.model, True)
        seconds["total"] = time.perf_counter() - start
        if config.recalibrate_bn:  # "export": BN re-estimation and the exported discrepancy
            t = time.perf_counter()
            recalibrate_batchnorm(self.graph.model, self.gram_batches)
            cache.measure_export(unit.name, targets, last=last)
            seconds["export"] = time.perf_counter() - t
            seconds["total"] += seconds["export"]
        else:
            cache.export_known(unit.name, selection.loss if self.exporter.keeps_function else None)
        return _UnitChoice(unit, config, selection, exported, seconds)

    def _moments(self, context: UnitContext, targets: Targets, seconds: dict[str, float]) -> None:
        """The consumer's input moments and, where the criterion needs it, the Gram (one pass over
        the Gram batches; with the cache fused it runs on to the logits, which the cache observes)."""
        t = time.perf_counter()
        context.moments, logits = stream_moments(self.graph, context.unit, self.gram_batches,
                                                 positions_per_image=self.config.positions_per_image,
                                                 keep_logits=self.cache.fused, reference=self.reference)
        if self.criterion.needs_gram:
            G = gram_of(context.moments, self.graph, context.unit)
            context.gram = G.float() if G.is_cuda else G
        seconds["gram"] = time.perf_counter() - t
        if self.cache.fused:
            self.cache.observe(logits, targets)

    def _rounded(self, context: UnitContext, selection: Selection) -> Selection:
        """The selection, or where a tolerance chose a width that is no multiple of round_to, the
        criterion's choice at that width rounded up (which discrepancy it then has is reported)."""
        unit, config = context.unit, context.config
        width = config.rounded(selection.width, unit.channels, unit.kind)
        if width == selection.width:
            return selection
        fixed = replace(context, config=replace(config, tol=None, network_budget=None, width_ratio=1.0), width=width)
        chosen = self._select(fixed)
        chosen.stop = f"{selection.stop}; {selection.width} rounded up to {width}"
        return chosen

    def _select(self, context: UnitContext) -> Selection:
        """The criterion's choice; its forwards (candidates, Taylor passes, tolerance probes) in
        config.precision (the Gram pass, the export and BN re-estimation stay float32: precision.py)."""
        total = self.criterion.progress_total(context.max_neurons)
        with forwards_in(self.config.precision, next(self.graph.model.parameters()).device):
            if total is None:
                return self.criterion.select(context)
            with tqdm(total=total, desc=f"  {self.config.method} {context.unit.name}", unit="step", leave=False,
                      disable=not self.progress) as context.progress:
                return self.criterion.select(context)


def _whole_if_unmet(selection: Selection, config: PruneConfig, channels: int) -> Selection:
    """With a tolerance and no width, a unit that no criterion pruned within tol stays whole."""
    if config.tol is None or config.width_ratio is not None or not selection.loss > config.tol:
        return selection
    a = torch.full((channels,), 1.0 / channels, dtype=torch.float64)
    return Selection("none", a, 0.0, 0, stop="unpruned: no method met tol", considered=selection.outcomes)
