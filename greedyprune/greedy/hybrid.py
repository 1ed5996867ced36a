"""Algorithm 2 of seed 000 for one unit: local and global imitation with the same stopping rule,
the narrower wins (`choose`)."""
from __future__ import annotations

from dataclasses import replace

from .criterion import Criterion, UnitContext
from .global_imitation import GlobalImitation
from .local import LocalImitation
from .selection import Selection


def choose(selections: list[Selection], tol: float | None) -> Selection:
    """Algorithm 2: among the selections that meet tol (all of them without one), fewer
    channels wins, ties go to the lower discrepancy; if none meets it, the lower discrepancy."""
    met = [s for s in selections if tol is None or s.loss <= tol]
    if met:
        return min(met, key=lambda s: (s.width, s.loss))
    return min(selections, key=lambda s: s.loss)


class Hybrid(Criterion):
    """Every member criterion on the unit, then `choose`; the result lists what each considered."""

    name = "hybrid"

    def __init__(self, members: tuple[Criterion, ...] = (LocalImitation(), GlobalImitation())):
        self.members = members
        self.needs_gram = any(m.needs_gram for m in members)
        self.needs_labels = any(m.needs_labels for m in members)

    def needs_evaluator(self, config) -> bool:
        return True  # the members' selections are compared by their network discrepancy

    def progress_total(self, max_neurons: int) -> int | None:
        totals = [t for t in (m.progress_total(max_neurons) for m in self.members) if t is not None]
        return sum(totals) if totals else None

    def select(self, context: UnitContext) -> Selection:
        selections = [member.select(context) for member in self.members]
        return replace(choose(selections, context.config.tol), considered=selections)
