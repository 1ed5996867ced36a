// CUDA backend of pq_norms, taylor_scores, line_search and greedy_local: the argument checks of the CPU kernels
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

// The one device-to-host copy of line_search / greedy_local, after their kernels: the
// flags their symmetry and finiteness checks raised (bit 1: not symmetric, bit 2: G a or
// G w not finite), in the CPU kernel's order of checks.
void check_gram_flags(const at::Tensor& flags) {
  const int f = flags.item<int>();
  GP_CHECK_ARG(!(f & 1), "G", "must be symmetric (a Gram matrix): G x and G^T x differ beyond rounding");
  GP_CHECK_ARG(!(f & 2), "G", "must be finite (G @ w or G @ a is not)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> line_search_cuda(const at::Tensor& G, const at::Tensor& w,
                                                                const at::Tensor& a) {
  check_cuda(G, "G");
  check_line_search_args(G, w, a);
  const int64_t n = G.size(0);
  const c10::cuda::CUDAGuard guard(G.device());
  const at::Tensor Gc = G.contiguous();
  const at::Tensor wd = w.to(at::kDouble).contiguous(), ad = a.to(at::kDouble).contiguous();
  const auto f64 = G.options().dtype(at::kDouble);
  at::Tensor gamma = at::empty({n}, f64), loss = at::empty({n}, f64);
  at::Tensor best = at::empty({}, G.options().dtype(at::kLong));
  at::Tensor flags = at::empty({1}, G.options().dtype(at::kInt));
  at::Tensor ws = workspace(cuda::line_search_workspace_bytes(n), G);
  C10_CUDA_CHECK(cuda::line_search(Gc.data_ptr(), dtype_of(Gc), n, wd.data_ptr<double>(), ad.data_ptr<double>(),
                                   gamma.data_ptr<double>(), loss.data_ptr<double>(), best.data_ptr<int64_t>(),
                                   flags.data_ptr<int>(), ws.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  check_gram_flags(flags);
  return {gamma, loss, best};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> greedy_local_cuda(const at::Tensor& G, const at::Tensor& w,
                                                                 int64_t max_neurons, double tol,
                                                                 int64_t max_steps) {
  check_cuda(G, "G");
  check_greedy_local_args(G, w, max_neurons, tol, max_steps);
  const int64_t n = G.size(0);
  const c10::cuda::CUDAGuard guard(G.device());
  const at::Tensor Gc = G.contiguous(), wd = w.to(at::kDouble).contiguous();
  const auto f64 = G.options().dtype(at::kDouble);
  at::Tensor a = at::empty({n}, f64), losses = at::empty({max_steps}, f64);
  at::Tensor order = at::empty({max_steps}, G.options().dtype(at::kLong));
  at::Tensor flags = at::empty({1}, G.options().dtype(at::kInt));
  at::Tensor ws = workspace(cuda::greedy_local_workspace_bytes(n), G);
  C10_CUDA_CHECK(cuda::greedy_local(Gc.data_ptr(), dtype_of(Gc), n, wd.data_ptr<double>(), max_neurons, tol,
                                    max_steps, a.data_ptr<double>(), order.data_ptr<int64_t>(),
                                    losses.data_ptr<double>(), flags.data_ptr<int>(), ws.data_ptr(),
                                    c10::cuda::getCurrentCUDAStream()));
  check_gram_flags(flags);
  return {a, order, losses};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CUDA, m) {
  m.impl("pq_norms", &pq_norms_cuda);
  m.impl("taylor_scores", &taylor_scores_cuda);
  m.impl("line_search", &line_search_cuda);
  m.impl("greedy_local", &greedy_local_cuda);
}

}  // namespace greedyprune
