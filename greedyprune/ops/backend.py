"""Backend choice: which implementation runs an op on given tensors, and the call into it.

"auto" takes the compiled kernel of the tensors' device (the C++ kernel for CPU tensors;
for CUDA tensors the CUDA kernel, else the Triton kernel); "cpu", "cuda", "triton" and
"reference" force one, with a clear error where it cannot serve.
"""
from __future__ import annotations

import warnings

import torch

from .. import reference
from .. import triton as gp_triton
from ..checks import ArgumentError, arg_error

try:
    from .. import _C  # noqa: F401  (registers torch.ops.greedyprune.*)

    HAS_C = True
except ImportError as _err:  # pragma: no cover - exercised only in broken installs
    HAS_C = False
    warnings.warn(
        f"greedyprune._C could not be loaded ({_err}); greedyprune ops fall back to the "
        "plain-PyTorch reference (correct but slow). Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_default_backend = "auto"

# Backends whose data checks (offsets, NaN, simplex, symmetry) run in Python (`call`), not in a C++ kernel.
PYTHON_CHECKED = ("reference", "triton")

# How every message of a C++ argument check starts (GP_CHECK_ARG, csrc/checks.h).
KERNEL_ARGUMENT_ERROR = "greedyprune: argument '"


def set_backend(name: str) -> None:
    """Set the process-wide default backend: one of BACKENDS. "cuda" and "triton" serve only CUDA
    tensors, so setting them without a CUDA device warns (every op on CPU tensors would then fail)."""
    global _default_backend
    _default_backend = check_backend_name(name)
    if name in ("cuda", "triton") and not torch.cuda.is_available():
        warnings.warn(f"greedyprune: backend {name!r} set, but no CUDA device is available: ops on CPU tensors "
                      "will raise; 'auto' picks the C++ kernels for them", RuntimeWarning, stacklevel=2)


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise arg_error("backend", f"must be one of {BACKENDS}, got {name!r}")
    return name


def _has_cuda_kernel(op: str) -> bool:
    return HAS_C and torch._C._dispatch_has_kernel_for_dispatch_key(f"greedyprune::{op}", "CUDA")


def _triton_serves(op: str, t: torch.Tensor) -> bool:
    on_device = t.device.type == "cuda" or (gp_triton.INTERPRETED and t.device.type == "cpu")
    return gp_triton.HAS_TRITON and op in gp_triton.OPS and on_device


def resolve_backend(op: str, backend: str | None, t: torch.Tensor) -> str:
    """The backend that runs `op` on tensors like `t`; a clear error if the choice cannot."""
    name = check_backend_name(backend or _default_backend)
    device = t.device.type
    if name == "auto":
        if device == "cpu":
            return "cpu" if HAS_C else "reference"
        if _has_cuda_kernel(op):
            return "cuda"
        if _triton_serves(op, t):
            return "triton"
        raise RuntimeError(f"greedyprune: no backend serves {op} on {t.device}: this build has no CUDA kernels "
                           f"and Triton {'has no kernel for it' if gp_triton.HAS_TRITON else 'is not installed'}")
    if name == "reference":
        if device != "cpu":
            raise RuntimeError(f"greedyprune: backend 'reference' runs on CPU tensors, got {t.device}")
    elif name == "cpu":
        if not HAS_C:
            raise RuntimeError("greedyprune: backend 'cpu' needs the compiled extension greedyprune._C")
        if device != "cpu":
            raise RuntimeError(f"greedyprune: backend 'cpu' cannot serve tensors on {t.device}")
    elif name == "cuda":
        if device != "cuda" or not _has_cuda_kernel(op):
            raise RuntimeError(f"greedyprune: backend 'cuda' cannot serve {op} on {t.device}: it needs CUDA tensors "
                               "and a build with CUDA kernels (see README, 'Building')")
    elif not _triton_serves(op, t):
        raise RuntimeError(f"greedyprune: backend 'triton' cannot serve {op} on {t.device}: it needs triton, an op "
                           f"among {gp_triton.OPS}, and CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)")
    return name


def call(op: str, name: str, *args, check_values=None):
    """Run op on backend `name` (resolve_backend's choice; the dispatcher picks the CPU or
    CUDA kernel). On the backends in PYTHON_CHECKED, check_values(*args) first makes the
    data checks that the C++ kernels make. A kernel's argument error (a ValueError naming
    the argument) is raised as ArgumentError, as every bad argument of the wrappers is."""
    if name in PYTHON_CHECKED and check_values is not None:
        check_values(*args)
    if name == "reference":
        kernel = getattr(reference, op)
    elif name == "triton":
        kernel = getattr(torch.ops.greedyprune_triton, op)
    else:
        kernel = getattr(torch.ops.greedyprune, op)
    try:
        return kernel(*args)
    except ValueError as err:
        if not str(err).startswith(KERNEL_ARGUMENT_ERROR):
            raise
        raise ArgumentError(str(err)) from None
