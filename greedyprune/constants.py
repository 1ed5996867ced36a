"""Numeric constants of the op contracts: the one Python definition.

The C++ and CUDA kernels read their copies from csrc/constants.h, which
tests/test_constants.py pins equal to these.
"""
import torch

# A line-search candidate whose ||d_i||^2 is at most this times G_ii + aGa is a no-op move.
DIRECTION_EPS = 1e-12

# Relative tolerance of the symmetry check of G, per dtype: room for GEMMs that sum in
# different orders. float16 and bfloat16 take SYMMETRY_TOL_16BIT.
SYMMETRY_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
SYMMETRY_TOL_16BIT = 1e-2

# How far from 1 the sum of a simplex point may lie (a 16-bit point cannot sum to 1 exactly).
SIMPLEX_TOL = 1e-4
SIMPLEX_TOL_16BIT = 1e-2


def symmetry_tolerance(dtype: torch.dtype) -> float:
    return SYMMETRY_TOL.get(dtype, SYMMETRY_TOL_16BIT)


def simplex_tolerance(dtype: torch.dtype) -> float:
    return SIMPLEX_TOL_16BIT if dtype in (torch.float16, torch.bfloat16) else SIMPLEX_TOL
