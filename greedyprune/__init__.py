"""greedyprune: fast pruning ops and drivers for PyTorch.

`greedyprune.ops` holds the fused ops, each with C++ CPU kernels, CUDA kernels (in
builds with CUDA), Triton kernels for some, and a plain-PyTorch reference;
`greedyprune.reference` holds their oracles.
"""
from . import ops, reference

__all__ = ["ops", "reference"]
__version__ = "0.1.0"
