// Numeric constants shared by the CPU and CUDA kernels (plain C++: nvcc includes it too).
// Their one Python definition is greedyprune/constants.py; tests/test_constants.py
// pins the two equal.
#pragma once

namespace greedyprune {

// A line-search candidate whose ||d_i||^2 is at most this times G_ii + aGa is a no-op move.
constexpr double kDirectionEps = 1e-12;

// Relative tolerance of the symmetry check of G, per dtype: room for GEMMs that sum in
// different orders.
constexpr double kSymmetryTolFloat64 = 1e-9;
constexpr double kSymmetryTolFloat32 = 1e-5;
constexpr double kSymmetryTol16Bit = 1e-2;

// How far from 1 the sum of a simplex point may lie (a 16-bit point cannot sum to 1 exactly).
constexpr double kSimplexTol = 1e-4;
constexpr double kSimplexTol16Bit = 1e-2;

}  // namespace greedyprune
