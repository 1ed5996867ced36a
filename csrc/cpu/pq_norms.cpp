// CPU kernel of the PQ-index power sums (docs/DESIGN.md §2.4): for every segment
// and every requested power p, log sum |w|^p over masked entries, and the count.
//
// Accuracy and range: each piece of a segment is scaled by its largest |w|, so
// every term lies in [0, 1] (no overflow for any p, no underflow of what matters),
// terms are summed in float lanes over short runs and flushed into float64, and
// pieces combine in the log domain. Speed: when all powers are integer multiples
// of one base power (0.5 and 1; the paper's grid 0.1 .. 2.0) one pow per element
// gives all of them by products; for float and base 0.5 with AVX2, one hand-written
// pass (Newton-refined rsqrt, software prefetch) keeps the pass near the memory speed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../checks.h"
#include "accumulate.h"
#include "fast_pow.h"

namespace greedyprune {
namespace {

constexpr int64_t kChunk = 1 << 16;  // fixed, so results do not depend on the thread count
constexpr int kMaxMultiple = 32;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

enum class BaseKind { kOne, kSqrt, kSquare, kGeneral };

// Unique terms to accumulate. Chain mode: term u is |x|^(multiple[u] * base).
// Direct mode: term u is |x|^power[u], each from log2|x|.
struct PowerPlan {
  bool chain = false;
  double base = 0;
  BaseKind kind = BaseKind::kGeneral;
  std::vector<int> multiple;
  std::vector<double> power;
  std::vector<int64_t> term_of;  // requested power j -> term u
  std::vector<int> term_at_multiple;  // chain mode: multiple k -> term u, or -1
  int kmax = 0;                       // chain mode: the largest multiple
  // chain mode: the unscaled pass stands when its largest |w| lies in [lo, hi], i.e. every
  // float term |w|^(k base) keeps |log2| <= 100
  double fused_max_lo = 0, fused_max_hi = 0;
};

PowerPlan plan_powers(const std::vector<double>& powers) {
  PowerPlan plan;
  const double pmin = *std::min_element(powers.begin(), powers.end());
  for (int m = 1; m <= 8 && !plan.chain; ++m) {
    const double base = pmin / m;
    bool ok = true;
    for (double p : powers) {
      const double r = p / base, k = std::round(r);
      ok = ok && k <= kMaxMultiple && std::abs(r - k) <= 1e-9 * r;
    }
    if (ok) {
      plan.chain = true;
      plan.base = base;
    }
  }
  for (double p : powers) {
    const double key = plan.chain ? std::round(p / plan.base) : p;
    int64_t u = 0;
    while (u < static_cast<int64_t>(plan.power.size()) &&
           (plan.chain ? plan.multiple[u] != key : plan.power[u] != key))
      ++u;
    if (u == static_cast<int64_t>(plan.power.size())) {
      plan.power.push_back(plan.chain ? key * plan.base : p);
      if (plan.chain) plan.multiple.push_back(static_cast<int>(key));
    }
    plan.term_of.push_back(u);
  }
  if (plan.chain) {
    plan.kind = plan.base == 1.0   ? BaseKind::kOne
                : plan.base == 0.5 ? BaseKind::kSqrt
                : plan.base == 2.0 ? BaseKind::kSquare
                                   : BaseKind::kGeneral;
    plan.kmax = *std::max_element(plan.multiple.begin(), plan.multiple.end());
    plan.fused_max_lo = std::exp2(-100.0 / plan.base);
    plan.fused_max_hi = std::exp2(100.0 / (plan.base * plan.kmax));
    plan.term_at_multiple.assign(kMaxMultiple + 1, -1);
    for (size_t u = 0; u < plan.multiple.size(); ++u) plan.term_at_multiple[plan.multiple[u]] = static_cast<int>(u);
  }
  return plan;
}

template <typename C>
GP_ALWAYS_INLINE C log2_of(C x) {
  return std::log2(x);
}
template <>
GP_ALWAYS_INLINE float log2_of<float>(float x) {
  return fast_log2(x);
}
template <typename C>
GP_ALWAYS_INLINE C exp2_of(C y) {
  return std::exp2(y);
}
template <>
GP_ALWAYS_INLINE float exp2_of<float>(float y) {
  return fast_exp2(y);
}

// Bits of |x|: for non-negative floats the IEEE bit patterns order like unsigned
// integers, and inf / NaN patterns lie above every finite one.
template <typename C>
struct AbsBits;
template <>
struct AbsBits<float> {
  using type = uint32_t;
  static constexpr uint32_t kInfinity = 0x7f800000u;
};
template <>
struct AbsBits<double> {
  using type = uint64_t;
  static constexpr uint64_t kInfinity = 0x7ff0000000000000ull;
};

// Pass 1 over a piece: the largest masked |w| as one integer max reduction (it
// vectorizes), which also tells whether a masked |w| is inf or NaN.
template <typename T, bool kMasked>
typename ComputeType<T>::type piece_max(const T* w, const bool* mask, int64_t b, int64_t e, bool& bad) {
  using C = typename ComputeType<T>::type;
  using U = typename AbsBits<C>::type;
  U m = 0;
  for (int64_t j = b; j < e; ++j) {
    const C a = std::abs(static_cast<C>(w[j]));
    U u;
    std::memcpy(&u, &a, sizeof(u));
    u = kMasked ? (mask[j] ? u : U(0)) : u;
    m = m < u ? u : m;
  }
  bad = m >= AbsBits<C>::kInfinity;
  C mx;
  std::memcpy(&mx, &m, sizeof(mx));
  return mx;
}

// Factors (pre, inv) with |w| * pre * inv = |w| / max, exact in pre: a subnormal max
// is first raised by 2^(digits+1), or 1/max would overflow.
template <typename C>
std::pair<C, C> scale_factors(C mx) {
  const C pre = mx < std::numeric_limits<C>::min() ? std::ldexp(C(1), std::numeric_limits<C>::digits + 1) : C(1);
  return {pre, C(1) / (mx * pre)};
}

// xs[j] = (|w[rb + j]| / max)^base, zero where masked out: one fused loop per kind,
// so each vectorizes.
template <typename T, bool kMasked>
void scaled_pow(const T* w, const bool* mask, int64_t rb, int64_t len,
                std::pair<typename ComputeType<T>::type, typename ComputeType<T>::type> scale, BaseKind kind,
                typename ComputeType<T>::type base, typename ComputeType<T>::type* xs) {
  using C = typename ComputeType<T>::type;
  const auto [pre, inv] = scale;
  auto scaled = [&](int64_t j) {
    const C x = std::abs(static_cast<C>(w[rb + j])) * pre * inv;
    return kMasked ? (mask[rb + j] ? x : C(0)) : x;
  };
  switch (kind) {
    case BaseKind::kOne:
      for (int64_t j = 0; j < len; ++j) xs[j] = scaled(j);
      return;
    case BaseKind::kSqrt:
      for (int64_t j = 0; j < len; ++j) xs[j] = std::sqrt(scaled(j));
      return;
    case BaseKind::kSquare:
      for (int64_t j = 0; j < len; ++j) {
        const C x = scaled(j);
        xs[j] = x * x;
      }
      return;
    case BaseKind::kGeneral:  // two loops: fused, the compiler gives up on vectorizing it
      for (int64_t j = 0; j < len; ++j) xs[j] = scaled(j);
      for (int64_t j = 0; j < len; ++j) {
        const C y = exp2_of(base * log2_of(xs[j]));  // garbage for 0, masked out next
        xs[j] = xs[j] > C(0) ? y : C(0);
      }
      return;
  }
}

constexpr double kNewtonMaxFloor = 0x1p-40;  // see fused_sqrt_chain
constexpr int64_t kPrefetchAhead = 1024;     // floats fused_sqrt_chain reads ahead (hardware prefetch alone lags)

#if defined(__AVX2__)
// float, base 0.5 (PQI's default p = 0.5, q = 1): vsqrtps takes about 6 cycles per 8 floats on
// recent Intel cores, which made the pass compute-bound. sqrt_newton is x * rsqrt(x) refined by
// one Newton step (relative error about 1e-7), on max(x, smallest normal float): rsqrt reads
// subnormals as 0, and 0 would give 0 * inf. So entries below the smallest normal add
// sqrt(2^-126) ~ 1e-19 each; the caller keeps this path to pieces whose largest |w| is at least
// kNewtonMaxFloor, where that changes a sum by less than 1e-13 per entry, relatively.
GP_ALWAYS_INLINE __m256 sqrt_newton(__m256 x) {
  const __m256 xm = _mm256_max_ps(x, _mm256_set1_ps(std::numeric_limits<float>::min()));
  const __m256 r = _mm256_rsqrt_ps(xm);
  const __m256 s = _mm256_mul_ps(xm, r);
  return _mm256_mul_ps(_mm256_mul_ps(s, _mm256_set1_ps(0.5f)), _mm256_fnmadd_ps(s, r, _mm256_set1_ps(3.0f)));
}

GP_ALWAYS_INLINE float sqrt_newton(float x) { return std::sqrt(std::max(x, std::numeric_limits<float>::min())); }

// 8 bools as float lane masks.
GP_ALWAYS_INLINE __m256 lanes_of(const bool* flags) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(flags));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_setzero_si256()));
}

GP_ALWAYS_INLINE double horizontal_sum(__m256d v) {
  __m128d x = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
}

// fused_short_chain for float and base 0.5: 16 entries a step in two sets of float lane sums
// (the adds' latency would bind one set); each run's lane sums are added into float64 lanes
// (no horizontal sum per run: its latency chain cost as much as the run on 1,000-entry rows).
template <bool kMasked, int K>
float fused_sqrt_chain(const float* w, const bool* mask, int64_t b, int64_t e, double (&totals)[4]) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256i top = _mm256_setzero_si256();  // the largest |w| as integer bits (inf and NaN above all)
  uint32_t top_tail = 0;
  __m256d wide[K][2];  // float64 lane sums
  for (auto& pair : wide)
    for (auto& v : pair) v = _mm256_setzero_pd();
  double tail[K] = {};
  for (int64_t rb = b; rb < e; rb += kRunLength) {
    const int64_t re = std::min(e, rb + kRunLength);
    __m256 sums[2][K];
    for (auto& set : sums)
      for (auto& v : set) v = _mm256_setzero_ps();
    int64_t j = rb;
    for (; j + 16 <= re; j += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(w + j + kPrefetchAhead), _MM_HINT_T0);
      for (int h = 0; h < 2; ++h) {
        __m256 x = _mm256_and_ps(_mm256_loadu_ps(w + j + 8 * h), magnitude);
        if constexpr (kMasked) x = _mm256_and_ps(x, lanes_of(mask + j + 8 * h));
        top = _mm256_max_epu32(top, _mm256_castps_si256(x));
        const __m256 xb = sqrt_newton(x);  // the terms |w|^0.5, |w|, |w|^1.5, |w|^2
        sums[h][0] = _mm256_add_ps(sums[h][0], xb);
        if constexpr (K > 1) sums[h][1] = _mm256_add_ps(sums[h][1], x);
        if constexpr (K > 2) sums[h][2] = _mm256_add_ps(sums[h][2], _mm256_mul_ps(x, xb));
        if constexpr (K > 3) sums[h][3] = _mm256_add_ps(sums[h][3], _mm256_mul_ps(x, x));
      }
    }
    for (int k = 0; k < K; ++k) {
      const __m256 run = _mm256_add_ps(sums[0][k], sums[1][k]);
      wide[k][0] = _mm256_add_pd(wide[k][0], _mm256_cvtps_pd(_mm256_castps256_ps128(run)));
      wide[k][1] = _mm256_add_pd(wide[k][1], _mm256_cvtps_pd(_mm256_extractf128_ps(run, 1)));
    }
    float run[K] = {};
    for (; j < re; ++j) {
      const float x = kMasked && !mask[j] ? 0.0f : std::abs(w[j]);
      uint32_t u;
      std::memcpy(&u, &x, sizeof(u));
      top_tail = std::max(top_tail, u);
      const float xb = sqrt_newton(x);
      run[0] += xb;
      if constexpr (K > 1) run[1] += x;
      if constexpr (K > 2) run[2] += x * xb;
      if constexpr (K > 3) run[3] += x * x;
    }
    for (int k = 0; k < K; ++k) tail[k] += run[k];
  }
  for (int k = 0; k < K; ++k) totals[k] += horizontal_sum(_mm256_add_pd(wide[k][0], wide[k][1])) + tail[k];
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), top);
  for (uint32_t u : lanes) top_tail = std::max(top_tail, u);
  float mx;
  std::memcpy(&mx, &top_tail, sizeof(mx));
  return mx;
}
#endif

// Whether fused_short_chain counts entries below the smallest normal float as that normal
// (fused_sqrt_chain), so pieces with a tiny max must take the scaled path.
template <typename T, BaseKind kKind>
constexpr bool kFlushesSubnormals =
#if defined(__AVX2__)
    std::is_same_v<T, float> && kKind == BaseKind::kSqrt;
#else
    false;
#endif

// One pass over a piece for short chains: sums of |w|^(k base), k = 1 .. K, without
// scaling, plus the largest |w| as an integer max (see piece_max). Valid only when
// that max keeps every term of the float arithmetic in range: the caller checks.
template <typename T, bool kMasked, BaseKind kKind, int K>
typename ComputeType<T>::type fused_short_chain(const T* w, const bool* mask, int64_t b, int64_t e,
                                                typename ComputeType<T>::type base, double (&totals)[4]) {
  using C = typename ComputeType<T>::type;
  using U = typename AbsBits<C>::type;
#if defined(__AVX2__)
  if constexpr (kFlushesSubnormals<T, kKind>) return fused_sqrt_chain<kMasked, K>(w, mask, b, e, totals);
#endif
  U m = 0;
  for (int64_t rb = b; rb < e; rb += kRunLength) {
    const int64_t re = std::min(e, rb + kRunLength);
    C s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp simd reduction(+ : s1, s2, s3, s4) reduction(max : m)
    for (int64_t j = rb; j < re; ++j) {
      const C a = std::abs(static_cast<C>(w[j]));
      const C x = kMasked ? (mask[j] ? a : C(0)) : a;
      U u;
      std::memcpy(&u, &x, sizeof(u));
      m = m < u ? u : m;
      C xb;
      if constexpr (kKind == BaseKind::kOne) {
        xb = x;
      } else if constexpr (kKind == BaseKind::kSqrt) {
        xb = std::sqrt(x);
      } else if constexpr (kKind == BaseKind::kSquare) {
        xb = x * x;
      } else {
        const C y = exp2_of(base * log2_of(x));
        xb = x > C(0) ? y : C(0);
      }
      C y = xb;
      s1 += y;
      if constexpr (K > 1) s2 += (y *= xb);
      if constexpr (K > 2) s3 += (y *= xb);
      if constexpr (K > 3) s4 += (y *= xb);
    }
    totals[0] += s1;
    totals[1] += s2;
    totals[2] += s3;
    totals[3] += s4;
  }
  C mx;
  std::memcpy(&mx, &m, sizeof(mx));
  return mx;
}

template <typename T, bool kMasked, BaseKind kKind>
typename ComputeType<T>::type fused_short_chain(int kmax, const T* w, const bool* mask, int64_t b, int64_t e,
                                                typename ComputeType<T>::type base, double (&totals)[4]) {
  switch (kmax) {
    case 1: return fused_short_chain<T, kMasked, kKind, 1>(w, mask, b, e, base, totals);
    case 2: return fused_short_chain<T, kMasked, kKind, 2>(w, mask, b, e, base, totals);
    case 3: return fused_short_chain<T, kMasked, kKind, 3>(w, mask, b, e, base, totals);
    default: return fused_short_chain<T, kMasked, kKind, 4>(w, mask, b, e, base, totals);
  }
}

// Chains of up to kShortChain multiples: sums of xs^1 .. xs^K in one pass, one
// scalar SIMD reduction per power (an array reduction would shuffle lanes).
constexpr int kShortChain = 4;
template <typename C, int K>
void short_chain(const C* __restrict xs, int64_t len, C (&out)[kShortChain]) {
  C s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp simd reduction(+ : s1, s2, s3, s4)
  for (int64_t j = 0; j < len; ++j) {
    const C x = xs[j];
    C y = x;
    s1 += y;
    if constexpr (K > 1) s2 += (y *= x);
    if constexpr (K > 2) s3 += (y *= x);
    if constexpr (K > 3) s4 += (y *= x);
  }
  out[0] = s1;
  out[1] = s2;
  out[2] = s3;
  out[3] = s4;
}

// ys *= xs, returning sum(ys): one pass per multiple of a long chain.
template <typename C>
C chain_step(C* __restrict ys, const C* __restrict xs, int64_t len) {
  C s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < len; ++j) {
    ys[j] *= xs[j];
    s += ys[j];
  }
  return s;
}

// sum over j of xs[j]^p from lx = log2(xs), zero where xs is zero.
template <typename C>
C direct_power_sum(const C* __restrict xs, const C* __restrict lx, int64_t len, C p) {
  C s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < len; ++j) {
    const C y = exp2_of(p * lx[j]);
    s += xs[j] > C(0) ? y : C(0);
  }
  return s;
}

// log sums of every term over the masked entries of w[b, e), and their count.
// `totals` is scratch for the U float64 sums.
template <typename T, bool kMasked>
void piece_log_sums(const T* w, const bool* mask, int64_t b, int64_t e, const PowerPlan& plan, double* logs,
                    int64_t& count, std::vector<double>& totals) {
  using C = typename ComputeType<T>::type;
  const int U = static_cast<int>(plan.power.size());
  count = kMasked ? std::count(mask + b, mask + e, true) : e - b;
  const int kmax = plan.kmax;
  const C base = static_cast<C>(plan.base);
  if (plan.chain && kmax <= kShortChain) {
    // Fast path: one unscaled pass. It stands when the largest |w| keeps the float
    // terms well inside their range (|log2 of a term| <= 100); otherwise, or on a
    // non-finite value, the piece is redone below with scaling.
    double sums[4] = {};
    C mx = 0;
    switch (plan.kind) {
      case BaseKind::kOne: mx = fused_short_chain<T, kMasked, BaseKind::kOne>(kmax, w, mask, b, e, base, sums); break;
      case BaseKind::kSqrt: mx = fused_short_chain<T, kMasked, BaseKind::kSqrt>(kmax, w, mask, b, e, base, sums); break;
      case BaseKind::kSquare: mx = fused_short_chain<T, kMasked, BaseKind::kSquare>(kmax, w, mask, b, e, base, sums); break;
      case BaseKind::kGeneral: mx = fused_short_chain<T, kMasked, BaseKind::kGeneral>(kmax, w, mask, b, e, base, sums); break;
    }
    if (mx == 0) {
      std::fill(logs, logs + U, kNegInf);
      return;
    }
    const double top = static_cast<double>(mx);
    const bool flushed = plan.kind == BaseKind::kSqrt && kFlushesSubnormals<T, BaseKind::kSqrt>;
    if (std::isfinite(top) && top <= plan.fused_max_hi && top >= plan.fused_max_lo &&
        !(flushed && top < kNewtonMaxFloor)) {
      for (int u = 0; u < U; ++u) {
        const double total = sums[plan.multiple[u] - 1];
        logs[u] = total > 0 ? std::log(total) : kNegInf;
      }
      return;
    }
  }
  bool bad = false;
  const C mx = piece_max<T, kMasked>(w, mask, b, e, bad);
  GP_CHECK_ARG(!bad, "w", "must be finite where it is masked in (a non-finite value lies in [", b, ", ", e, "))");
  if (mx == 0) {
    std::fill(logs, logs + U, kNegInf);
    return;
  }
  // Pass 2 (the piece is in cache now): every term lies in [0, 1] after scaling by
  // 1/max; each run's float sums are flushed into float64.
  const auto scale = scale_factors(mx);
  totals.assign(U, 0.0);
  auto flush = [&](int k, C run) {  // chain mode: multiple k; direct mode: term k
    const int u = plan.chain ? plan.term_at_multiple[k] : k;
    if (u >= 0) totals[u] += static_cast<double>(run);
  };
  C xs[kRunLength], ys[kRunLength];
  for (int64_t rb = b; rb < e; rb += kRunLength) {
    const int64_t len = std::min<int64_t>(kRunLength, e - rb);
    if (plan.chain) {
      scaled_pow<T, kMasked>(w, mask, rb, len, scale, plan.kind, base, xs);
      if (kmax <= kShortChain) {
        C runs[kShortChain];
        switch (kmax) {
          case 1: short_chain<C, 1>(xs, len, runs); break;
          case 2: short_chain<C, 2>(xs, len, runs); break;
          case 3: short_chain<C, 3>(xs, len, runs); break;
          default: short_chain<C, 4>(xs, len, runs); break;
        }
        for (int k = 1; k <= kmax; ++k) flush(k, runs[k - 1]);
        continue;
      }
      std::copy(xs, xs + len, ys);
      C run = 0;
#pragma omp simd reduction(+ : run)
      for (int64_t j = 0; j < len; ++j) run += xs[j];
      flush(1, run);
      for (int k = 2; k <= kmax; ++k) flush(k, chain_step(ys, xs, len));
    } else {
      scaled_pow<T, kMasked>(w, mask, rb, len, scale, BaseKind::kOne, base, xs);
      for (int64_t j = 0; j < len; ++j) ys[j] = log2_of(xs[j]);
      for (int u = 0; u < U; ++u) flush(u, direct_power_sum(xs, ys, len, static_cast<C>(plan.power[u])));
    }
  }
  const double log_mx = std::log(static_cast<double>(mx));
  for (int u = 0; u < U; ++u) logs[u] = totals[u] > 0 ? plan.power[u] * log_mx + std::log(totals[u]) : kNegInf;
}

inline double log_add_exp(double x, double y) {
  if (x == kNegInf) return y;
  if (y == kNegInf) return x;
  const double m = std::max(x, y);
  return m + std::log1p(std::exp(-std::abs(x - y)));
}

std::tuple<at::Tensor, at::Tensor> pq_norms_cpu(const at::Tensor& w, const at::Tensor& offsets,
                                                at::ArrayRef<double> powers, const c10::optional<at::Tensor>& mask) {
  check_pq_norms_args(w, offsets, powers, mask);
  const int64_t n = w.numel();
  at::Tensor m;
  if (mask.has_value()) m = mask->contiguous();
  const int64_t L = offsets.numel() - 1;
  const PowerPlan plan = plan_powers(std::vector<double>(powers.begin(), powers.end()));
  const int64_t U = static_cast<int64_t>(plan.power.size());
  const at::Tensor wc = w.contiguous(), off = offsets.cpu().contiguous();
  const int64_t* po = off.data_ptr<int64_t>();
  const bool* pm = m.defined() ? m.data_ptr<bool>() : nullptr;

  std::vector<double> terms(L * U, kNegInf);
  std::vector<int64_t> counts(L, 0);
  // Pieces of segments that cross a chunk border: slot 2c (first piece), 2c+1 (last).
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> edge_seg(2 * chunks, -1), edge_count(2 * chunks, 0);
  std::vector<double> edge_logs(2 * chunks * U, kNegInf);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wc.scalar_type(), "pq_norms_cpu", [&] {
    const scalar_t* pw = wc.data_ptr<scalar_t>();
    auto piece = pm ? piece_log_sums<scalar_t, true> : piece_log_sums<scalar_t, false>;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<double> totals;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
        int64_t l = std::upper_bound(po + 1, po + L + 1, lo) - (po + 1);
        for (; l < L && po[l] < hi; ++l) {
          const int64_t pb = std::max(lo, po[l]), pe = std::min(hi, po[l + 1]);
          if (pb >= pe) continue;
          if (po[l] >= lo && po[l + 1] <= hi) {
            piece(pw, pm, pb, pe, plan, terms.data() + l * U, counts[l], totals);
          } else {
            const int64_t slot = po[l] < lo ? 2 * c : 2 * c + 1;
            edge_seg[slot] = l;
            piece(pw, pm, pb, pe, plan, edge_logs.data() + slot * U, edge_count[slot], totals);
          }
        }
      }
    });
  });
  for (int64_t slot = 0; slot < 2 * chunks; ++slot) {  // in chunk order: deterministic
    const int64_t l = edge_seg[slot];
    if (l < 0) continue;
    counts[l] += edge_count[slot];
    for (int64_t u = 0; u < U; ++u) terms[l * U + u] = log_add_exp(terms[l * U + u], edge_logs[slot * U + u]);
  }
  const int64_t P = static_cast<int64_t>(powers.size());
  at::Tensor log_sums = at::empty({L, P}, w.options().dtype(at::kDouble));
  at::Tensor count_t = at::empty({L}, w.options().dtype(at::kLong));
  double* pl = log_sums.data_ptr<double>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < P; ++j) pl[l * P + j] = terms[l * U + plan.term_of[j]];
  std::copy(counts.begin(), counts.end(), count_t.data_ptr<int64_t>());
  return {log_sums, count_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CPU, m) { m.impl("pq_norms", &pq_norms_cpu); }

}  // namespace greedyprune
