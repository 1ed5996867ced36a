// CPU kernel of the PQ-index power sums (DESIGN.md section 4): for every segment
// and every requested power p, log sum |w|^p over masked entries, and the count.
//
// Accuracy and range: each piece of a segment is scaled by its largest |w|, so
// every term lies in [0, 1] (no overflow for any p, no underflow of what matters),
// terms are summed in float lanes over short runs and flushed into float64, and
// pieces combine in the log domain. Speed: when all powers are integer multiples
// of one base power (0.5 and 1; the paper's grid 0.1 .. 2.0) one pow per element
// gives all of them by products.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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
    plan.term_at_multiple.assign(kMaxMultiple + 1, -1);
    for (size_t u = 0; u < plan.multiple.size(); ++u) plan.term_at_multiple[plan.multiple[u]] = static_cast<int>(u);
  }
  return plan;
}

template <typename C>
inline C log2_of(C x) {
  return std::log2(x);
}
template <>
inline float log2_of<float>(float x) {
  return fast_log2(x);
}
template <typename C>
inline C exp2_of(C y) {
  return std::exp2(y);
}
template <>
inline float exp2_of<float>(float y) {
  return fast_exp2_nonpositive(y);
}

// x^base for x in [0, 1]; zero stays zero.
template <typename C>
inline C base_pow(C x, BaseKind kind, C base) {
  switch (kind) {
    case BaseKind::kOne:
      return x;
    case BaseKind::kSqrt:
      return std::sqrt(x);
    case BaseKind::kSquare:
      return x * x;
    default:
      return x > 0 ? exp2_of(base * log2_of(x)) : C(0);
  }
}

template <typename C>
inline void lane_add(C (&acc)[kLanes], const C* y, int64_t len) {
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += y[j + l];
  for (; j < len; ++j) acc[0] += y[j];
}

// log sums of every term over the masked entries of w[b, e), and their count.
template <typename T>
void piece_log_sums(const T* w, const bool* mask, int64_t b, int64_t e, const PowerPlan& plan, double* logs,
                    int64_t& count) {
  using C = typename ComputeType<T>::type;
  const int U = static_cast<int>(plan.power.size());
  // Pass 1: the largest masked |w|, the count, and a check for non-finite values.
  C lane_max[kLanes] = {};
  bool bad = false;
  int64_t cnt = 0;
  {
    int64_t j = b;
    for (; j + kLanes <= e; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const bool on = mask == nullptr || mask[j + l];
        const C x = on ? std::abs(static_cast<C>(w[j + l])) : C(0);
        cnt += on;
        bad |= !(x <= std::numeric_limits<C>::max());
        lane_max[l] = x > lane_max[l] ? x : lane_max[l];
      }
    for (; j < e; ++j) {
      const bool on = mask == nullptr || mask[j];
      const C x = on ? std::abs(static_cast<C>(w[j])) : C(0);
      cnt += on;
      bad |= !(x <= std::numeric_limits<C>::max());
      lane_max[0] = x > lane_max[0] ? x : lane_max[0];
    }
  }
  GP_CHECK_ARG(!bad, "w", "must be finite where it is masked in (a non-finite value lies in [", b, ", ", e, "))");
  count = cnt;
  const C mx = *std::max_element(lane_max, lane_max + kLanes);
  if (mx == 0) {
    std::fill(logs, logs + U, kNegInf);
    return;
  }
  // Pass 2 (the piece is in cache now): scaled terms in float lanes, runs flushed to float64.
  const C inv = C(1) / mx;
  const C base = static_cast<C>(plan.base);
  std::vector<double> total(U, 0.0);
  C xs[kRunLength], ys[kRunLength];
  for (int64_t rb = b; rb < e; rb += kRunLength) {
    const int64_t len = std::min<int64_t>(kRunLength, e - rb);
    for (int64_t j = 0; j < len; ++j) {
      const bool on = mask == nullptr || mask[rb + j];
      xs[j] = on ? std::abs(static_cast<C>(w[rb + j])) * inv : C(0);
    }
    if (plan.chain) {
      for (int64_t j = 0; j < len; ++j) xs[j] = base_pow(xs[j], plan.kind, base);
      const int kmax = plan.multiple.empty() ? 0 : *std::max_element(plan.multiple.begin(), plan.multiple.end());
      for (int64_t j = 0; j < len; ++j) ys[j] = xs[j];
      for (int k = 1; k <= kmax; ++k) {
        if (k > 1)
          for (int64_t j = 0; j < len; ++j) ys[j] *= xs[j];
        const int u = plan.term_at_multiple[k];
        if (u < 0) continue;
        C acc[kLanes] = {};
        lane_add(acc, ys, len);
        for (int l = 0; l < kLanes; ++l) total[u] += static_cast<double>(acc[l]);
      }
    } else {
      for (int64_t j = 0; j < len; ++j) xs[j] = xs[j] > 0 ? log2_of(xs[j]) : -std::numeric_limits<C>::infinity();
      for (int u = 0; u < U; ++u) {
        const C p = static_cast<C>(plan.power[u]);
        for (int64_t j = 0; j < len; ++j) ys[j] = xs[j] > -std::numeric_limits<C>::infinity() ? exp2_of(p * xs[j]) : C(0);
        C acc[kLanes] = {};
        lane_add(acc, ys, len);
        for (int l = 0; l < kLanes; ++l) total[u] += static_cast<double>(acc[l]);
      }
    }
  }
  const double log_mx = std::log(static_cast<double>(mx));
  for (int u = 0; u < U; ++u) logs[u] = total[u] > 0 ? plan.power[u] * log_mx + std::log(total[u]) : kNegInf;
}

inline double log_add_exp(double x, double y) {
  if (x == kNegInf) return y;
  if (y == kNegInf) return x;
  const double m = std::max(x, y);
  return m + std::log1p(std::exp(-std::abs(x - y)));
}

std::tuple<at::Tensor, at::Tensor> pq_norms_cpu(const at::Tensor& w, const at::Tensor& offsets,
                                                at::ArrayRef<double> powers, const c10::optional<at::Tensor>& mask) {
  check_float_dtype(w, "w");
  const int64_t n = w.numel();
  check_offsets(offsets, n, "w");
  GP_CHECK_ARG(!powers.empty(), "powers", "must name at least one power");
  for (double p : powers) GP_CHECK_ARG(std::isfinite(p) && p > 0, "powers", "must all be finite and > 0, got ", p);
  at::Tensor m;
  if (mask.has_value()) {
    m = mask->contiguous();
    check_flat_bool(m, n, "mask", "w");
  }
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
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
        int64_t l = std::upper_bound(po + 1, po + L + 1, lo) - (po + 1);
        for (; l < L && po[l] < hi; ++l) {
          const int64_t pb = std::max(lo, po[l]), pe = std::min(hi, po[l + 1]);
          if (pb >= pe) continue;
          if (po[l] >= lo && po[l + 1] <= hi) {
            piece_log_sums(pw, pm, pb, pe, plan, terms.data() + l * U, counts[l]);
          } else {
            const int64_t slot = po[l] < lo ? 2 * c : 2 * c + 1;
            edge_seg[slot] = l;
            piece_log_sums(pw, pm, pb, pe, plan, edge_logs.data() + slot * U, edge_count[slot]);
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
