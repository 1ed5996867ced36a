"""Pruning plans: which channels of each unit survive and their folded scales, as JSON,
re-applicable to a fresh copy of the model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ..files import replace_atomically
from ..surgery import UnitGraph
from .layerwise import UnitResult

PLAN_FORMAT = 1


def make_plan(results: list[UnitResult], **meta) -> dict:
    return {"format": PLAN_FORMAT, "meta": meta, "units": [r.plan_entry() for r in results]}


def save_plan(plan: dict, path) -> None:
    text = json.dumps(plan, indent=1)
    replace_atomically(path, lambda f: f.write(text.encode()))


def load_plan(path) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"greedyprune: argument 'path' is not a readable plan file: {err}") from err
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("units"), list):
        raise ValueError(f"greedyprune: argument 'path' ({path}) is not a greedyprune plan (format {PLAN_FORMAT})")
    return plan


def apply_plan(model: nn.Module, plan: dict, example_inputs: torch.Tensor) -> nn.Module:
    """Prune `model` (in place) as the plan says; returns it."""
    graph = UnitGraph(model, example_inputs)
    for entry in plan["units"]:
        unit = graph.unit(entry["unit"])
        if unit.channels != entry["channels"]:
            raise ValueError(f"greedyprune: plan unit {entry['unit']} has {entry['channels']} channels, "
                             f"the model's has {unit.channels}")
        graph.prune(unit, torch.tensor(entry["keep"], dtype=torch.long), torch.tensor(entry["scales"]))
    return model
