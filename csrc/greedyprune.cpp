// The one place where every op schema is defined. Backends register implementations
// with TORCH_LIBRARY_IMPL; fake (meta) kernels are registered from Python, next to each op's
// wrapper in greedyprune/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(greedyprune, m) {
  m.def("line_search(Tensor G, Tensor w, Tensor a) -> (Tensor gamma, Tensor loss, Tensor best)");
  m.def(
      "greedy_local(Tensor G, Tensor w, int max_neurons, float tol, int max_steps)"
      " -> (Tensor a, Tensor order, Tensor losses)");
  m.def("taylor_scores(Tensor act, Tensor grad, Tensor a, int k) -> (Tensor r, Tensor gr, Tensor topk)");
  m.def(
      "segment_select(Tensor values, Tensor offsets, Tensor k, Tensor? eligible, bool largest)"
      " -> Tensor");
  m.def("popup_swap(Tensor scores, Tensor offsets, Tensor keep, float rate) -> (Tensor keep_out, Tensor q)");
  m.def("pq_norms(Tensor w, Tensor offsets, float[] powers, Tensor? mask) -> (Tensor log_sums, Tensor counts)");
}
