"""The result of choosing a unit's channels."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Selection:
    """a: convex weights over the unit's N channels (a_i > 0 = kept; the consumer's
    column i is scaled by N a_i); loss: the network discrepancy with those gates."""

    method: str
    a: torch.Tensor
    loss: float
    steps: int
    path: list[float] = field(default_factory=list)  # discrepancy after each step
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> torch.Tensor:
        return torch.nonzero(self.a > 0).flatten()

    @property
    def width(self) -> int:
        return int((self.a > 0).sum())

    def gates(self) -> torch.Tensor:
        return self.a * self.a.numel()
