"""Reuse freed host memory instead of handing it back to the kernel (glibc malloc, Linux).

PyTorch allocates CPU tensors with the C library's malloc. glibc serves every block above its
mmap threshold (at most 32 MiB: one activation of a 224x224 model at batch 32 is 150 MiB) with a
fresh mmap and unmaps it on free, so every forward pays page faults for newly zeroed pages; on
this project's 2-core machine a MobileNetV2 forward over 64 images at 224 took 3.27 s, mostly
system time, and 1.06 s with freed memory kept (two runs of `benchmarks/bench_imagenet_scale.py
--child`, with and without --plain-malloc, 2026-12-01). `keep_freed_memory` sets mallopt(M_MMAP_MAX, 0) and a high M_TRIM_THRESHOLD,
so memory freed by one batch serves the next. The peak is unchanged; the resident size stays at
the peak until the process exits. The command line calls it (GREEDYPRUNE_KEEP_FREED_MEMORY=0
turns it off); library users may call it themselves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # mallopt takes an int; glibc reads -1 as SIZE_MAX: never trim


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; returns whether it applied (False off glibc, or with
    GREEDYPRUNE_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("GREEDYPRUNE_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
