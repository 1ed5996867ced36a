"""Reports of a search: per-layer and global sparsity (JSON) and loss/accuracy/overlap curves (PNG)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..checks import ArgumentError
from ..extras import pyplot
from ..files import save_figure, write_json
from .masked import MaskedModel

REPORT_NAME = "report.json"
CURVES_NAME = "curves.png"


def sparsity_report(masked: MaskedModel) -> dict:
    """Kept weights per wrapped layer, over all wrapped layers ("global", with "covers": what the
    sparsity counts) and over every parameter of the model ("model": pruned = wrapped weights not
    kept)."""
    if not isinstance(masked, MaskedModel):
        raise ArgumentError(f"sparsity_report: argument 'masked' must be a MaskedModel, got {type(masked).__name__}")
    counts = masked.keep_counts().tolist()
    layers = []
    for name, layer, kept in zip(masked.layer_names, masked.layers, counts):
        weights = layer.weight.numel()
        layers.append(dict(name=name, shape=list(layer.weight.shape), weights=weights, kept=kept,
                           sparsity=1 - kept / weights))
    weights = sum(layer["weights"] for layer in layers)
    kept = sum(counts)
    parameters = sum(p.numel() for p in masked.model.parameters())
    return {"layers": layers,
            "global": dict(weights=weights, kept=kept, sparsity=1 - kept / weights, covers=covers(masked)),
            "model": dict(parameters=parameters, pruned=weights - kept, sparsity=(weights - kept) / parameters)}


def covers(masked: MaskedModel) -> str:
    """Which weights the global sparsity counts, in words."""
    dense = f"; left dense: {', '.join(masked.unmasked)}" if masked.unmasked else ""
    return (f"the weights of {len(masked.layer_names)} Conv2d/Linear layers ({masked.keep.numel():,}); biases and "
            f"normalisation parameters not counted{dense}")


def plot_curves(runs: dict[str, list[dict]], path, title: str | None = None) -> Path:
    """One PNG with three panels over epochs: loss (train solid, test dashed), accuracy, overlap.

    runs: label -> a `search` history.
    """
    plt = pyplot()

    if not runs:
        raise ArgumentError("plot_curves: argument 'runs' is empty")
    figure, (loss_ax, accuracy_ax, overlap_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    for index, (label, history) in enumerate(runs.items()):
        color = f"C{index}"
        for ax, key in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
            trained = [r for r in history if r[f"train_{key}"] is not None]
            ax.plot([r["epoch"] for r in trained], [r[f"train_{key}"] for r in trained], color=color,
                    label=f"{label} train")
            ax.plot([r["epoch"] for r in history], [r[f"test_{key}"] for r in history], color=color, linestyle="--",
                    label=f"{label} test")
        overlap_ax.plot([r["epoch"] for r in history], [r["overlap"] for r in history], color=color, label=label)
    for ax, ylabel in ((loss_ax, "cross-entropy"), (accuracy_ax, "accuracy"),
                       (overlap_ax, "overlap with magnitude mask (eq. 7)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    loss_ax.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return path


def write_search_report(out_dir, masked: MaskedModel, history: list[dict], config,
                        **extra) -> tuple[Path, Path]:
    """out_dir/report.json (config, history, sparsity, and `extra` entries) and out_dir/curves.png;
    returns both paths."""
    out_dir = Path(out_dir)
    report = dict(config=asdict(config), layer_names=masked.layer_names, history=history,
                  sparsity=sparsity_report(masked), **extra)
    json_path = Path(out_dir) / REPORT_NAME
    write_json(json_path, report)
    png_path = plot_curves({config.schedule: history}, out_dir / CURVES_NAME,
                           title=f"SR-popup search, {config.sparsity:.0%} sparsity, schedule '{config.schedule}'")
    return json_path, png_path
