"""Reports of pruning runs: JSON files, a results table, and a PNG in the style of seed 003's Figure 2
(top row: retrained models; bottom row: the same models right after pruning)."""
from __future__ import annotations

from typing import Mapping, Sequence

from ..checks import arg_error
from ..extras import pyplot
from ..files import save_figure
from .pqi import format_number

# (history key, y label, percent) of the paper's Figure 2 panels
RETRAINED_PANELS = (("accuracy", "Accuracy (%)", True), ("remaining_percent", "Percent of remaining weights", False),
                    ("pqi", "PQ Index", False), ("gini", "Gini Index", False))
PRUNED_PANELS = (("pruned_accuracy", "Accuracy (%)", True), ("accuracy_difference", "Accuracy difference (%)", True),
                 ("pruned_pqi", "PQ Index", False), ("pqi_difference", "PQ Index difference", False))


def _series(history: Sequence[dict], key: str) -> list[float]:
    """One value per iteration; the difference panels are pruned minus retrained."""
    nan = float("nan")

    def value(entry: dict, k: str) -> float:
        v = entry.get(k)
        return nan if v is None else float(v)

    if key == "accuracy_difference":
        return [value(e, "pruned_accuracy") - value(e, "accuracy") for e in history]
    if key == "pqi_difference":
        return [value(e, "pruned_pqi") - value(e, "pqi") for e in history]
    return [value(e, key) for e in history]


def plot_runs(runs: Mapping[str, Sequence[dict]], path, title: str = "") -> None:
    """PNG of the runs' histories: (a) retrained models: accuracy, percent of remaining weights, PQ Index
    (p=0.5, q=1), Gini Index; (b) pruned models: accuracy, accuracy and PQI differences (pruned - retrained)."""
    plt = pyplot()

    if not runs:
        raise arg_error("runs", "must hold at least one run")
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    for row, (panels, caption) in enumerate(((RETRAINED_PANELS, "(a) Retrained models"),
                                             (PRUNED_PANELS, "(b) Pruned models"))):
        for ax, (key, ylabel, percent) in zip(axes[row], panels):
            for label, history in runs.items():
                ys = _series(history, key)
                ax.plot([e["iteration"] for e in history], [100 * y for y in ys] if percent else ys,
                        marker="o", markersize=3, label=label)
            ax.set_xlabel("Pruning iteration")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if key == "remaining_percent":
                ax.set_yscale("log")
        axes[row][0].set_title(caption, loc="left")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def results_table(runs: Mapping[str, Sequence[dict]]) -> str:
    """Plain-text table, one row per run: rounds trained (T + 1), final remaining %, final and best accuracy, PQI,
    Gini."""
    header = ["run", "rounds", "remaining %", "final acc %", "best acc %", "PQI", "Gini", "stopped"]
    rows = []
    for label, history in runs.items():
        last = history[-1]
        best = max(history, key=lambda e: e["accuracy"])
        rows.append([label, str(len(history)), f"{last['remaining_percent']:.2f}", f"{100 * last['accuracy']:.2f}",
                     f"{100 * best['accuracy']:.2f} @ {best['remaining_percent']:.1f}%",
                     format_number(last.get("pqi")), format_number(last.get("gini")),
                     "yes" if last.get("stopped") else ""])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]) + "\n"
