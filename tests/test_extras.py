"""scikit-learn and matplotlib are the `demo` extra, onnx / onnxscript / onnxruntime the `onnx`
extra: the core imports none of them, and a missing one is named with the extra that installs it."""
import subprocess
import sys

import pytest

from greedyprune import extras
from greedyprune.harness import data

INSTALL_HINT = r"pip install 'greedyprune\[demo\]'"


def test_core_imports_no_extra():
    code = ("import sys, greedyprune, greedyprune.greedy, greedyprune.popup, greedyprune.sparsity, greedyprune.cli; "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'onnx', 'onnxscript', 'onnxruntime') "
            "if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_digits_without_scikit_learn(monkeypatch):
    data._digits_arrays.cache_clear()  # the arrays are cached per process
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import raises ModuleNotFoundError
    with pytest.raises(ImportError, match=INSTALL_HINT):
        data.load_dataset("digits", "train")


def test_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=INSTALL_HINT):
        extras.pyplot()
