"""Resuming a prune_model run after its last finished unit.

After every unit the run writes one checkpoint atomically: the model as pruned so far (its state
dict, every layer at its new width), the finished units' results, the forward cache's counters and
every process's random states, with the run's settings (the config, the units to prune, the
calibration batch count and a fingerprint of the unpruned model). A resumed run reloads the model
into the unpruned one (models.io resizes each layer), traces it again and goes on with the next
unit: it repeats the uninterrupted run bit for bit on the CPU. Tensors and plain data only, read
with weights_only (harness/checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch.nn as nn

from .. import distributed
from ..checks import arg_error
from ..harness.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint, setting_differences
from ..models.io import load_state_dict_resized
from .config import PruneConfig
from .forward_cache import ForwardCache
from .selection import UnitResult

PRUNE_CHECKPOINT_FORMAT = 1


def run_settings(config: PruneConfig, units: list[str], batches: int, model: nn.Module) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint (plain data)."""
    return {"config": json.loads(json.dumps(dataclasses.asdict(config), default=str)), "units": list(units),
            "calibration_batches": batches, "model": list(distributed.fingerprint(model)),
            "world_size": distributed.world_size()}


def save_progress(path, settings: dict, model: nn.Module, results: list[UnitResult], cache: ForwardCache) -> None:
    """The checkpoint after the units of `results` (every one's exported discrepancy settled)."""
    save_checkpoint({"format": PRUNE_CHECKPOINT_FORMAT, "settings": settings, "model": model.state_dict(),
                     "results": [dataclasses.asdict(r) for r in results], "rng": rng_states(),
                     "cache": {"forwards": cache.forwards}}, path)


def load_progress(path, settings: dict, model: nn.Module, cache: ForwardCache) -> list[UnitResult]:
    """Restore the checkpoint at `path` into the unpruned `model` (resized in place), the cache's
    counters and the random states; returns the finished units' results. Other settings, or
    a file that is no prune checkpoint, are refused naming 'resume'."""
    state = load_checkpoint(path, kind="prune", file_format=PRUNE_CHECKPOINT_FORMAT)
    saved = state["settings"]
    differ = setting_differences(saved["config"], settings["config"])
    differ += [f"{key}={saved.get(key)!r} (now {settings[key]!r})"
               for key in ("units", "calibration_batches", "model", "world_size") if saved.get(key) != settings[key]]
    if differ:
        raise arg_error("resume", f"checkpoint {str(Path(path))!r} was written by a run with other settings: "
                                  f"{', '.join(differ)}; start without resuming")
    load_state_dict_resized(model, state["model"], source=str(path))
    results = [UnitResult(**r) for r in state["results"]]
    cache.forwards = int(state["cache"]["forwards"])
    cache.exported.update({r.unit: r.exported_loss for r in results})
    restore_rng_states(state["rng"])
    return results
