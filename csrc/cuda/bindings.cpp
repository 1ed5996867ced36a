// CUDA backend of pq_norms and taylor_scores: the argument checks of the CPU kernels
// (csrc/checks.h), then the plain-CUDA launchers of csrc/cuda/*.cu on the current stream.
// Outputs have the CPU kernels' shapes and dtypes (float64 inputs are CPU-only).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "launchers.h"

namespace greedyprune {
namespace {

void check_cuda(const at::Tensor& t, const char* arg) {
  GP_CHECK_ARG(t.is_cuda(), arg, "must be on a CUDA device, got ", t.device());
}

cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "greedyprune: no CUDA kernel for dtype ", t.scalar_type());
  }
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> pq_norms_cuda(const at::Tensor& w, const at::Tensor& offsets,
                                                 at::ArrayRef<double> powers, const c10::optional<at::Tensor>& mask) {
  check_cuda(w, "w");
  check_same_device(offsets, w, "offsets", "w");  // the kernels read offsets on the device
  check_pq_norms_args(w, offsets, powers, mask);
  const int64_t n = w.numel();
  at::Tensor m;
  if (mask.has_value()) m = mask->contiguous();
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t L = offsets.numel() - 1;
  const int P = static_cast<int>(powers.size());
  const at::Tensor wc = w.contiguous(), off = offsets.contiguous();
  at::Tensor log_sums = at::empty({L, P}, w.options().dtype(at::kDouble));
  at::Tensor counts = at::empty({L}, w.options().dtype(at::kLong));
  at::Tensor nonfinite = at::empty({1}, w.options().dtype(at::kInt));
  at::Tensor ws = workspace(cuda::pq_norms_workspace_bytes(n, P), w);
  C10_CUDA_CHECK(cuda::pq_norms(wc.data_ptr(), dtype_of(wc), m.defined() ? m.data_ptr<bool>() : nullptr, n,
                                off.data_ptr<int64_t>(), L, powers.data(), P, log_sums.data_ptr<double>(), P,
                                counts.data_ptr<int64_t>(), nonfinite.data_ptr<int>(), ws.data_ptr(),
                                c10::cuda::getCurrentCUDAStream()));
  // The op's one device-to-host copy after its kernels (it waits for them): the finiteness flag.
  GP_CHECK_ARG(nonfinite.item<int>() == 0, "w", "must be finite where it is masked in");
  return {log_sums, counts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> taylor_scores_cuda(const at::Tensor& act, const at::Tensor& grad,
                                                                  const at::Tensor& a, int64_t k) {
  check_cuda(act, "act");
  check_taylor_scores_args(act, grad, a, k);
  const int64_t B = act.size(0), N = act.size(1);
  const int64_t S = N == 0 || B == 0 ? 0 : act.numel() / (B * N);

  const c10::cuda::CUDAGuard guard(act.device());
  const at::Tensor x = act.contiguous(), y = grad.contiguous(), af = a.to(at::kFloat).contiguous();
  const auto f32 = act.options().dtype(at::kFloat);
  at::Tensor r = at::empty({N}, f32), gr = at::empty({N}, f32);
  at::Tensor topk = at::empty({k}, act.options().dtype(at::kLong));
  at::Tensor ws = workspace(cuda::taylor_scores_workspace_bytes(B, N, S), act);
  C10_CUDA_CHECK(cuda::taylor_scores(x.data_ptr(), y.data_ptr(), dtype_of(x), af.data_ptr<float>(), B, N, S, k,
                                     r.data_ptr<float>(), gr.data_ptr<float>(), topk.data_ptr<int64_t>(),
                                     ws.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return {r, gr, topk};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CUDA, m) {
  m.impl("pq_norms", &pq_norms_cuda);
  m.impl("taylor_scores", &taylor_scores_cuda);
}

}  // namespace greedyprune
