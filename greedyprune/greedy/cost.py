"""What a prune_model run will cost, before it runs: image forwards per unit and phase.

A unit's phases, counted in forwards of one image through the whole network (candidate
evaluations run only the network from the unit's consumer on where fx can trace it: they count
as that part's share of the network's FLOPs, `suffix_share`):
- "gram": the Gram / moments pass over the Gram images (run on to the logits where the export is
  measured from it);
- "bn": BatchNorm re-estimation over the Gram images;
- "measure": the network discrepancy of the export, or of the width, over the calibration images
  (with a tolerance: the bisection's probes, about log2 N + 1 of them);
- "exact": global imitation's exact phase, every one of the N channels a candidate at each step
  while the unit keeps at most exact_until channels, on a mini-batch of step_batch images;
- "taylor": the Taylor phase after it, per step a forward and a backward (about 3 forwards) and
  taylor_top exact re-checks.
A step adds at most one channel, so a unit kept at width w takes at least w steps; widths a
tolerance decides count as N (the most it may keep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .config import PruneConfig
from .criteria import CRITERIA
from .exporters import EXPORTERS
from .surgery import Unit

PHASES = ("gram", "bn", "measure", "exact", "taylor")
_GLOBAL_PATHS = ("global", "hybrid", "gfs")  # the criteria that run global imitation's step loop


@dataclass
class UnitCost:
    unit: str
    channels: int
    width: int  # the width counted (the most a tolerance may keep)
    forwards: dict[str, float]  # phase -> image forwards

    @property
    def total(self) -> float:
        return sum(self.forwards.values())


def suffix_shares(model: nn.Module, example: torch.Tensor, units: list[Unit]) -> dict[str, float]:
    """Per unit, the share of one forward's FLOPs that its candidate evaluations run: from its
    consumer on (layers in module order) where a traced suffix evaluates it (one reader, no norm,
    no concat), else 1."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    counts = counter.get_flop_counts()  # keyed "<model class>.<module name>"
    leaves = [name for name, m in model.named_modules() if not list(m.children())]
    flops = [sum(counts.get(f"{type(model).__name__}.{name}", {}).values()) for name in leaves]
    total = sum(flops) or 1
    shares = {}
    for unit in units:
        traced = len(unit.readers) == 1 and not unit.norms and unit.readers[0].window is None
        start = leaves.index(unit.consumer) if traced and unit.consumer in leaves else 0
        shares[unit.name] = sum(flops[start:]) / total
    return shares


def unit_cost(config: PruneConfig, unit: Unit, *, calib_images: int, gram_images: int,
              suffix_share: float = 1.0) -> UnitCost:
    """The image forwards `unit` takes under `config` (module docstring)."""
    criterion, exporter = CRITERIA[config.method], EXPORTERS[config.fold]
    n = unit.channels
    width = config.max_neurons(n, unit.kind)
    forwards = dict.fromkeys(PHASES, 0.0)
    if criterion.needs_gram or criterion.needs_moments or exporter.needs_moments:
        forwards["gram"] = gram_images
    if config.recalibrate_bn:
        forwards["bn"] = gram_images
    probes = math.ceil(math.log2(max(n, 2))) + 1 if config.tol is not None else 1
    forwards["measure"] = probes * calib_images
    if config.method in _GLOBAL_PATHS:
        step_images = calib_images if config.step_batch is None else min(config.step_batch, calib_images)
        exact_until = n if config.method == "gfs" else config.exact_until
        exact_steps = min(width, exact_until + 1)
        forwards["exact"] = exact_steps * n * step_images * suffix_share
        taylor_steps = max(0, width - exact_steps)
        # the backward runs through the whole network; the re-checks through the suffix
        forwards["taylor"] = taylor_steps * (3 + min(config.taylor_top, n) * suffix_share) * step_images
    return UnitCost(unit.name, n, width, forwards)


def describe(costs: list[UnitCost], per_image: float, device: str) -> str:
    """A few lines for the person starting the run: forwards per phase, the heaviest unit and the
    projected time at `per_image` seconds per image forward on `device`."""
    total = sum(c.total for c in costs)
    by_phase = {p: sum(c.forwards[p] for c in costs) for p in PHASES}
    phases = ", ".join(f"{p} {v:,.0f}" for p, v in by_phase.items() if v)
    heaviest = max(costs, key=lambda c: c.total)
    return (f"estimate: {len(costs)} unit(s), at most {total:,.0f} image forwards ({phases}); heaviest "
            f"{heaviest.unit} ({heaviest.channels} channels, width {heaviest.width}: {heaviest.total:,.0f}); "
            f"at {per_image * 1e3:.3g} ms per image forward on {device}: about {_duration(total * per_image)}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
