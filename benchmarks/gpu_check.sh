#!/usr/bin/env bash
# On a machine with a GPU and a CUDA build of torch (run from the repository root):
# builds the extension with CUDA, runs the whole test suite on the GPU (CUDA and Triton
# backends against the oracles, opcheck, torch.compile), runs compute-sanitizer memcheck
# on the CUDA op tests when it is installed, and runs the "gpu" benchmark (its section of
# benchmarks/results.json; `python benchmarks/run.py --render-only` then puts it in RESULTS.md).
#   bash benchmarks/gpu_check.sh            # GREEDYPRUNE_CUDA_ARCH="9.0" to build one arch
set -euo pipefail
PY=${PYTHON:-python3}
"$PY" -c 'import torch; assert torch.cuda.is_available() and torch.version.cuda, "needs a GPU and CUDA torch"'
export GREEDYPRUNE_CUDA_ARCH=${GREEDYPRUNE_CUDA_ARCH:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
echo "== build (CUDA arch $GREEDYPRUNE_CUDA_ARCH)"
"$PY" -m pip install -q --no-build-isolation -e . 2>&1 | tail -5
"$PY" -c 'import torch, greedyprune; assert torch._C._dispatch_has_kernel_for_dispatch_key("greedyprune::pq_norms", "CUDA"), "CUDA kernels not registered"; print("CUDA kernels registered")'
echo "== tests"
"$PY" -m pytest -q -p no:cacheprovider tests
if command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (CUDA op tests)"
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py -x
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi
echo "== GPU benchmark"
"$PY" benchmarks/run.py gpu
