// CPU kernels of segmented selection (docs/DESIGN.md §2.3): `segment_select`
// (k largest/smallest eligible entries per segment) and `popup_swap` (the SR-popup
// restricted swap). No sort.
//
// Sampled path, for segments of at least kSampledMin entries: one pass over the entries.
// A strided sample of each such segment (every stride-th entry, stride the least prime >=
// isqrt(n) / 8: about 8 sqrt(n) entries) gives a bracket [hi .. lo] of values that holds
// the threshold with high probability (kBracketSigmas standard deviations of its rank in
// the sample either side). One pass over all these segments at once, in pieces that free
// threads take, compares each group of 64 entries with the bracket into bit masks (for float
// where the build has AVX2: compares packed to bytes, one movemask per 32 entries, and a NaN
// test per 8 entries), decides every entry outside
// the bracket from them (counting those ahead of hi), gathers the bracket's entries (and,
// for popup_swap, the Phi* and Psi* entries outside it) from the masks' set bits, counts
// the eligible (or kept) entries and checks for NaN; popup_swap's pass also copies keep
// into the result. The thread that completes a segment's last piece finishes it: if the
// counts show that the threshold lies in the bracket, nth_of (a radix histogram, then
// nth_element on one bin) finds the threshold among the gathered entries; otherwise (the
// sample missed) the exact path redoes the segment.
// Exact path, for the other segments (shorter ones, and those whose bracket ties make
// wide): two passes. A radix histogram of the order keys finds the bin of the threshold;
// a second pass decides every entry outside that bin by its bin alone and gathers the
// bin's entries, among which nth_of finds the threshold.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../checks.h"
#include "order_key.h"

namespace greedyprune {
namespace {

constexpr int64_t kGrain = 1 << 16;       // entries per parallel chunk of the exact path, at least
constexpr int64_t kSampledMin = 1 << 16;  // segments at least this long take the sampled path
constexpr int64_t kPassChunk = 1 << 16;   // entries per task of the sampled pass
constexpr int64_t kFlagBlock = 4096;      // entries whose masks the sampled pass gathers at once
constexpr double kBracketSigmas = 3.0;    // bracket half-width in standard deviations of the sample rank    // bracket half-width in standard deviations of the sample rank
constexpr double kBracketSlack = 2.0;     // and this many sample entries more
constexpr int64_t kWideBracket = 4;       // a bracket with over 1/4 of the sample: ties; the exact path
constexpr int64_t kPrefetchAhead = 2048;  // entries the sampled pass reads ahead (hardware prefetch alone lags)
constexpr int64_t kSamplePrefetch = 32;
constexpr int kBracketUnrolled = 2;   // bracket entries a group's gather takes without a branch   // sample entries read ahead: each lies in its own cache line
constexpr int64_t kRadixNthMin = 1024;    // fewer entries: plain nth_element in nth_of
constexpr int kRadixNthBits = 11;         // nth_of's histogram: 2^11 bins

// The selection order: larger key first, then lower index.
template <typename K>
struct Entry {
  K key;
  int64_t idx;
  Entry() {}  // left unset: lists of entries are sized first, then written
  Entry(K key_, int64_t idx_) : key(key_), idx(idx_) {}
};
template <typename K>
inline bool better(const Entry<K>& x, const Entry<K>& y) {
  return (x.key > y.key) | ((x.key == y.key) & (x.idx < y.idx));  // no short circuit: no branch to mispredict
}
template <typename K>
inline bool worse(const Entry<K>& x, const Entry<K>& y) {
  return better(y, x);
}

template <typename K>
struct Span {
  const Entry<K>* data;
  int64_t size;
};
template <typename K>
Span<K> span_of(const std::vector<Entry<K>>& v) {
  return {v.data(), static_cast<int64_t>(v.size())};
}

// The entry of position nth (0-based) of `parts` in the order `better` (or `worse`), as
// std::nth_element would place it; on many entries faster than nth_element over all of
// them, whose compares mispredict: a histogram of the keys' leading bits (above the bits
// they all share) finds the bin of the nth entry, and nth_element runs on that bin alone.
template <bool kBestFirst, typename K>
Entry<K> nth_of(const std::vector<Span<K>>& parts, int64_t nth) {
  const auto order = [](const Entry<K>& x, const Entry<K>& y) { return kBestFirst ? better(x, y) : worse(x, y); };
  const auto rank_key = [](K key) { return kBestFirst ? key : static_cast<K>(~key); };  // larger goes first
  int64_t n = 0;
  for (const Span<K>& p : parts) n += p.size;
  K lo = std::numeric_limits<K>::max(), hi = 0;
  if (n >= kRadixNthMin)
    for (const Span<K>& p : parts)
      for (int64_t i = 0; i < p.size; ++i) {
        lo = std::min(lo, rank_key(p.data[i].key));
        hi = std::max(hi, rank_key(p.data[i].key));
      }
  std::vector<Entry<K>> bin_entries;
  if (n < kRadixNthMin || lo == hi) {  // few entries, or one key: no bins to tell them apart
    bin_entries.reserve(n);
    for (const Span<K>& p : parts) bin_entries.insert(bin_entries.end(), p.data, p.data + p.size);
  } else {
    int shift = 0;
    while (((hi - lo) >> shift) >> kRadixNthBits) ++shift;
    const auto bin = [&](const Entry<K>& x) { return static_cast<int64_t>((rank_key(x.key) - lo) >> shift); };
    std::vector<int64_t> hist(int64_t{1} << kRadixNthBits, 0);
    for (const Span<K>& p : parts)
      for (int64_t i = 0; i < p.size; ++i) ++hist[bin(p.data[i])];
    int64_t nth_bin = static_cast<int64_t>(hist.size()) - 1;
    for (; hist[nth_bin] <= nth; --nth_bin) nth -= hist[nth_bin];
    bin_entries.reserve(hist[nth_bin]);
    for (const Span<K>& p : parts)
      for (int64_t i = 0; i < p.size; ++i)
        if (bin(p.data[i]) == nth_bin) bin_entries.push_back(p.data[i]);
  }
  std::nth_element(bin_entries.begin(), bin_entries.begin() + nth, bin_entries.end(), order);
  return bin_entries[nth];
}

template <bool kBestFirst, typename K>
Entry<K> nth_of(const std::vector<Entry<K>>& entries, int64_t nth) {
  return nth_of<kBestFirst>(std::vector<Span<K>>{span_of(entries)}, nth);
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

// Runs f(i) for every i in [0, count) on all threads, each thread taking the next i when
// it is free: the tasks differ in cost, and a thread may be slowed by other processes.
template <typename F>
void for_each_task(int64_t count, F&& f) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::max(1, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < count; i = next++) f(i);
  });
}

// ------------------------------------------------------------------ exact path

// Per-chunk lists of entries.
template <typename K, int kLists>
struct ChunkLists {
  std::vector<std::vector<Entry<K>>> lists[kLists];
  ChunkLists() {
    for (auto& l : lists) l.resize(std::max<int64_t>(1, at::get_num_threads()));
  }
  std::vector<Span<K>> spans(int which, int64_t chunks) const {
    std::vector<Span<K>> parts;
    for (int64_t c = 0; c < chunks; ++c) parts.push_back(span_of(lists[which][c]));
    return parts;
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

// out[j] = whether entry j of `parts` is not behind t in the selection order (branch-free:
// the entries near the threshold fall either way).
template <typename K>
void select_up_to(const std::vector<Span<K>>& parts, const Entry<K>& t, bool* out) {
  for (const Span<K>& p : parts)
    for (int64_t i = 0; i < p.size; ++i) out[p.data[i].idx] = !better(t, p.data[i]);
}

// One segment of segment_select by the exact path; writes every entry of out there.
template <typename T, bool kLargest>
void select_segment(const T* values, const bool* eligible, int64_t k, int64_t b, int64_t e, bool* out) {
  using K = typename OrderKey<T>::type;
  std::fill(out + b, out + e, false);
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
  select_up_to(lists.spans(0, chunks), nth_of<true>(lists.spans(0, chunks), need - 1), out);
}

// Appends to `to` the entries of `parts` that are (kIn) or are not (!kIn) in T, whose
// last entry is t. Branch-free: the entries near the threshold fall either way.
template <bool kIn, typename K>
void append_by_side(std::vector<Entry<K>>& to, const std::vector<Span<K>>& parts, const Entry<K>& t) {
  int64_t used = static_cast<int64_t>(to.size());
  for (const Span<K>& p : parts) {
    to.resize(used + p.size);
    for (int64_t i = 0; i < p.size; ++i) {
      to[used] = p.data[i];
      used += better(t, p.data[i]) != kIn;
    }
  }
  to.resize(used);
}

// The swap once the rank `need` of the threshold among the undecided entries is known
// (those kept and those pruned, apart): the undecided entries up to the threshold are in
// T, the rest not. With the Phi* and Psi* entries already known (`decided`: they lie
// behind or ahead of every undecided entry), the q lowest of Phi* leave and the q
// highest of Psi* join in out. Returns q.
template <typename K>
int64_t swap(const std::vector<Span<K>>& undecided_kept, const std::vector<Span<K>>& undecided_pruned,
             const std::vector<Span<K>>& decided, int64_t need, double rate, bool* out) {
  std::vector<Span<K>> undecided = undecided_kept;
  undecided.insert(undecided.end(), undecided_pruned.begin(), undecided_pruned.end());
  const Entry<K> t = nth_of<true>(undecided, need - 1);
  std::vector<Entry<K>> phi, psi;
  append_by_side<false>(phi, undecided_kept, t);
  append_by_side<false>(phi, decided, t);
  append_by_side<true>(psi, undecided_pruned, t);
  append_by_side<true>(psi, decided, t);
  TORCH_INTERNAL_ASSERT(phi.size() == psi.size(), "popup_swap: |Phi*| != |Psi*|");
  const int64_t s = static_cast<int64_t>(psi.size());
  const int64_t q = static_cast<int64_t>(std::ceil(static_cast<double>(s) * rate));
  if (q == 0) return 0;
  // The q lowest of Phi* leave, up to the q-th in the order `worse`; the q highest of Psi* join.
  const Entry<K> last_leaving = nth_of<false>(phi, q - 1), last_joining = nth_of<true>(psi, q - 1);
  for (const Entry<K>& x : phi) out[x.idx] = worse(last_leaving, x);  // kept unless it leaves
  for (const Entry<K>& x : psi) out[x.idx] = !better(last_joining, x);  // pruned unless it joins
  return q;
}

// One segment of the SR-popup swap by the exact path; out holds keep there. Returns q.
template <typename T>
int64_t popup_segment(const T* scores, const bool* keep, int64_t b, int64_t e, double rate, bool* out) {
  using K = typename OrderKey<T>::type;
  SegmentRadix<T, false> radix(scores, b, e);
  const int64_t n = radix.histogram([](int64_t) { return true; }, [keep](int64_t j) { return keep[j]; }, "scores");
  if (n == 0 || n == e - b) return 0;
  const auto [bin, need] = radix.find(n);
  // Pass 2: Phi* (kept, would be dropped) and Psi* (pruned, would be revived) are
  // decided by bin outside the threshold's bin; its own entries are gathered.
  enum { kBinKept, kBinPruned, kDecided };
  ChunkLists<K, 3> lists;
  const int64_t chunks = for_chunks(b, e, [&](int64_t c, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const K key = radix.key(j);
      const int64_t kb = radix.bin(key);
      if (kb == bin)
        lists.lists[keep[j] ? kBinKept : kBinPruned][c].push_back({key, j});
      else if (keep[j] ? kb < bin : kb > bin)
        lists.lists[kDecided][c].push_back({key, j});
    }
  });
  return swap(lists.spans(kBinKept, chunks), lists.spans(kBinPruned, chunks), lists.spans(kDecided, chunks), need,
              rate, out);
}

// ------------------------------------------------------------------ sampled path

// Values are compared in float (double for double): exact for every dtype, and the order of
// non-NaN values is the order of their keys (-0.0 == +0.0 as well).
template <typename T>
using CompareIn = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Whether a goes before b in the selection order (NaN goes nowhere).
template <bool kLargest, typename V>
inline bool ahead(V a, V b) {
  return kLargest ? a > b : a < b;
}
template <bool kLargest, typename V>
inline bool ahead_or_tied(V a, V b) {
  return kLargest ? a >= b : a <= b;
}

template <typename T, bool kLargest>
inline typename OrderKey<T>::type order_key(T value) {
  const auto k = OrderKey<T>::of(value);
  return kLargest ? k : static_cast<decltype(k)>(~k);
}

inline bool is_prime(int64_t x) {
  if (x < 2) return false;
  for (int64_t d = 2; d * d <= x; ++d)
    if (x % d == 0) return false;
  return true;
}

// The sample of a segment of n entries is every stride-th entry from its start. About
// 8 sqrt(n) entries balance the sample's cost against the bracket's (~ n / sqrt(sample));
// a prime stride does not alias the power-of-two or 3x3 periods of weight layouts.
inline int64_t sample_stride(int64_t n) {
  int64_t root = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (root * root > n) --root;
  while ((root + 1) * (root + 1) <= n) ++root;
  int64_t stride = std::max<int64_t>(2, root / 8);
  while (!is_prime(stride)) ++stride;
  return stride;
}

// The sample of segment [b, e): every sample_stride-th entry that `take(j)` accepts and that
// is not NaN, as (order key, index), and how many positions were read. `flags` (eligible or
// keep, may be null) is read ahead with the values; take may count them too.
template <typename K>
struct Sample {
  std::vector<Entry<K>> entries;
  double positions;
};
template <typename T, bool kLargest, typename Take>
Sample<typename OrderKey<T>::type> strided_sample(const T* values, const bool* flags, int64_t b, int64_t e,
                                                  Take take) {
  const int64_t n = e - b, stride = sample_stride(n);
  Sample<typename OrderKey<T>::type> sample{{}, static_cast<double>((n + stride - 1) / stride)};
  sample.entries.reserve(n / stride + 1);
  for (int64_t j = b; j < e; j += stride) {
    __builtin_prefetch(values + j + kSamplePrefetch * stride);
    if (flags != nullptr) __builtin_prefetch(flags + j + kSamplePrefetch * stride);
    const CompareIn<T> v = static_cast<CompareIn<T>>(values[j]);
    if (take(j) && v == v) sample.entries.push_back({order_key<T, kLargest>(values[j]), j});
  }
  return sample;
}

// Entries ahead of hi are in, entries behind lo are out, those in [hi .. lo] are
// gathered (hi may be ahead of every value and lo behind every value).
template <typename V>
struct Bracket {
  V hi, lo;
};

// The bracket around the entry of rank `rank` (0-based, best first) of `sample` (the
// entries that count, of `positions` read): the threshold's rank in the sample is binomial
// over the positions, and the bracket reaches kBracketSigmas times `spread` of its standard
// deviations either side (spread > 1 where `rank` is itself estimated from the sample).
// None where ties at an end would put over 1/kWideBracket of the sample in it (scores 1
// and 0.99, say): the exact path gathers just the threshold's radix bin.
template <bool kLargest, typename T, typename K>
std::optional<Bracket<CompareIn<T>>> bracket_around(const T* values, const std::vector<Entry<K>>& sample, double rank,
                                                    double positions, double spread) {
  using V = CompareIn<T>;
  constexpr V kInf = std::numeric_limits<V>::infinity();
  Bracket<V> br{kLargest ? kInf : -kInf, kLargest ? -kInf : kInf};
  const int64_t s = static_cast<int64_t>(sample.size());
  if (s == 0) return br;
  rank = std::clamp(rank, 0.0, static_cast<double>(s));
  const double sigma = std::sqrt(rank * std::max(0.0, 1.0 - rank / positions));
  const double half = kBracketSigmas * spread * sigma + kBracketSlack;
  const int64_t hi = static_cast<int64_t>(std::floor(rank - half)), lo = static_cast<int64_t>(std::ceil(rank + half));
  int64_t inside = s;  // sample entries in the bracket
  K lo_key = 0, hi_key = std::numeric_limits<K>::max();
  if (lo < s) {
    const Entry<K> at_lo = nth_of<true>(sample, lo);
    lo_key = at_lo.key;
    br.lo = static_cast<V>(values[at_lo.idx]);
    inside = std::count_if(sample.begin(), sample.end(), [lo_key](const Entry<K>& x) { return x.key >= lo_key; });
  }
  if (hi >= 0) {
    const Entry<K> at_hi = nth_of<true>(sample, hi);
    hi_key = at_hi.key;
    br.hi = static_cast<V>(values[at_hi.idx]);
    inside -= std::count_if(sample.begin(), sample.end(), [hi_key](const Entry<K>& x) { return x.key > hi_key; });
  }
  // A bracket within one tie group stays: the threshold lies in it, and the exact path's
  // bin would hold all of it too.
  if (inside * kWideBracket > s && hi_key != lo_key) return std::nullopt;
  return br;
}

// A piece of a sampled segment for one task of the pass, and what the pass found there.
template <typename K>
struct Tally {
  int64_t segment, b, e;
  int64_t ahead = 0;      // (eligible) entries ahead of hi
  int64_t bracketed = 0;  // (eligible) entries in the bracket
  int64_t counted = 0;    // eligible entries (segment_select) or kept ones (popup_swap)
  bool nan = false;       // an eligible NaN
  std::vector<Entry<K>> bracket;  // the (eligible, or for popup_swap kept) entries in the bracket
  std::vector<Entry<K>> bracket_pruned, outside;  // popup_swap: the pruned ones; those in Phi* or Psi* outside
};

// The segments long enough to sample, longest first (for_each_task balances best so).
std::vector<int64_t> long_segments(const int64_t* off, int64_t num_segments) {
  std::vector<int64_t> long_ones;
  for (int64_t l = 0; l < num_segments; ++l)
    if (off[l + 1] - off[l] >= kSampledMin) long_ones.push_back(l);
  std::stable_sort(long_ones.begin(), long_ones.end(),
                   [off](int64_t x, int64_t y) { return off[x + 1] - off[x] > off[y + 1] - off[y]; });
  return long_ones;
}

// The segments that take the sampled path (those with a bracket) and the pieces of the
// pass over them.
template <typename K>
struct SampledPass {
  std::vector<Tally<K>> tallies;  // in segment order
  std::vector<int64_t> first;     // segment l's pieces: tallies[first[l] .. first[l + 1])

  template <typename V>
  SampledPass(const int64_t* off, const std::vector<std::optional<Bracket<V>>>& brackets)
      : first(brackets.size() + 1, 0) {
    const int64_t num_segments = static_cast<int64_t>(brackets.size());
    for (int64_t l = 0; l < num_segments; ++l) {
      first[l] = static_cast<int64_t>(tallies.size());
      if (!brackets[l]) continue;
      for (int64_t b = off[l]; b < off[l + 1]; b += kPassChunk)
        tallies.push_back(Tally<K>{l, b, std::min(b + kPassChunk, off[l + 1])});
    }
    first[num_segments] = static_cast<int64_t>(tallies.size());
  }
  bool sampled(int64_t l) const { return first[l + 1] > first[l]; }
  // Segment l's counts and NaN flag, summed over its pieces (no lists).
  Tally<K> total(int64_t l) const {
    Tally<K> sum{l, 0, 0};
    for (int64_t p = first[l]; p < first[l + 1]; ++p) {
      sum.ahead += tallies[p].ahead;
      sum.bracketed += tallies[p].bracketed;
      sum.counted += tallies[p].counted;
      sum.nan |= tallies[p].nan;
    }
    return sum;
  }
  std::vector<Span<K>> spans(int64_t l, std::vector<Entry<K>> Tally<K>::*list) const {
    std::vector<Span<K>> parts;
    for (int64_t p = first[l]; p < first[l + 1]; ++p) parts.push_back(span_of(tallies[p].*list));
    return parts;
  }
};

// Bit i of a mask stands for entry i of a group of (at most) kGroup entries.
constexpr int64_t kGroup = 64;

// A group's comparisons with a bracket: its entries ahead of hi, reaching lo (ahead of or
// tied with it), and its NaN entries (in neither).
struct GroupMasks {
  uint64_t ahead_of_hi = 0, reaches_lo = 0, nan = 0;
  // The entries behind lo, of the group's `all` (first_bits of its count).
  uint64_t behind_lo(uint64_t all) const { return all & ~(reaches_lo | nan); }
};

#if defined(__AVX2__)
// The sign bits of 4 x 8 compare results (all ones or zeros per lane), in entry order: two
// saturating packs narrow them to bytes (interleaving 4-entry quarters), a permute restores
// the order, one movemask reads 32 entries.
inline uint32_t bits_of_compares(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256i ab = _mm256_packs_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b));
  const __m256i cd = _mm256_packs_epi32(_mm256_castps_si256(c), _mm256_castps_si256(d));
  const __m256i quarters = _mm256_packs_epi16(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
  return uint32_t(_mm256_movemask_epi8(_mm256_permutevar8x32_epi32(quarters, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))));
}

inline uint64_t bits_of_compares(const __m256* c) {
  return uint64_t(bits_of_compares(c[0], c[1], c[2], c[3])) | uint64_t(bits_of_compares(c[4], c[5], c[6], c[7])) << 32;
}

// compare_group on a full group of floats: two compares per 8 entries, packed into masks;
// a NaN test per 8 entries that builds the NaN mask only where one is found (an error).
template <bool kLargest>
inline GroupMasks compare_floats(const float* values, float hi, float lo) {
  constexpr int kAhead = kLargest ? _CMP_GT_OQ : _CMP_LT_OQ, kReaches = kLargest ? _CMP_GE_OQ : _CMP_LE_OQ;
  const __m256 his = _mm256_set1_ps(hi), los = _mm256_set1_ps(lo);
  __m256 ahead[kGroup / 8], reaches[kGroup / 8], unordered = _mm256_setzero_ps();
  for (int q = 0; q < kGroup / 8; ++q) {
    const __m256 v = _mm256_loadu_ps(values + 8 * q);
    ahead[q] = _mm256_cmp_ps(v, his, kAhead);
    reaches[q] = _mm256_cmp_ps(v, los, kReaches);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  GroupMasks m;
  m.ahead_of_hi = bits_of_compares(ahead);
  m.reaches_lo = bits_of_compares(reaches);
  if (!_mm256_testz_ps(unordered, unordered)) {
    for (int q = 0; q < kGroup / 8; ++q) {
      const __m256 v = _mm256_loadu_ps(values + 8 * q);
      ahead[q] = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    }
    m.nan = bits_of_compares(ahead);
  }
  return m;
}
#endif

// The masks of the `count` (<= kGroup) entries from `values`; the group kPrefetchAhead
// entries on is prefetched (a prefetch past the end of the data does not fault).
template <bool kLargest, typename T>
inline GroupMasks compare_group(const T* values, int64_t count, CompareIn<T> hi, CompareIn<T> lo) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t i = 0; i < kGroup; i += kLine) __builtin_prefetch(values + kPrefetchAhead + i);
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (count == kGroup) return compare_floats<kLargest>(values, hi, lo);
#endif
  GroupMasks m;
  for (int64_t i = 0; i < count; ++i) {
    const CompareIn<T> v = static_cast<CompareIn<T>>(values[i]);
    m.ahead_of_hi |= uint64_t{ahead<kLargest>(v, hi)} << i;
    m.reaches_lo |= uint64_t{ahead_or_tied<kLargest>(v, lo)} << i;
    m.nan |= uint64_t{v != v} << i;
  }
  return m;
}

// The mask of `count` (<= kGroup) bytes that are 0 or 1 (bools).
inline uint64_t mask_of_bytes(const uint8_t* bytes, int64_t count) {
#if defined(__AVX2__)
  if (count == kGroup) {  // the low bit of each byte to its top, then a movemask per 32
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
    const __m256i high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + 32));
    return uint64_t(uint32_t(_mm256_movemask_epi8(_mm256_slli_epi16(low, 7)))) |
           uint64_t(uint32_t(_mm256_movemask_epi8(_mm256_slli_epi16(high, 7)))) << 32;
  }
#endif
  uint64_t mask = 0;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {  // a multiply gathers the low bits of 8 bytes
    uint64_t word;
    std::memcpy(&word, bytes + i, sizeof(word));
    mask |= ((word * 0x0102040810204080ull) >> 56) << i;
  }
  for (; i < count; ++i) mask |= uint64_t{bytes[i]} << i;
  return mask;
}

// The 8 bytes (0 or 1) of each 8-bit mask.
constexpr std::array<uint64_t, 256> kBytesOfBits = [] {
  std::array<uint64_t, 256> bytes{};
  for (int bits = 0; bits < 256; ++bits)
    for (int i = 0; i < 8; ++i) bytes[bits] |= uint64_t((bits >> i) & 1) << (8 * i);
  return bytes;
}();

// bytes[i] = bit i of mask, for `count` (<= kGroup) bytes.
inline void store_bits(uint64_t mask, int64_t count, uint8_t* bytes) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) std::memcpy(bytes + i, &kBytesOfBits[(mask >> i) & 0xff], 8);
  for (; i < count; ++i) bytes[i] = (mask >> i) & 1;
}

// All `count` (<= kGroup) bits.
inline uint64_t first_bits(int64_t count) { return count == kGroup ? ~uint64_t{0} : (uint64_t{1} << count) - 1; }

// Appends the entries of the set bits of a block's group masks (group g's entry i is j0 +
// kGroup g + i) to `list`, in order; returns their count. Where groups hold a few bits each
// (a bracket's entries), a loop per group would mispredict its exit about once a group: the
// first kUnrolled bits of each group are taken without a branch (a slot is written whether or
// not a bit is left; it counts only if one was), a loop takes the rest.
template <int kUnrolled, typename K, typename KeyOf>
inline int64_t append_masked(std::vector<Entry<K>>& list, const uint64_t* masks, int64_t groups, int64_t j0,
                             KeyOf key_of) {
  int64_t count = 0;
  for (int64_t g = 0; g < groups; ++g) count += __builtin_popcountll(masks[g]);
  if (count == 0) return 0;
  const size_t used = list.size();
  list.resize(used + count + kUnrolled);  // room for the slots written past the last entry
  Entry<K>* next = list.data() + used;
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t mask = masks[g];
    const int64_t base = j0 + kGroup * g;
    for (int r = 0; r < kUnrolled; ++r) {
      const int64_t j = base + __builtin_ctzll(mask | uint64_t{mask == 0});  // no bit left: the group's first entry
      *next = {key_of(j), j};
      next += mask != 0;
      mask &= mask - 1;
    }
    for (; mask != 0; mask &= mask - 1) {
      const int64_t j = base + __builtin_ctzll(mask);
      *next++ = {key_of(j), j};
    }
  }
  list.resize(used + count);
  return count;
}

// Runs group(g, j, count) for every group of (at most) kGroup entries of a piece, g counting
// within a block of kFlagBlock entries from j0, and block(j0, groups) after each block's
// groups: the sampled passes gather a block's masked entries at once.
template <typename K, typename Group, typename Block>
inline void for_groups(const Tally<K>& tally, Group group, Block block) {
  for (int64_t j0 = tally.b; j0 < tally.e; j0 += kFlagBlock) {
    const int64_t groups = (std::min(kFlagBlock, tally.e - j0) + kGroup - 1) / kGroup;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t j = j0 + kGroup * g;
      group(g, j, std::min(kGroup, tally.e - j));
    }
    block(j0, groups);
  }
}

// Runs the sampled pass's pieces (run_piece(tally)) on all threads, and every segment's
// finish. A sampled segment's (finish_sampled(l): false where the sample missed) by the
// thread that completes its last piece, while its entries are still in cache. The exact
// path (exact(l)) takes the other segments in the same tasks, longest first, but for one
// longer than a thread's share of all entries; that one, and those whose sample missed,
// after all tasks, one at a time with parallel passes. Errors are thrown after all, the
// first segment's.
template <typename K, typename RunPiece, typename FinishSampled, typename Exact>
void run_pass(SampledPass<K>& pass, const int64_t* off, int64_t num_segments, RunPiece run_piece,
              FinishSampled finish_sampled, Exact exact) {
  std::vector<std::atomic<int64_t>> pieces_left(num_segments);
  std::vector<int64_t> exact_tasks;
  std::vector<char> long_exact(num_segments, 0);
  const int64_t share = off[num_segments] / std::max(1, at::get_num_threads());
  for (int64_t l = 0; l < num_segments; ++l) {
    pieces_left[l] = pass.first[l + 1] - pass.first[l];
    if (pass.sampled(l)) continue;
    if (off[l + 1] - off[l] <= std::max(share, kSampledMin - 1))
      exact_tasks.push_back(l);
    else
      long_exact[l] = 1;
  }
  std::stable_sort(exact_tasks.begin(), exact_tasks.end(),
                   [off](int64_t x, int64_t y) { return off[x + 1] - off[x] > off[y + 1] - off[y]; });
  std::vector<std::exception_ptr> errors(num_segments);
  const auto caught = [&](int64_t l, auto&& f) {
    try {
      f();
    } catch (...) {
      errors[l] = std::current_exception();
    }
  };
  const int64_t pieces = static_cast<int64_t>(pass.tallies.size());
  for_each_task(pieces + static_cast<int64_t>(exact_tasks.size()), [&](int64_t i) {
    if (i >= pieces) {
      const int64_t l = exact_tasks[i - pieces];
      return caught(l, [&] { exact(l); });
    }
    const int64_t l = pass.tallies[i].segment;
    run_piece(pass.tallies[i]);
    if (pieces_left[l].fetch_sub(1, std::memory_order_acq_rel) == 1)
      caught(l, [&] { long_exact[l] = !finish_sampled(l); });
  });
  for (int64_t l = 0; l < num_segments; ++l)
    if (long_exact[l]) caught(l, [&] { exact(l); });
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

// The sampled pass over one piece of segment_select: out[j] = eligible and ahead of hi;
// gathers the eligible entries in the bracket. It works on 64-bit masks of groups of
// entries: bool arrays are read and written as bytes.
template <typename T, bool kLargest, bool kMasked>
void select_pass(const T* values, const uint8_t* eligible, const Bracket<CompareIn<T>>& br, uint8_t* out,
                 Tally<typename OrderKey<T>::type>& tally) {
  const CompareIn<T> hi = br.hi, lo = br.lo;  // locals: out's bytes could alias br
  uint64_t bracketed[kFlagBlock / kGroup], nan = 0;
  for_groups(
      tally,
      [&](int64_t g, int64_t j, int64_t count) {
        const GroupMasks m = compare_group<kLargest>(values + j, count, hi, lo);
        const uint64_t el = kMasked ? mask_of_bytes(eligible + j, count) : first_bits(count);
        const uint64_t in = el & m.ahead_of_hi;
        store_bits(in, count, out + j);
        bracketed[g] = el & m.reaches_lo & ~m.ahead_of_hi;
        tally.ahead += __builtin_popcountll(in);
        tally.counted += __builtin_popcountll(el);
        nan |= el & m.nan;
      },
      [&](int64_t j0, int64_t groups) {
        tally.bracketed += append_masked<kBracketUnrolled>(
            tally.bracket, bracketed, groups, j0, [values](int64_t j) { return order_key<T, kLargest>(values[j]); });
      });
  tally.nan |= nan != 0;
}

template <typename T, bool kLargest>
void segment_select_typed(const T* values, const bool* eligible, const int64_t* k, const int64_t* off,
                          int64_t num_segments, bool* out) {
  using K = typename OrderKey<T>::type;
  const std::vector<int64_t> long_ones = long_segments(off, num_segments);
  std::vector<std::optional<Bracket<CompareIn<T>>>> brackets(num_segments);
  for_each_task(static_cast<int64_t>(long_ones.size()), [&](int64_t i) {
    const int64_t l = long_ones[i], n = off[l + 1] - off[l];
    const Sample<K> sample = strided_sample<T, kLargest>(values, eligible, off[l], off[l + 1], [eligible](int64_t j) {
      return eligible == nullptr || eligible[j];
    });
    brackets[l] = bracket_around<kLargest>(values, sample.entries, static_cast<double>(k[l]) * sample.positions / n,
                                           sample.positions, 1.0);
  });
  SampledPass<K> pass(off, brackets);

  uint8_t* out_bytes = reinterpret_cast<uint8_t*>(out);
  const auto run_piece = [&](Tally<K>& t) {
    if (eligible != nullptr)
      select_pass<T, kLargest, true>(values, reinterpret_cast<const uint8_t*>(eligible), *brackets[t.segment],
                                     out_bytes, t);
    else
      select_pass<T, kLargest, false>(values, nullptr, *brackets[t.segment], out_bytes, t);
  };
  const auto finish_sampled = [&](int64_t l) {
    const int64_t b = off[l], e = off[l + 1];
    const Tally<K> total = pass.total(l);
    GP_CHECK_ARG(!total.nan, "values", "must not contain NaN (segment starting at ", b, ")");
    GP_CHECK_ARG(k[l] >= 0 && k[l] <= total.counted, "k", "must lie in [0, eligible entries of the segment]: segment [",
                 b, ", ", e, ") has ", total.counted, " eligible entries, k = ", k[l]);
    if (k[l] == 0 || k[l] == total.counted) {  // no threshold to find
      for (int64_t j = b; j < e; ++j) out[j] = k[l] != 0 && (eligible == nullptr || eligible[j]);
      return true;
    }
    if (total.ahead >= k[l] || k[l] > total.ahead + total.bracketed) return false;
    const std::vector<Span<K>> bracket = pass.spans(l, &Tally<K>::bracket);
    select_up_to(bracket, nth_of<true>(bracket, k[l] - total.ahead - 1), out);
    return true;
  };
  const auto exact = [&](int64_t l) { select_segment<T, kLargest>(values, eligible, k[l], off[l], off[l + 1], out); };
  run_pass(pass, off, num_segments, run_piece, finish_sampled, exact);
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
  at::Tensor out = at::empty({n}, values.options().dtype(at::kBool));  // every entry is written
  const int64_t* po = off.data_ptr<int64_t>();
  const int64_t* pk = kc.data_ptr<int64_t>();
  const bool* pe = elig.defined() ? elig.data_ptr<bool>() : nullptr;
  bool* pout = out.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "segment_select_cpu", [&] {
    const scalar_t* pv = v.data_ptr<scalar_t>();
    if (largest)
      segment_select_typed<scalar_t, true>(pv, pe, pk, po, L, pout);
    else
      segment_select_typed<scalar_t, false>(pv, pe, pk, po, L, pout);
  });
  return out;
}

// The sampled pass over one piece of popup_swap: out[j] = keep[j]; gathers the entries in
// the bracket (kept and pruned apart) and those outside it in Phi* (kept, behind lo) or
// Psi* (pruned, ahead of hi). It works on 64-bit masks of groups of entries.
template <typename T>
void popup_pass(const T* scores, const uint8_t* keep, const Bracket<CompareIn<T>>& br, uint8_t* out,
                Tally<typename OrderKey<T>::type>& tally) {
  const CompareIn<T> hi = br.hi, lo = br.lo;  // locals: out's bytes could alias br
  const auto key_of = [scores](int64_t j) { return OrderKey<T>::of(scores[j]); };
  std::memcpy(out + tally.b, keep + tally.b, tally.e - tally.b);
  uint64_t bracketed_kept[kFlagBlock / kGroup], bracketed_pruned[kFlagBlock / kGroup], outside[kFlagBlock / kGroup];
  uint64_t nan = 0;
  for_groups(
      tally,
      [&](int64_t g, int64_t j, int64_t count) {
        const GroupMasks m = compare_group<true>(scores + j, count, hi, lo);
        const uint64_t kept = mask_of_bytes(keep + j, count), mid = m.reaches_lo & ~m.ahead_of_hi;
        bracketed_kept[g] = kept & mid;
        bracketed_pruned[g] = ~kept & mid;
        outside[g] = (kept & m.behind_lo(first_bits(count))) | (~kept & m.ahead_of_hi);
        tally.ahead += __builtin_popcountll(m.ahead_of_hi);
        tally.counted += __builtin_popcountll(kept);
        nan |= m.nan;
      },
      [&](int64_t j0, int64_t groups) {
        tally.bracketed += append_masked<kBracketUnrolled>(tally.bracket, bracketed_kept, groups, j0, key_of);
        tally.bracketed += append_masked<kBracketUnrolled>(tally.bracket_pruned, bracketed_pruned, groups, j0, key_of);
        append_masked<0>(tally.outside, outside, groups, j0, key_of);
      });
  tally.nan |= nan != 0;
}

template <typename T>
void popup_swap_typed(const T* scores, const bool* keep, const int64_t* off, int64_t num_segments, double rate,
                      bool* out, int64_t* q) {
  using K = typename OrderKey<T>::type;
  const std::vector<int64_t> long_ones = long_segments(off, num_segments);
  std::vector<std::optional<Bracket<CompareIn<T>>>> brackets(num_segments);
  for_each_task(static_cast<int64_t>(long_ones.size()), [&](int64_t i) {
    const int64_t l = long_ones[i];
    int64_t kept = 0;
    const Sample<K> sample = strided_sample<T, true>(scores, keep, off[l], off[l + 1], [keep, &kept](int64_t j) {
      kept += keep[j];
      return true;
    });
    // The keep count is estimated from the sample too: twice the variance.
    brackets[l] = bracket_around<true>(scores, sample.entries, static_cast<double>(kept), sample.positions,
                                       std::sqrt(2.0));
  });
  SampledPass<K> pass(off, brackets);

  uint8_t* out_bytes = reinterpret_cast<uint8_t*>(out);
  const auto run_piece = [&](Tally<K>& t) {
    popup_pass<T>(scores, reinterpret_cast<const uint8_t*>(keep), *brackets[t.segment], out_bytes, t);
  };
  const auto finish_sampled = [&](int64_t l) {
    const int64_t b = off[l], e = off[l + 1];
    const Tally<K> total = pass.total(l);
    GP_CHECK_ARG(!total.nan, "scores", "must not contain NaN (segment starting at ", b, ")");
    const int64_t n = total.counted;
    if (n == 0 || n == e - b) {
      q[l] = 0;
      return true;
    }
    if (total.ahead >= n || n > total.ahead + total.bracketed) return false;
    q[l] = swap(pass.spans(l, &Tally<K>::bracket), pass.spans(l, &Tally<K>::bracket_pruned),
                pass.spans(l, &Tally<K>::outside), n - total.ahead, rate, out);
    return true;
  };
  const auto exact = [&](int64_t l) {
    std::copy(keep + off[l], keep + off[l + 1], out + off[l]);
    q[l] = popup_segment<T>(scores, keep, off[l], off[l + 1], rate, out);
  };
  run_pass(pass, off, num_segments, run_piece, finish_sampled, exact);
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
  at::Tensor out = at::empty_like(kp);  // every entry is written: keep, then the moves
  at::Tensor q = at::zeros({L}, offsets.options().device(at::kCPU));
  const int64_t* po = off.data_ptr<int64_t>();
  int64_t* pq = q.data_ptr<int64_t>();
  const bool* pk = kp.data_ptr<bool>();
  bool* pout = out.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "popup_swap_cpu", [&] {
    popup_swap_typed<scalar_t>(s.data_ptr<scalar_t>(), pk, po, L, rate, pout, pq);
  });
  return {out, q};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CPU, m) {
  m.impl("segment_select", &segment_select_cpu);
  m.impl("popup_swap", &popup_swap_cpu);
}

}  // namespace greedyprune
