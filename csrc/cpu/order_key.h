// Maps floating values to unsigned integers whose order is the values' order
// (-0.0 and +0.0 map to one key), so selection can run on integer radix digits.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace greedyprune {

// NaN keys lie outside [kMin, kMax], the keys of -inf and +inf.
template <typename T>
struct OrderKey {  // float32, float16, bfloat16: exact through float32
  using type = uint32_t;
  static constexpr uint32_t kMin = ~0xff800000u, kMax = 0x7f800000u | 0x80000000u;
  static inline uint32_t of(T value) {
    float f = static_cast<float>(value);
    if (f == 0.0f) f = 0.0f;
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};

template <>
struct OrderKey<double> {
  using type = uint64_t;
  static constexpr uint64_t kMin = ~0xfff0000000000000ull, kMax = 0x7ff0000000000000ull | 0x8000000000000000ull;
  static inline uint64_t of(double d) {
    if (d == 0.0) d = 0.0;
    uint64_t u;
    std::memcpy(&u, &d, sizeof(u));
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  }
};

}  // namespace greedyprune
