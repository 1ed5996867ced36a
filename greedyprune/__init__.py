"""greedyprune: fast pruning ops and drivers for PyTorch.

`greedyprune.ops` holds the fused ops, each with C++ CPU kernels, CUDA kernels (in
builds with CUDA), Triton kernels for some, and a plain-PyTorch reference;
`greedyprune.reference` holds their oracles.
"""
import importlib

__all__ = ["ops", "reference"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The submodules load on first use, so that importing the oracle loads no backend code.
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
