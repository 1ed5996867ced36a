"""Optional dependencies, each named with the extra that installs it: the `demo` extra
(`pip install 'greedyprune[demo]'`: the bundled digits come from scikit-learn and the reports'
PNGs are drawn with matplotlib) and the `onnx` extra (onnx and onnxscript for `export_onnx`,
onnxruntime to run the file). The ops and drivers import none of them until one is asked for."""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "demo"
ONNX_EXTRA = "onnx"


def require(module: str, package: str, purpose: str, *, extra: str = EXTRA) -> ModuleType:
    """`module`, or an ImportError that says which extra installs `package`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ImportError(f"greedyprune: {purpose} needs {package}, which is not installed; "
                          f"pip install 'greedyprune[{extra}]' (or pip install {package})") from err


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (PNG files, no display)."""
    require("matplotlib", "matplotlib", "drawing a report's PNG").use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def require_onnx() -> None:
    """onnx and onnxscript, which torch.onnx's dynamo exporter needs, or the ImportError naming the extra."""
    for module in ("onnx", "onnxscript"):
        require(module, module, "ONNX export", extra=ONNX_EXTRA)
