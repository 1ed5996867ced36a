"""Builds greedyprune._C: C++ CPU kernels always, CUDA kernels when torch has CUDA
and a CUDA toolkit is present (decided from torch.version.cuda and CUDA_HOME, not
from a visible GPU, so a GPU-less host with CUDA torch still builds them).
The compiler flags come from build_flags.py (shared with CMakeLists.txt).

Environment switches:
  GREEDYPRUNE_NO_CUDA=1        skip the CUDA sources
  GREEDYPRUNE_CUDA_ARCH="8.0;9.0"  CUDA architectures (sets TORCH_CUDA_ARCH_LIST)
  GREEDYPRUNE_CPU_ARCH=...     -march for the CPU kernels ("" for the compiler default);
                               default x86-64-v3 (AVX2, FMA) when this CPU has AVX2
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

# A PEP 517 build runs this file without its folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_flags  # noqa: E402


def want_cuda():
    if os.environ.get("GREEDYPRUNE_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


cxx_flags = build_flags.cxx_flags()
sources = ["csrc/greedyprune.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))

if want_cuda() and cuda_sources:
    if "GREEDYPRUNE_CUDA_ARCH" in os.environ:
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["GREEDYPRUNE_CUDA_ARCH"]
    ext = CUDAExtension(
        "greedyprune._C",
        sources + cuda_sources,
        extra_compile_args={"cxx": cxx_flags + ["-DGREEDYPRUNE_WITH_CUDA"], "nvcc": build_flags.NVCC},
        extra_link_args=build_flags.LINK,
    )
else:
    ext = CppExtension("greedyprune._C", sources, extra_compile_args={"cxx": cxx_flags},
                       extra_link_args=build_flags.LINK)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
