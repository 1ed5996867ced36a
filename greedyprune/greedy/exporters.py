"""The ways a unit's selection becomes the pruned model, by the name PruneConfig.fold takes.

An exporter removes the channels the selection drops and says where the kept channels' gates
N a_i go: into the weights by one of surgery's folds (the pruned network keeps the gated
function), or nowhere (`none`: plain removal). A new exporter is a class with `export` and one
line in EXPORTERS.
"""
from __future__ import annotations

from .criterion import UnitContext
from .selection import Selection


class Exporter:
    """name: PruneConfig.fold's value; keeps_function: the exported unit computes what the gated
    one did, so its discrepancy is the selection's."""

    name = ""
    keeps_function = False

    def export(self, selection: Selection, context: UnitContext) -> str:
        """Cut the unit in context.graph as the selection says; returns the fold used."""
        raise NotImplementedError


class Fold(Exporter):
    """Fold the gates into the weights (surgery.FOLDS: consumer, producer, split; producer and
    split fall back to consumer where the path after the unit is not positively homogeneous)."""

    keeps_function = True

    def __init__(self, name: str):
        self.name = name

    def export(self, selection: Selection, context: UnitContext) -> str:
        kept = selection.kept.cpu()
        scales = (selection.a.cpu() * context.unit.channels)[kept]
        return context.graph.prune(context.unit, kept, scales, fold=self.name)


class PlainRemoval(Exporter):
    """Remove the dropped channels and nothing else: the gates are not kept (fine-tunes best,
    benchmarks/RESULTS.md "Against Torch-Pruning")."""

    name = "none"

    def export(self, selection: Selection, context: UnitContext) -> str:
        return context.graph.prune(context.unit, selection.kept.cpu(), fold="none")


EXPORTERS: dict[str, Exporter] = {e.name: e for e in (Fold("consumer"), Fold("producer"), Fold("split"),
                                                       PlainRemoval())}
