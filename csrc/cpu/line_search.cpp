// CPU kernels of local imitation: closed-form line search over all neurons and the
// whole greedy path (DESIGN.md section 1). All arithmetic is float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"

namespace greedyprune {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// A candidate whose ||d_i||^2 is this small relative to G_ii + aGa is a no-op move.
constexpr double kDirectionEps = 1e-12;

struct Scalars {
  double aGa, aGw, wGw;
  bool empty;  // a == 0: the first step takes the whole simplex (gamma = 1)
};

inline void candidate(double diag, double u, double v, double a, const Scalars& s,
                      double& gamma, double& loss) {
  if (s.empty) {
    gamma = 1.0;
    loss = diag - 2 * v + s.wGw;
    return;
  }
  const double rd = (u - v) - (s.aGa - s.aGw);
  const double dd = diag - 2 * u + s.aGa;
  if (dd <= kDirectionEps * (std::abs(diag) + std::abs(s.aGa)) || a >= 1.0) {
    gamma = 0.0;
    loss = kInf;
    return;
  }
  const double r2 = s.aGa - 2 * s.aGw + s.wGw;
  const double lo = a > 0 ? -a / (1 - a) : 0.0;
  gamma = std::min(std::max(-rd / dd, lo), 1.0);
  loss = r2 + 2 * gamma * rd + gamma * gamma * dd;
}

// Evaluates every candidate; returns the first index of the smallest finite loss, or -1.
int64_t evaluate_all(const double* diag, const double* u, const double* v, const double* a,
                     const Scalars& s, int64_t n, double* gamma, double* loss) {
  int64_t best = -1;
  double best_loss = kInf;
  for (int64_t i = 0; i < n; ++i) {
    candidate(diag[i], u[i], v[i], a[i], s, gamma[i], loss[i]);
    if (loss[i] < best_loss) {
      best_loss = loss[i];
      best = i;
    }
  }
  return best;
}

// gx = G x (and gy = G y when kTwo) in float64, one read of G; rows in parallel.
template <typename T, bool kTwo>
void gram_matvec(const T* G, int64_t n, const double* x, double* gx, const double* y, double* gy) {
  constexpr int kLanes = 8;
  at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = G + i * n;
      double ax[kLanes] = {}, ay[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          const double g = static_cast<double>(row[j + l]);
          ax[l] += g * x[j + l];
          if (kTwo) ay[l] += g * y[j + l];
        }
      double sx = 0, sy = 0;
      for (; j < n; ++j) {
        const double g = static_cast<double>(row[j]);
        sx += g * x[j];
        if (kTwo) sy += g * y[j];
      }
      for (int l = 0; l < kLanes; ++l) {
        sx += ax[l];
        sy += ay[l];
      }
      gx[i] = sx;
      if (kTwo) gy[i] = sy;
    }
  });
}

void check_gram(const at::Tensor& G, const at::Tensor& w) {
  check_float_dtype(G, "G");
  check_dim(G, 2, "G");
  GP_CHECK_ARG(G.size(0) == G.size(1) && G.size(0) > 0, "G", "must be a non-empty square matrix, got shape ",
               G.sizes());
  check_float_dtype(w, "w");
  check_dim(w, 1, "w");
  GP_CHECK_ARG(w.size(0) == G.size(0), "w", "must have N = ", G.size(0), " entries (G is N x N), got ",
               w.size(0));
  GP_CHECK_ARG(at::isfinite(w).all().item<bool>(), "w", "must be finite");
}

// G must be symmetric (a Gram matrix): row i stands in for column i. Tiled, so both
// reads stay in cache; the tolerance allows for GEMMs that sum in different orders.
template <typename T>
void check_symmetric(const T* G, int64_t n, double tol) {
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti)
      for (int64_t tj = ti; tj < tiles; ++tj)
        for (int64_t i = ti * kTile; i < std::min(n, (ti + 1) * kTile); ++i)
          for (int64_t j = std::max(i + 1, tj * kTile); j < std::min(n, (tj + 1) * kTile); ++j) {
            const double x = static_cast<double>(G[i * n + j]), y = static_cast<double>(G[j * n + i]);
            const double scale = std::abs(x) + std::abs(y) +
                                 std::sqrt(std::abs(static_cast<double>(G[i * n + i]) * static_cast<double>(G[j * n + j])));
            GP_CHECK_ARG(std::abs(x - y) <= tol * scale, "G", "must be symmetric (a Gram matrix), but G[", i, ", ", j,
                         "] = ", x, " and G[", j, ", ", i, "] = ", y);
          }
  });
}

double symmetry_tolerance(at::ScalarType dt) {
  return dt == at::kDouble ? 1e-9 : dt == at::kFloat ? 1e-5 : 1e-2;
}

void check_finite_products(const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    GP_CHECK_ARG(std::isfinite(x[i]), "G", "must be finite (G @ w or G @ a is not at row ", i, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> line_search_cpu(const at::Tensor& G, const at::Tensor& w,
                                                               const at::Tensor& a) {
  check_gram(G, w);
  check_float_dtype(a, "a");
  check_dim(a, 1, "a");
  const int64_t n = G.size(0);
  GP_CHECK_ARG(a.size(0) == n, "a", "must have N = ", n, " entries (G is N x N), got ", a.size(0));
  const at::Tensor ad = a.to(at::kDouble).contiguous(), wd = w.to(at::kDouble).contiguous();
  const double* pa = ad.data_ptr<double>();
  double sum_a = 0;
  for (int64_t i = 0; i < n; ++i) {
    GP_CHECK_ARG(pa[i] >= 0 && pa[i] <= 1, "a", "entries must lie in [0, 1], got a[", i, "] = ", pa[i]);
    sum_a += pa[i];
  }
  // A 16-bit simplex point cannot sum to 1 exactly.
  const bool half = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  GP_CHECK_ARG(sum_a == 0 || std::abs(sum_a - 1) <= (half ? 1e-2 : 1e-4), "a",
               "must be all zeros (empty start) or sum to 1 (a point of the simplex), sums to ", sum_a);

  const at::Tensor Gc = G.contiguous();
  auto opts = ad.options();
  at::Tensor u = at::empty({n}, opts), v = at::empty({n}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Gc.scalar_type(), "line_search_cpu", [&] {
    check_symmetric(Gc.data_ptr<scalar_t>(), n, symmetry_tolerance(Gc.scalar_type()));
    gram_matvec<scalar_t, true>(Gc.data_ptr<scalar_t>(), n, pa, u.data_ptr<double>(), wd.data_ptr<double>(),
                                v.data_ptr<double>());
  });
  const double* pu = u.data_ptr<double>();
  const double* pv = v.data_ptr<double>();
  check_finite_products(pu, n);
  check_finite_products(pv, n);
  const at::Tensor diag = Gc.diagonal().to(at::kDouble).contiguous();
  const double* pw = wd.data_ptr<double>();
  Scalars s{0, 0, 0, sum_a == 0};
  for (int64_t i = 0; i < n; ++i) {
    s.aGa += pa[i] * pu[i];
    s.aGw += pa[i] * pv[i];
    s.wGw += pw[i] * pv[i];
  }
  at::Tensor gamma = at::empty({n}, opts), loss = at::empty({n}, opts);
  const int64_t best = evaluate_all(diag.data_ptr<double>(), pu, pv, pa, s, n, gamma.data_ptr<double>(),
                                    loss.data_ptr<double>());
  return {gamma, loss, at::scalar_tensor(best, at::kLong)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> greedy_local_cpu(const at::Tensor& G, const at::Tensor& w,
                                                                int64_t max_neurons, double tol,
                                                                int64_t max_steps) {
  check_gram(G, w);
  const int64_t n = G.size(0);
  GP_CHECK_ARG(max_neurons >= 1 && max_neurons <= n, "max_neurons", "must lie in [1, N = ", n, "], got ",
               max_neurons);
  GP_CHECK_ARG(std::isfinite(tol) && tol >= 0, "tol", "must be finite and >= 0, got ", tol);
  GP_CHECK_ARG(max_steps >= 1, "max_steps", "must be >= 1, got ", max_steps);

  const at::Tensor Gc = G.contiguous();
  const at::Tensor wd = w.to(at::kDouble).contiguous();
  auto opts = wd.options();
  at::Tensor a = at::zeros({n}, opts), u = at::zeros({n}, opts), v = at::empty({n}, opts);
  at::Tensor gamma = at::empty({n}, opts), loss = at::empty({n}, opts);
  at::Tensor order = at::full({max_steps}, -1, opts.dtype(at::kLong));
  at::Tensor losses = at::full({max_steps}, kInf, opts);
  const at::Tensor diag = Gc.diagonal().to(at::kDouble).contiguous();
  double *pa = a.data_ptr<double>(), *pu = u.data_ptr<double>(), *pv = v.data_ptr<double>();
  const double* pd = diag.data_ptr<double>();
  double *pg = gamma.data_ptr<double>(), *pl = loss.data_ptr<double>();
  int64_t* po = order.data_ptr<int64_t>();
  double* pls = losses.data_ptr<double>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Gc.scalar_type(), "greedy_local_cpu", [&] {
    const scalar_t* pG = Gc.data_ptr<scalar_t>();
    check_symmetric(pG, n, symmetry_tolerance(Gc.scalar_type()));
    gram_matvec<scalar_t, false>(pG, n, wd.data_ptr<double>(), pv, nullptr, nullptr);
    check_finite_products(pv, n);
    const double* pw = wd.data_ptr<double>();
    Scalars s{0, 0, 0, true};
    for (int64_t i = 0; i < n; ++i) s.wGw += pw[i] * pv[i];
    int64_t nnz = 0;
    for (int64_t step = 0; step < max_steps; ++step) {
      const double r2 = s.aGa - 2 * s.aGw + s.wGw;
      const int64_t i = evaluate_all(pd, pu, pv, pa, s, n, pg, pl);
      if (i < 0 || (!s.empty && !(pl[i] < r2))) break;  // step 0 always takes the best
      const double g = pg[i];
      const bool removes = pa[i] > 0 && g == -pa[i] / (1 - pa[i]);
      const bool was_zero = pa[i] == 0;
      s.aGa = (1 - g) * (1 - g) * s.aGa + 2 * g * (1 - g) * pu[i] + g * g * pd[i];
      s.aGw = (1 - g) * s.aGw + g * pv[i];
      const scalar_t* row = pG + i * n;  // G is symmetric: row i is column i
      for (int64_t j = 0; j < n; ++j) {
        pu[j] = (1 - g) * pu[j] + g * static_cast<double>(row[j]);
        pa[j] = (1 - g) * pa[j];
      }
      pa[i] += g;
      if (removes) {
        pa[i] = 0.0;
        --nnz;
      } else if (g == 1.0) {
        nnz = 1;
      } else if (was_zero) {
        ++nnz;
      }
      s.empty = false;
      po[step] = i;
      pls[step] = s.aGa - 2 * s.aGw + s.wGw;
      if (pls[step] <= tol || nnz >= max_neurons) break;
    }
  });
  return {a, order, losses};
}

}  // namespace

TORCH_LIBRARY_IMPL(greedyprune, CPU, m) {
  m.impl("line_search", &line_search_cpu);
  m.impl("greedy_local", &greedy_local_cpu);
}

}  // namespace greedyprune
