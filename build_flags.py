"""Compiler flags of greedyprune's C++ and CUDA sources, for every build: setup.py imports
this file; CMakeLists.txt and the Makefile's cuda-check run it (standard library only, so
any Python runs it).

    python build_flags.py cxx    # C++ compile flags, one per line
    python build_flags.py nvcc   # nvcc compile flags, one per line
    python build_flags.py link   # link flags, one per line

GREEDYPRUNE_CPU_ARCH=...  -march for the CPU kernels ("" for the compiler default);
                          default x86-64-v3 (AVX2, FMA) when this CPU has AVX2.
"""
import os
import platform
import sys

# torch 2.13's headers need C++20; torch 2.6 and 2.7 default to C++17, so the standard is
# given explicitly, the same for g++ and nvcc (torch.utils.cpp_extension adds none then).
STANDARD = "-std=c++20"
# Exact float semantics (no FMA contraction) keep CPU results reproducible against the
# float64 oracle; -fno-math-errno and -fno-trapping-math (no FP exception traps are used)
# let sqrt and branch-free selects vectorize; OpenMP drives at::parallel_for.
CXX = [STANDARD, "-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
NVCC = [STANDARD, "-O3", "-lineinfo"]
LINK = ["-fopenmp"]


def cpu_arch() -> str:
    arch = os.environ.get("GREEDYPRUNE_CPU_ARCH")
    if arch is not None:
        return arch
    if platform.machine() in ("x86_64", "AMD64") and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            if " avx2" in f.read():
                return "x86-64-v3"
    return ""


def cxx_flags() -> list[str]:
    arch = cpu_arch()
    return CXX + ([f"-march={arch}"] if arch else [])


if __name__ == "__main__":
    flags = {"cxx": cxx_flags, "nvcc": lambda: NVCC, "link": lambda: LINK}
    if len(sys.argv) != 2 or sys.argv[1] not in flags:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(flags)}}}")
    print("\n".join(flags[sys.argv[1]]()))
