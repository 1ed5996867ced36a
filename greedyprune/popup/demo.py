"""Demo on scikit-learn's bundled digits (no download): pre-train a small CNN, then at 90% sparsity
compare magnitude pruning without training, edge-popup (random scores, `constant` rate), the SR-popup
paper's ablations "w/o S" (magnitude scores, constant rate) and "w/o M" (random scores, paper rate)
and SR-popup (magnitude scores, `paper` rate) with the same search budget, every search with the
pre-trained BatchNorm statistics kept (SearchConfig.bn = "keep", the paper's "no weight is
modified"). Also reported, to separate what the masks gain from what fresh BN statistics gain:
magnitude pruning with re-estimated statistics, SR-popup's masks with re-estimated statistics, and
SR-popup and edge-popup with BN in train mode during the search (bn = "update", the authors' code).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch import nn

from ..harness.data import load_dataset, make_loader
from ..files import write_json
from ..models.demo_nets import SMALL_CNN_WIDTHS, small_cnn
from ..harness.model_source import pretrained
from ..harness.training import evaluate, train
from . import report
from .masked import wrap
from .search import SearchConfig, initialize, overlap, reestimate_batchnorm, search

DEMO_SPARSITY = 0.9
DEMO_BATCH_SIZE = 64
PRETRAIN_LR = 0.05
SEARCH_LR = 0.1
MODEL_SEED = 0
# (pre-training epochs, search epochs, search seeds)
FULL_SETTINGS = (20, 10, (0, 1, 2))
QUICK_SETTINGS = (10, 4, (0,))
# Rows after the magnitude baselines: what each search is (seed 002's names where it has them); BN
# statistics kept unless the row says bn="update".
SEARCHES = (
    dict(label="constant rate, magnitude scores (the paper's 'w/o S')", schedule="constant"),
    dict(label="edge-popup (random scores, per-layer top-k, constant rate)", schedule="constant", scores="random",
         init="uniform", scope="layer"),
    dict(label="SR-popup (paper rate)", schedule="paper"),
    dict(label="SR-popup (paper rate) + BN statistics re-estimated", schedule="paper", reestimate=True),
    dict(label="paper rate, random scores (the paper's 'w/o M')", schedule="paper", scores="random"),
    dict(label="SR-popup (paper rate), BN in train mode (bn='update')", schedule="paper", bn="update"),
    dict(label="edge-popup, BN in train mode (bn='update')", schedule="constant", scores="random", init="uniform",
         scope="layer", bn="update"),
)


def _row(method: str, accuracies: list[float], overlap_value: float | None, sparsity: float, epochs: int) -> dict:
    return dict(method=method, test_accuracy=statistics.fmean(accuracies),
                test_accuracy_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                test_accuracies=accuracies, overlap=overlap_value, sparsity=sparsity, search_epochs=epochs)


def format_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| method | test accuracy | overlap with magnitude mask | sparsity | search epochs |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        spread = f" ± {r['test_accuracy_std']:.2%}" if len(r["test_accuracies"]) > 1 else ""
        overlap_text = "" if r["overlap"] is None else f"{r['overlap']:.4f}"
        lines.append(f"| {r['method']} | {r['test_accuracy']:.2%}{spread} | {overlap_text} | {r['sparsity']:.1%} "
                     f"| {r['search_epochs']} |")
    return "\n".join(lines)


def run_demo(out_dir, *, quick: bool = False, cache_dir=None, progress: bool = False) -> dict:
    """Run the comparison, print its table, write out_dir/demo.json and out_dir/demo_curves.png.

    quick: fewer pre-training and search epochs, one search seed (seconds on a laptop CPU).
    cache_dir: where the pre-trained CNN is cached (model_source.pretrained's default if None).
    Returns dict(settings, rows, table, json, png).
    """
    out_dir = Path(out_dir)
    pretrain_epochs, search_epochs, seeds = QUICK_SETTINGS if quick else FULL_SETTINGS
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    test_loader = make_loader(test_set, 256, shuffle=False)

    def build() -> nn.Module:
        torch.manual_seed(MODEL_SEED)
        return small_cnn()

    def fit(model: nn.Module) -> None:
        train(model, make_loader(train_set, DEMO_BATCH_SIZE, shuffle=True, seed=MODEL_SEED), epochs=pretrain_epochs,
              lr=PRETRAIN_LR, progress=progress, desc="pre-train")

    widths = "-".join(map(str, SMALL_CNN_WIDTHS))
    model = pretrained(f"popup-demo-cnn{widths}-digits-e{pretrain_epochs}-s{MODEL_SEED}", build, fit,
                       cache_dir=cache_dir)
    rows = [_row("dense (pre-trained)", [evaluate(model, test_loader)["accuracy"]], None, 0.0, 0)]

    magnitude = wrap(model)
    initialize(magnitude, DEMO_SPARSITY)
    magnitude_mask = magnitude.keep.clone()
    sparsity = report.sparsity_report(magnitude)["global"]["sparsity"]
    rows.append(_row("magnitude, no training", [evaluate(magnitude, test_loader)["accuracy"]], 1.0, sparsity, 0))
    reestimate_batchnorm(magnitude, train_set, batch_size=DEMO_BATCH_SIZE, seed=MODEL_SEED)
    rows.append(_row("magnitude + BN statistics re-estimated", [evaluate(magnitude, test_loader)["accuracy"]], 1.0,
                     sparsity, 0))

    curves = {}
    searched = {}  # search settings and seed -> the searched model: a re-estimation row reuses its search
    for row in SEARCHES:
        label, reestimate = row["label"], row.get("reestimate", False)
        settings = {k: v for k, v in row.items() if k not in ("label", "reestimate")}
        accuracies, overlaps = [], []
        for seed in seeds:
            key = (tuple(sorted(settings.items())), seed)
            masked = searched.get(key)
            if masked is None:
                masked = wrap(model)
                config = SearchConfig(sparsity=DEMO_SPARSITY, epochs=search_epochs, batch_size=DEMO_BATCH_SIZE,
                                      lr=SEARCH_LR, seed=seed, **settings)
                history = search(masked, train_set, test_set, config, progress=progress)
                searched[key] = masked
                curves.setdefault(label, history)
            if reestimate:
                reestimate_batchnorm(masked, train_set, batch_size=DEMO_BATCH_SIZE, seed=MODEL_SEED)
            accuracies.append(evaluate(masked, test_loader)["accuracy"])
            overlaps.append(overlap(masked.keep, magnitude_mask))
        rows.append(_row(label, accuracies, statistics.fmean(overlaps), sparsity, search_epochs))

    table = format_table(rows)
    print(f"Digits, small CNN, {DEMO_SPARSITY:.0%} sparsity over {report.covers(magnitude)}, ranked globally "
          f"(edge-popup: per layer); {len(seeds)} search seed(s); BatchNorm statistics kept during each search "
          "(no weight or statistic modified) unless the row says bn='update':")
    print(table)
    settings = dict(quick=quick, sparsity=DEMO_SPARSITY, widths=SMALL_CNN_WIDTHS, pretrain_epochs=pretrain_epochs,
                    pretrain_lr=PRETRAIN_LR, search_epochs=search_epochs, search_lr=SEARCH_LR,
                    batch_size=DEMO_BATCH_SIZE, seeds=list(seeds), sparsity_covers=report.covers(magnitude),
                    bn=SearchConfig.bn)
    json_path = out_dir / "demo.json"
    write_json(json_path, dict(settings=settings, rows=rows, histories_seed0=curves))
    png_path = report.plot_curves(curves, out_dir / "demo_curves.png",
                                  title=f"Digits CNN, {DEMO_SPARSITY:.0%} sparsity: search curves (seed {seeds[0]})")
    return dict(settings=settings, rows=rows, table=table, json=json_path, png=png_path)
