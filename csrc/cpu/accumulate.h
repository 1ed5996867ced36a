// Accurate, vectorizable accumulation on the CPU: runs of kRunLength elements are
// summed in the compute type with OpenMP SIMD reductions (vector-lane partial sums
// in an order fixed by the build), and each run's sum is added into float64. A
// float lane adds at most kRunLength / 8 terms before its run is flushed, which
// keeps float32 sums within ~1e-6 relative of float64.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#if defined(__GNUC__)
#define GP_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define GP_ALWAYS_INLINE inline
#endif

namespace greedyprune {

// float32 arithmetic for float32/float16/bfloat16 inputs, float64 for float64.
template <typename T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};

constexpr int64_t kRunLength = 256;

// sum_j x[j] * y[j] in float64, from SIMD partial sums over short runs.
template <typename T>
double dot_accurate(const T* __restrict x, const T* __restrict y, int64_t len) {
  using C = typename ComputeType<T>::type;
  double total = 0;
  for (int64_t b = 0; b < len; b += kRunLength) {
    const int64_t e = std::min(len, b + kRunLength);
    C run = 0;
#pragma omp simd reduction(+ : run)
    for (int64_t j = b; j < e; ++j) run += static_cast<C>(x[j]) * static_cast<C>(y[j]);
    total += static_cast<double>(run);
  }
  return total;
}

}  // namespace greedyprune
