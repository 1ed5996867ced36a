"""Optional dependencies of the `demo` extra (`pip install 'greedyprune[demo]'`): the bundled
digits come from scikit-learn and the reports' PNGs are drawn with matplotlib. The ops and
drivers import neither until one of those is asked for."""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "demo"


def require(module: str, package: str, purpose: str) -> ModuleType:
    """`module`, or an ImportError that says which extra installs `package`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ImportError(f"greedyprune: {purpose} needs {package}, which is not installed; "
                          f"pip install 'greedyprune[{EXTRA}]' (or pip install {package})") from err


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (PNG files, no display)."""
    require("matplotlib", "matplotlib", "drawing a report's PNG").use("Agg")
    return importlib.import_module("matplotlib.pyplot")
