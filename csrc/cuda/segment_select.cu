// CUDA kernels of segment_select and popup_swap (docs/DESIGN.md §2.3), same results as
// csrc/cpu/segment_select.cpp: per segment, the k best eligible entries (ties: lower index).
//
// A segmented radix select, no sort. Values become unsigned order keys (as
// csrc/cpu/order_key.h; keys are flipped for "smallest first"), and each segment's
// threshold key is found digit by digit, 8 bits per pass from the top: a histogram of the
// next digit over the eligible keys that share the digits found so far, then the bin that
// holds the wanted rank. A segment settles early once its whole bin is taken. Entries
// above the threshold are selected; of those at it, tie order decides (an exclusive count
// of them in index order), only when some but not all of them are taken. Values that are
// not eligible are never read (they may hold anything, NaN included).
//
// Every segment in a fixed number of launches, whatever their number:
// - select_in_block: one block per segment of at most kBlockMax entries does it all;
// - longer segments are split in tiles of kTile entries, a block per tile, with per-pass
//   kernels: long_histogram (shared histogram per piece, added to the segment's global
//   histogram), long_descend (a warp per segment picks the digit), then long_count_ties
//   and long_mark. Integer atomics only ever add counts, so the results never depend on
//   the order of blocks: every run gives the same output.
// popup_swap is three selections: T (the keep count's top entries), then the q_l highest
// of Psi* = T & ~keep and the q_l lowest of Phi* = keep & ~T (ties: higher index leaves).
#include <cmath>
#include <cstdint>

#include "launchers.h"
#include "reductions.cuh"

namespace greedyprune::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerLane = kBins / 32;
static_assert(kBins == kThreads, "one histogram bin per thread when clearing and flushing");
// Longest segment that one block selects alone. Overridable at compile time only so that
// a CPU emulation can run the multi-block path on small segments.
#ifndef GREEDYPRUNE_SELECT_BLOCK_MAX
#define GREEDYPRUNE_SELECT_BLOCK_MAX 16384
#endif
constexpr int64_t kBlockMax = GREEDYPRUNE_SELECT_BLOCK_MAX;
// Longer segments are longer than a tile, so a tile overlaps at most two of them.
constexpr int64_t kTile = kBlockMax / 2;
constexpr int64_t kMaxGrid = 65535;  // blocks of the per-segment kernels (grid-stride beyond)
static_assert(kTile >= kThreads, "a tile spans at least one round of the block");

__host__ __device__ inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t greater(int64_t a, int64_t b) { return a > b ? a : b; }
__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raw bits of a float format -> unsigned keys in the values' order, -0.0 and +0.0 one key.
// NaN (bits beyond the infinity's) is told apart by is_nan: its keys lie outside those of
// -inf .. +inf.
template <typename Bits, Bits kInfinity>
struct KeyFormat {
  using bits_type = Bits;
  static constexpr int kKeyBits = 8 * sizeof(Bits);
  static constexpr uint32_t kSign = 1u << (kKeyBits - 1);
  static constexpr uint32_t kAllBits = ~0u >> (32 - kKeyBits);
  __device__ static uint32_t key(Bits raw) {
    const uint32_t u = (raw & ~kSign) == 0 ? 0u : raw;
    return (u & kSign) ? (~u & kAllBits) : (u | kSign);
  }
  __device__ static bool is_nan(Bits raw) { return (raw & ~kSign) > kInfinity; }
};
using Float32Keys = KeyFormat<uint32_t, 0x7f800000u>;
using Float16Keys = KeyFormat<uint16_t, 0x7c00>;
using BFloat16Keys = KeyFormat<uint16_t, 0x7f80>;

// The key bits above `shift` (shift may be the whole key width: then nothing, 0).
__device__ inline uint32_t top_bits(uint32_t key, int shift) {
  return static_cast<uint32_t>(static_cast<uint64_t>(key) >> shift);
}

// Entries where each given bool array holds its wanted value (no array: every entry).
struct Mask {
  const bool* first;
  bool first_is;
  const bool* second;
  bool second_is;
  __device__ bool operator()(int64_t j) const {
    return (first == nullptr || first[j] == first_is) && (second == nullptr || second[j] == second_is);
  }
};
constexpr Mask kEvery{nullptr, true, nullptr, true};

// One selection over every segment: the k best eligible entries of each get out[j] = mark.
// Best: larger key (keys flipped for "smallest first"), ties by lower index, or by higher
// index with ties_high_first. k per segment: k[l] when given (it must lie in [0, eligible
// entries], else kBadK), otherwise ceil(rate * entries where `counted` holds).
template <typename F>
struct Job {
  const typename F::bits_type* values;
  uint32_t flip;
  bool ties_high_first;
  Mask eligible;
  const int64_t* k;
  Mask counted;
  double rate;
  bool* out;
  bool mark;
  int64_t* k_out;  // may be null: where the k of each segment goes
  int* flags;
  __device__ uint32_t key(int64_t j) const { return F::key(values[j]) ^ flip; }
};

// Where one segment's search stands: the eligible keys whose bits above `shift` equal
// `prefix` hold the wanted entry, at `rank` among them (1 = best; 0: select nothing);
// there are `equal` of them. Entries above the prefix are selected.
struct Search {
  uint32_t prefix;
  int shift;
  uint32_t rank;
  uint32_t equal;
  // Nothing left to find: nothing wanted, all at the prefix wanted, or the full key known.
  __device__ bool settled() const { return rank == 0 || rank == equal || shift == 0; }
  // Some but not all entries at the prefix are selected: tie order picks them.
  __device__ bool by_index() const { return rank > 0 && rank < equal; }
};

// The search before any digit, once the segment's eligible and counted entries are known.
// `leader` (one thread per segment) writes k_out and raises kBadK.
template <typename F>
__device__ Search start(const Job<F>& job, int64_t l, uint32_t eligible, uint32_t counted, bool leader) {
  int64_t k = job.k != nullptr ? job.k[l] : static_cast<int64_t>(ceil(static_cast<double>(counted) * job.rate));
  if (k < 0 || k > eligible) {
    if (leader) atomicOr(job.flags, kBadK);
    k = 0;
  }
  if (leader && job.k_out != nullptr) job.k_out[l] = k;
  return Search{0u, F::kKeyBits, static_cast<uint32_t>(k), eligible};
}

// The first read of [lo, hi), by the block: NaN check of the eligible values, this thread's
// counts of eligible and counted entries, and the eligible keys' top digits added to `hist`
// (shared).
template <typename F>
__device__ void first_pass(const Job<F>& job, int64_t lo, int64_t hi, unsigned* hist, uint32_t& eligible,
                           uint32_t& counted) {
  constexpr int kShift = F::kKeyBits - kDigitBits;
  bool nan = false;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) {
    counted += job.counted(j);
    if (!job.eligible(j)) continue;
    const typename F::bits_type raw = job.values[j];
    nan |= F::is_nan(raw);
    ++eligible;
    atomicAdd(&hist[(F::key(raw) ^ job.flip) >> kShift], 1u);
  }
  if (nan) atomicOr(job.flags, kFoundNaN);
}

// Adds to `hist` (shared) the next digit of the eligible keys of [lo, hi) at s.prefix.
template <typename F>
__device__ void add_digits(const Job<F>& job, int64_t lo, int64_t hi, const Search& s, unsigned* hist) {
  const int digit_shift = s.shift - kDigitBits;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) {
    if (!job.eligible(j)) continue;
    const uint32_t key = job.key(j);
    if (top_bits(key, s.shift) == s.prefix) atomicAdd(&hist[(key >> digit_shift) & (kBins - 1)], 1u);
  }
}

// One warp, given the complete histogram of the next digit of the entries at s.prefix:
// s moved down to the bin that holds the wanted rank. Lane i reads bins [8i, 8i + 8) only.
__device__ Search descend(Search s, const unsigned* hist) {
  const int lane = threadIdx.x % 32;
  unsigned own[kBinsPerLane];
  unsigned lane_sum = 0;
  for (int i = 0; i < kBinsPerLane; ++i) {
    own[i] = hist[lane * kBinsPerLane + i];
    lane_sum += own[i];
  }
  // from_top: entries in this lane's bins and all higher ones (a suffix scan over lanes).
  unsigned from_top = lane_sum;
  for (int d = 1; d < 32; d *= 2) {
    const unsigned higher = __shfl_down_sync(kFullMask, from_top, d);
    if (lane + d < 32) from_top += higher;
  }
  // from_top falls with the lane: the highest lane that reaches the rank holds the entry
  // (one does: the rank is at most the entries at the prefix, the histogram's total).
  const int owner = 31 - __clz(__ballot_sync(kFullMask, from_top >= s.rank));
  unsigned above = from_top - lane_sum;
  int digit = 0;
  unsigned equal = 0;
  if (lane == owner) {
    for (int i = kBinsPerLane - 1; i >= 0; --i) {
      if (above + own[i] >= s.rank) {
        digit = lane * kBinsPerLane + i;
        equal = own[i];
        break;
      }
      above += own[i];
    }
  }
  digit = __shfl_sync(kFullMask, digit, owner);
  above = __shfl_sync(kFullMask, above, owner);
  equal = __shfl_sync(kFullMask, equal, owner);
  s.prefix = (s.prefix << kDigitBits) | static_cast<uint32_t>(digit);
  s.shift -= kDigitBits;
  s.rank -= above;
  s.equal = equal;
  return s;
}

// The block writes job.mark for the selected entries of [lo, hi), a piece of one settled
// segment. `before`: entries at the threshold in the segment before lo (for tie order).
// `warp_counts`: one shared entry per warp.
template <typename F>
__device__ void mark_range(const Job<F>& job, int64_t lo, int64_t hi, const Search& s, uint32_t before,
                           unsigned* warp_counts) {
  if (!s.by_index()) {
    const bool take_prefix = s.rank > 0;  // then all entries at the prefix are taken
    for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) {
      if (!job.eligible(j)) continue;
      const uint32_t top = top_bits(job.key(j), s.shift);
      if (top > s.prefix || (take_prefix && top == s.prefix)) job.out[j] = job.mark;
    }
    return;
  }
  // Rounds of kThreads entries in index order; an entry's position among those at the
  // threshold is counted by warp ballots and the earlier warps' counts.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t base = lo; base < hi; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    bool selected = false, at = false;
    if (j < hi && job.eligible(j)) {
      const uint32_t top = top_bits(job.key(j), s.shift);
      selected = top > s.prefix;
      at = top == s.prefix;
    }
    const unsigned ballot = __ballot_sync(kFullMask, at);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    uint32_t position = before + __popc(ballot & ((1u << lane) - 1));
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) position += warp_counts[w];
      before += warp_counts[w];
    }
    __syncthreads();  // warp_counts is rewritten by the next round
    if (at) {
      const uint32_t order = job.ties_high_first ? s.equal - 1 - position : position;
      selected = order < s.rank;
    }
    if (selected) job.out[j] = job.mark;
  }
}

// Segments of at most kBlockMax entries: one block each does the whole selection.
template <typename F>
__global__ void __launch_bounds__(kThreads)
    select_in_block(Job<F> job, const int64_t* __restrict__ offsets, int64_t num_segments) {
  __shared__ unsigned hist[kBins];
  __shared__ unsigned scratch[kWarps];
  __shared__ Search found;
  for (int64_t l = blockIdx.x; l < num_segments; l += gridDim.x) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    if (e - b > kBlockMax) continue;
    hist[threadIdx.x] = 0;
    __syncthreads();
    uint32_t eligible = 0, counted = 0;
    first_pass(job, b, e, hist, eligible, counted);
    eligible = block_reduce(eligible, Sum(), scratch);  // its barrier also completes hist
    counted = block_reduce(counted, Sum(), scratch);
    Search s = start(job, l, eligible, counted, threadIdx.x == 0);
    for (int pass = 0; !s.settled(); ++pass) {
      if (pass > 0) {
        hist[threadIdx.x] = 0;
        __syncthreads();
        add_digits(job, b, e, s, hist);
        __syncthreads();
      }
      if (threadIdx.x < 32) {
        const Search next = descend(s, hist);
        if (threadIdx.x == 0) found = next;
      }
      __syncthreads();
      s = found;
    }
    mark_range(job, b, e, s, 0, scratch);
  }
}

// ---------------------------------------------------------------- long segments

// Per long segment (over kBlockMax entries) by slot = its start / kBlockMax, unique since
// long segments are longer than kBlockMax. hist, eligible and counted start at zero.
struct LongState {
  Search* search;
  unsigned* hist;      // [slots][kBins]: the current pass's digit counts
  unsigned* eligible;  // [slots], summed over pieces in the first pass
  unsigned* counted;   // [slots]
  unsigned* ties;      // [2 * tiles]: entries at the threshold per piece, see tie_slot
};

// A tile's piece of one long segment.
struct Piece {
  int64_t begin, end;  // the segment
  int64_t lo, hi;      // the piece
  int64_t slot;
};

// Slot of ties[] for the piece of a segment starting at `begin` in tile t: 2t for the
// piece holding the tile's first entry, 2t + 1 for one that starts inside the tile.
__device__ inline int64_t tie_slot(int64_t t, int64_t begin) { return 2 * t + (begin > t * kTile ? 1 : 0); }

// The segment holding entry pos (0 <= pos < offsets[L]): the first l with offsets[l+1] > pos.
__device__ int64_t segment_at(const int64_t* offsets, int64_t num_segments, int64_t pos) {
  int64_t a = 0, b = num_segments - 1;
  while (a < b) {
    const int64_t m = a + (b - a) / 2;
    if (offsets[m + 1] > pos) b = m; else a = m + 1;
  }
  return a;
}

// Calls f(piece) for the long segments overlapping this block's tile: at most two, those
// holding its first and its last entry. Uniform over the block.
template <typename Fn>
__device__ void for_long_pieces(const int64_t* offsets, int64_t num_segments, int64_t n, Fn f) {
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * kTile, hi = lesser(n, lo + kTile);
  auto visit = [&](int64_t l) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    if (e - b > kBlockMax) f(Piece{b, e, greater(b, lo), lesser(e, hi), b / kBlockMax});
  };
  const int64_t first = segment_at(offsets, num_segments, lo), last = segment_at(offsets, num_segments, hi - 1);
  visit(first);
  if (last != first) visit(last);
}

template <typename F>
__global__ void __launch_bounds__(kThreads)
    long_histogram(Job<F> job, const int64_t* __restrict__ offsets, int64_t num_segments, int64_t n, int pass,
                   LongState st) {
  __shared__ unsigned hist[kBins];
  __shared__ unsigned scratch[kWarps];
  for_long_pieces(offsets, num_segments, n, [&](const Piece& p) {
    const Search s = pass == 0 ? Search{} : st.search[p.slot];
    if (pass > 0 && s.settled()) return;
    __syncthreads();  // a previous piece's flush has read hist
    hist[threadIdx.x] = 0;
    __syncthreads();
    if (pass == 0) {
      uint32_t eligible = 0, counted = 0;
      first_pass(job, p.lo, p.hi, hist, eligible, counted);
      eligible = block_reduce(eligible, Sum(), scratch);
      counted = block_reduce(counted, Sum(), scratch);
      if (threadIdx.x == 0) {
        atomicAdd(st.eligible + p.slot, eligible);
        atomicAdd(st.counted + p.slot, counted);
      }
    } else {
      add_digits(job, p.lo, p.hi, s, hist);
    }
    __syncthreads();
    const unsigned c = hist[threadIdx.x];
    if (c != 0) atomicAdd(st.hist + p.slot * kBins + threadIdx.x, c);
  });
}

// A warp per long segment: the first pass starts its search; every pass picks a digit and
// clears the histogram for the next pass.
template <typename F>
__global__ void __launch_bounds__(kThreads)
    long_descend(Job<F> job, const int64_t* __restrict__ offsets, int64_t num_segments, int pass, LongState st) {
  const int lane = threadIdx.x % 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t l = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; l < num_segments; l += stride) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    if (e - b <= kBlockMax) continue;
    const int64_t slot = b / kBlockMax;
    Search s = pass == 0 ? start(job, l, st.eligible[slot], st.counted[slot], lane == 0) : st.search[slot];
    if (pass > 0 && s.settled()) continue;
    if (!s.settled()) {
      unsigned* hist = st.hist + slot * kBins;
      s = descend(s, hist);
      for (int i = 0; i < kBinsPerLane; ++i) hist[lane * kBinsPerLane + i] = 0;  // the bins this lane read
    }
    if (lane == 0) st.search[slot] = s;
  }
}

template <typename F>
__global__ void __launch_bounds__(kThreads)
    long_count_ties(Job<F> job, const int64_t* __restrict__ offsets, int64_t num_segments, int64_t n, LongState st) {
  __shared__ unsigned scratch[kWarps];
  for_long_pieces(offsets, num_segments, n, [&](const Piece& p) {
    const Search s = st.search[p.slot];
    if (!s.by_index()) return;
    uint32_t at = 0;
    for (int64_t j = p.lo + threadIdx.x; j < p.hi; j += kThreads)
      at += job.eligible(j) && top_bits(job.key(j), s.shift) == s.prefix;
    at = block_reduce(at, Sum(), scratch);
    if (threadIdx.x == 0) st.ties[tie_slot(static_cast<int64_t>(blockIdx.x), p.begin)] = at;
  });
}

template <typename F>
__global__ void __launch_bounds__(kThreads)
    long_mark(Job<F> job, const int64_t* __restrict__ offsets, int64_t num_segments, int64_t n, LongState st) {
  __shared__ unsigned scratch[kWarps];
  for_long_pieces(offsets, num_segments, n, [&](const Piece& p) {
    const Search s = st.search[p.slot];
    uint32_t before = 0;
    if (s.by_index()) {  // the segment's entries at the threshold in earlier tiles
      const int64_t tile = blockIdx.x;
      for (int64_t t = p.begin / kTile + threadIdx.x; t < tile; t += kThreads) before += st.ties[tie_slot(t, p.begin)];
      before = block_reduce(before, Sum(), scratch);
    }
    mark_range(job, p.lo, p.hi, s, before, scratch);
  });
}

// ---------------------------------------------------------------- launches

int64_t slots_of(int64_t n) { return n / kBlockMax + 1; }
int64_t tiles_of(int64_t n) { return ceil_div(n, kTile); }

// Layout: search [slots] | hist [slots * kBins], eligible [slots], counted [slots] (one
// zeroed run) | ties [2 * tiles] | then, for popup_swap, T as bool [n].
struct Workspace {
  LongState st;
  size_t zeroed_bytes;
  bool* top;
  size_t bytes;
};

Workspace carve(void* workspace, int64_t n, bool with_top) {
  const int64_t slots = slots_of(n), tiles = tiles_of(n);
  Workspace ws;
  ws.st.search = static_cast<Search*>(workspace);
  ws.st.hist = reinterpret_cast<unsigned*>(ws.st.search + slots);
  ws.st.eligible = ws.st.hist + slots * kBins;
  ws.st.counted = ws.st.eligible + slots;
  ws.st.ties = ws.st.counted + slots;
  ws.zeroed_bytes = static_cast<size_t>(slots * (kBins + 2)) * sizeof(unsigned);
  ws.top = reinterpret_cast<bool*>(ws.st.ties + 2 * tiles);
  ws.bytes = static_cast<size_t>(reinterpret_cast<char*>(ws.top) - static_cast<char*>(workspace)) +
             (with_top ? static_cast<size_t>(n) : 0);
  return ws;
}

// All launches of one selection; a fixed number, whatever the segments.
template <typename F>
cudaError_t run_job(const Job<F>& job, const int64_t* offsets, int64_t num_segments, int64_t n,
                    const Workspace& ws, cudaStream_t stream) {
  if (num_segments == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(ws.st.hist, 0, ws.zeroed_bytes, stream);
  if (err != cudaSuccess) return err;
  const unsigned segment_blocks = static_cast<unsigned>(lesser(num_segments, kMaxGrid));
  select_in_block<F><<<segment_blocks, kThreads, 0, stream>>>(job, offsets, num_segments);
  if (n > kBlockMax) {  // else no segment is long
    const unsigned tiles = static_cast<unsigned>(tiles_of(n));
    const unsigned warp_blocks = static_cast<unsigned>(lesser(ceil_div(num_segments, kWarps), kMaxGrid));
    for (int pass = 0; pass < F::kKeyBits / kDigitBits; ++pass) {
      long_histogram<F><<<tiles, kThreads, 0, stream>>>(job, offsets, num_segments, n, pass, ws.st);
      long_descend<F><<<warp_blocks, kThreads, 0, stream>>>(job, offsets, num_segments, pass, ws.st);
    }
    long_count_ties<F><<<tiles, kThreads, 0, stream>>>(job, offsets, num_segments, n, ws.st);
    long_mark<F><<<tiles, kThreads, 0, stream>>>(job, offsets, num_segments, n, ws.st);
  }
  return cudaGetLastError();
}

template <typename F>
cudaError_t select_typed(const void* values, const int64_t* offsets, int64_t num_segments, int64_t n,
                         const int64_t* k, const bool* eligible, bool largest, bool* out, int* flags,
                         void* workspace, cudaStream_t stream) {
  Job<F> job;
  job.values = static_cast<const typename F::bits_type*>(values);
  job.flip = largest ? 0u : F::kAllBits;
  job.ties_high_first = false;
  job.eligible = Mask{eligible, true, nullptr, true};
  job.k = k;
  job.counted = kEvery;  // unused: k is given
  job.rate = 1.0;
  job.out = out;
  job.mark = true;
  job.k_out = nullptr;
  job.flags = flags;
  return run_job(job, offsets, num_segments, n, carve(workspace, n, false), stream);
}

template <typename F>
cudaError_t popup_typed(const void* scores, const int64_t* offsets, int64_t num_segments, int64_t n,
                        const bool* keep, double rate, bool* keep_out, int64_t* q, int* flags, void* workspace,
                        cudaStream_t stream) {
  const Workspace ws = carve(workspace, n, true);
  cudaError_t err = n > 0 ? cudaMemsetAsync(ws.top, 0, static_cast<size_t>(n), stream) : cudaSuccess;
  if (err != cudaSuccess) return err;
  // T: the keep count's best entries of each segment.
  Job<F> job;
  job.values = static_cast<const typename F::bits_type*>(scores);
  job.flip = 0u;
  job.ties_high_first = false;
  job.eligible = kEvery;  // every score is read: a NaN anywhere is flagged
  job.k = nullptr;
  job.counted = Mask{keep, true, nullptr, true};
  job.rate = 1.0;
  job.out = ws.top;
  job.mark = true;
  job.k_out = nullptr;
  job.flags = flags;
  if ((err = run_job(job, offsets, num_segments, n, ws, stream)) != cudaSuccess) return err;
  // Psi* (in T, not kept): the q = ceil(s * rate) best join.
  job.eligible = Mask{keep, false, ws.top, true};
  job.counted = job.eligible;
  job.rate = rate;
  job.out = keep_out;
  job.k_out = q;
  if ((err = run_job(job, offsets, num_segments, n, ws, stream)) != cudaSuccess) return err;
  // Phi* (kept, not in T, as many as Psi*): the q worst leave, ties by higher index first
  // (the reverse of T's order).
  job.flip = F::kAllBits;
  job.ties_high_first = true;
  job.eligible = Mask{keep, true, ws.top, false};
  job.counted = job.eligible;
  job.mark = false;
  job.k_out = nullptr;
  return run_job(job, offsets, num_segments, n, ws, stream);
}

bool valid_sizes(int64_t n, int64_t num_segments) { return n >= 0 && n <= kSelectMaxN && num_segments >= 0; }

}  // namespace

size_t segment_select_workspace_bytes(int64_t n) { return carve(nullptr, n, false).bytes; }

size_t popup_swap_workspace_bytes(int64_t n) { return carve(nullptr, n, true).bytes; }

cudaError_t segment_select(const void* values, DType dtype, const int64_t* offsets, int64_t num_segments, int64_t n,
                           const int64_t* k, const bool* eligible, bool largest, bool* out, int* flags,
                           void* workspace, cudaStream_t stream) {
  if (!valid_sizes(n, num_segments)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(flags, 0, sizeof(int), stream);
  if (err == cudaSuccess && n > 0) err = cudaMemsetAsync(out, 0, static_cast<size_t>(n), stream);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case DType::kFloat32:
      return select_typed<Float32Keys>(values, offsets, num_segments, n, k, eligible, largest, out, flags, workspace,
                                       stream);
    case DType::kFloat16:
      return select_typed<Float16Keys>(values, offsets, num_segments, n, k, eligible, largest, out, flags, workspace,
                                       stream);
    case DType::kBFloat16:
      return select_typed<BFloat16Keys>(values, offsets, num_segments, n, k, eligible, largest, out, flags,
                                        workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t popup_swap(const void* scores, DType dtype, const int64_t* offsets, int64_t num_segments, int64_t n,
                       const bool* keep, double rate, bool* keep_out, int64_t* q, int* flags, void* workspace,
                       cudaStream_t stream) {
  if (!valid_sizes(n, num_segments) || !(rate >= 0.0 && rate <= 1.0)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(flags, 0, sizeof(int), stream);
  if (err == cudaSuccess && n > 0)
    err = cudaMemcpyAsync(keep_out, keep, static_cast<size_t>(n), cudaMemcpyDeviceToDevice, stream);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case DType::kFloat32:
      return popup_typed<Float32Keys>(scores, offsets, num_segments, n, keep, rate, keep_out, q, flags, workspace,
                                      stream);
    case DType::kFloat16:
      return popup_typed<Float16Keys>(scores, offsets, num_segments, n, keep, rate, keep_out, q, flags, workspace,
                                      stream);
    case DType::kBFloat16:
      return popup_typed<BFloat16Keys>(scores, offsets, num_segments, n, keep, rate, keep_out, q, flags, workspace,
                                       stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace greedyprune::cuda
