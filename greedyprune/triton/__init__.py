"""Triton kernels, registered as torch.library.triton_op under `greedyprune_triton::`.

They serve CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 is set before this
package is imported (how the tests run them on a machine without a GPU).
"""
import os

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is optional
    HAS_TRITON = False

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# ops with a Triton implementation
OPS = ("line_search", "taylor_scores", "pq_norms")

if HAS_TRITON:
    from . import line_search, pq_norms, taylor_scores  # noqa: F401  (registers the ops)
