// CPU kernels of segmented selection (docs/DESIGN.md §2.3): `segment_select`
// (k largest/smallest eligible entries per segment) and `popup_swap` (the SR-popup
// restricted swap). Two passes per segment, no sort: a radix histogram of the
// order keys (with the counts and the NaN check of the eligible entries) finds the
// bin of the threshold; a second pass decides every entry outside that bin by its
// bin alone and gathers the bin's entries, among which nth_element places the threshold.
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

constexpr int64_t kGrain = 1 << 16;  // entries per parallel chunk, at least

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

// Per-chunk lists of entries, concatenated in chunk order.
template <typename K, int kLists>
struct ChunkLists {
  std::vector<std::vector<Entry<K>>> lists[kLists];
  ChunkLists() {
    for (auto& l : lists) l.resize(std::max<int64_t>(1, at::get_num_threads()));
  }
  std::vector<Entry<K>> merged(int which, int64_t chunks) {
    std::vector<Entry<K>> all = std::move(lists[which][0]);
    for (int64_t c = 1; c < chunks; ++c) all.insert(all.end(), lists[which][c].begin(), lists[which][c].end());
    return all;
  }
};

// Radix view of one segment [b, e): order keys of `values` (flipped for
// "smallest first") and a histogram of their top bits.
template <typename T, bool kFlip>
struct SegmentRadix {
  using K = typename OrderKey<T>::type;
  const T* values;
  int64_t b, e;
  int shift;
  int64_t bins;
  std::vector<int64_t> hist;

  SegmentRadix(const T* v, int64_t b_, int64_t e_) : values(v), b(b_), e(e_) {
    const int bits = e - b > (1 << 20) ? 16 : e - b > (1 << 12) ? 12 : 4;
    shift = static_cast<int>(sizeof(K)) * 8 - bits;
    bins = int64_t{1} << bits;
  }
  K key(int64_t j) const {
    const K k = OrderKey<T>::of(values[j]);
    return kFlip ? static_cast<K>(~k) : k;
  }
  int64_t bin(K key) const { return static_cast<int64_t>(key >> shift); }

  // Pass 1: histogram of the eligible keys; returns how many entries satisfy
  // count_if. Fails on an eligible NaN (its key lies outside the keys of -inf .. +inf);
  // an entry that is not eligible may hold anything.
  template <typename Eligible, typename CountIf>
  int64_t histogram(Eligible eligible, CountIf count_if, const char* arg) {
    const int64_t slots = std::max<int64_t>(1, at::get_num_threads());
    std::vector<int64_t> local(slots * bins, 0), counted(slots, 0);
    std::vector<char> nan(slots, 0);
    const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
      int64_t* h = local.data() + c * bins;
      int64_t n = 0;
      bool bad = false;
      for (int64_t j = lo; j < hi; ++j) {
        const K raw = OrderKey<T>::of(values[j]);
        const bool in = eligible(j);
        bad |= in & ((raw < OrderKey<T>::kMin) | (raw > OrderKey<T>::kMax));
        if (in) ++h[bin(kFlip ? static_cast<K>(~raw) : raw)];
        n += count_if(j) ? 1 : 0;
      }
      counted[c] = n;
      nan[c] = bad;
    });
    hist.assign(bins, 0);
    int64_t total = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      GP_CHECK_ARG(!nan[c], arg, "must not contain NaN (segment starting at ", b, ")");
      total += counted[c];
      for (int64_t i = 0; i < bins; ++i) hist[i] += local[c * bins + i];
    }
    return total;
  }

  // The bin that holds the k-th best eligible entry (1 <= k <= eligible entries),
  // and that entry's rank inside the bin.
  std::pair<int64_t, int64_t> find(int64_t k) const {
    int64_t above = 0;
    for (int64_t i = bins - 1;; --i) {
      if (above + hist[i] >= k) return {i, k - above};
      above += hist[i];
    }
  }
};

// The need-th best of the gathered entries of the threshold bin.
template <typename K>
Entry<K> threshold(std::vector<Entry<K>>& cand, int64_t need) {
  std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), better<K>);
  return cand[need - 1];
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
  SegmentRadix<T, !kLargest> radix(values, b, e);
  const int64_t m = radix.histogram(is_eligible, is_eligible, "values");
  GP_CHECK_ARG(k >= 0 && k <= m, "k", "must lie in [0, eligible entries of the segment]: segment [", b, ", ",
               e, ") has ", m, " eligible entries, k = ", k);
  if (k == 0) return;
  if (k == m) {
    for_chunks(b, e, [&](int64_t, int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) out[j] = is_eligible(j);
    });
    return;
  }
  const auto [bin, need] = radix.find(k);
  // Pass 2: bins above the threshold's are selected, bins below are not; gather its bin.
  ChunkLists<K, 1> lists;
  const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      if (!is_eligible(j)) continue;
      const K key = radix.key(j);
      const int64_t kb = radix.bin(key);
      out[j] = kb > bin;
      if (kb == bin) lists.lists[0][c].push_back({key, j});
    }
  });
  std::vector<Entry<K>> cand = lists.merged(0, chunks);
  const Entry<K> t = threshold(cand, need);
  for (const Entry<K>& x : cand) out[x.idx] = at_or_above(x.key, x.idx, t);
}

at::Tensor segment_select_cpu(const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& k,
                              const c10::optional<at::Tensor>& eligible, bool largest) {
  check_float_dtype(values, "values");
  check_dim(values, 1, "values");
  const int64_t n = values.numel();
  check_offsets(offsets, n, "values");
  const int64_t L = offsets.numel() - 1;
  const at::Tensor elig = check_select_k_eligible(values, L, k, eligible);
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
  SegmentRadix<T, false> radix(scores, b, e);
  const int64_t n = radix.histogram([](int64_t) { return true; }, [keep](int64_t j) { return keep[j]; }, "scores");
  if (n == 0 || n == e - b) return 0;
  const auto [bin, need] = radix.find(n);
  // Pass 2: Phi* (kept, would be dropped) and Psi* (pruned, would be revived) are
  // decided by bin outside the threshold's bin; its own entries are gathered.
  enum { kCand, kPhi, kPsi };
  ChunkLists<K, 3> lists;
  const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const K key = radix.key(j);
      const int64_t kb = radix.bin(key);
      if (kb == bin)
        lists.lists[kCand][c].push_back({key, j});
      else if (keep[j] && kb < bin)
        lists.lists[kPhi][c].push_back({key, j});
      else if (!keep[j] && kb > bin)
        lists.lists[kPsi][c].push_back({key, j});
    }
  });
  std::vector<Entry<K>> cand = lists.merged(kCand, chunks), phi = lists.merged(kPhi, chunks),
                        psi = lists.merged(kPsi, chunks);
  const Entry<K> t = threshold(cand, need);
  for (const Entry<K>& x : cand) {
    const bool top = at_or_above(x.key, x.idx, t);
    if (keep[x.idx] && !top) phi.push_back(x);
    if (!keep[x.idx] && top) psi.push_back(x);
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
  check_popup_keep_rate(scores, keep, rate);
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
