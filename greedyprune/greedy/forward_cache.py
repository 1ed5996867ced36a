"""The model's logits on the calibration batches across the units of one `prune_model` run.

Unit k imitates the model as unit k-1 exported it, so the logits that measure unit k-1's export
(its exported discrepancy: without gates, BatchNorm re-estimated) are also unit k's targets.
`ForwardCache` is the one place that holds them: the logits of the model as it is now, each
unit's `Targets`, and each unit's exported discrepancy. Where every unit's Gram pass streams the
calibration images and runs on to the logits (`fused`), that pass gives both, and an export's
discrepancy is measured when the next unit's pass reports them (`observe`), with no forward of
its own; the last unit measures its own.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from .. import distributed
from .calibration import Batch
from .outputs import NEEDS_LABELS, discrepancy, logits_of


class Targets:
    """The logits one unit imitates, per calibration batch index: the model's output before the
    unit was touched. Whoever computes a batch's logits first records them (a traced forward of
    the evaluator, a Gram pass, the cache's own forward); later readers get those."""

    def __init__(self, logits: Mapping[int, torch.Tensor] | None = None):
        self._logits = dict(logits or {})

    def get(self, index: int) -> torch.Tensor | None:
        return self._logits.get(index)

    def record(self, index: int, logits: torch.Tensor) -> torch.Tensor:
        """The targets of batch `index`: those recorded before, else `logits`."""
        return self._logits.setdefault(index, logits)

    def __contains__(self, index: int) -> bool:
        return index in self._logits

    def __iter__(self) -> Iterator[int]:
        return iter(self._logits)

    def __len__(self) -> int:
        return len(self._logits)


class ForwardCache:
    """Logits of `model` over `batches` (calibration (inputs, labels) batches) for one prune_model
    run, and each unit's exported discrepancy (`exported`, by unit name; None where it is not
    measured) with the seconds its measurement took (`seconds`). `forwards` counts the batch
    forwards the cache itself ran. kind: the discrepancy measured (outputs.DISCREPANCIES)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], kind: str, *, fused: bool):
        self.model, self.batches, self.kind, self.fused = model, batches, kind, fused
        self.forwards = 0
        self.exported: dict[str, float | None] = {}
        self.seconds: dict[str, float] = {}
        self._now: dict[int, torch.Tensor] = {}  # logits of the model as it is now, those known
        self._pending: tuple[str, Targets] | None = None  # the export the next observe measures

    def observe(self, logits: Mapping[int, torch.Tensor], targets: Targets) -> None:
        """`logits` (batch index -> logits) are the model's output as it is now, from a pass that
        ran anyway (a Gram pass run on to the end): they are the current unit's `targets` and
        measure the pending export, if any."""
        self._now = dict(logits)
        for index, out in self._now.items():
            targets.record(index, out)
        if self._pending is not None:
            name, measured_against = self._pending
            self._pending = None
            self._settle(name, measured_against, time.perf_counter())

    def complete(self, targets: Targets) -> None:
        """Record targets for every calibration batch: the model's logits now where known, else one
        forward of the batch."""
        for index in range(len(self.batches)):
            if index not in targets:
                targets.record(index, self._now[index] if index in self._now else self._forward(index))

    def measure_export(self, name: str, targets: Targets, *, last: bool) -> None:
        """Unit `name` was exported (the model changed): its discrepancy from `targets` over the
        batches they cover, by one forward of each now, or (fused, not the last unit) by the next
        `observe`."""
        self._now = {}
        if self.fused and not last:
            self._pending = (name, targets)
            return
        start = time.perf_counter()
        self._now = {index: self._forward(index) for index in targets}
        self._settle(name, targets, start)

    def settle(self) -> None:
        """Measure the pending export now, by one forward of each batch, instead of in the next
        unit's pass (which then records the same logits): a checkpoint after a unit holds its
        exported discrepancy."""
        if self._pending is None:
            return
        name, targets = self._pending
        self._pending = None
        start = time.perf_counter()
        self._now = {index: self._forward(index) for index in targets}
        self._settle(name, targets, start)

    def export_known(self, name: str, value: float | None) -> None:
        """Unit `name` was exported with its discrepancy known without a forward (a fold that keeps
        the gated function: the selection's; None: not measured)."""
        self._now = {}
        self.exported[name] = value

    def _forward(self, index: int) -> torch.Tensor:
        device = next(self.model.parameters()).device
        self.forwards += 1
        with torch.no_grad():
            return logits_of(self.model(self.batches[index][0].to(device)))

    def _settle(self, name: str, targets: Targets, start: float) -> None:
        """The exported discrepancy of unit `name`: the model's logits now against `targets`,
        image-weighted over the batches and the processes."""
        missing = [index for index in targets if index not in self._now]
        if missing:
            raise ValueError(f"greedyprune: logits of calibration batches {missing[:5]} are missing")
        total, images = 0.0, 0
        for index in targets:
            out = self._now[index]
            labels = self.batches[index][1] if self.kind in NEEDS_LABELS else None  # loads the batch for its labels
            labels = None if labels is None else labels.to(out.device)
            total += float(discrepancy(out.unsqueeze(0), targets.get(index), self.kind, labels)[0]) * out.shape[0]
            images += out.shape[0]
        total, images = distributed.sum_numbers(total, images)
        self.exported[name] = total / images
        self.seconds[name] = time.perf_counter() - start
