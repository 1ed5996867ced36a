// CUDA backend of pq_norms, taylor_scores, line_search, greedy_local, segment_select and popup_swap: the argument
// checks of the CPU kernels (csrc/checks.h), then the plain-CUDA launchers of csrc/cuda/*.cu on the current stream.
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
// G w not finite), in the CPU kernel's order of checks: a NaN or inf in G is "not finite".
void check_gram_flags(const at::Tensor& flags) {
  const int f = flags.item<int>();
  GP_CHECK_ARG(!(f & 2), "G", "must be finite, but G @ w or G @ a is not finite");
  GP_CHECK_ARG(!(f & 1), "G", "must be symmetric (a Gram matrix): G x and G^T x differ beyond rounding");
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

// segment_select and popup_swap take flat float scores with offsets on their device.
void check_segmented_scores(const at::Tensor& values, const at::Tensor& offsets, const char* arg) {
  check_cuda(values, arg);
  check_float_dtype(values, arg);
  check_dim(values, 1, arg);
  GP_CHECK_ARG(values.numel() <= cuda::kSelectMaxN, arg, "must have at most ", cuda::kSelectMaxN,
               " entries on CUDA, got ", values.numel());
  check_same_device(offsets, values, "offsets", arg);  // the kernels read offsets on the device
  check_offsets(offsets, values.numel(), arg);
}

// The kernels only flag a k out of range; name the first such segment as the CPU kernel does
// (an error path: the eligible counts are computed here, nowhere else).
void raise_bad_k(const at::Tensor& offsets, const at::Tensor& k, const at::Tensor& eligible) {
  const at::Tensor off = offsets.cpu().contiguous(), kc = k.cpu().contiguous();
  const int64_t* po = off.data_ptr<int64_t>();
  const int64_t* pk = kc.data_ptr<int64_t>();
  const int64_t L = kc.numel();
  const at::Tensor el = eligible.defined() ? eligible.cpu().to(at::kLong) : at::ones({po[L]}, off.options());
  const at::Tensor prefix = at::cat({at::zeros({1}, el.options()), el.cumsum(0)}).contiguous();
  const int64_t* pp = prefix.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    const int64_t m = pp[po[l + 1]] - pp[po[l]];
    GP_CHECK_ARG(pk[l] >= 0 && pk[l] <= m, "k", "must lie in [0, eligible entries of the segment]: segment [",
                 po[l], ", ", po[l + 1], ") has ", m, " eligible entries, k = ", pk[l]);
  }
  TORCH_CHECK(false, "greedyprune: segment_select flagged a k out of range, but every k is in range");
}

at::Tensor segment_select_cuda(const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& k,
                               const c10::optional<at::Tensor>& eligible, bool largest) {
  check_segmented_scores(values, offsets, "values");
  const int64_t n = values.numel(), L = offsets.numel() - 1;
  const at::Tensor elig = check_select_k_eligible(values, L, k, eligible);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor v = values.contiguous(), off = offsets.contiguous(), kd = k.to(values.device()).contiguous();
  at::Tensor out = at::empty({n}, values.options().dtype(at::kBool));
  at::Tensor flags = at::empty({1}, values.options().dtype(at::kInt));
  at::Tensor ws = workspace(cuda::segment_select_workspace_bytes(n), values);
  C10_CUDA_CHECK(cuda::segment_select(v.data_ptr(), dtype_of(v), off.data_ptr<int64_t>(), L, n,
                                      kd.data_ptr<int64_t>(), elig.defined() ? elig.data_ptr<bool>() : nullptr,
                                      largest, out.data_ptr<bool>(), flags.data_ptr<int>(), ws.data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()));
  // The op's one device-to-host copy after its kernels: the flags of the data checks.
  const int f = flags.item<int>();
  GP_CHECK_ARG(!(f & cuda::kFoundNaN), "values", "must not contain NaN");
  if (f & cuda::kBadK) raise_bad_k(off, kd, elig);
  return out;
}

std::tuple<at::Tensor, at::Tensor> popup_swap_cuda(const at::Tensor& scores, const at::Tensor& offsets,
                                                   const at::Tensor& keep, double rate) {
  check_segmented_scores(scores, offsets, "scores");
  const int64_t n = scores.numel(), L = offsets.numel() - 1;
  check_popup_keep_rate(scores, keep, rate);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous(), off = offsets.contiguous(), kp = keep.contiguous();
  at::Tensor keep_out = at::empty({n}, kp.options());
  at::Tensor q = at::empty({L}, offsets.options());
  at::Tensor flags = at::empty({1}, scores.options().dtype(at::kInt));
  at::Tensor ws = workspace(cuda::popup_swap_workspace_bytes(n), scores);
  C10_CUDA_CHECK(cuda::popup_swap(s.data_ptr(), dtype_of(s), off.data_ptr<int64_t>(), L, n, kp.data_ptr<bool>(), rate,
                                  keep_out.data_ptr<bool>(), q.data_ptr<int64_t>(), flags.data_ptr<int>(),
                                  ws.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  GP_CHECK_ARG(!(flags.item<int>() & cuda::kFoundNaN), "scores", "must not contain NaN");
  return {keep_out, q};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CUDA, m) {
  m.impl("pq_norms", &pq_norms_cuda);
  m.impl("taylor_scores", &taylor_scores_cuda);
  m.impl("line_search", &line_search_cuda);
  m.impl("greedy_local", &greedy_local_cuda);
  m.impl("segment_select", &segment_select_cuda);
  m.impl("popup_swap", &popup_swap_cuda);
}

}  // namespace greedyprune
