"""From a model and data to a smaller model and a report: measure, prune with Algorithm 2,
(optionally) fine-tune, measure again; save the model, the plan, report.json and report.png.
The README's main job (`greedyprune demo`) is this pipeline on the bundled digits."""
from __future__ import annotations

import copy
import math
import os
import time
from collections import Counter
from dataclasses import asdict, replace

import torch
import torch.nn as nn

from ..harness.data import load_dataset, make_loader
from .. import distributed
from ..checks import arg_error, check_choice, check_device
from ..files import prepare_output_dir, save_figure, write_json
from ..harness.measure import count_flops, model_stats
from ..models import EXTERNAL_LIBRARIES, MODEL_NAMES, export_program, load_model, save_model
from ..harness.training import check_weights_source, finetune, model_with_weights, pretrained_model
from .config import PruneConfig
from .layerwise import prune_model
from .plan import make_plan, save_plan
from .surgery import UnitGraph


def trained_model(model: str, data: str, *, epochs: int = 15, lr: float = 0.05, seed: int = 0,
                  progress: bool = True, weights=None) -> nn.Module:
    """A saved model (path written by save_model), zoo model `model` with the given `weights`
    file, or else trained on `data` and cached."""
    if os.path.isfile(model):
        return load_model(model)[0]
    if weights is not None:
        return model_with_weights(model, data, weights, seed=seed)
    return pretrained_model(model, data, epochs=epochs, lr=lr, seed=seed, progress=progress)


def check_model_source(model: str) -> None:
    """A zoo or library name, or an existing save_model file (checked before any training)."""
    if os.path.isfile(model):
        return
    if os.sep in model or model.endswith((".pt", ".pth")):
        raise arg_error("--model", f"{model!r} does not exist (give a save_model file or a zoo name)")
    if model not in MODEL_NAMES and model.partition(":")[0] not in EXTERNAL_LIBRARIES:
        raise arg_error("--model", f"{model!r} is neither a file nor a model name ({', '.join(MODEL_NAMES)}, "
                                   "torchvision:<name>, timm:<name>)")


FLOPS_SEARCHES = ("epsilon", "width")


def tol_for_flops(model: nn.Module, calib_x: torch.Tensor, target: float, config: PruneConfig, *,
                  labels: torch.Tensor | None = None, gram_batches=None, iterations: int = 8,
                  bounds: tuple[float, float] = (1e-4, 10.0)) -> float:
    """The per-unit tolerance (epsilon) whose pruned model keeps at most `target` x the FLOPs:
    bisection on a log scale within `bounds`, each step pruning a copy with `config` (tol set,
    no width cap). This is how seed 000 reaches a size: each unit then keeps as many channels as
    its own discrepancy needs. Returns the upper end of the final bracket (the larger bound when
    even that keeps more FLOPs)."""
    if not 0 < target <= 1:
        raise ValueError(f"greedyprune: argument 'target_flops' must be in (0, 1], got {target}")
    example = calib_x[:1]
    full = count_flops(model, example)

    def flops_at(tol: float) -> int:
        pruned = copy.deepcopy(model)
        prune_model(pruned, calib_x, replace(config, tol=tol, width_ratio=None), labels=labels,
                    gram_batches=gram_batches, progress=False)
        return count_flops(pruned, example)

    lo, hi = bounds
    if flops_at(hi) > target * full:
        return hi
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if flops_at(mid) > target * full:
            lo = mid
        else:
            hi = mid
    return hi


def width_ratio_for_flops(model: nn.Module, example: torch.Tensor, target: float, *, iterations: int = 12) -> float:
    """The uniform width ratio whose pruned model has about `target` x the FLOPs (bisection
    on copies pruned to ceil(ratio * N) channels per unit)."""
    if not 0 < target <= 1:
        raise ValueError(f"greedyprune: argument 'target_flops' must be in (0, 1], got {target}")
    full = count_flops(model, example)

    def flops_at(ratio: float) -> int:
        m = copy.deepcopy(model).eval()
        graph = UnitGraph(m, example)
        for unit in graph.units:
            graph.prune(unit, torch.arange(max(1, math.ceil(ratio * unit.channels))))
        return count_flops(m, example)

    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if flops_at(mid) > target * full:
            hi = mid
        else:
            lo = mid
    return max(lo, 1e-3)


def run_pruning(config: PruneConfig | None = None, *, model: str = "cnn", data: str = "digits",
                out_dir: str | os.PathLike = "greedyprune-out", target_flops: float | None = None,
                calib_samples: int = 512, gram_samples: int = 2048, finetune_epochs: int = 0, train_epochs: int = 15,
                seed: int = 0, overwrite: bool = False, progress: bool = True, weights=None, device=None,
                flops_search: str = "epsilon", **options) -> dict:
    """Prune `model` on `data` as `config` (or its fields as keyword options) says; returns the
    report (also written to out_dir). weights: a state dict / checkpoint file for zoo model
    `model` (instead of training it). target_flops: the fraction of the FLOPs to keep, reached by
    bisection on the per-unit tolerance (flops_search="epsilon", the paper's way: adaptive widths)
    or on one uniform width ratio ("width"). Every argument and the
    output folder are checked before any work; a folder holding a finished run (report.json) is
    refused unless overwrite. device: where the model runs (default: its own, the CPU).
    Under torchrun each process takes calib_samples / world_size calibration images (and its share
    of gram_samples); every statistic is summed over the processes, so all of them prune the same
    channels, and rank 0 writes the files."""
    for name, value in (("calib_samples", calib_samples), ("gram_samples", gram_samples)):
        if value < 1:
            raise ValueError(f"greedyprune: argument '{name}' must be >= 1, got {value}")
    if config is not None and options:
        raise ValueError(f"greedyprune: give 'config' or keyword options, not both (got {sorted(options)})")
    if target_flops is not None:
        if not 0 < target_flops <= 1:
            raise ValueError(f"greedyprune: argument 'target_flops' must be in (0, 1], got {target_flops}")
        check_choice("flops_search", flops_search, FLOPS_SEARCHES)
        found = "tol" if flops_search == "epsilon" else "width_ratio"
        for name in ("width_ratio", found):
            if (getattr(config, name) if config is not None else options.get(name)) is not None:
                raise ValueError(f"greedyprune: give argument 'target_flops' or '{name}', not both "
                                 f"(flops_search={flops_search!r} finds {found})")
        # placeholders until the bisection sets them
        settings = dict(tol=1.0, width_ratio=None) if flops_search == "epsilon" else dict(width_ratio=1.0)
        config = replace(config, **settings) if config is not None else PruneConfig(**{**options, **settings})
    elif config is None:
        config = PruneConfig(**options)
    for name, value in (("calib_samples", calib_samples), ("gram_samples", min(256, gram_samples)),
                        ("step_batch", config.step_batch or 1),
                        ("the fine-tuning batch", 64 if finetune_epochs > 0 else 1)):
        distributed.per_rank(value, name)  # under torchrun each process takes an equal share
    device = None if device is None else check_device("device", device)
    check_model_source(model)
    if weights is not None:
        check_weights_source(model, weights)
    out = prepare_output_dir(out_dir, finished="report.json", overwrite=overwrite)
    net = trained_model(model, data, epochs=train_epochs, seed=seed, progress=progress, weights=weights).eval()
    if device is not None:
        net.to(device)
    train_set, test_set = load_dataset(data, "train"), load_dataset(data, "test")
    test_loader = make_loader(test_set, 256, shuffle=False)
    calib_x, calib_y = next(iter(make_loader(train_set, calib_samples, shuffle=True, seed=seed + 1)))
    gram_batches, streamed = [], 0
    for x, _ in make_loader(train_set, min(256, gram_samples), shuffle=True, seed=seed + 2):
        if streamed >= gram_samples:
            break
        gram_batches.append(x)
        streamed += x.shape[0] * distributed.world_size()
    if device is not None:
        calib_x = calib_x.to(device)
    before = model_stats(net, test_loader, calib_x)
    def shared_out(c: PruneConfig) -> PruneConfig:  # --step-batch is a global mini-batch, shared out
        return c if c.step_batch is None else replace(c, step_batch=c.step_batch // distributed.world_size())

    if target_flops is not None and flops_search == "epsilon":
        config = replace(config, tol=tol_for_flops(net, calib_x, target_flops, shared_out(config), labels=calib_y,
                                                   gram_batches=gram_batches))
    elif target_flops is not None:
        config = replace(config, width_ratio=width_ratio_for_flops(net, calib_x[:1], target_flops))
    per_process = shared_out(config)
    left_unpruned = [{"producers": g.producers, "reason": g.reason} for g in UnitGraph(net, calib_x[:2]).skipped]
    start = time.perf_counter()
    results = prune_model(net, calib_x, per_process, labels=calib_y, gram_batches=gram_batches, progress=progress)
    prune_seconds = time.perf_counter() - start
    after = model_stats(net, test_loader, calib_x)
    report = {
        "model": model, "data": data, "config": asdict(config), "method": config.method,
        "target_flops": target_flops, "flops_search": flops_search if target_flops is not None else None,
        "calib_samples": int(calib_x.shape[0]) * distributed.world_size(),
        "processes": distributed.world_size(),
        "before": before, "after_prune": after, "prune_seconds": prune_seconds,
        "units": [{"unit": r.unit, "channels": r.channels, "asked": r.asked, "kept": r.width, "stop": r.stop,
                   "method": r.method, "fold": r.fold, "discrepancy": r.loss,
                   "exported_discrepancy": r.exported_loss, "seconds": r.seconds,
                   "candidates": r.candidates} for r in results],
        "left_unpruned": left_unpruned,  # channel groups no method may prune (residual-tied, model outputs, ...)
    }
    if finetune_epochs > 0:
        loader = make_loader(train_set, 64, shuffle=True, seed=seed + 3)
        finetune(net, loader, epochs=finetune_epochs, progress=progress)
        report["after_finetune"] = model_stats(net, test_loader, calib_x)
    save_plan(make_plan(results, model=model, data=data, method=config.method, fold=config.fold), out / "plan.json")
    save_model(net, out / "pruned.pt", data=data, method=config.method)
    try:  # a program plain PyTorch runs: torch.export.load(path).module()
        export_program(net, calib_x[:1], out / "pruned.pt2")
        report["program"] = "pruned.pt2"
    except Exception as err:  # torch.export cannot take every model; the state dict file still works
        report["program"] = f"not written: torch.export failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    write_json(out / "report.json", report)
    plot_report(report, out / "report.png")
    return report


def format_report(report: dict) -> str:
    """The before/after table and the per-unit widths as text."""
    rows = [("", "params", "MFLOPs", "accuracy", "ms (batch 1)", "ms (batch 64)")]
    for key in ("before", "after_prune", "after_finetune"):
        if key in report:
            s = report[key]
            rows.append((key.replace("_", " "), f"{s['params']:,}", f"{s['flops'] / 1e6:.2f}", f"{s['accuracy']:.4f}",
                         f"{s['latency_ms_batch1']:.3f}", f"{s['latency_ms_batch64']:.3f}"))
    lines = ["  ".join(f"{c:>14}" for c in row) for row in rows]
    s = report["before"]
    lines.append(f"(latency: median of repeated CPU forwards, {s['latency_threads']} threads, load average "
                 f"{s['latency_load'][0]:.1f}-{s['latency_load'][1]:.1f})")
    lines.append("")
    lines.append(f"{'unit':>28}  {'width':>11}  {'asked':>5}  {'method':>7}  {'discrepancy':>11}  {'gram s':>7}  "
                 f"{'select s':>8}  {'eval s':>7}  {'export s':>8}  {'total s':>7}  stopped by")
    for u in report["units"]:
        t = u["seconds"]
        asked = "-" if u["asked"] is None else u["asked"]
        lines.append(f"{u['unit']:>28}  {u['channels']:>5}->{u['kept']:<5}  {asked:>5}  {u['method']:>7}  "
                     f"{u['discrepancy']:>11.5f}  {t['gram']:>7.3f}  {t['select']:>8.3f}  "
                     f"{t['evaluate'] + t['taylor']:>7.3f}  {t['export']:>8.3f}  {t['total']:>7.3f}  {u['stop']}")
    left = report.get("left_unpruned") or []
    if left:
        reasons = Counter(g["reason"] for g in left)
        lines.append(f"left unpruned: {len(left)} channel group(s) ("
                     + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
                     + "; residual-tied channels are a limitation, see the README)")
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = report["units"]
    idx = range(len(units))
    fig, (ax_w, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_w.bar(idx, [u["channels"] for u in units], color="#bbbbbb", label="before")
    ax_w.bar(idx, [u["kept"] for u in units], color="#3b75af", label="after")
    ax_w.set_xticks(list(idx), [u["unit"] for u in units], rotation=60, ha="right", fontsize=7)
    ax_w.set_ylabel("channels")
    b, a = report["before"], report["after_prune"]
    ax_w.set_title(f"{report['model']} ({report['method']}): FLOPs x{a['flops'] / b['flops']:.2f}, "
                   f"acc {b['accuracy']:.3f} -> {a['accuracy']:.3f}")
    ax_w.legend()
    bottom = [0.0] * len(units)
    for part, color in (("gram", "#e3a33b"), ("select", "#3b75af"), ("evaluate", "#59a14f"), ("taylor", "#b07aa1"),
                        ("export", "#9c755f")):
        vals = [u["seconds"][part] for u in units]
        ax_t.bar(idx, vals, bottom=bottom, color=color, label=part)
        bottom = [x + y for x, y in zip(bottom, vals)]
    ax_t.set_xticks(list(idx), [u["unit"] for u in units], rotation=60, ha="right", fontsize=7)
    ax_t.set_ylabel("seconds")
    ax_t.set_title("time per unit")
    ax_t.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
