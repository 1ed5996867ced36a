"""Builds greedyprune._C: C++ CPU kernels always, CUDA kernels when torch has CUDA
and a CUDA toolkit is present (decided from torch.version.cuda and CUDA_HOME, not
from a visible GPU, so a GPU-less host with CUDA torch still builds them).

Environment switches:
  GREEDYPRUNE_NO_CUDA=1        skip the CUDA sources
  GREEDYPRUNE_CUDA_ARCH="8.0;9.0"  CUDA architectures (sets TORCH_CUDA_ARCH_LIST)
  GREEDYPRUNE_CPU_ARCH=...     -march for the CPU kernels ("" for the compiler default);
                               default x86-64-v3 (AVX2, FMA) when this CPU has AVX2
"""
import glob
import os
import platform

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


def cpu_arch_flags():
    arch = os.environ.get("GREEDYPRUNE_CPU_ARCH")
    if arch is None:
        has_avx2 = False
        if platform.machine() in ("x86_64", "AMD64") and os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                has_avx2 = " avx2" in f.read()
        arch = "x86-64-v3" if has_avx2 else ""
    return [f"-march={arch}"] if arch else []


def want_cuda():
    if os.environ.get("GREEDYPRUNE_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


# Exact float semantics (no FMA contraction) keep CPU results reproducible against
# the float64 oracle; -fno-math-errno and -fno-trapping-math (no FP exception traps
# are used) let sqrt and branch-free selects vectorize; OpenMP drives at::parallel_for.
cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"] + cpu_arch_flags()
sources = ["csrc/greedyprune.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))

if want_cuda() and cuda_sources:
    if "GREEDYPRUNE_CUDA_ARCH" in os.environ:
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["GREEDYPRUNE_CUDA_ARCH"]
    ext = CUDAExtension(
        "greedyprune._C",
        sources + cuda_sources,
        extra_compile_args={"cxx": cxx_flags + ["-DGREEDYPRUNE_WITH_CUDA"], "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension("greedyprune._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
