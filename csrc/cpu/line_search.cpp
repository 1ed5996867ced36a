// CPU kernels of local imitation: closed-form line search over all neurons and the
// whole greedy path (docs/DESIGN.md §2.1). All arithmetic is float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../constants.h"

namespace greedyprune {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Entries of G one thread reads before a pass over G is split across threads. A smaller
// G is read on the calling thread: waking the pool costs more than the pass, and on a busy
// machine every parallel region waits for a descheduled thread (benchmarks/RESULTS.md,
// greedy_local quiet vs loaded).
constexpr int64_t kEntriesPerThread = int64_t{1} << 21;

// Rows (or columns) of an n x n pass per parallel chunk.
int64_t lines_per_chunk(int64_t n, int64_t at_least) {
  return std::max<int64_t>(at_least, kEntriesPerThread / std::max<int64_t>(n, 1));
}

struct Scalars {
  double aGa, aGw, wGw;
  bool empty;  // a == 0: the first step takes the whole simplex (gamma = 1)
};

// First index of the smallest entry, or -1 when none is below inf. Lane-wise so it
// vectorizes: each lane keeps its first minimum, and ties between lanes go to the lower index.
int64_t first_argmin(const double* x, int64_t n) {
  constexpr int kL = 8;
  double m[kL];
  int64_t idx[kL];
  for (int l = 0; l < kL; ++l) {
    m[l] = kInf;
    idx[l] = -1;
  }
  int64_t j = 0;
  for (; j + kL <= n; j += kL)
    for (int l = 0; l < kL; ++l) {
      const bool lower = x[j + l] < m[l];
      m[l] = lower ? x[j + l] : m[l];
      idx[l] = lower ? j + l : idx[l];
    }
  for (; j < n; ++j)
    if (x[j] < m[0]) {
      m[0] = x[j];
      idx[0] = j;
    }
  int64_t best = -1;
  double best_m = kInf;
  for (int l = 0; l < kL; ++l)
    if (m[l] < best_m || (m[l] == best_m && idx[l] >= 0 && idx[l] < best)) {
      best_m = m[l];
      best = idx[l];
    }
  return best;
}

// gamma_i and loss_i of the move towards e_i for every i (docs/DESIGN.md §2.1;
// loss = inf marks a skipped candidate). Branch-free, so it vectorizes; returns
// the first index of the smallest loss, or -1.
int64_t evaluate_all(const double* __restrict diag, const double* __restrict u, const double* __restrict v,
                     const double* __restrict a, const Scalars& s, int64_t n, double* __restrict gamma,
                     double* __restrict loss) {
  if (s.empty) {
    for (int64_t i = 0; i < n; ++i) {
      gamma[i] = 1.0;
      loss[i] = diag[i] - 2 * v[i] + s.wGw;
    }
    return first_argmin(loss, n);
  }
  const double c = s.aGa - s.aGw;
  const double r2 = s.aGa - 2 * s.aGw + s.wGw;
  const double abs_aGa = std::abs(s.aGa);
  for (int64_t i = 0; i < n; ++i) {
    const double rd = (u[i] - v[i]) - c;
    const double dd = diag[i] - 2 * u[i] + s.aGa;
    const double removal = -a[i] / (1 - a[i]);
    const double lo = a[i] > 0 ? removal : 0.0;
    const double step = -rd / dd;
    const double above_lo = step < lo ? lo : step;  // clip to [lo, 1] with selects
    const double g = above_lo > 1.0 ? 1.0 : above_lo;
    const double l = r2 + 2 * g * rd + g * g * dd;
    const bool skip = (dd <= kDirectionEps * (std::abs(diag[i]) + abs_aGa)) | (a[i] >= 1.0);  // no branch
    gamma[i] = skip ? 0.0 : g;
    loss[i] = skip ? kInf : l;
  }
  return first_argmin(loss, n);
}

// G must be symmetric (a Gram matrix): row i stands in for column i. Checked by
// comparing G p with G^T p for a fixed pseudo-random probe p: both are contiguous
// passes over G (a pairwise compare would read G with stride N), and any asymmetry
// A with A p below tolerance is vanishingly unlikely. The tolerance allows for
// GEMMs that sum in different orders. G p and |G| |p| come with the mat-vecs' pass.
struct SymmetryProbe {
  std::vector<double> p, gp, mag;  // the probe, G p, |G| |p|
  explicit SymmetryProbe(int64_t n) : p(n), gp(n), mag(n) {
    for (int64_t j = 0; j < n; ++j)
      p[j] = static_cast<double>((static_cast<uint64_t>(j) * 2654435761u) & 0xffffffffu) / 4294967296.0 - 0.5;
  }
};

// gx = G x (and gy = G y when kTwo) in float64 and the probe's products, one read of G;
// rows in parallel.
template <typename T, bool kTwo>
void gram_matvec(const T* G, int64_t n, const double* x, double* gx, const double* y, double* gy,
                 SymmetryProbe& probe) {
  at::parallel_for(0, n, lines_per_chunk(n, 64), [&](int64_t r0, int64_t r1) {
    // local restrict copies: through the captured references GCC's omp simd loop loaded the
    // operands element by element
    const double* __restrict px = x;
    const double* __restrict py = y;
    const double* __restrict pp = probe.p.data();
    for (int64_t i = r0; i < r1; ++i) {
      const T* __restrict row = G + i * n;
      double sx = 0, sy = 0, sp = 0, mag = 0;
#pragma omp simd reduction(+ : sx, sy, sp, mag)
      for (int64_t j = 0; j < n; ++j) {
        const double g = static_cast<double>(row[j]);
        sx += g * px[j];
        if constexpr (kTwo) sy += g * py[j];
        sp += g * pp[j];
        mag += std::abs(g) * std::abs(pp[j]);
      }
      gx[i] = sx;
      if constexpr (kTwo) gy[i] = sy;
      probe.gp[i] = sp;
      probe.mag[i] = mag;
    }
  });
}

// The symmetry check's verdict: G^T p (one more pass, by column blocks) against the G p of
// gram_matvec; on failure the offending pair is located. Runs after check_finite_products:
// a NaN or inf in G fails there as "not finite".
template <typename T>
void check_symmetric(const T* G, int64_t n, double tol, const SymmetryProbe& probe) {
  std::vector<double> gtp(n, 0.0);
  // G^T p by column blocks: each block accumulates over all rows, contiguously.
  at::parallel_for(0, n, lines_per_chunk(n, 256), [&](int64_t c0, int64_t c1) {
    double* __restrict acc = gtp.data();
    const double* __restrict pp = probe.p.data();
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict row = G + i * n;
      const double pi = pp[i];
      for (int64_t j = c0; j < c1; ++j) acc[j] += static_cast<double>(row[j]) * pi;
    }
  });
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::abs(probe.gp[i] - gtp[i]) <= 2 * tol * probe.mag[i] + 1e-300;
  if (ok) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      const double a = static_cast<double>(G[i * n + j]), b = static_cast<double>(G[j * n + i]);
      GP_CHECK_ARG(std::abs(a - b) <= tol * (std::abs(a) + std::abs(b)), "G", "must be symmetric (a Gram matrix), but G[", i,
                   ", ", j, "] = ", a, " and G[", j, ", ", i, "] = ", b);
    }
  GP_CHECK_ARG(false, "G", "must be symmetric (a Gram matrix): G x and G^T x differ beyond rounding");
}

double symmetry_tolerance(at::ScalarType dt) {
  return dt == at::kDouble ? kSymmetryTolFloat64 : dt == at::kFloat ? kSymmetryTolFloat32 : kSymmetryTol16Bit;
}

// A NaN or inf in G reaches G @ w (w is finite; inf * 0 is NaN), so this check of the
// products finds one without another pass over G.
void check_finite_products(const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    GP_CHECK_ARG(std::isfinite(x[i]), "G", "must be finite, but G @ w or G @ a is not finite at row ", i);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> line_search_cpu(const at::Tensor& G, const at::Tensor& w,
                                                               const at::Tensor& a) {
  const bool empty = check_line_search_args(G, w, a);
  const int64_t n = G.size(0);
  const at::Tensor ad = a.to(at::kDouble).contiguous(), wd = w.to(at::kDouble).contiguous();
  const double* pa = ad.data_ptr<double>();

  const at::Tensor Gc = G.contiguous();
  auto opts = ad.options();
  at::Tensor u = at::empty({n}, opts), v = at::empty({n}, opts);
  const double* pu = u.data_ptr<double>();
  const double* pv = v.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Gc.scalar_type(), "line_search_cpu", [&] {
    SymmetryProbe probe(n);
    gram_matvec<scalar_t, true>(Gc.data_ptr<scalar_t>(), n, pa, u.data_ptr<double>(), wd.data_ptr<double>(),
                                v.data_ptr<double>(), probe);
    check_finite_products(pu, n);
    check_finite_products(pv, n);
    check_symmetric(Gc.data_ptr<scalar_t>(), n, symmetry_tolerance(Gc.scalar_type()), probe);
  });
  const at::Tensor diag = Gc.diagonal().to(at::kDouble).contiguous();
  const double* pw = wd.data_ptr<double>();
  Scalars s{0, 0, 0, empty};
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
  check_greedy_local_args(G, w, max_neurons, tol, max_steps);
  const int64_t n = G.size(0);

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
    SymmetryProbe probe(n);
    gram_matvec<scalar_t, false>(pG, n, wd.data_ptr<double>(), pv, nullptr, nullptr, probe);
    check_finite_products(pv, n);
    check_symmetric(pG, n, symmetry_tolerance(Gc.scalar_type()), probe);
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
