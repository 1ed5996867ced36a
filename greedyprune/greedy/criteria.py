"""The registry of channel criteria, by the method name PruneConfig.method takes. A new criterion
is a module with a `criterion.Criterion` subclass and one line here."""
from __future__ import annotations

from .criterion import Criterion
from .global_imitation import ForwardSelection, GlobalImitation
from .hybrid import Hybrid
from .local import LocalImitation
from .magnitude import Magnitude
from .refit_selection import RefitSelection

CRITERIA: dict[str, Criterion] = {c.name: c for c in (LocalImitation(), GlobalImitation(), Hybrid(),
                                                      ForwardSelection(), RefitSelection(), Magnitude())}
METHODS = tuple(CRITERIA)
