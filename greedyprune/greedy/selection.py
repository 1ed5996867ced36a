"""The result of choosing a unit's channels: one method's `Selection`, and the `UnitResult` of
Algorithm 2 that a plan is made of."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Selection:
    """a: convex weights over the unit's N channels (a_i > 0 = kept; the consumer's
    column i is scaled by N a_i); loss: the network discrepancy with those gates."""

    method: str
    a: torch.Tensor
    loss: float | None  # None: not measured (local imitation to a width; the export measures it)
    steps: int
    path: list[float] = field(default_factory=list)  # discrepancy after each step
    seconds: dict[str, float] = field(default_factory=dict)
    stop: str = ""  # the rule that ended the path: tol, width, step cap, no improvement, ...
    filled: int = 0  # channels added by forced steps to reach the asked width
    considered: list[Selection] = field(default_factory=list)  # what a criterion chose among (hybrid: each member's)

    @property
    def outcomes(self) -> list[Selection]:
        """Every selection the criterion weighed: `considered`, or this one alone."""
        return self.considered or [self]

    @property
    def kept(self) -> torch.Tensor:
        return torch.nonzero(self.a > 0).flatten()

    @property
    def width(self) -> int:
        return int((self.a > 0).sum())

    def gates(self) -> torch.Tensor:
        return self.a * self.a.numel()


@dataclass
class UnitResult:
    """One unit of Algorithm 2: the channels kept (original numbering), their gates N a_i
    ("scales"), the method chosen, its network discrepancy, timing and every method's outcome."""

    unit: str
    channels: int
    kept: list[int]
    scales: list[float]
    method: str
    loss: float
    seconds: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)  # method -> width, loss, steps, stop
    asked: int | None = None  # the width asked for (None: tol alone decides)
    stop: str = ""  # why the chosen path ended (tol, width, step cap[, filled], no improvement, unpruned)
    fold: str = "consumer"  # where the gates were folded (see surgery.FOLDS)
    order: list[int] = field(default_factory=list)  # kept channels, most important first
    # The discrepancy the unit adds as exported (fold "none": without its gates, BN re-estimated);
    # None where that is not measured (fold "none" without recalibrate_bn).
    exported_loss: float | None = None
    # The network discrepancy of the chosen path with its gates in place; None where the path did
    # not measure it (local imitation to a width: `loss` is then the exported one).
    gated_loss: float | None = None
    # fold "reconstruct": the refit's relative output error at the consumer, and plain removal's.
    refit_error: float | None = None
    removal_error: float | None = None

    @property
    def width(self) -> int:
        return len(self.kept)

    def plan_entry(self) -> dict:
        return {"unit": self.unit, "channels": self.channels, "keep": self.kept, "scales": self.scales,
                "order": self.order, "method": self.method, "discrepancy": self.loss,
                "exported_discrepancy": self.exported_loss, "refit_error": self.refit_error, "asked": self.asked,
                "stop": self.stop}
