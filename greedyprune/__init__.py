"""greedyprune: fast pruning ops and drivers for PyTorch.

`greedyprune.ops` holds the fused ops (C++ CPU kernels, plain-PyTorch reference);
`greedyprune.reference` their oracles.
"""
from . import ops, reference

__all__ = ["ops", "reference"]
__version__ = "0.1.0"
