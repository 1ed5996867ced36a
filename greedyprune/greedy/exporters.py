"""The ways a unit's selection becomes the pruned model, by the name PruneConfig.fold takes.

An exporter removes the channels the selection drops and decides what the kept ones carry: the
gates N a_i folded into the weights by one of surgery's folds (the pruned network keeps the
gated function), nothing (`none`: plain removal), or a least-squares refit of the consumer
(`reconstruct`, refit.py). A new exporter is a class with `export` and one line in EXPORTERS.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .criterion import UnitContext
from .moments import reader_columns
from .refit import refit_consumer
from .selection import Selection

REFIT_TARGETS = ("original", "current")


@dataclass
class Exported:
    """How a unit was exported: `how` (the fold used, "none" or "reconstruct"), and for a refit its
    relative output error and that of plain removal (E|Y - Y'|^2 / E|Y|^2; the mean over the
    readers of a unit with several)."""

    how: str
    refit_error: float | None = None
    removal_error: float | None = None


class Exporter:
    """name: PruneConfig.fold's value; keeps_function: the exported unit computes what the gated
    one did, so its discrepancy is the selection's; needs_moments: export reads the consumer's
    input moments (UnitContext.moments)."""

    name = ""
    keeps_function = False
    needs_moments = False

    def needs_reference(self, config) -> bool:
        """Whether the moments must hold the unpruned network's consumer outputs."""
        return False

    def export(self, selection: Selection, context: UnitContext) -> Exported:
        """Cut the unit in context.graph as the selection says."""
        raise NotImplementedError


class Fold(Exporter):
    """Fold the gates into the weights (surgery.FOLDS: consumer, producer, split; producer and
    split fall back to consumer where the path after the unit is not positively homogeneous)."""

    keeps_function = True

    def __init__(self, name: str):
        self.name = name

    def export(self, selection: Selection, context: UnitContext) -> Exported:
        kept = selection.kept.cpu()
        scales = (selection.a.cpu() * context.unit.channels)[kept]
        return Exported(context.graph.prune(context.unit, kept, scales, fold=self.name))


class PlainRemoval(Exporter):
    """Remove the dropped channels and nothing else: the gates are not kept."""

    name = "none"

    def export(self, selection: Selection, context: UnitContext) -> Exported:
        return Exported(context.graph.prune(context.unit, selection.kept.cpu(), fold="none"))


class Reconstruct(Exporter):
    """Remove the dropped channels, then refit each reader's weights (and bias) on the kept ones
    by least squares to its output before the unit (refit_target "current") or the unpruned
    network's (refit_target "original": also corrects what earlier units changed). A reader whose
    system cannot be solved keeps its plainly removed weights (refit.py warns, naming it)."""

    name = "reconstruct"
    needs_moments = True

    def needs_reference(self, config) -> bool:
        return config.refit_target == "original"

    def export(self, selection: Selection, context: UnitContext) -> Exported:
        unit, graph = context.unit, context.graph
        kept = selection.kept.cpu()
        fits = []
        for reader, moments in zip(unit.readers, context.moments):
            consumer = graph.module(reader.name)
            if moments.xty is not None and moments.xty.shape[1] != consumer.weight.shape[0]:
                # the reader's outputs were pruned before its inputs: the unpruned ones are no target
                moments = replace(moments, xty=None, y_sum=None, yy=None)
            label = unit.name if len(unit.readers) == 1 else f"{unit.name} (reader {reader.name})"
            fits.append(refit_consumer(moments, consumer.weight.reshape(consumer.weight.shape[0], -1), consumer.bias,
                                       reader_columns(reader, consumer, kept, unit.channels),
                                       damping=context.config.refit_damping, unit=label))
        graph.prune(unit, kept, fold="none")
        solved = [(reader, fit) for reader, fit in zip(unit.readers, fits) if fit is not None]
        if not solved:
            return Exported("none")
        with torch.no_grad():
            for reader, fit in solved:
                consumer = graph.module(reader.name)
                consumer.weight.copy_(fit.weight.reshape(consumer.weight.shape))
                if fit.bias is not None:
                    consumer.bias.copy_(fit.bias)
        # several readers: the mean of their relative errors
        return Exported(self.name, refit_error=sum(f.error for _, f in solved) / len(solved),
                        removal_error=sum(f.removal_error for _, f in solved) / len(solved))


EXPORTERS: dict[str, Exporter] = {e.name: e for e in (Fold("consumer"), Fold("producer"), Fold("split"),
                                                       PlainRemoval(), Reconstruct())}
