"""The numeric constants of the op contracts have one Python definition
(greedyprune/constants.py); the C++ and CUDA kernels read theirs from
csrc/constants.h. This pins the two equal and keeps copies out of the kernels."""
import re
import subprocess
import sys
from pathlib import Path

import torch

from greedyprune import constants

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
HEADER = CSRC / "constants.h"

# C++ name -> Python value
PINNED = {
    "kDirectionEps": constants.DIRECTION_EPS,
    "kSymmetryTolFloat64": constants.SYMMETRY_TOL[torch.float64],
    "kSymmetryTolFloat32": constants.SYMMETRY_TOL[torch.float32],
    "kSymmetryTol16Bit": constants.SYMMETRY_TOL_16BIT,
    "kSimplexTol": constants.SIMPLEX_TOL,
    "kSimplexTol16Bit": constants.SIMPLEX_TOL_16BIT,
}
DEFINITION = re.compile(r"constexpr\s+double\s+(k\w+)\s*=\s*([-+0-9.eE]+)\s*;")


def _kernel_sources():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu") and p != HEADER)


def test_header_matches_python():
    defined = {name: float(value) for name, value in DEFINITION.findall(HEADER.read_text())}
    assert defined == PINNED


def test_kernels_use_the_header_and_keep_no_copy():
    users = []
    for path in _kernel_sources():
        text = path.read_text()
        copies = [name for name, _ in DEFINITION.findall(text) if name in PINNED]
        assert not copies, f"{path.relative_to(CSRC)} defines its own {copies}: use csrc/constants.h"
        if any(re.search(rf"\b{name}\b", text) for name in PINNED):
            assert re.search(r'#include\s+"(\.\./)?constants\.h"', text), f"{path.relative_to(CSRC)} misses constants.h"
            users.append(path.name)
    # the line search (CPU and CUDA) and the simplex check read them
    assert {"line_search.cpp", "line_search.cu", "checks.h"} <= set(users)


def test_symmetry_tolerances_are_the_named_constants():
    """The per-dtype choice in the kernels names the constants, with no literal of its own."""
    for path in (CSRC / "cpu" / "line_search.cpp", CSRC / "cuda" / "line_search.cu"):
        body = re.search(r"double symmetry_tolerance\([^)]*\)\s*\{(.*?)\}", path.read_text(), re.S).group(1)
        assert "kSymmetryTol" in body and not re.search(r"(?<![\w.])\d", body), body  # a number, not in a name


def test_python_users_import_the_constants_not_the_oracle():
    from greedyprune import reference

    assert reference.DIRECTION_EPS is constants.DIRECTION_EPS
    for path in (ROOT / "greedyprune" / "triton").glob("*.py"):
        assert not re.search(r"^from \.\.(reference| import reference)", path.read_text(), re.M), path.name


def test_the_oracle_imports_no_backend_code():
    """greedyprune.reference, the yardstick of every backend, loads only the constants."""
    script = ("import sys, greedyprune.reference; "
              "assert 'greedyprune.ops' not in sys.modules, 'greedyprune.ops imported'; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'greedyprune'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(["greedyprune", "greedyprune.constants", "greedyprune.reference"])
