// Accurate, vectorizable accumulation on the CPU: short runs are summed in
// lane accumulators of the input's compute type (the compiler vectorizes the
// per-lane loops), and every run is flushed into float64. With runs of
// kRunLength elements over kLanes lanes each lane adds at most 16 terms before
// a flush, which keeps float32 sums within ~1e-6 relative of float64.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

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

constexpr int kLanes = 16;
constexpr int64_t kRunLength = 256;

// sum_j x[j] * y[j] in float64 with float (or double) lane partials.
template <typename T>
double dot_accurate(const T* x, const T* y, int64_t len) {
  using C = typename ComputeType<T>::type;
  double total = 0;
  for (int64_t b = 0; b < len; b += kRunLength) {
    const int64_t e = std::min(len, b + kRunLength);
    C acc[kLanes] = {};
    int64_t j = b;
    for (; j + kLanes <= e; j += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<C>(x[j + l]) * static_cast<C>(y[j + l]);
    double run = 0;
    for (; j < e; ++j) run += static_cast<double>(static_cast<C>(x[j]) * static_cast<C>(y[j]));
    for (int l = 0; l < kLanes; ++l) run += static_cast<double>(acc[l]);
    total += run;
  }
  return total;
}

}  // namespace greedyprune
