"""Public op API: argument checks, backend choice, fake (meta) kernels.

Every op exists as `torch.ops.greedyprune.<name>` (schemas in csrc/greedyprune.cpp)
and as a documented wrapper here, one module per op family as in csrc/cpu/ and
greedyprune/triton/: line_search.py (line_search, greedy_local), taylor_scores.py,
segment_select.py (segment_select, popup_swap) and pq_norms.py (pq_norms, pq_index,
pq_index_from_log_sums, sap_prune_count). Each family module writes its ops' shape, dtype
and device rules once, as spec functions that its wrappers and its fake kernels both call,
and its ops' data checks (finite, symmetric, simplex, offsets, k), which `backend.call`
runs for the backends without C++ checks. backend.py chooses the backend and calls the
kernel; checks.py holds the shared specs, their two `require` callables and the value
checks; offsets.py the offsets argument, its spec and its value check. Every bad
argument raises `greedyprune.checks.ArgumentError` naming it, on every backend. The
numeric constants that the kernels share are in `greedyprune.constants`. Contracts:
docs/DESIGN.md §2; the oracle of every op is in `greedyprune.reference`.

Backends (BACKENDS): "auto" (the compiled kernel for the tensors' device: C++ on CPU;
on CUDA the CUDA kernel, else the Triton one), "cpu" (the C++ kernels), "cuda" (the
CUDA kernels), "triton" (Triton kernels of line_search, taylor_scores and pq_norms)
and "reference" (plain PyTorch). Choose per call with `backend=` or for the process
with `set_backend()`. Without the compiled extension, ops fall back to the reference
with a warning.

Non-finite inputs: an entry that an op leaves out (not `eligible` in segment_select,
masked out in pq_norms) may hold anything, NaN and inf included; the entries it reads
must be finite (pq_norms, G and w of the line search) or, where infinities have an
order, not NaN (segment_select, popup_swap).
"""
from .backend import BACKENDS, HAS_C, set_backend
from .checks import FLOAT_DTYPES
from .line_search import GreedyPath, LineSearch, greedy_local, line_search
from .offsets import offsets_from_sizes
from .pq_norms import PQNorms, pq_index, pq_index_from_log_sums, pq_norms, sap_prune_count
from .segment_select import PopupSwap, popup_swap, segment_select
from .taylor_scores import TaylorScores, taylor_scores

__all__ = [
    "BACKENDS", "FLOAT_DTYPES", "HAS_C", "set_backend", "offsets_from_sizes",
    "LineSearch", "GreedyPath", "line_search", "greedy_local",
    "TaylorScores", "taylor_scores",
    "PopupSwap", "segment_select", "popup_swap",
    "PQNorms", "pq_norms", "pq_index", "pq_index_from_log_sums", "sap_prune_count",
]
