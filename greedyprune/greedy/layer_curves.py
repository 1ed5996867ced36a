"""The paper's Figure 2 experiment (seed 000, section 3.1): prune each unit of a trained VGG-11
on its own (every other layer intact) to n neurons with local and with global imitation, and
plot the network's discrepancy from the original against n, one panel per unit.

Both curves are the same quantity: the discrepancy (KL by default; the paper's "cross entropy
between the pruned model and original model" differs from KL by a constant) of the network's
output with the gated unit, on held-out images. Both methods choose on one calibration batch of
the training set (batch 128, as the paper), global imitation exactly (no Taylor shortcut, as
the paper does for this figure) unless `taylor`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checks import arg_error, check_int
from ..extras import pyplot
from ..files import save_figure, write_json
from ..harness.data import load_dataset, make_loader
from ..harness.model_source import check_model_source, resolve_model
from .evaluator import SuffixEvaluator
from .global_imitation import global_imitation
from .gram import contribution_gram
from .local import local_imitation
from .outputs import DISCREPANCIES, NEEDS_LABELS
from .surgery import UnitGraph

DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32)
RESULTS_NAME = "layer_curves.json"
FIGURE_NAME = "layer_curves.png"
FLOOR = 1e-9  # the lowest discrepancy the log-scale figure shows


def run_layer_curves(out_dir: str | os.PathLike = "greedyprune-out/layer-curves", *, model: str = "vgg11",
                     data: str = "digits", widths=DEFAULT_WIDTHS, calib_samples: int = 128,
                     discrepancy: str = "kl", taylor: bool = False, train_epochs: int = 15, seed: int = 0,
                     weights=None, progress: bool = True) -> dict:
    """Run the experiment; writes layer_curves.json and layer_curves.png to out_dir and returns
    the results: settings and, per unit, the widths (those of `widths` below the unit's channel
    count) with the held-out discrepancy of local and of global imitation. Global imitation runs
    one greedy path per unit (fixed step 1/(k+1), filled to the widest width) and each width
    reads the gates where the path first keeps that many neurons."""
    widths = sorted(set(int(w) for w in widths))
    if not widths or widths[0] < 1:
        raise arg_error("widths", f"must be integers >= 1, got {widths}")
    between_networks = tuple(d for d in DISCREPANCIES if d not in NEEDS_LABELS)
    if discrepancy not in between_networks:
        raise arg_error("discrepancy", f"must be one of {between_networks}, got {discrepancy!r}")
    check_int("calib_samples", calib_samples, minimum=1)
    check_model_source(model, weights, without_weights="train")
    net = resolve_model(model, data, without_weights="train", weights=weights, seed=seed, epochs=train_epochs,
                        progress=progress).eval()
    calib, _ = next(iter(make_loader(load_dataset(data, "train"), calib_samples, shuffle=True, seed=seed + 1)))
    held_out = torch.cat([x for x, _ in make_loader(load_dataset(data, "test"), 256, shuffle=False)])
    graph = UnitGraph(net, calib[:2])
    with torch.no_grad():
        calib_target, held_out_target = net(calib), net(held_out)
    units = []
    for unit in tqdm(graph.units, desc="layer curves", disable=not progress):
        unit_widths = [w for w in widths if w < unit.channels]
        G = contribution_gram(graph, unit, [calib])
        selector = SuffixEvaluator(graph, unit, calib, kind=discrepancy, target=calib_target)
        scorer = SuffixEvaluator(graph, unit, held_out, kind=discrepancy, target=held_out_target)
        # One global path per unit, read where it first keeps n neurons (filled: it reaches the widest).
        on_path = {}

        def record(a: torch.Tensor) -> None:
            on_path.setdefault(int((a > 0).sum()), a.clone())

        chosen = global_imitation(selector, max_neurons=unit_widths[-1], fill=True, on_step=record,
                                  exact_until=0 if taylor else unit.channels)
        curve = {"unit": unit.name, "channels": unit.channels, "widths": unit_widths, "local": [], "global": [],
                 "global_steps": chosen.steps}
        for n in unit_widths:
            local = local_imitation(G, max_neurons=n)
            curve["local"].append(float(scorer.evaluate(local.gates().float())[0]))
            curve["global"].append(float(scorer.evaluate((on_path[n] * unit.channels).float())[0]))
        units.append(curve)
    results = dict(model=model, data=data, calib_samples=int(calib.shape[0]), held_out_samples=int(held_out.shape[0]),
                   discrepancy=discrepancy, global_candidates="taylor top 5" if taylor else "exact", seed=seed,
                   units=units)
    out = Path(out_dir)
    write_json(out / RESULTS_NAME, results)
    plot_layer_curves(results, out / FIGURE_NAME)
    return results


def plot_layer_curves(results: dict, path) -> Path:
    """One log-scale panel per unit (input side first): discrepancy vs neurons kept."""
    plt = pyplot()
    units = results["units"]
    columns = min(4, len(units))
    rows = -(-len(units) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for ax, curve in zip(axes.flat, units):
        for key, style, label in (("local", "o-", "local imitation"), ("global", "s-", "global imitation")):
            # a discrepancy of exactly 0 (rounding can give -0) sits at the floor of the log axis
            ax.plot(curve["widths"], [max(v, FLOOR) for v in curve[key]], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{curve['unit']} ({curve['channels']} ch.)", fontsize=9)
        ax.set_xlabel("neurons kept")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(units):]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"held-out discrepancy ({results['discrepancy']})")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{results['model']} on {results['data']}: each unit pruned alone")
    figure.tight_layout()
    path = Path(path)
    save_figure(figure, path)
    plt.close(figure)
    return path
