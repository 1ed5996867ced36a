// CUDA kernels of pq_norms (docs/DESIGN.md §2.4), same results as csrc/cpu/pq_norms.cpp:
// per segment and power p, log sum |w|^p over masked-in entries, and their count.
//
// Two stages and no atomics on results, so every run gives the same bits:
// 1. pq_tiles: one block per fixed tile of kTile entries, staged once in shared memory.
//    Each piece (the part of one segment inside the tile) is scaled by its own largest |w|,
//    so every term (|w| / max)^p lies in [0, 1] for any p > 0: no overflow, and what
//    underflows is negligible next to the largest term, which is exactly 1. A thread sums at
//    most 32 terms in float; partials combine in double in a fixed tree. Pieces of up to
//    kWarpPiece entries go to one warp each, longer ones to the whole block. A segment that
//    lies inside one tile is written out here; one crossing tile borders leaves a log-sum
//    slot in every tile it touches (slot 2t: the piece that started before tile t, slot
//    2t+1: the piece that starts in tile t and runs past it).
// 2. pq_combine: one block per segment combines a crossing segment's slots in tile order,
//    in the log domain in double; empty segments get -inf and count 0.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>

#include "launchers.h"
#include "reductions.cuh"

namespace greedyprune::cuda {
namespace {

constexpr int kTile = 8192;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kWarpPiece = 1024;  // pieces up to this length go to one warp (32 terms per lane)
constexpr int kPowersPerPass = 64;
constexpr int kCombineThreads = 256;
constexpr int kCombineBlocks = 65535;
static_assert(kTile / kThreads <= 32 && kWarpPiece / 32 <= 32, "float runs of at most 32 terms");
static_assert(kThreads >= kPowersPerPass && kCombineThreads >= kPowersPerPass, "a thread per power");

// Powers of one pass, passed by value.
struct Powers {
  int count;
  double p[kPowersPerPass];
};

// Where results go: final rows of segments inside one tile, slots of crossing ones.
struct Outputs {
  double* log_sums;  // [L, ld], this pass's first column
  int64_t ld;
  int64_t* counts;      // [L]
  double* slot_logs;    // [2 * tiles, powers of this pass]
  int64_t* slot_counts;  // [2 * tiles]
};

__host__ __device__ inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t greater(int64_t a, int64_t b) { return a > b ? a : b; }

// xs[j] <- log2(xs[j] / max), -inf for zeros and masked-out entries (marked -1): then
// every power of an entry is one exp2f, and zeros give exactly 0.
__device__ void to_log_ratios(float* xs, int begin, int end, int stride, float largest) {
  for (int j = begin; j < end; j += stride) {
    const float x = xs[j];
    xs[j] = x > 0.0f ? log2f(x / largest) : -INFINITY;
  }
}

__device__ float power_sum(const float* ls, int begin, int end, int stride, float p) {
  float s = 0.0f;
  for (int j = begin; j < end; j += stride) s += exp2f(p * ls[j]);
  return s;
}

__device__ double log_sum(double p, float largest, double scaled_sum) {
  return p * log(static_cast<double>(largest)) + log(scaled_sum);
}

// One piece, one warp. Each lane reads and writes only its own entries.
__device__ void warp_piece(float* xs, int begin, int end, const Powers& pw, double* logs, int64_t* count) {
  const int lane = threadIdx.x % 32;
  float largest = -1.0f;
  int c = 0;
  for (int j = begin + lane; j < end; j += 32) {
    const float x = xs[j];
    largest = x > largest ? x : largest;
    c += x >= 0.0f;
  }
  largest = warp_reduce(largest, Max());
  c = warp_reduce(c, Sum());
  if (lane == 0) *count = c;
  if (!(largest > 0.0f)) {  // no entry, or all zero
    for (int u = lane; u < pw.count; u += 32) logs[u] = -INFINITY;
    return;
  }
  to_log_ratios(xs, begin + lane, end, 32, largest);
  for (int u = 0; u < pw.count; ++u) {
    const float p = static_cast<float>(pw.p[u]);
    const double s = warp_reduce(static_cast<double>(power_sum(xs, begin + lane, end, 32, p)), Sum());
    if (lane == 0) logs[u] = log_sum(pw.p[u], largest, s);
  }
}

// One piece, the whole block (every thread calls it). Each thread reads and writes only
// its own entries; `sums` holds one double per power and warp.
__device__ void block_piece(float* xs, int begin, int end, const Powers& pw, double* logs, int64_t* count,
                            double (*sums)[kWarps], float* max_scratch, int* count_scratch) {
  const int tid = threadIdx.x;
  float largest = -1.0f;
  int c = 0;
  for (int j = begin + tid; j < end; j += kThreads) {
    const float x = xs[j];
    largest = x > largest ? x : largest;
    c += x >= 0.0f;
  }
  largest = block_reduce(largest, Max(), max_scratch);
  c = block_reduce(c, Sum(), count_scratch);
  if (tid == 0) *count = c;
  if (!(largest > 0.0f)) {
    if (tid < pw.count) logs[tid] = -INFINITY;
    return;
  }
  to_log_ratios(xs, begin + tid, end, kThreads, largest);
  for (int u = 0; u < pw.count; ++u) {
    const float p = static_cast<float>(pw.p[u]);
    const double s = warp_reduce(static_cast<double>(power_sum(xs, begin + tid, end, kThreads, p)), Sum());
    if (tid % 32 == 0) sums[u][tid / 32] = s;
  }
  __syncthreads();
  if (tid < pw.count) {
    double s = sums[tid][0];
    for (int w = 1; w < kWarps; ++w) s += sums[tid][w];
    logs[tid] = log_sum(pw.p[tid], largest, s);
  }
  __syncthreads();  // sums is reused by the next piece
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pq_tiles(const T* __restrict__ w, const bool* __restrict__ mask, int64_t n, const int64_t* __restrict__ offsets,
             int64_t num_segments, Powers pw, Outputs out, int* __restrict__ nonfinite) {
  __shared__ float xs[kTile];
  __shared__ double sums[kPowersPerPass][kWarps];
  __shared__ float max_scratch[kWarps];
  __shared__ int count_scratch[kWarps];
  __shared__ int64_t first_segment;

  const int64_t tile = blockIdx.x;
  const int64_t lo = tile * kTile, hi = lesser(n, lo + kTile);
  // Stage |w|, with -1 marking masked-out entries (skipped by max and count).
  bool bad = false;
  for (int j = threadIdx.x; j < hi - lo; j += kThreads) {
    const bool in = mask == nullptr || mask[lo + j];
    const float x = fabsf(to_float(w[lo + j]));
    bad |= in && !(x <= FLT_MAX);  // inf or NaN
    xs[j] = in ? x : -1.0f;
  }
  if (bad) atomicExch(nonfinite, 1);
  if (threadIdx.x == 0) {  // the first segment ending after lo (one exists: lo < n = offsets[L])
    int64_t a = 0, b = num_segments - 1;
    while (a < b) {
      const int64_t m = a + (b - a) / 2;
      if (offsets[m + 1] > lo) b = m; else a = m + 1;
    }
    first_segment = a;
  }
  __syncthreads();
  const int64_t first = first_segment;

  auto piece_outputs = [&](int64_t l, int64_t b, int64_t e, double*& logs, int64_t*& count) {
    if (b >= lo && e <= hi) {
      logs = out.log_sums + l * out.ld;
      count = out.counts + l;
    } else {
      const int64_t slot = 2 * tile + (b < lo ? 0 : 1);
      logs = out.slot_logs + slot * pw.count;
      count = out.slot_counts + slot;
    }
  };
  // Short pieces: one warp each, round robin. Segments from `first` on end after lo, and
  // the first one starting at or after hi ends the tile's segments.
  const int warp = threadIdx.x / 32;
  for (int64_t l = first + warp; l < num_segments; l += kWarps) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    if (b >= hi) break;
    const int len = static_cast<int>(lesser(e, hi) - greater(b, lo));
    if (len == 0 || len > kWarpPiece) continue;
    double* logs;
    int64_t* count;
    piece_outputs(l, b, e, logs, count);
    warp_piece(xs, static_cast<int>(greater(b, lo) - lo), static_cast<int>(lesser(e, hi) - lo), pw, logs, count);
  }
  // Long pieces: the whole block, one after the other (the loop is uniform over the block).
  for (int64_t l = first; l < num_segments; ++l) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    if (b >= hi) break;
    if (lesser(e, hi) - greater(b, lo) <= kWarpPiece) continue;
    double* logs;
    int64_t* count;
    piece_outputs(l, b, e, logs, count);
    block_piece(xs, static_cast<int>(greater(b, lo) - lo), static_cast<int>(lesser(e, hi) - lo), pw, logs, count,
                sums, max_scratch, count_scratch);
  }
}

__global__ void __launch_bounds__(kCombineThreads)
    pq_combine(const int64_t* __restrict__ offsets, int64_t num_segments, int num_powers, Outputs out) {
  __shared__ double scratch[kCombineThreads / 32];
  __shared__ long long count_scratch[kCombineThreads / 32];
  const int tid = threadIdx.x;
  for (int64_t l = blockIdx.x; l < num_segments; l += gridDim.x) {
    const int64_t b = offsets[l], e = offsets[l + 1];
    double* logs = out.log_sums + l * out.ld;
    if (b == e) {
      if (tid < num_powers) logs[tid] = -INFINITY;
      if (tid == 0) out.counts[l] = 0;
      continue;
    }
    const int64_t t0 = b / kTile, t1 = (e - 1) / kTile;
    if (t0 == t1) continue;  // inside one tile: written by pq_tiles
    // Piece q lies in tile t0 + q: the tail slot of the first tile, the head slot of the others.
    const int64_t pieces = t1 - t0 + 1;
    auto slot = [t0](int64_t q) { return q == 0 ? 2 * t0 + 1 : 2 * (t0 + q); };
    long long c = 0;
    for (int64_t q = tid; q < pieces; q += kCombineThreads) c += out.slot_counts[slot(q)];
    c = block_reduce(c, Sum(), count_scratch);
    if (tid == 0) out.counts[l] = c;
    for (int u = 0; u < num_powers; ++u) {
      double m = -INFINITY;
      for (int64_t q = tid; q < pieces; q += kCombineThreads) m = fmax(m, out.slot_logs[slot(q) * num_powers + u]);
      m = block_reduce(m, Max(), scratch);
      if (m == -INFINITY) {  // block-uniform
        if (tid == 0) logs[u] = -INFINITY;
        continue;
      }
      double s = 0.0;
      for (int64_t q = tid; q < pieces; q += kCombineThreads) s += exp(out.slot_logs[slot(q) * num_powers + u] - m);
      s = block_reduce(s, Sum(), scratch);
      if (tid == 0) logs[u] = m + log(s);
    }
  }
}

int64_t tiles_of(int64_t n) { return (n + kTile - 1) / kTile; }

template <typename T>
void launch_tiles(const void* w, const bool* mask, int64_t n, const int64_t* offsets, int64_t num_segments,
                  const Powers& pw, const Outputs& out, int* nonfinite, cudaStream_t stream) {
  pq_tiles<T><<<static_cast<unsigned>(tiles_of(n)), kThreads, 0, stream>>>(
      static_cast<const T*>(w), mask, n, offsets, num_segments, pw, out, nonfinite);
}

}  // namespace

size_t pq_norms_workspace_bytes(int64_t n, int num_powers) {
  const int64_t per_pass = num_powers < kPowersPerPass ? num_powers : kPowersPerPass;
  const int64_t slots = 2 * tiles_of(n);
  return static_cast<size_t>(slots * (per_pass * sizeof(double) + sizeof(int64_t)));
}

cudaError_t pq_norms(const void* w, DType dtype, const bool* mask, int64_t n, const int64_t* offsets,
                     int64_t num_segments, const double* powers, int num_powers, double* log_sums, int64_t ld,
                     int64_t* counts, int* nonfinite, void* workspace, cudaStream_t stream) {
  const int64_t tiles = tiles_of(n);
  if (n < 0 || num_segments < 0 || num_powers < 1 || ld < num_powers || tiles > INT_MAX)
    return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(nonfinite, 0, sizeof(int), stream);
  if (err != cudaSuccess) return err;
  const int per_pass = num_powers < kPowersPerPass ? num_powers : kPowersPerPass;
  double* slot_logs = static_cast<double*>(workspace);
  int64_t* slot_counts = reinterpret_cast<int64_t*>(slot_logs + 2 * tiles * per_pass);
  for (int p0 = 0; p0 < num_powers; p0 += kPowersPerPass) {
    Powers pw;
    pw.count = num_powers - p0 < kPowersPerPass ? num_powers - p0 : kPowersPerPass;
    for (int u = 0; u < pw.count; ++u) pw.p[u] = powers[p0 + u];
    const Outputs out{log_sums + p0, ld, counts, slot_logs, slot_counts};
    if (tiles > 0) {
      switch (dtype) {
        case DType::kFloat32:
          launch_tiles<float>(w, mask, n, offsets, num_segments, pw, out, nonfinite, stream);
          break;
        case DType::kFloat16:
          launch_tiles<__half>(w, mask, n, offsets, num_segments, pw, out, nonfinite, stream);
          break;
        case DType::kBFloat16:
          launch_tiles<__nv_bfloat16>(w, mask, n, offsets, num_segments, pw, out, nonfinite, stream);
          break;
        default:
          return cudaErrorInvalidValue;
      }
    }
    if (num_segments > 0) {
      const unsigned blocks = static_cast<unsigned>(num_segments < kCombineBlocks ? num_segments : kCombineBlocks);
      pq_combine<<<blocks, kCombineThreads, 0, stream>>>(offsets, num_segments, pw.count, out);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace greedyprune::cuda
