// Plain-CUDA launchers of the greedyprune kernels (no torch headers: the .cu files compile
// with nvcc alone). Contracts: docs/DESIGN.md §2. Every launcher only enqueues work on
// `stream` (no host synchronisation) and returns cudaGetLastError() after its launches.
// Pointers are device pointers unless said otherwise; `workspace` is scratch device memory
// of at least the matching *_workspace_bytes() (may be null when that is 0).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace greedyprune::cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// pq_norms: for each segment l of w (offsets[l] .. offsets[l+1]) and each power p_j,
// log_sums[l * ld + j] = log sum |w|^p_j over entries where mask is true (mask == nullptr:
// all), -inf for empty or all-zero segments; counts[l] = number of masked-in entries.
// offsets: [num_segments + 1] int64, already validated (0 .. n, non-decreasing).
// powers: host array of num_powers finite values > 0 (any number; passes of 64).
// *nonfinite (device int) is zeroed, then set to 1 when a masked-in |w| is inf or NaN;
// the outputs are meaningless in that case.
size_t pq_norms_workspace_bytes(int64_t n, int num_powers);
cudaError_t pq_norms(const void* w, DType dtype, const bool* mask, int64_t n, const int64_t* offsets,
                     int64_t num_segments, const double* powers, int num_powers, double* log_sums, int64_t ld,
                     int64_t* counts, int* nonfinite, void* workspace, cudaStream_t stream);

// taylor_scores: act and grad are contiguous [B, N, S] of `dtype`; a is float32 [N].
// r[i] = sum_{b,s} act * grad (accumulated in float64, stored as float32),
// gr[i] = r[i] - sum_j a_j r_j (in float64), topk[0 .. k) = the k channels with the most
// negative gr in ascending order (ties: lowest index), 0 <= k <= N.
size_t taylor_scores_workspace_bytes(int64_t B, int64_t N, int64_t S);
cudaError_t taylor_scores(const void* act, const void* grad, DType dtype, const float* a, int64_t B, int64_t N,
                          int64_t S, int64_t k, float* r, float* gr, int64_t* topk, void* workspace,
                          cudaStream_t stream);

// line_search: G contiguous [n, n] of `dtype` (symmetric), w and a float64 [n] (a on the
// simplex or all zero, already validated). gamma[j], loss[j] of the move towards e_j (skipped
// candidates: gamma 0, loss inf), *best = first index of the smallest loss or -1.
// *flags (device int) is zeroed, then gets bit 1 when G is not symmetric (G x vs G^T x for the
// CPU kernel's probe x and tolerance) and bit 2 when G a or G w is not finite; the outputs are
// meaningless when it is set.
size_t line_search_workspace_bytes(int64_t n);
cudaError_t line_search(const void* G, DType dtype, int64_t n, const double* w, const double* a, double* gamma,
                        double* loss, int64_t* best, int* flags, void* workspace, cudaStream_t stream);

// greedy_local: the whole greedy path from a = 0 on the device (no host synchronisation per
// step), same G, w and flags as line_search. Writes a [n] float64, order [max_steps] (-1
// padded) and losses [max_steps] (+inf padded). 1 <= max_neurons <= n, tol >= 0, max_steps >= 1.
size_t greedy_local_workspace_bytes(int64_t n);
cudaError_t greedy_local(const void* G, DType dtype, int64_t n, const double* w, int64_t max_neurons, double tol,
                         int64_t max_steps, double* a, int64_t* order, double* losses, int* flags, void* workspace,
                         cudaStream_t stream);

// segment_select and popup_swap: scores of `dtype` [n], offsets [num_segments + 1] int64
// (already validated), n <= kSelectMaxN. *flags (device int) is zeroed, then gets
// kFoundNaN when an eligible value is NaN (popup_swap: any score; values that are not
// eligible are never read) and kBadK when a k lies outside [0, eligible entries of its
// segment]; the outputs are meaningless when it is set.
constexpr int64_t kSelectMaxN = 0x7fffffff;
enum SelectFlags : int { kFoundNaN = 1, kBadK = 2 };

// segment_select: out[j] (bool [n]) = whether entry j is among the k[l] largest (or smallest)
// eligible values of its segment l, ties by lower index. k: int64 [num_segments];
// eligible: bool [n], or null for all entries.
size_t segment_select_workspace_bytes(int64_t n);
cudaError_t segment_select(const void* values, DType dtype, const int64_t* offsets, int64_t num_segments, int64_t n,
                           const int64_t* k, const bool* eligible, bool largest, bool* out, int* flags,
                           void* workspace, cudaStream_t stream);

// popup_swap: keep_out = keep after the SR-popup swap of every segment at `rate` (in [0, 1]),
// q [num_segments] int64 = entries swapped in (and out) per segment.
size_t popup_swap_workspace_bytes(int64_t n);
cudaError_t popup_swap(const void* scores, DType dtype, const int64_t* offsets, int64_t num_segments, int64_t n,
                       const bool* keep, double rate, bool* keep_out, int64_t* q, int* flags, void* workspace,
                       cudaStream_t stream);

}  // namespace greedyprune::cuda
