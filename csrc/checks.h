// Argument checks shared by every backend binding. Each message names the argument.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "constants.h"

#define GP_CHECK_ARG(cond, arg, ...) \
  TORCH_CHECK_VALUE(cond, "greedyprune: argument '", arg, "' ", __VA_ARGS__)

namespace greedyprune {

inline void check_float_dtype(const at::Tensor& t, const char* arg) {
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 ||
                  (dt == at::kDouble && t.device().is_cpu());
  GP_CHECK_ARG(ok, arg, "must be float32, float16 or bfloat16 (or float64 on CPU), got ",
               dt, " on ", t.device());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* arg) {
  GP_CHECK_ARG(t.dim() == dim, arg, "must have ", dim, " dimension(s), got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                              const char* ref_arg) {
  GP_CHECK_ARG(t.device() == ref.device(), arg, "must be on the same device as '", ref_arg,
               "' (", ref.device(), "), got ", t.device());
}

// offsets: int64 [L+1], offsets[0] == 0, offsets[L] == n, non-decreasing. Reads on the host.
inline void check_offsets(const at::Tensor& offsets, int64_t n, const char* n_arg) {
  check_dim(offsets, 1, "offsets");
  GP_CHECK_ARG(offsets.scalar_type() == at::kLong, "offsets", "must be int64, got ",
               offsets.scalar_type());
  GP_CHECK_ARG(offsets.numel() >= 1, "offsets", "must hold at least one entry (L+1 for L segments)");
  const at::Tensor o = offsets.cpu().contiguous();
  const int64_t* p = o.data_ptr<int64_t>();
  const int64_t m = o.numel();
  GP_CHECK_ARG(p[0] == 0, "offsets", "must start at 0, got ", p[0]);
  GP_CHECK_ARG(p[m - 1] == n, "offsets", "must end at numel('", n_arg, "') = ", n, ", got ",
               p[m - 1]);
  for (int64_t i = 1; i < m; ++i)
    GP_CHECK_ARG(p[i] >= p[i - 1], "offsets", "must be non-decreasing, but offsets[", i, "] = ",
                 p[i], " < offsets[", i - 1, "] = ", p[i - 1]);
}

inline void check_flat_bool(const at::Tensor& t, int64_t n, const char* arg, const char* n_arg) {
  GP_CHECK_ARG(t.scalar_type() == at::kBool, arg, "must be bool, got ", t.scalar_type());
  GP_CHECK_ARG(t.numel() == n, arg, "must have as many entries as '", n_arg, "' (", n, "), got ",
               t.numel());
}

// Op-level checks shared by every backend's binding (device placement included: a
// kernel must never read a tensor of another device through its data pointer).
// segment_select's k (int64, one per segment) and eligible (bool, one per value, on values'
// device), after values and offsets are checked. Returns eligible made contiguous, or an
// undefined tensor when there is none.
inline at::Tensor check_select_k_eligible(const at::Tensor& values, int64_t segments, const at::Tensor& k,
                                          const c10::optional<at::Tensor>& eligible) {
  check_dim(k, 1, "k");
  GP_CHECK_ARG(k.scalar_type() == at::kLong, "k", "must be int64, got ", k.scalar_type());
  GP_CHECK_ARG(k.numel() == segments, "k", "must have one entry per segment (", segments, "), got ", k.numel());
  if (!eligible.has_value()) return at::Tensor();
  at::Tensor elig = eligible->contiguous();
  check_flat_bool(elig, values.numel(), "eligible", "values");
  check_same_device(elig, values, "eligible", "values");
  return elig;
}

// popup_swap's keep (bool, one per score, on scores' device) and rate in [0, 1].
inline void check_popup_keep_rate(const at::Tensor& scores, const at::Tensor& keep, double rate) {
  check_flat_bool(keep, scores.numel(), "keep", "scores");
  check_dim(keep, 1, "keep");
  check_same_device(keep, scores, "keep", "scores");
  GP_CHECK_ARG(std::isfinite(rate) && rate >= 0 && rate <= 1, "rate", "must lie in [0, 1], got ", rate);
}


inline void check_taylor_scores_args(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& a, int64_t k) {
  check_float_dtype(act, "act");
  GP_CHECK_ARG(act.dim() >= 2, "act", "must be shaped [B, N, *] (at least 2 dimensions), got shape ", act.sizes());
  GP_CHECK_ARG(grad.sizes() == act.sizes(), "grad", "must have the shape of 'act' ", act.sizes(), ", got ",
               grad.sizes());
  GP_CHECK_ARG(grad.scalar_type() == act.scalar_type(), "grad", "must have the dtype of 'act' (",
               act.scalar_type(), "), got ", grad.scalar_type());
  check_same_device(grad, act, "grad", "act");
  const int64_t N = act.size(1);
  check_float_dtype(a, "a");
  check_dim(a, 1, "a");
  GP_CHECK_ARG(a.size(0) == N, "a", "must have N = act.size(1) = ", N, " entries, got ", a.size(0));
  check_same_device(a, act, "a", "act");
  GP_CHECK_ARG(k >= 0 && k <= N, "k", "must lie in [0, N = ", N, "], got ", k);
}

inline void check_pq_norms_args(const at::Tensor& w, const at::Tensor& offsets, at::ArrayRef<double> powers,
                                const c10::optional<at::Tensor>& mask) {
  check_float_dtype(w, "w");
  check_offsets(offsets, w.numel(), "w");
  GP_CHECK_ARG(!powers.empty(), "powers", "must name at least one power");
  for (double p : powers) GP_CHECK_ARG(std::isfinite(p) && p > 0, "powers", "must all be finite and > 0, got ", p);
  if (mask.has_value()) {
    check_flat_bool(*mask, w.numel(), "mask", "w");
    check_same_device(*mask, w, "mask", "w");
  }
}

// G: non-empty square float matrix; w: float [N], on G's device, finite (read on the host).
inline void check_gram_args(const at::Tensor& G, const at::Tensor& w) {
  check_float_dtype(G, "G");
  check_dim(G, 2, "G");
  GP_CHECK_ARG(G.size(0) == G.size(1) && G.size(0) > 0, "G", "must be a non-empty square matrix, got shape ",
               G.sizes());
  check_float_dtype(w, "w");
  check_dim(w, 1, "w");
  GP_CHECK_ARG(w.size(0) == G.size(0), "w", "must have N = ", G.size(0), " entries (G is N x N), got ",
               w.size(0));
  check_same_device(w, G, "w", "G");
  GP_CHECK_ARG(at::isfinite(w).all().item<bool>(), "w", "must be finite");
}

// line_search's G, w and a: a is all zeros (the empty start) or a point of the simplex,
// checked on a host copy. Returns whether a is all zeros.
inline bool check_line_search_args(const at::Tensor& G, const at::Tensor& w, const at::Tensor& a) {
  check_gram_args(G, w);
  check_float_dtype(a, "a");
  check_dim(a, 1, "a");
  const int64_t n = G.size(0);
  GP_CHECK_ARG(a.size(0) == n, "a", "must have N = ", n, " entries (G is N x N), got ", a.size(0));
  check_same_device(a, G, "a", "G");
  const at::Tensor ad = a.to(at::kDouble).cpu().contiguous();
  const double* pa = ad.data_ptr<double>();
  double sum_a = 0;
  for (int64_t i = 0; i < n; ++i) {
    GP_CHECK_ARG(pa[i] >= 0 && pa[i] <= 1, "a", "entries must lie in [0, 1], got a[", i, "] = ", pa[i]);
    sum_a += pa[i];
  }
  const bool half = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  GP_CHECK_ARG(sum_a == 0 || std::abs(sum_a - 1) <= (half ? kSimplexTol16Bit : kSimplexTol), "a",
               "must be all zeros (empty start) or sum to 1 (a point of the simplex), sums to ", sum_a);
  return sum_a == 0;
}

inline void check_greedy_local_args(const at::Tensor& G, const at::Tensor& w, int64_t max_neurons, double tol,
                                    int64_t max_steps) {
  check_gram_args(G, w);
  const int64_t n = G.size(0);
  GP_CHECK_ARG(max_neurons >= 1 && max_neurons <= n, "max_neurons", "must lie in [1, N = ", n, "], got ",
               max_neurons);
  GP_CHECK_ARG(std::isfinite(tol) && tol >= 0, "tol", "must be finite and >= 0, got ", tol);
  GP_CHECK_ARG(max_steps >= 1, "max_steps", "must be >= 1, got ", max_steps);
}

}  // namespace greedyprune
