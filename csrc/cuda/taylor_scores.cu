// CUDA kernels of taylor_scores (docs/DESIGN.md §2.2), same results as
// csrc/cpu/taylor_scores.cpp: r_i = sum_{b,s} act * grad, gr = r - a.r, the k most
// negative gr (ties: lowest index).
//
// Deterministic and accurate: products are summed in float over runs of at most kRun
// terms, each run is flushed into a double, and doubles combine in a fixed order (no
// atomics on sums). The order of channel i's sum depends only on (B, S) and whether the
// data is 16-byte aligned, never on i, so identical channels give identical r.
// 1. Per-channel partials, by one of two layouts of [B, N, S]:
//    - rows (S >= kRowsMinS): a block per (channel, group of rows); warps take rows, lanes
//      read each contiguous row of S entries, 16 bytes at a time where aligned;
//    - columns (short S): [B, N*S] as a matrix, a thread per column and group of rows,
//      so neighbouring threads read neighbouring entries.
// 2. channel_totals: r_i = the sum of channel i's partials, in a fixed order.
// 3. finish (one block): a.r, gr, the float outputs, order keys; top-k by repeated block
//    argmin for small k, else rank_partial + scatter_ranks (each channel's rank among all,
//    counted over chunks with integer atomics, which are exact).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "launchers.h"
#include "reductions.cuh"

namespace greedyprune::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRun = 32;                  // products per float run
constexpr int64_t kRowsMinS = 32;         // rows layout from this row length on
constexpr int64_t kItemEntries = 16384;   // rows layout: entries per block, about
constexpr int64_t kColumnBlocks = 1024;   // columns layout: blocks to aim for
constexpr int kFinishThreads = 1024;
constexpr int64_t kArgminMaxK = 16;       // larger k: ranking
constexpr int kRankThreads = 256;
constexpr int64_t kRankChunk = 1024;      // keys compared per rank_partial block, at least
constexpr int64_t kMaxGridY = 65535;

__host__ __device__ inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t greater(int64_t a, int64_t b) { return a > b ? a : b; }
__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }


// 16 bytes of T, for vector loads.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Float run of at most kRun products, flushed into a double.
struct RunSum {
  double total = 0.0;
  float run = 0.0f;
  int terms = 0;
  __device__ void add(float p, int n = 1) {
    run += p;
    terms += n;
    if (terms >= kRun) flush();
  }
  __device__ void flush() {
    total += static_cast<double>(run);
    run = 0.0f;
    terms = 0;
  }
  __device__ double value() {
    flush();
    return total;
  }
};

// A lane's share of sum_s x[s] * y[s] over one row: entries lane, lane + 32, ...
template <typename T>
__device__ void row_dot(const T* __restrict__ x, const T* __restrict__ y, int64_t S, int lane, RunSum& acc) {
  for (int64_t s = lane; s < S; s += 32) acc.add(to_float(x[s]) * to_float(y[s]));
}

// The same with 16-byte loads (S a multiple of the pack size, rows 16-byte aligned).
template <typename T>
__device__ void row_dot_packed(const T* __restrict__ x, const T* __restrict__ y, int64_t S, int lane,
                               RunSum& acc) {
  constexpr int V = Pack<T>::kSize;
  const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
  const Pack<T>* yp = reinterpret_cast<const Pack<T>*>(y);
  for (int64_t v = lane; v < S / V; v += 32) {
    const Pack<T> a = xp[v], b = yp[v];
    float dot = 0.0f;
    for (int e = 0; e < V; ++e) dot += to_float(a.v[e]) * to_float(b.v[e]);
    acc.add(dot, V);
  }
}

// Rows layout: block (i, g) sums channel i over rows [g * group_rows, ...) into part[g * N + i].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_rows(const T* __restrict__ act, const T* __restrict__ grad, int64_t B, int64_t N, int64_t S,
                 int64_t group_rows, bool packed, double* __restrict__ part) {
  __shared__ double scratch[kWarps];
  const int64_t i = blockIdx.x % N, g = blockIdx.x / N;
  const int64_t b0 = g * group_rows, b1 = lesser(B, b0 + group_rows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  RunSum acc;
  for (int64_t b = b0 + warp; b < b1; b += kWarps) {
    const int64_t row = (b * N + i) * S;
    if (packed)
      row_dot_packed(act + row, grad + row, S, lane, acc);
    else
      row_dot(act + row, grad + row, S, lane, acc);
  }
  const double total = block_reduce(acc.value(), Sum(), scratch);
  if (threadIdx.x == 0) part[g * N + i] = total;
}

// Columns layout: thread (c, g) sums column c of [B, C] over rows [g * group_rows, ...)
// into part[g * C + c].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_columns(const T* __restrict__ act, const T* __restrict__ grad, int64_t B, int64_t C,
                    int64_t group_rows, double* __restrict__ part) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, g = blockIdx.y;
  if (c >= C) return;
  const int64_t b0 = g * group_rows, b1 = lesser(B, b0 + group_rows);
  RunSum acc;
  for (int64_t b = b0; b < b1; ++b) acc.add(to_float(act[b * C + c]) * to_float(grad[b * C + c]));
  part[g * C + c] = acc.value();
}

// r[i] = sum over groups g and w < width of part[(g * N + i) * width + w].
__global__ void channel_totals(const double* __restrict__ part, int64_t groups, int64_t N, int64_t width,
                               double* __restrict__ r) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  double s = 0.0;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t w = 0; w < width; ++w) s += part[(g * N + i) * width + w];
  r[i] = s;
}

// Unsigned keys ordered like the doubles (-0.0 and +0.0 give one key), as csrc/cpu/order_key.h.
__device__ inline unsigned long long order_key(double d) {
  if (d == 0.0) d = 0.0;
  const unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(d));
  return (u >> 63) ? ~u : (u | (1ull << 63));
}

// (key, index) pairs are unique, so "precedes" is a strict total order.
__device__ inline bool precedes(unsigned long long ka, long long ia, unsigned long long kb, long long ib) {
  return ka < kb || (ka == kb && ia < ib);
}

// One block: ar = a.r, gr = r - ar, the float outputs and the order keys of gr; then, when
// `argmin`, topk by k rounds of "smallest pair after the last one taken".
__global__ void __launch_bounds__(kFinishThreads)
    finish(const double* __restrict__ r_sum, const float* __restrict__ a, int64_t N, int64_t k, bool argmin,
           float* __restrict__ r, float* __restrict__ gr, unsigned long long* __restrict__ keys,
           int64_t* __restrict__ topk) {
  __shared__ double scratch[kFinishThreads / 32];
  __shared__ unsigned long long key_scratch[kFinishThreads / 32];
  __shared__ long long index_scratch[kFinishThreads / 32];
  const int tid = threadIdx.x;
  double s = 0.0;
  for (int64_t i = tid; i < N; i += kFinishThreads) s += static_cast<double>(a[i]) * r_sum[i];
  const double ar = block_reduce(s, Sum(), scratch);
  for (int64_t i = tid; i < N; i += kFinishThreads) {
    const double g = r_sum[i] - ar;
    r[i] = static_cast<float>(r_sum[i]);
    gr[i] = static_cast<float>(g);
    keys[i] = order_key(g);
  }
  if (!argmin) return;
  __syncthreads();  // keys written by the other threads
  unsigned long long last_key = 0;
  long long last_index = -1;  // before every pair
  for (int64_t t = 0; t < k; ++t) {
    unsigned long long best_key = ~0ull;
    long long best_index = N;  // after every pair with the largest key
    for (int64_t i = tid; i < N; i += kFinishThreads) {
      const unsigned long long key = keys[i];
      if (precedes(last_key, last_index, key, i) && precedes(key, i, best_key, best_index)) {
        best_key = key;
        best_index = i;
      }
    }
    for (int d = 16; d > 0; d /= 2) {
      const unsigned long long other_key = __shfl_xor_sync(kFullMask, best_key, d);
      const long long other_index = __shfl_xor_sync(kFullMask, best_index, d);
      if (precedes(other_key, other_index, best_key, best_index)) {
        best_key = other_key;
        best_index = other_index;
      }
    }
    if (tid % 32 == 0) {
      key_scratch[tid / 32] = best_key;
      index_scratch[tid / 32] = best_index;
    }
    __syncthreads();
    for (int w = 0; w < kFinishThreads / 32; ++w) {
      if (precedes(key_scratch[w], index_scratch[w], best_key, best_index)) {
        best_key = key_scratch[w];
        best_index = index_scratch[w];
      }
    }
    __syncthreads();
    if (tid == 0) topk[t] = best_index;
    last_key = best_key;
    last_index = best_index;
  }
}

// ranks[i] += how many of keys[j], j in this block's chunk, precede (keys[i], i).
__global__ void __launch_bounds__(kRankThreads)
    rank_partial(const unsigned long long* __restrict__ keys, int64_t N, int64_t chunk, int* __restrict__ ranks) {
  __shared__ unsigned long long tile[kRankThreads];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRankThreads + threadIdx.x;
  const unsigned long long key = i < N ? keys[i] : 0;
  const int64_t j0 = blockIdx.y * chunk, j1 = lesser(N, j0 + chunk);
  int rank = 0;
  for (int64_t jt = j0; jt < j1; jt += kRankThreads) {
    const int64_t j = jt + threadIdx.x;
    tile[threadIdx.x] = j < j1 ? keys[j] : 0;
    __syncthreads();
    const int m = static_cast<int>(lesser(kRankThreads, j1 - jt));
    for (int q = 0; q < m; ++q) rank += precedes(tile[q], jt + q, key, i);
    __syncthreads();
  }
  if (i < N && rank > 0) atomicAdd(ranks + i, rank);
}

__global__ void scatter_ranks(const int* __restrict__ ranks, int64_t N, int64_t k, int64_t* __restrict__ topk) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < N && ranks[i] < k) topk[ranks[i]] = i;
}

// How stage 1 splits [B, N, S] (B, N, S >= 1): partials are [groups, N, width] doubles.
// Columns layout: enough groups of rows for about kColumnBlocks blocks, each group at
// least kRun rows long.
struct Plan {
  bool rows;
  int64_t groups, group_rows, width;
};

Plan plan_of(int64_t B, int64_t N, int64_t S) {
  if (S >= kRowsMinS) {
    const int64_t group_rows = lesser(B, greater(1, kItemEntries / S));
    return {true, ceil_div(B, group_rows), group_rows, 1};
  }
  const int64_t column_blocks = ceil_div(N * S, kThreads);
  const int64_t groups = lesser(greater(1, kColumnBlocks / column_blocks), ceil_div(B, kRun));
  const int64_t group_rows = ceil_div(B, groups);
  return {false, ceil_div(B, group_rows), group_rows, S};
}

struct Workspace {
  double* part;
  double* r_sum;
  unsigned long long* keys;
  int* ranks;
};

// Layout: part [groups * N * width] doubles, r_sum [N] doubles, keys [N], ranks [N].
Workspace carve(void* workspace, int64_t B, int64_t N, int64_t S, size_t* bytes) {
  int64_t part = 0;
  if (B > 0 && N > 0 && S > 0) {
    const Plan p = plan_of(B, N, S);
    part = p.groups * N * p.width;
  }
  Workspace ws;
  ws.part = static_cast<double*>(workspace);
  ws.r_sum = ws.part + part;
  ws.keys = reinterpret_cast<unsigned long long*>(ws.r_sum + N);
  ws.ranks = reinterpret_cast<int*>(ws.keys + N);
  *bytes = static_cast<size_t>(part + 2 * N) * 8 + static_cast<size_t>(N) * sizeof(int);
  return ws;
}

template <typename T>
void launch_partials(const void* act, const void* grad, int64_t B, int64_t N, int64_t S, const Plan& p,
                     double* part, cudaStream_t stream) {
  const T* x = static_cast<const T*>(act);
  const T* y = static_cast<const T*>(grad);
  if (p.rows) {
    constexpr int V = Pack<T>::kSize;
    const bool packed =
        S % V == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
    const unsigned blocks = static_cast<unsigned>(p.groups * N);
    channel_rows<T><<<blocks, kThreads, 0, stream>>>(x, y, B, N, S, p.group_rows, packed, part);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(N * S, kThreads)), static_cast<unsigned>(p.groups));
    channel_columns<T><<<grid, kThreads, 0, stream>>>(x, y, B, N * S, p.group_rows, part);
  }
}

}  // namespace

size_t taylor_scores_workspace_bytes(int64_t B, int64_t N, int64_t S) {
  size_t bytes = 0;
  carve(nullptr, B, N, S, &bytes);
  return bytes;
}

cudaError_t taylor_scores(const void* act, const void* grad, DType dtype, const float* a, int64_t B, int64_t N,
                          int64_t S, int64_t k, float* r, float* gr, int64_t* topk, void* workspace,
                          cudaStream_t stream) {
  if (B < 0 || N < 0 || S < 0 || k < 0 || k > N || N > INT_MAX) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  size_t bytes = 0;
  const Workspace ws = carve(workspace, B, N, S, &bytes);
  if (B == 0 || S == 0) {
    const cudaError_t err = cudaMemsetAsync(ws.r_sum, 0, N * sizeof(double), stream);
    if (err != cudaSuccess) return err;
  } else {
    const Plan p = plan_of(B, N, S);
    if ((p.rows ? p.groups * N : ceil_div(N * S, kThreads)) > INT_MAX) return cudaErrorInvalidValue;
    switch (dtype) {
      case DType::kFloat32: launch_partials<float>(act, grad, B, N, S, p, ws.part, stream); break;
      case DType::kFloat16: launch_partials<__half>(act, grad, B, N, S, p, ws.part, stream); break;
      case DType::kBFloat16: launch_partials<__nv_bfloat16>(act, grad, B, N, S, p, ws.part, stream); break;
      default: return cudaErrorInvalidValue;
    }
    const unsigned blocks = static_cast<unsigned>(ceil_div(N, kThreads));
    channel_totals<<<blocks, kThreads, 0, stream>>>(ws.part, p.groups, N, p.width, ws.r_sum);
  }
  const bool argmin = k <= kArgminMaxK;
  finish<<<1, kFinishThreads, 0, stream>>>(ws.r_sum, a, N, k, argmin, r, gr, ws.keys, topk);
  if (!argmin) {
    const cudaError_t err = cudaMemsetAsync(ws.ranks, 0, N * sizeof(int), stream);
    if (err != cudaSuccess) return err;
    const int64_t chunk = greater(kRankChunk, ceil_div(N, kMaxGridY));
    const dim3 grid(static_cast<unsigned>(ceil_div(N, kRankThreads)), static_cast<unsigned>(ceil_div(N, chunk)));
    rank_partial<<<grid, kRankThreads, 0, stream>>>(ws.keys, N, chunk, ws.ranks);
    scatter_ranks<<<static_cast<unsigned>(ceil_div(N, kThreads)), kThreads, 0, stream>>>(ws.ranks, N, k, topk);
  }
  return cudaGetLastError();
}

}  // namespace greedyprune::cuda
