// Argument checks shared by every backend binding. Each message names the argument.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace greedyprune
