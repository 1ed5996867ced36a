// CUDA kernels of local imitation (docs/DESIGN.md §2.1), same results as
// csrc/cpu/line_search.cpp: the closed-form line search over all neurons, and the whole
// greedy path without a host round trip per step. All arithmetic after loading G is float64.
//
// Shared stages, in stream order:
// 1. rows_kernel: one warp per row of G, one read of it: u = G a, v = G w, and for the
//    symmetry check G x and |G||x| for the CPU's fixed probe x; also diag(G).
// 2. cols_kernel: one thread per column computes (G^T x)_j in row order and raises the flag
//    bits when it differs from (G x)_j beyond rounding, or when u_j or v_j is not finite.
// 3. scalars_kernel (one block): aGa, aGw, wGw and nnz(a), in a fixed reduction order.
// Then line_search: candidates_kernel (gamma, loss, per-block argmin) and argmin_kernel.
// greedy_local for N <= kSingleBlockMaxN: one persistent block runs every step (a, u, v, diag
// stay in global memory, L2-resident; the scalars are kept identically in every thread).
// Larger N: per step three kernels (candidates -> pick -> update) that all return at once
// once a device-side `done` flag is set, so the host enqueues max_steps rounds blindly.
// Every reduction has a fixed order and no atomics touch results: runs repeat bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

#include "../constants.h"
#include "launchers.h"
#include "reductions.cuh"

namespace greedyprune::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kBigBlock = 1024;
// Largest N run by the persistent single-block kernel (8 candidates per thread per step).
// Overridable at compile time only so that a CPU emulation can run the multi-block path on
// small N.
#ifndef GREEDYPRUNE_SINGLE_BLOCK_MAX_N
#define GREEDYPRUNE_SINGLE_BLOCK_MAX_N 8192
#endif
constexpr int64_t kSingleBlockMaxN = GREEDYPRUNE_SINGLE_BLOCK_MAX_N;
constexpr int kNotSymmetric = 1, kNotFinite = 2;

__device__ inline double to_double(float x) { return x; }
__device__ inline double to_double(__half x) { return __half2float(x); }
__device__ inline double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }

struct Scalars {
  double aGa, aGw, wGw;
  int64_t nnz;
  int empty;  // a == 0: the first step takes the whole simplex (gamma = 1)
};

// The multi-block greedy path's step state, written by pick_kernel.
struct StepState {
  Scalars s;
  int64_t i;
  double g;
  int removes;
  int active;  // this step's update is to be applied
  int done;    // the path has ended: every later kernel returns at once
};

// A candidate of the argmin: loss inf and index -1 when none.
struct Best {
  double loss;
  int64_t idx;
};

__device__ inline Best better(Best x, Best y) {
  const bool take_y = y.loss < x.loss || (y.loss == x.loss && y.idx >= 0 && (x.idx < 0 || y.idx < x.idx));
  return take_y ? y : x;
}

__device__ inline Best warp_best(Best b) {
  for (int d = 16; d > 0; d /= 2) {
    Best o{__shfl_xor_sync(kFullMask, b.loss, d), __shfl_xor_sync(kFullMask, b.idx, d)};
    b = better(b, o);
  }
  return b;
}

// Every thread gets the first index of the smallest loss. Ends with a barrier.
__device__ Best block_best(Best b, Best* scratch) {
  b = warp_best(b);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = b;
  __syncthreads();
  Best total = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) total = better(total, scratch[w]);
  __syncthreads();
  return total;
}

// The CPU's symmetry probe x_j, in [-0.5, 0.5).
__device__ inline double probe(int64_t j) {
  return static_cast<double>((static_cast<uint64_t>(j) * 2654435761u) & 0xffffffffu) / 4294967296.0 - 0.5;
}

// gamma_j and loss_j of the move towards e_j, the CPU's formulas in the CPU's order
// (loss inf marks a skipped candidate).
__device__ inline void candidate(int64_t j, const double* diag, const double* u, const double* v, const double* a,
                                 const Scalars& s, double* gamma, double* loss) {
  if (s.empty) {
    *gamma = 1.0;
    *loss = diag[j] - 2 * v[j] + s.wGw;
    return;
  }
  const double c = s.aGa - s.aGw;
  const double r2 = s.aGa - 2 * s.aGw + s.wGw;
  const double aj = a[j];
  const double rd = (u[j] - v[j]) - c;
  const double dd = diag[j] - 2 * u[j] + s.aGa;
  const double lo = aj > 0 ? -aj / (1 - aj) : 0.0;
  const double step = -rd / dd;
  const double above_lo = step < lo ? lo : step;
  const double g = above_lo > 1.0 ? 1.0 : above_lo;
  const bool skip = dd <= kDirectionEps * (fabs(diag[j]) + fabs(s.aGa)) || aj >= 1.0;
  *gamma = skip ? 0.0 : g;
  *loss = skip ? INFINITY : r2 + 2 * g * rd + g * g * dd;
}

// Candidates j = begin, begin + stride, ... < n, scanned in increasing order (strict <
// keeps the first of equal losses).
__device__ Best scan_candidates(int64_t begin, int64_t stride, int64_t n, const double* diag, const double* u,
                                const double* v, const double* a, const Scalars& s, double* gamma, double* loss) {
  Best b{INFINITY, -1};
  for (int64_t j = begin; j < n; j += stride) {
    double g, l;
    candidate(j, diag, u, v, a, s, &g, &l);
    if (gamma) {
      gamma[j] = g;
      loss[j] = l;
    }
    if (l < b.loss) b = Best{l, j};
  }
  return b;
}

// Scalar part of taking step (i, g), as on the CPU; returns whether it removes neuron i.
__device__ inline bool advance(Scalars& s, int64_t i, double g, const double* diag, const double* u,
                               const double* v, const double* a) {
  const double ai = a[i];
  const bool removes = ai > 0 && g == -ai / (1 - ai);
  s.aGa = (1 - g) * (1 - g) * s.aGa + 2 * g * (1 - g) * u[i] + g * g * diag[i];
  s.aGw = (1 - g) * s.aGw + g * v[i];
  if (removes) {
    --s.nnz;
  } else if (g == 1.0) {
    s.nnz = 1;
  } else if (ai == 0) {
    ++s.nnz;
  }
  s.empty = 0;
  return removes;
}

// Entry j of a and u after step (i, g): u <- (1-g) u + g G[i,:] (G is symmetric: row i
// is column i); a <- (1-g) a, a_i += g, a removal zeroes a_i.
template <typename T>
__device__ inline void update_entry(int64_t j, int64_t i, double g, bool removes, const T* row, double* a,
                                    double* u) {
  u[j] = (1 - g) * u[j] + g * to_double(row[j]);
  double aj = (1 - g) * a[j];
  if (j == i) aj = removes ? 0.0 : aj + g;
  a[j] = aj;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const T* G, int64_t n, const double* a, const double* w, double* u, double* v, double* diag,
                double* gx, double* mag) {
  const int lane = threadIdx.x % 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (i >= n) return;  // whole warps leave together
  const T* row = G + i * n;
  double su = 0, sv = 0, sx = 0, sm = 0;
  for (int64_t j = lane; j < n; j += 32) {
    const double g = to_double(row[j]);
    const double x = probe(j);
    if (a) su += g * a[j];
    sv += g * w[j];
    sx += g * x;
    sm += fabs(g) * fabs(x);
  }
  su = warp_reduce(su, Sum());
  sv = warp_reduce(sv, Sum());
  sx = warp_reduce(sx, Sum());
  sm = warp_reduce(sm, Sum());
  if (lane == 0) {
    if (a) u[i] = su;
    v[i] = sv;
    gx[i] = sx;
    mag[i] = sm;
    diag[i] = to_double(row[i]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cols_kernel(const T* G, int64_t n, const double* gx, const double* mag, const double* u, const double* v,
                double tol, int* flags) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= n) return;
  double gtx = 0;
  for (int64_t i = 0; i < n; ++i) gtx += to_double(G[i * n + j]) * probe(i);
  int bad = 0;
  if (!(fabs(gx[j] - gtx) <= 2 * tol * mag[j] + 1e-300)) bad |= kNotSymmetric;  // NaN fails too
  if (!isfinite(u[j]) || !isfinite(v[j])) bad |= kNotFinite;
  if (bad) atomicOr(flags, bad);
}

// a == nullptr: a = 0 (the empty start).
__global__ void __launch_bounds__(kBigBlock)
    scalars_kernel(int64_t n, const double* a, const double* u, const double* v, const double* w, Scalars* out) {
  __shared__ double scratch[kBigBlock / 32];
  double aGa = 0, aGw = 0, wGw = 0, nnz = 0;
  for (int64_t j = threadIdx.x; j < n; j += kBigBlock) {
    if (a) {
      aGa += a[j] * u[j];
      aGw += a[j] * v[j];
      nnz += a[j] != 0;
    }
    wGw += w[j] * v[j];
  }
  aGa = block_reduce(aGa, Sum(), scratch);
  aGw = block_reduce(aGw, Sum(), scratch);
  wGw = block_reduce(wGw, Sum(), scratch);
  nnz = block_reduce(nnz, Sum(), scratch);
  if (threadIdx.x == 0) *out = Scalars{aGa, aGw, wGw, static_cast<int64_t>(nnz), nnz == 0};
}

// Per-block argmin over candidates [blockIdx.x * kThreads, +kThreads). gamma, loss may be null.
// step_state != nullptr: the greedy path's scalars, and nothing to do once it is done.
__global__ void __launch_bounds__(kThreads)
    candidates_kernel(int64_t n, const double* diag, const double* u, const double* v, const double* a,
                      const Scalars* scalars, const StepState* step_state, double* gamma, double* loss,
                      Best* partials) {
  __shared__ Best scratch[kThreads / 32];
  if (step_state && step_state->done) return;
  const Scalars s = step_state ? step_state->s : *scalars;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kThreads;
  const int64_t end = begin + kThreads < n ? begin + kThreads : n;
  Best b = scan_candidates(begin + threadIdx.x, kThreads, end, diag, u, v, a, s, gamma, loss);
  b = block_best(b, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = b;
}

__device__ Best reduce_partials(const Best* partials, int64_t count, Best* scratch) {
  Best b{INFINITY, -1};
  for (int64_t k = threadIdx.x; k < count; k += kBigBlock) b = better(b, partials[k]);
  return block_best(b, scratch);
}

__global__ void __launch_bounds__(kBigBlock) argmin_kernel(const Best* partials, int64_t count, int64_t* best) {
  __shared__ Best scratch[kBigBlock / 32];
  const Best b = reduce_partials(partials, count, scratch);
  if (threadIdx.x == 0) *best = b.idx;
}

__global__ void fill_kernel(int64_t count, int64_t* order, double* losses) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    order[k] = -1;
    losses[k] = INFINITY;
  }
}

// One step's stop rules before the move: no candidate, or (after step 0) no improvement.
__device__ inline bool no_move(const Best& b, const Scalars& s) {
  const double r2 = s.aGa - 2 * s.aGw + s.wGw;
  return b.idx < 0 || (!s.empty && !(b.loss < r2));
}

// ... and after it: the loss reached tol, or max_neurons neurons are in.
__device__ inline bool path_ends(const Scalars& s, double loss, double tol, int64_t max_neurons) {
  return loss <= tol || s.nnz >= max_neurons;
}

// The whole path in one block. Every thread holds the same scalars (same inputs, same
// operations, same bits); thread t owns entries t, t + kBigBlock, ... of a and u.
template <typename T>
__global__ void __launch_bounds__(kBigBlock)
    greedy_block_kernel(const T* G, int64_t n, const double* diag, const double* v, double* a, double* u,
                        const Scalars* scalars, int64_t max_neurons, double tol, int64_t max_steps, int64_t* order,
                        double* losses) {
  __shared__ Best scratch[kBigBlock / 32];
  Scalars s = *scalars;
  for (int64_t step = 0; step < max_steps; ++step) {
    const Best b = block_best(scan_candidates(threadIdx.x, kBigBlock, n, diag, u, v, a, s, nullptr, nullptr),
                              scratch);
    if (no_move(b, s)) return;
    double g, l;
    candidate(b.idx, diag, u, v, a, s, &g, &l);
    const bool removes = advance(s, b.idx, g, diag, u, v, a);
    __syncthreads();  // everyone has read a[i] and u[i] before their owners change them
    const T* row = G + b.idx * n;
    for (int64_t j = threadIdx.x; j < n; j += kBigBlock) update_entry(j, b.idx, g, removes, row, a, u);
    const double loss = s.aGa - 2 * s.aGw + s.wGw;
    if (threadIdx.x == 0) {
      order[step] = b.idx;
      losses[step] = loss;
    }
    if (path_ends(s, loss, tol, max_neurons)) return;
    __syncthreads();  // the update is complete before the next step reads it
  }
}

// Multi-block path, one step: reduce the candidates' partial minima, apply the stop rules
// and the scalar update, and publish the move for update_kernel.
__global__ void __launch_bounds__(kBigBlock)
    pick_kernel(int64_t step, const Best* partials, int64_t count, const double* diag, const double* u,
                const double* v, const double* a, int64_t max_neurons, double tol, StepState* st, int64_t* order,
                double* losses) {
  __shared__ Best scratch[kBigBlock / 32];
  if (st->done) {  // also ends the final step's update
    if (threadIdx.x == 0) st->active = 0;
    return;
  }
  const Best b = reduce_partials(partials, count, scratch);
  if (threadIdx.x != 0) return;
  Scalars s = st->s;
  if (no_move(b, s)) {
    st->active = 0;
    st->done = 1;
    return;
  }
  double g, l;
  candidate(b.idx, diag, u, v, a, s, &g, &l);
  st->removes = advance(s, b.idx, g, diag, u, v, a);
  const double loss = s.aGa - 2 * s.aGw + s.wGw;
  st->s = s;
  st->i = b.idx;
  st->g = g;
  st->active = 1;
  st->done = path_ends(s, loss, tol, max_neurons);  // this step's update still runs
  order[step] = b.idx;
  losses[step] = loss;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    update_kernel(const T* G, int64_t n, const StepState* st, double* a, double* u) {
  if (!st->active) return;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j < n) update_entry(j, st->i, st->g, st->removes, G + st->i * n, a, u);
}

// Workspace: u, v, diag, gx, mag [n] doubles | partials | Scalars | StepState.
struct Workspace {
  double *u, *v, *diag, *gx, *mag;
  Best* partials;
  Scalars* scalars;
  StepState* step_state;
};

int64_t num_blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

size_t workspace_bytes(int64_t n) {
  return sizeof(double) * 5 * n + sizeof(Best) * num_blocks(n) + sizeof(Scalars) + sizeof(StepState);
}

Workspace carve(void* base, int64_t n) {
  Workspace ws;
  double* d = static_cast<double*>(base);
  ws.u = d;
  ws.v = d + n;
  ws.diag = d + 2 * n;
  ws.gx = d + 3 * n;
  ws.mag = d + 4 * n;
  ws.partials = reinterpret_cast<Best*>(d + 5 * n);
  ws.scalars = reinterpret_cast<Scalars*>(ws.partials + num_blocks(n));
  ws.step_state = reinterpret_cast<StepState*>(ws.scalars + 1);
  return ws;
}

double symmetry_tolerance(DType dtype) {
  return dtype == DType::kFloat32 ? kSymmetryTolFloat32 : kSymmetryTol16Bit;
}

// Stages 1-3 (see the top of the file). a == nullptr: the empty start, u = 0.
template <typename T>
void prologue(const T* G, DType dtype, int64_t n, const double* w, const double* a, int* flags, const Workspace& ws,
              cudaStream_t stream) {
  cudaMemsetAsync(flags, 0, sizeof(int), stream);
  if (!a) cudaMemsetAsync(ws.u, 0, sizeof(double) * n, stream);
  rows_kernel<T><<<(n + kRowsPerBlock - 1) / kRowsPerBlock, kThreads, 0, stream>>>(G, n, a, w, ws.u, ws.v, ws.diag,
                                                                                  ws.gx, ws.mag);
  cols_kernel<T><<<num_blocks(n), kThreads, 0, stream>>>(G, n, ws.gx, ws.mag, ws.u, ws.v,
                                                        symmetry_tolerance(dtype), flags);
  scalars_kernel<<<1, kBigBlock, 0, stream>>>(n, a, ws.u, ws.v, w, ws.scalars);
}

template <typename T>
cudaError_t line_search_t(const T* G, DType dtype, int64_t n, const double* w, const double* a, double* gamma,
                          double* loss, int64_t* best, int* flags, void* workspace, cudaStream_t stream) {
  const Workspace ws = carve(workspace, n);
  prologue(G, dtype, n, w, a, flags, ws, stream);
  candidates_kernel<<<num_blocks(n), kThreads, 0, stream>>>(n, ws.diag, ws.u, ws.v, a, ws.scalars, nullptr, gamma,
                                                           loss, ws.partials);
  argmin_kernel<<<1, kBigBlock, 0, stream>>>(ws.partials, num_blocks(n), best);
  return cudaGetLastError();
}

template <typename T>
cudaError_t greedy_local_t(const T* G, DType dtype, int64_t n, const double* w, int64_t max_neurons, double tol,
                           int64_t max_steps, double* a, int64_t* order, double* losses, int* flags, void* workspace,
                           cudaStream_t stream) {
  const Workspace ws = carve(workspace, n);
  const int64_t fill_blocks = (max_steps + kThreads - 1) / kThreads;
  fill_kernel<<<fill_blocks < 1024 ? fill_blocks : 1024, kThreads, 0, stream>>>(max_steps, order, losses);
  cudaMemsetAsync(a, 0, sizeof(double) * n, stream);
  prologue(G, dtype, n, w, static_cast<const double*>(nullptr), flags, ws, stream);
  if (n <= kSingleBlockMaxN) {
    greedy_block_kernel<T><<<1, kBigBlock, 0, stream>>>(G, n, ws.diag, ws.v, a, ws.u, ws.scalars, max_neurons, tol,
                                                       max_steps, order, losses);
    return cudaGetLastError();
  }
  // StepState starts as {scalars, i = 0, g = 0, removes = 0, active = 0, done = 0}.
  cudaMemsetAsync(ws.step_state, 0, sizeof(StepState), stream);
  cudaMemcpyAsync(&ws.step_state->s, ws.scalars, sizeof(Scalars), cudaMemcpyDeviceToDevice, stream);
  for (int64_t step = 0; step < max_steps; ++step) {
    candidates_kernel<<<num_blocks(n), kThreads, 0, stream>>>(n, ws.diag, ws.u, ws.v, a, nullptr, ws.step_state,
                                                             nullptr, nullptr, ws.partials);
    pick_kernel<<<1, kBigBlock, 0, stream>>>(step, ws.partials, num_blocks(n), ws.diag, ws.u, ws.v, a, max_neurons,
                                            tol, ws.step_state, order, losses);
    update_kernel<T><<<num_blocks(n), kThreads, 0, stream>>>(G, n, ws.step_state, a, ws.u);
  }
  return cudaGetLastError();
}

}  // namespace

size_t line_search_workspace_bytes(int64_t n) { return workspace_bytes(n); }
size_t greedy_local_workspace_bytes(int64_t n) { return workspace_bytes(n); }

cudaError_t line_search(const void* G, DType dtype, int64_t n, const double* w, const double* a, double* gamma,
                        double* loss, int64_t* best, int* flags, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return line_search_t(static_cast<const float*>(G), dtype, n, w, a, gamma, loss, best, flags, workspace, stream);
    case DType::kFloat16:
      return line_search_t(static_cast<const __half*>(G), dtype, n, w, a, gamma, loss, best, flags, workspace, stream);
    case DType::kBFloat16:
      return line_search_t(static_cast<const __nv_bfloat16*>(G), dtype, n, w, a, gamma, loss, best, flags, workspace,
                           stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t greedy_local(const void* G, DType dtype, int64_t n, const double* w, int64_t max_neurons, double tol,
                         int64_t max_steps, double* a, int64_t* order, double* losses, int* flags, void* workspace,
                         cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return greedy_local_t(static_cast<const float*>(G), dtype, n, w, max_neurons, tol, max_steps, a, order, losses,
                            flags, workspace, stream);
    case DType::kFloat16:
      return greedy_local_t(static_cast<const __half*>(G), dtype, n, w, max_neurons, tol, max_steps, a, order, losses,
                            flags, workspace, stream);
    case DType::kBFloat16:
      return greedy_local_t(static_cast<const __nv_bfloat16*>(G), dtype, n, w, max_neurons, tol, max_steps, a, order,
                            losses, flags, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace greedyprune::cuda
