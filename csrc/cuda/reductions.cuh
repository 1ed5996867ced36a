// Device helpers shared by the CUDA kernels: element loads as float, and warp / block
// reductions whose order is fixed by lane and warp numbers (same bits every run).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace greedyprune::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

struct Sum {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct Max {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};

// Butterfly reduction: every lane gets the result, in an order fixed by the lane numbers.
template <typename V, typename Op>
__device__ V warp_reduce(V v, Op op) {
  for (int d = 16; d > 0; d /= 2) v = op(v, __shfl_xor_sync(kFullMask, v, d));
  return v;
}

// Every thread gets the result; warps combine in warp order. `scratch`: one shared entry
// per warp. Ends with a barrier, so scratch can be reused at once.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op, V* scratch) {
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  V total = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) total = op(total, scratch[w]);
  __syncthreads();
  return total;
}

}  // namespace greedyprune::cuda
