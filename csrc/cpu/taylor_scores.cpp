// CPU kernel of the Taylor scores of global imitation (docs/DESIGN.md §2.2):
// r_i = sum_{b,*} grad[b,i,*] * act[b,i,*], gr = r - a.r, and the k most negative gr.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../checks.h"
#include "accumulate.h"

namespace greedyprune {
namespace {

// Per-channel sums of act*grad for a [B, N, S] layout, into r[N] (float64).
template <typename T>
void channel_dots(const T* act, const T* grad, int64_t B, int64_t N, int64_t S, double* r) {
  if (S >= kRunLength / 4) {
    // Tiles of (kBatchGroup samples x kChannelBlock channels) read memory in order;
    // their fixed sizes make the sums independent of the thread count.
    constexpr int64_t kBatchGroup = 4, kChannelBlock = 32;
    const int64_t groups = (B + kBatchGroup - 1) / kBatchGroup;
    const int64_t blocks = (N + kChannelBlock - 1) / kChannelBlock;
    std::vector<double> partial(groups * N, 0.0);
    at::parallel_for(0, groups * blocks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t / blocks, c0 = (t % blocks) * kChannelBlock, c1 = std::min(N, c0 + kChannelBlock);
        for (int64_t b = g * kBatchGroup; b < std::min(B, (g + 1) * kBatchGroup); ++b)
          for (int64_t i = c0; i < c1; ++i)
            partial[g * N + i] += dot_accurate(act + (b * N + i) * S, grad + (b * N + i) * S, S);
      }
    });
    for (int64_t i = 0; i < N; ++i) {
      double s = 0;
      for (int64_t g = 0; g < groups; ++g) s += partial[g * N + i];
      r[i] = s;
    }
    return;
  }
  // Short runs (Linear layers, tiny maps): accumulate columns over the batch in float64.
  const int64_t cols = N * S;
  std::vector<double> col(cols, 0.0);
  at::parallel_for(0, cols, 1024, [&](int64_t c0, int64_t c1) {
    for (int64_t b = 0; b < B; ++b) {
      const T* x = act + b * cols;
      const T* y = grad + b * cols;
      for (int64_t c = c0; c < c1; ++c) col[c] += static_cast<double>(x[c]) * static_cast<double>(y[c]);
    }
  });
  for (int64_t i = 0; i < N; ++i) r[i] = std::accumulate(col.begin() + i * S, col.begin() + (i + 1) * S, 0.0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> taylor_scores_cpu(const at::Tensor& act, const at::Tensor& grad,
                                                                 const at::Tensor& a, int64_t k) {
  check_taylor_scores_args(act, grad, a, k);
  const int64_t B = act.size(0), N = act.size(1);
  const int64_t S = N == 0 || B == 0 ? 0 : act.numel() / (B * N);

  at::Tensor r = at::zeros({N}, act.options().dtype(at::kDouble));
  double* pr = r.data_ptr<double>();
  if (B > 0 && S > 0) {
    const at::Tensor x = act.contiguous(), y = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "taylor_scores_cpu", [&] {
      channel_dots<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, N, S, pr);
    });
  }
  const at::Tensor ad = a.to(at::kDouble).contiguous();
  const double* pa = ad.data_ptr<double>();
  double ar = 0;
  for (int64_t i = 0; i < N; ++i) ar += pa[i] * pr[i];
  at::Tensor gr = r - ar;
  const double* pg = gr.data_ptr<double>();

  std::vector<int64_t> idx(N);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [pg](int64_t i, int64_t j) { return pg[i] < pg[j] || (pg[i] == pg[j] && i < j); });
  at::Tensor topk = at::empty({k}, act.options().dtype(at::kLong));
  std::copy(idx.begin(), idx.begin() + k, topk.data_ptr<int64_t>());

  const auto out = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {r.to(out), gr.to(out), topk};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CPU, m) { m.impl("taylor_scores", &taylor_scores_cpu); }

}  // namespace greedyprune
