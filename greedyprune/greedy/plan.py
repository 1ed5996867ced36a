"""Pruning plans: which channels of each unit survive and their folded scales, as JSON,
re-applicable to a fresh copy of the model."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from ..checks import arg_error
from ..files import write_json
from ..harness.training import recalibrate_batchnorm
from .config import PruneConfig
from .layerwise import prune_model
from .selection import UnitResult
from .surgery import UnitGraph, check_fold

PLAN_FORMAT = 1


def make_plan(results: list[UnitResult], **meta) -> dict:
    return {"format": PLAN_FORMAT, "meta": meta, "units": [r.plan_entry() for r in results]}


def select_channels(model: nn.Module, calib_inputs: torch.Tensor, config: PruneConfig | None = None,
                    **options) -> dict:
    """The channel choice of `prune_model` as a plan, without touching `model` (a copy is pruned).

    Takes prune_model's arguments (a PruneConfig or its fields, labels, gram_batches, ...). Apply
    the plan with `apply_plan(model, plan, example_inputs, fold=...)`, or read it: per unit the
    kept channels ("keep"), their gates ("scales"), the kept channels most important first
    ("order"), the width asked and why the path stopped.
    """
    results = prune_model(copy.deepcopy(model), calib_inputs, config, **options)
    method = config.method if config is not None else options.get("method", PruneConfig.method)
    return make_plan(results, method=method)


def save_plan(plan: dict, path) -> None:
    write_json(path, plan)


def load_plan(path) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise arg_error("path", f"is not a readable plan file: {err}") from err
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("units"), list):
        raise arg_error("path", f"({path}) is not a greedyprune plan (format {PLAN_FORMAT})")
    return plan


def apply_plan(model: nn.Module, plan: dict, example_inputs: torch.Tensor, *, fold: str = "none",
               bn_batches: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """Prune `model` (in place) as the plan says, folding the gates as `fold` says
    (surgery.FOLDS; "none" removes the other channels plainly), then re-estimate the BatchNorm
    statistics on `bn_batches` if given (as prune_model's recalibrate_bn leaves them); returns it."""
    if fold == "reconstruct":
        raise arg_error("fold", "'reconstruct' refits on calibration data, which a plan does not hold: prune with "
                                "prune_model(..., fold='reconstruct'), or apply the plan with another fold")
    check_fold(fold)
    graph = UnitGraph(model, example_inputs)
    for entry in plan["units"]:
        unit = graph.unit(entry["unit"])
        if unit.channels != entry["channels"]:
            raise ValueError(f"greedyprune: plan unit {entry['unit']} has {entry['channels']} channels, "
                             f"the model's has {unit.channels}")
        graph.prune(unit, torch.tensor(entry["keep"], dtype=torch.long), torch.tensor(entry["scales"]), fold=fold)
    if bn_batches is not None:
        recalibrate_batchnorm(model, bn_batches)
    return model
