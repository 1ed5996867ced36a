// Calls every greedyprune op through the dispatcher (as Python does), so a passing run
// also shows that the schemas and the CPU registrations of libgreedyprune_ops were loaded.
// Expectations are worked out by hand or with plain ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

int passed = 0, failed = 0;

#define EXPECT(name, cond)                               \
  do {                                                   \
    const bool ok_ = (cond);                             \
    std::printf("%s %s\n", ok_ ? "PASS" : "FAIL", name); \
    ++(ok_ ? passed : failed);                           \
  } while (0)

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor f32(std::vector<float> v) { return at::tensor(v, at::kFloat); }
Tensor f64(std::vector<double> v) { return at::tensor(v, at::kDouble); }
Tensor i64(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }
Tensor mask(std::vector<uint8_t> v) { return at::tensor(v, at::kByte).to(at::kBool); }

// Same shape and dtype, and equal within atol (infinities must match exactly).
bool close(const Tensor& x, const Tensor& y, double atol) {
  return x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() &&
         at::allclose(x.to(at::kDouble), y.to(at::kDouble), 0.0, atol);
}
bool same(const Tensor& x, const Tensor& y) {
  return x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() && at::equal(x, y);
}

void test_pq_norms() {
  const auto pq_norms =
      op<Tensor2(const Tensor&, const Tensor&, c10::ArrayRef<double>, const std::optional<Tensor>&)>(
          "greedyprune::pq_norms");
  const std::vector<double> powers = {0.5, 1.0, 2.0};
  const Tensor w = f32({1, -2, 0, 4});
  const Tensor one_seg = f64({std::log(1 + std::sqrt(2.0) + 2), std::log(7.0), std::log(21.0)}).reshape({1, 3});

  auto [logs, counts] = pq_norms.call(w, i64({0, 4}), powers, std::nullopt);
  EXPECT("pq_norms one segment: log sums", close(logs, one_seg, 1e-6));
  EXPECT("pq_norms one segment: count", same(counts, i64({4})));

  std::tie(logs, counts) = pq_norms.call(w, i64({0, 0, 4}), powers, std::nullopt);
  EXPECT("pq_norms empty segment: log sums -inf",
         close(logs, at::cat({at::full({1, 3}, -kInf, at::kDouble), one_seg}), 1e-6));
  EXPECT("pq_norms empty segment: count 0", same(counts, i64({0, 4})));

  // Masked in: 1, 0, 4.
  std::tie(logs, counts) = pq_norms.call(w, i64({0, 4}), powers, mask({true, false, true, true}));
  EXPECT("pq_norms mask: log sums",
         close(logs, f64({std::log(3.0), std::log(5.0), std::log(17.0)}).reshape({1, 3}), 1e-6));
  EXPECT("pq_norms mask: count", same(counts, i64({3})));

  // sqrt(2) is no multiple of a common base power: the per-power log2/exp2 path.
  at::manual_seed(0);
  const Tensor x = at::randn({1000}, at::kFloat);
  const std::vector<double> odd = {1.0, std::sqrt(2.0), 3.0};
  std::vector<Tensor> expect;
  for (double p : odd) expect.push_back(x.to(at::kDouble).abs().pow(p).sum().log());
  std::tie(logs, counts) = pq_norms.call(x, i64({0, 1000}), odd, std::nullopt);
  EXPECT("pq_norms non-chain powers vs ATen", close(logs, at::stack(expect).reshape({1, 3}), 1e-5));

  bool threw = false;
  try {
    pq_norms.call(w, i64({0, 3}), powers, std::nullopt);
  } catch (const c10::Error& e) {
    threw = e.msg().find("offsets") != std::string::npos;
  }
  EXPECT("pq_norms offsets not ending at numel throws about 'offsets'", threw);
}

void test_segment_select() {
  const auto segment_select =
      op<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, bool)>(
          "greedyprune::segment_select");
  const Tensor v = f32({3, 1, 2, 2, 5});
  const Tensor off = i64({0, 5});
  EXPECT("segment_select largest k=2",
         same(segment_select.call(v, off, i64({2}), std::nullopt, true),
              mask({true, false, false, false, true})));
  EXPECT("segment_select ties: lowest index wins",
         same(segment_select.call(f32({2, 2, 2}), i64({0, 3}), i64({1}), std::nullopt, true),
              mask({true, false, false})));
  EXPECT("segment_select smallest k=2, tie at 2",
         same(segment_select.call(v, off, i64({2}), std::nullopt, false),
              mask({false, true, true, false, false})));
  EXPECT("segment_select eligible excludes the 5",
         same(segment_select.call(v, off, i64({2}), mask({true, true, true, true, false}), true),
              mask({true, false, true, false, false})));
}

void test_popup_swap() {
  const auto popup_swap =
      op<Tensor2(const Tensor&, const Tensor&, const Tensor&, double)>("greedyprune::popup_swap");
  const Tensor scores = f32({0.9f, 0.1f, 0.8f, 0.2f});
  const Tensor off = i64({0, 4});
  const Tensor keep = mask({true, true, false, false});
  // The top two by score are {0, 2}: kept 1 would be dropped, pruned 2 revived.
  auto [out, q] = popup_swap.call(scores, off, keep, 1.0);
  EXPECT("popup_swap rate 1 swaps 1 and 2", same(out, mask({true, false, true, false})) && same(q, i64({1})));
  std::tie(out, q) = popup_swap.call(scores, off, keep, 0.0);
  EXPECT("popup_swap rate 0 leaves keep", same(out, keep) && same(q, i64({0})));
}

void test_taylor_scores() {
  const auto taylor_scores =
      op<Tensor3(const Tensor&, const Tensor&, const Tensor&, int64_t)>("greedyprune::taylor_scores");
  const Tensor act = at::ones({2, 3, 4}, at::kFloat);
  const Tensor grad = at::arange(24, at::kFloat).reshape({2, 3, 4});
  // r_i = sum_{b,s} (12 b + 4 i + s) = 60 + 32 i; a = e0 gives gr = r - r_0.
  auto [r, gr, topk] = taylor_scores.call(act, grad, f64({1, 0, 0}), 2);
  EXPECT("taylor_scores r", close(r, f32({60, 92, 124}), 0.0));
  EXPECT("taylor_scores gr", close(gr, f32({0, 32, 64}), 0.0));
  EXPECT("taylor_scores topk", same(topk, i64({0, 1})));

  std::tie(r, gr, topk) = taylor_scores.call(act, -grad, f64({1, 0, 0}), 2);
  EXPECT("taylor_scores topk most negative first", same(topk, i64({2, 1})));

  // Every channel's runs are [0, 1, 2, 3]: all gr tie at 0.
  std::tie(r, gr, topk) = taylor_scores.call(act, grad.remainder(4), f64({1, 0, 0}), 2);
  EXPECT("taylor_scores ties: lowest index", same(topk, i64({0, 1})));

  // Long spatial runs take the per-channel path; compare with plain ATen in float64.
  at::manual_seed(1);
  const Tensor x = at::randn({2, 3, 300}, at::kFloat), y = at::randn({2, 3, 300}, at::kFloat);
  std::tie(r, gr, topk) = taylor_scores.call(x, y, f64({0, 0.5, 0.5}), 3);
  const Tensor r_ref = (x.to(at::kDouble) * y.to(at::kDouble)).sum({0, 2});
  EXPECT("taylor_scores long runs vs ATen", close(r, r_ref.to(at::kFloat), 1e-4));
}

void test_line_search() {
  const auto line_search = op<Tensor3(const Tensor&, const Tensor&, const Tensor&)>("greedyprune::line_search");
  const Tensor G = at::eye(3, at::kDouble);
  const Tensor w = at::full({3}, 1.0 / 3, at::kDouble);
  // Empty start: gamma 1, loss G_ii - 2 (Gw)_i + wGw = 1 - 2/3 + 1/3.
  auto [gamma, loss, best] = line_search.call(G, w, at::zeros({3}, at::kDouble));
  EXPECT("line_search from 0: gamma", close(gamma, f64({1, 1, 1}), 1e-15));
  EXPECT("line_search from 0: loss", close(loss, at::full({3}, 2.0 / 3, at::kDouble), 1e-15));
  EXPECT("line_search from 0: best", best.item<int64_t>() == 0);
  // From a = e0: e0 itself is skipped (a_0 = 1); the others move half way, loss 2/3 - 1 + 1/2.
  std::tie(gamma, loss, best) = line_search.call(G, w, f64({1, 0, 0}));
  EXPECT("line_search from e0: gamma", close(gamma, f64({0, 0.5, 0.5}), 1e-15));
  EXPECT("line_search from e0: loss", close(loss, f64({kInf, 1.0 / 6, 1.0 / 6}), 1e-15));
  EXPECT("line_search from e0: best", best.item<int64_t>() == 1);
}

void test_greedy_local() {
  const auto greedy_local =
      op<Tensor3(const Tensor&, const Tensor&, int64_t, double, int64_t)>("greedyprune::greedy_local");
  const Tensor G = at::eye(3, at::kDouble);
  const Tensor w = at::full({3}, 1.0 / 3, at::kDouble);
  // Steps: e0 (loss 2/3), half way to e1 (1/6), a third of the way to e2 (0); nnz = 3 stops it.
  auto [a, order, losses] = greedy_local.call(G, w, 3, 0.0, 20);
  EXPECT("greedy_local a", close(a, w, 1e-12));
  // Unused steps are padded with order -1 and loss inf.
  EXPECT("greedy_local order",
         same(order.slice(0, 0, 3), i64({0, 1, 2})) && order.slice(0, 3).eq(-1).all().item<bool>());
  EXPECT("greedy_local losses", close(losses.slice(0, 0, 3), f64({2.0 / 3, 1.0 / 6, 0}), 1e-12) &&
                                    losses.slice(0, 3).eq(kInf).all().item<bool>());
}

}  // namespace

int main() {
  try {
    test_pq_norms();
    test_segment_select();
    test_popup_swap();
    test_taylor_scores();
    test_line_search();
    test_greedy_local();
  } catch (const std::exception& e) {  // e.g. an op not registered: the library was not loaded
    std::printf("FAIL unexpected exception: %s\n", e.what());
    ++failed;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
