# Entry points on a fresh machine (README): `make demo` runs the main job,
# `make test` runs every check CI runs. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local CPU wheel, the version tested (pyproject's floor is torch>=2.6); any other
# torch spec pulls GBs of CUDA packages. scikit-learn and matplotlib: the demo extra; onnx,
# onnxscript and onnxruntime: the onnx extra (so CI runs the ONNX tests); safetensors and
# huggingface_hub: the pretrained extra (Hugging Face cache files; timm brings both).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test pytest ctest cuda-check bench

# Re-run when this file changes (a new dependency reaches existing venvs too).
$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" triton==3.9.0 ninja numpy tqdm torch-pruning scikit-learn matplotlib onnx onnxscript onnxruntime safetensors huggingface_hub pytest pytest-benchmark hypothesis expecttest
	touch $@

install: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation -e .

demo: install
	$(VENV)/bin/greedyprune demo

test: cuda-check ctest pytest

pytest: install
	$(PY) -m pytest

ctest: install
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE="$(abspath $(PY))" \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# Compile-checks every CUDA source for sm_80 and sm_90, and the C++ files that bind
# them to ATen (syntax only: a CPU torch has the c10/cuda headers but no CUDA libraries,
# nor the generated cuda_cmake_macros.h, hence the define). No GPU needed. Flags: build_flags.py.
cuda-check: install
	@if ! command -v nvcc >/dev/null; then echo "cuda-check skipped: nvcc not found"; exit 0; fi; \
	nvcc_flags=$$($(PY) build_flags.py nvcc); cxx_flags=$$($(PY) build_flags.py cxx); \
	n=0; for f in $$(find csrc -name '*.cu' | sort); do \
	  for arch in 80 90; do \
	    nvcc $$nvcc_flags -c "$$f" -o /dev/null -gencode arch=compute_$$arch,code=sm_$$arch || exit 1; \
	  done; n=$$((n+1)); \
	done; echo "cuda-check: $$n .cu file(s) compiled for sm_80 and sm_90"; \
	inc=$$($(PY) -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))'); \
	cuda_inc=$${CUDA_HOME:-/usr/local/cuda}/include; \
	m=0; for f in $$(find csrc/cuda -name '*.cpp' | sort); do \
	  g++ $$cxx_flags -fsyntax-only -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE $$inc -I$$cuda_inc "$$f" || exit 1; m=$$((m+1)); \
	done; echo "cuda-check: $$m CUDA binding file(s) pass a syntax check"

bench: install
	$(PY) benchmarks/run.py --write-results
