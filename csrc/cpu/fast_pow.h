// Branch-free float32 log2 / exp2 that the compiler vectorizes (libm calls do not
// vectorize without -ffast-math). Relative error about 1e-7: far below what the
// power sums of pq_norms need (1e-5), at a fraction of std::pow's cost.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "accumulate.h"

namespace greedyprune {

// log2(x) for x > 0, denormals included (x = 0 gives about -151: callers mask zeros).
GP_ALWAYS_INLINE float fast_log2(float x) {
  const bool denormal = x < 1.17549435e-38f;
  x = denormal ? x * 16777216.0f : x;  // 2^24
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  float e = static_cast<float>(static_cast<int32_t>(u >> 23) - 127) - (denormal ? 24.0f : 0.0f);
  u = (u & 0x007fffffu) | 0x3f800000u;  // mantissa m in [1, 2)
  float m;
  std::memcpy(&m, &u, sizeof(m));
  const bool high = m > 1.41421356f;  // move m into [sqrt(1/2), sqrt(2))
  m = high ? m * 0.5f : m;
  e = high ? e + 1.0f : e;
  // log2(m) = (2/ln 2) atanh(t), t = (m-1)/(m+1), |t| <= 0.172: odd series to t^9.
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float series =
      2.88539008f + t2 * (0.961796694f + t2 * (0.577078016f + t2 * (0.412198583f + t2 * 0.320598898f)));
  return e + t * series;
}

// 2^y for y in [-126, 127]; y is clamped to that range, so callers keep results
// away from its ends (pq_norms checks the range of every piece, or scales it).
GP_ALWAYS_INLINE float fast_exp2(float y) {
  y = y < -126.0f ? -126.0f : (y > 127.0f ? 127.0f : y);
  const float n = std::floor(y + 0.5f);
  const float f = y - n;  // [-0.5, 0.5)
  // e^(f ln 2) by its Taylor series to degree 7: error < 6e-9 on this interval.
  const float p =
      1.0f +
      f * (0.693147181f +
           f * (0.240226507f +
                f * (0.0555041087f +
                     f * (0.00961812911f + f * (0.00133335581f + f * (0.000154035304f + f * 1.52527338e-05f))))));
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace greedyprune
