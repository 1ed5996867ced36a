// CPU kernels of segmented selection (DESIGN.md section 3): `segment_select`
// (k largest/smallest eligible entries per segment) and `popup_swap` (the SR-popup
// restricted swap). Selection is a radix histogram on order keys followed by an
// nth_element over the one bin that holds the threshold: no full sort.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "order_key.h"

namespace greedyprune {
namespace {

constexpr int64_t kGrain = 1 << 16;         // entries per parallel chunk, at least
constexpr int64_t kSmallSegment = 1 << 12;  // below this, skip the histogram

// The selection order: larger key first, then lower index.
template <typename K>
struct Entry {
  K key;
  int64_t idx;
};
template <typename K>
inline bool better(const Entry<K>& x, const Entry<K>& y) {
  return x.key > y.key || (x.key == y.key && x.idx < y.idx);
}
template <typename K>
inline bool worse(const Entry<K>& x, const Entry<K>& y) {
  return better(y, x);
}
// Entry j is selected iff it is not worse than the threshold entry t.
template <typename K>
inline bool at_or_above(K key, int64_t j, const Entry<K>& t) {
  return key > t.key || (key == t.key && j <= t.idx);
}

// Runs f(chunk, lo, hi) over at most get_num_threads() contiguous chunks of [b, e).
template <typename F>
int64_t for_chunks(int64_t b, int64_t e, F&& f) {
  const int64_t n = e - b;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / kGrain));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) f(c, b + n * c / chunks, b + n * (c + 1) / chunks);
  });
  return chunks;
}

template <typename K, typename F>
std::vector<Entry<K>> gather(int64_t b, int64_t e, F&& take) {
  std::vector<std::vector<Entry<K>>> parts(std::max<int64_t>(1, at::get_num_threads()));
  const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) take(j, parts[c]);
  });
  std::vector<Entry<K>> all = std::move(parts[0]);
  for (int64_t c = 1; c < chunks; ++c) all.insert(all.end(), parts[c].begin(), parts[c].end());
  return all;
}

// The k-th best eligible entry of [b, e) (1 <= k <= number of eligible entries).
template <typename K, typename KeyAt, typename Eligible>
Entry<K> kth_best(int64_t b, int64_t e, int64_t k, KeyAt key_at, Eligible eligible) {
  std::vector<Entry<K>> cand;
  int64_t need = k;
  if (e - b <= kSmallSegment) {
    for (int64_t j = b; j < e; ++j)
      if (eligible(j)) cand.push_back({key_at(j), j});
  } else {
    const int bits = e - b > (1 << 20) ? 16 : 12;
    const int shift = static_cast<int>(sizeof(K)) * 8 - bits;
    const int64_t bins = int64_t{1} << bits;
    std::vector<int64_t> hist(std::max<int64_t>(1, at::get_num_threads()) * bins, 0);
    const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
      int64_t* h = hist.data() + c * bins;
      for (int64_t j = lo; j < hi; ++j)
        if (eligible(j)) ++h[key_at(j) >> shift];
    });
    int64_t bin = bins - 1, above = 0;
    for (;; --bin) {
      int64_t count = 0;
      for (int64_t c = 0; c < chunks; ++c) count += hist[c * bins + bin];
      if (above + count >= k) break;
      above += count;
    }
    need = k - above;
    cand = gather<K>(b, e, [&](int64_t j, std::vector<Entry<K>>& out) {
      if (eligible(j)) {
        const K key = key_at(j);
        if (static_cast<int64_t>(key >> shift) == bin) out.push_back({key, j});
      }
    });
  }
  std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), better<K>);
  return cand[need - 1];
}

// Counts the entries of [b, e) where pred holds; fails on a NaN value.
template <typename T, typename P>
int64_t count_checked(const T* values, int64_t b, int64_t e, P pred, const char* arg) {
  std::vector<int64_t> counts(std::max<int64_t>(1, at::get_num_threads()), 0);
  std::vector<char> nan(counts.size(), 0);
  const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
    int64_t n = 0;
    bool bad = false;
    for (int64_t j = lo; j < hi; ++j) {
      n += pred(j) ? 1 : 0;
      const float v = static_cast<float>(values[j]);
      bad |= v != v;
    }
    counts[c] = n;
    nan[c] = bad;
  });
  int64_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    GP_CHECK_ARG(!nan[c], arg, "must not contain NaN (segment starting at ", b, ")");
    total += counts[c];
  }
  return total;
}

// Big segments one at a time with parallel passes inside; small ones in parallel.
template <typename F>
void for_segments(const int64_t* off, int64_t num_segments, F&& f) {
  std::vector<int64_t> small;
  for (int64_t l = 0; l < num_segments; ++l) {
    if (off[l + 1] - off[l] >= kGrain)
      f(l);
    else
      small.push_back(l);
  }
  at::parallel_for(0, static_cast<int64_t>(small.size()), 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(small[i]);
  });
}

template <typename T, bool kLargest>
void select_segment(const T* values, const bool* eligible, int64_t k, int64_t b, int64_t e, bool* out) {
  using K = typename OrderKey<T>::type;
  auto is_eligible = [eligible](int64_t j) { return eligible == nullptr || eligible[j]; };
  const int64_t m = count_checked(values, b, e, is_eligible, "values");
  GP_CHECK_ARG(k >= 0 && k <= m, "k", "must lie in [0, eligible entries of the segment]: segment [", b, ", ",
               e, ") has ", m, " eligible entries, k = ", k);
  if (k == 0) return;
  auto key_at = [values](int64_t j) {
    const K key = OrderKey<T>::of(values[j]);
    return kLargest ? key : static_cast<K>(~key);
  };
  if (k == m) {
    for_chunks(b, e, [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) out[j] = is_eligible(j);
    });
    return;
  }
  const Entry<K> t = kth_best<K>(b, e, k, key_at, is_eligible);
  for_chunks(b, e, [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) out[j] = is_eligible(j) && at_or_above(key_at(j), j, t);
  });
}

at::Tensor segment_select_cpu(const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& k,
                              const c10::optional<at::Tensor>& eligible, bool largest) {
  check_float_dtype(values, "values");
  check_dim(values, 1, "values");
  const int64_t n = values.numel();
  check_offsets(offsets, n, "values");
  const int64_t L = offsets.numel() - 1;
  check_dim(k, 1, "k");
  GP_CHECK_ARG(k.scalar_type() == at::kLong, "k", "must be int64, got ", k.scalar_type());
  GP_CHECK_ARG(k.numel() == L, "k", "must have one entry per segment (", L, "), got ", k.numel());
  at::Tensor elig;
  if (eligible.has_value()) {
    elig = eligible->contiguous();
    check_flat_bool(elig, n, "eligible", "values");
  }
  const at::Tensor v = values.contiguous(), off = offsets.cpu().contiguous(), kc = k.cpu().contiguous();
  at::Tensor out = at::zeros({n}, values.options().dtype(at::kBool));
  const int64_t* po = off.data_ptr<int64_t>();
  const int64_t* pk = kc.data_ptr<int64_t>();
  const bool* pe = elig.defined() ? elig.data_ptr<bool>() : nullptr;
  bool* pout = out.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "segment_select_cpu", [&] {
    const scalar_t* pv = v.data_ptr<scalar_t>();
    for_segments(po, L, [&](int64_t l) {
      if (largest)
        select_segment<scalar_t, true>(pv, pe, pk[l], po[l], po[l + 1], pout);
      else
        select_segment<scalar_t, false>(pv, pe, pk[l], po[l], po[l + 1], pout);
    });
  });
  return out;
}

// One segment of the SR-popup swap; writes the moves into out (a copy of keep), returns q.
template <typename T>
int64_t popup_segment(const T* scores, const bool* keep, int64_t b, int64_t e, double rate, bool* out) {
  using K = typename OrderKey<T>::type;
  const int64_t n = count_checked(scores, b, e, [keep](int64_t j) { return keep[j]; }, "scores");
  if (n == 0 || n == e - b) return 0;
  auto key_at = [scores](int64_t j) { return OrderKey<T>::of(scores[j]); };
  const Entry<K> t = kth_best<K>(b, e, n, key_at, [](int64_t) { return true; });
  // Phi* (kept, would be dropped) and Psi* (pruned, would be revived) in one pass.
  std::vector<Entry<K>> phi, psi;
  {
    const int64_t slots = std::max<int64_t>(1, at::get_num_threads());
    std::vector<std::vector<Entry<K>>> phis(slots), psis(slots);
    const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const K key = key_at(j);
        const bool top = at_or_above(key, j, t);
        if (keep[j] && !top) phis[c].push_back({key, j});
        if (!keep[j] && top) psis[c].push_back({key, j});
      }
    });
    for (int64_t c = 0; c < chunks; ++c) {
      phi.insert(phi.end(), phis[c].begin(), phis[c].end());
      psi.insert(psi.end(), psis[c].begin(), psis[c].end());
    }
  }
  TORCH_INTERNAL_ASSERT(phi.size() == psi.size(), "popup_swap: |Phi*| != |Psi*|");
  const int64_t s = static_cast<int64_t>(psi.size());
  const int64_t q = static_cast<int64_t>(std::ceil(static_cast<double>(s) * rate));
  if (q < s) {
    std::nth_element(phi.begin(), phi.begin() + q, phi.end(), worse<K>);  // q lowest leave
    std::nth_element(psi.begin(), psi.begin() + q, psi.end(), better<K>);  // q highest join
  }
  for (int64_t i = 0; i < q; ++i) {
    out[phi[i].idx] = false;
    out[psi[i].idx] = true;
  }
  return q;
}

std::tuple<at::Tensor, at::Tensor> popup_swap_cpu(const at::Tensor& scores, const at::Tensor& offsets,
                                                  const at::Tensor& keep, double rate) {
  check_float_dtype(scores, "scores");
  check_dim(scores, 1, "scores");
  const int64_t n = scores.numel();
  check_offsets(offsets, n, "scores");
  check_flat_bool(keep, n, "keep", "scores");
  check_dim(keep, 1, "keep");
  GP_CHECK_ARG(std::isfinite(rate) && rate >= 0 && rate <= 1, "rate", "must lie in [0, 1], got ", rate);
  const int64_t L = offsets.numel() - 1;
  const at::Tensor s = scores.contiguous(), kp = keep.contiguous(), off = offsets.cpu().contiguous();
  at::Tensor out = kp.clone().reshape({n});
  at::Tensor q = at::zeros({L}, offsets.options().device(at::kCPU));
  const int64_t* po = off.data_ptr<int64_t>();
  int64_t* pq = q.data_ptr<int64_t>();
  const bool* pk = kp.data_ptr<bool>();
  bool* pout = out.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "popup_swap_cpu", [&] {
    const scalar_t* ps = s.data_ptr<scalar_t>();
    for_segments(po, L, [&](int64_t l) { pq[l] = popup_segment<scalar_t>(ps, pk, po[l], po[l + 1], rate, pout); });
  });
  return {out, q};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CPU, m) {
  m.impl("segment_select", &segment_select_cpu);
  m.impl("popup_swap", &popup_swap_cpu);
}

}  // namespace greedyprune
