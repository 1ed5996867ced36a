"""From a model and data to a smaller model and a report: measure, prune with Algorithm 2,
(optionally) fine-tune, measure again; save the model, the plan, report.json and report.png.
The README's main job (`greedyprune demo`) is this pipeline on the bundled digits.

`run_pruning(config, run)` takes how to prune (PruneConfig) and what to run it on (RunSpec), and
runs the steps in order: check, load, budget, prune, report, fine-tune, write.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from .. import distributed
from ..checks import arg_error, check_choice, check_device, check_int
from ..extras import require_onnx
from ..files import prepare_output_dir, write_json
from ..harness.data import ImageTransform, default_workers, load_dataset, make_loader
from ..harness.measure import model_stats
from ..harness.model_source import check_model_source, resolve_model
from ..harness.training import FINETUNE_RECIPES, PAPER_FINETUNE_LR, RECIPE_SETTINGS, finetune, finetune_recipe
from ..models import export_onnx, export_program, save_model
from .budget import FLOPS_SEARCHES, check_target_flops, tol_for_flops, width_ratio_for_flops
from .config import PruneConfig
from .cost import PHASES, describe, suffix_shares, unit_cost
from .layerwise import prune_model
from .plan import make_plan, save_plan
from .report import plot_report
from .selection import UnitResult
from .surgery import UnitGraph

# Batch sizes of the run's loaders (global under torchrun): test evaluation, the Gram stream (the
# fine-tuning's: its recipe's).
TEST_BATCH = 256
GRAM_BATCH = 256
# What prune's flags may set of a fine-tuning recipe (--finetune-epochs gives the epochs).
FINETUNE_FLAGS = tuple(name for name in RECIPE_SETTINGS if name != "epochs")


@dataclass(frozen=True)
class RunSpec:
    """What a pruning run works on and what it writes.

    model: a zoo or torchvision:/timm: name (trained on `data` and cached, unless `weights`, a
        state dict or checkpoint file, is given) or a save_model file; data: 'digits' (bundled),
        a CIFAR-10 folder or an ImageFolder root; out: the folder of the run's files (a folder
        holding a finished run is refused unless overwrite or resume); device: where the model runs
        (None: CUDA when available, else the CPU).
    resume: continue a run that stopped from the checkpoints in `out` (PRUNE_CHECKPOINT after every
        unit, FINETUNE_CHECKPOINT after every fine-tuning epoch): it ends as the uninterrupted run.
    transform: ImageFolder preprocessing (harness.data.ImageTransform; None: its default) of every
        split; calibration and Gram images are train images without random augmentation, fine-tuning
        images are augmented. workers: data-loading processes (None: data.default_workers).
    onnx: also write pruned.onnx (models.export_onnx; needs the onnx extra, checked first).
    calib_samples: the calibration images the discrepancy is measured on; gram_samples: the
        images streamed into each Gram (under torchrun both are global, shared out).
    target_flops: the fraction of the FLOPs to keep, reached by bisection on the per-unit
        tolerance (flops_search "epsilon", the paper's way: adaptive widths) or on one uniform
        width ratio ("width").
    finetune_epochs: fine-tuning after pruning (0: none), with the settings of finetune_recipe
        (harness.training.finetune_recipe: "quick" or "paper", seed 000's per model) where
        finetune_settings (batch_size, lr, momentum, weight_decay, label_smoothing) does not give
        them; train_epochs: training of a zoo model without weights; seed: data order and training.
    """

    model: str = "cnn"
    data: str = "digits"
    weights: str | os.PathLike | None = None
    out: str | os.PathLike = "greedyprune-out/prune"
    device: str | None = None
    seed: int = 0
    calib_samples: int = 512
    gram_samples: int = 2048
    target_flops: float | None = None
    flops_search: str = "epsilon"
    finetune_epochs: int = 0
    finetune_recipe: str = "quick"
    finetune_settings: Mapping[str, float] = field(default_factory=dict)
    train_epochs: int = 15
    overwrite: bool = False
    resume: bool = False
    transform: ImageTransform | None = None
    workers: int | None = None
    onnx: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("calib_samples", "gram_samples", "train_epochs"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("finetune_epochs", self.finetune_epochs, minimum=0)
        check_choice("finetune_recipe", self.finetune_recipe, FINETUNE_RECIPES)
        unknown = sorted(set(self.finetune_settings) - set(FINETUNE_FLAGS))
        if unknown:
            raise arg_error("finetune_settings", f"names {unknown}; it takes {', '.join(FINETUNE_FLAGS)}")
        check_int("seed", self.seed, minimum=0)
        if self.target_flops is not None:
            check_target_flops(self.target_flops)
        check_choice("flops_search", self.flops_search, FLOPS_SEARCHES)
        if self.device is not None:
            check_device("device", self.device)
        if self.workers is not None:
            check_int("workers", self.workers, minimum=0)
        if self.transform is not None and not isinstance(self.transform, ImageTransform):
            raise arg_error("transform", f"must be a harness.data.ImageTransform, got {type(self.transform).__name__}")

    @property
    def loader_workers(self) -> int:
        return default_workers(self.data) if self.workers is None else self.workers

    @property
    def torch_device(self) -> torch.device:
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return check_device("device", self.device)


# `greedyprune demo`: the PQI paper's CNN on the digits, 256 calibration images, 3 fine-tuning epochs.
DEMO_RUN = RunSpec(out="greedyprune-out/demo", calib_samples=256, finetune_epochs=3, overwrite=True)


@dataclass
class LoadedRun:
    """The model and data of a run, on the run's device (labels and Gram batches stay on the host)."""

    model: nn.Module
    train_set: object
    test_loader: object
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    gram_batches: list[torch.Tensor]


# Written after every unit / fine-tuning epoch; `resume` continues from them.
PRUNE_CHECKPOINT, FINETUNE_CHECKPOINT = "prune-checkpoint.pt", "finetune-checkpoint.pt"


def run_pruning(config: PruneConfig, run: RunSpec = RunSpec()) -> dict:
    """Prune `run.model` on `run.data` as `config` says; returns the report (also written to
    run.out: report.json, report.png, plan.json, pruned.pt, pruned.pt2). Every argument and the
    output folder are checked before any work. Under torchrun each process takes
    calib_samples / world_size calibration images (and its share of gram_samples); every
    statistic is summed over the processes, so all of them prune the same channels, and rank 0
    writes the files."""
    check_run(config, run)
    if run.onnx:
        require_onnx()  # before the run: a missing extra must not cost a whole pruning run
    out = prepare_output_dir(run.out, finished="report.json", resume=run.resume, overwrite=run.overwrite)
    loaded = load_run(run)
    distributed.check_same_inputs(loaded.model, loaded.train_set)  # another model or dataset: another answer
    before = model_stats(loaded.model, loaded.test_loader, loaded.calib_x)
    config = fit_budget(config, run, loaded)
    graph = UnitGraph(loaded.model, loaded.calib_x[:2])
    estimate = estimate_run(config, loaded, graph, before)
    print(estimate.pop("line"), flush=True)  # before paying for it
    results, seconds = prune(config, loaded, graph, progress=run.progress, checkpoint=out / PRUNE_CHECKPOINT,
                             resume=run.resume)
    report = make_report(config, run, loaded, graph, results, before=before, prune_seconds=seconds)
    report["estimate"] = estimate
    if run.finetune_epochs > 0:
        report["after_finetune"] = finetune_pruned(loaded, run, checkpoint=out / FINETUNE_CHECKPOINT)
    write_outputs(out, report, results, config, run, loaded)
    return report


def check_run(config: PruneConfig, run: RunSpec) -> None:
    """What no work may start without: a budget that does not contradict the config's stopping
    rule, shares the process count divides, a model and weights that exist."""
    if not isinstance(config, PruneConfig):
        raise arg_error("config", f"must be a PruneConfig, got {type(config).__name__}")
    if not isinstance(run, RunSpec):
        raise arg_error("run", f"must be a RunSpec, got {type(run).__name__}")
    if run.target_flops is not None:
        found = "tol" if run.flops_search == "epsilon" else "width_ratio"
        conflicts = ("tol", "width_ratio", "network_budget") if run.flops_search == "epsilon" else ("width_ratio",)
        for name in conflicts:
            if getattr(config, name) is not None:
                raise arg_error("target_flops", f"and '{name}' cannot be given together "
                                                f"(flops_search={run.flops_search!r} finds {found})")
    shares = [("calib_samples", run.calib_samples), ("gram_samples", min(GRAM_BATCH, run.gram_samples))]
    if config.step_batch is not None:
        shares.append(("step_batch", config.step_batch))
    for name, value in shares:
        distributed.per_rank(value, name)  # under torchrun each process takes an equal share
    check_model_source(run.model, run.weights, without_weights="train")


def load_run(run: RunSpec) -> LoadedRun:
    """The model (loaded, or trained on run.data and cached) in eval mode on the run's device, the
    test loader, one calibration batch and the Gram batches (this process's share of each)."""
    device = run.torch_device
    model = resolve_model(run.model, run.data, without_weights="train", weights=run.weights, seed=run.seed,
                          epochs=run.train_epochs, progress=run.progress).eval().to(device)
    workers, transform = run.loader_workers, run.transform
    train_set = load_dataset(run.data, "train", transform=transform)
    # calibration imitates the network on the images it sees, not on random crops and flips
    calib_set = load_dataset(run.data, "train", transform=transform, augment=False)
    test_loader = make_loader(load_dataset(run.data, "test", transform=transform), TEST_BATCH, shuffle=False,
                              num_workers=workers)
    calib_x, calib_y = next(iter(make_loader(calib_set, run.calib_samples, shuffle=True, seed=run.seed + 1,
                                             num_workers=workers)))
    gram_batches, streamed = [], 0
    # whole global batches only: every process holds a part of each (a last partial one may leave one none)
    gram_batch = min(GRAM_BATCH, run.gram_samples)
    for x, _ in make_loader(calib_set, gram_batch, shuffle=True, seed=run.seed + 2,
                            drop_last=len(calib_set) >= gram_batch, num_workers=workers):
        if streamed >= run.gram_samples:
            break
        gram_batches.append(x)
        streamed += x.shape[0] * distributed.world_size()
    return LoadedRun(model, train_set, test_loader, calib_x.to(device), calib_y, gram_batches)


def estimate_run(config: PruneConfig, loaded: LoadedRun, graph: UnitGraph, before: dict) -> dict:
    """The run's cost before it runs (cost.py): image forwards per phase, seconds per image forward
    (the batch-64 latency `before`, model_stats', measured on the model's device), the projected
    seconds, and the line that says so."""
    world = distributed.world_size()
    calib = loaded.calib_x.shape[0] * world
    gram = sum(x.shape[0] for x in loaded.gram_batches) * world
    units = [u for u in graph.units if u.kind in config.groups]
    shares = suffix_shares(loaded.model, loaded.calib_x[:1], units)
    costs = [unit_cost(config, u, calib_images=calib, gram_images=gram, suffix_share=shares[u.name]) for u in units]
    per_image = before["latency_ms_batch64"] / 1e3 / 64 / world  # the processes share the images
    device = str(loaded.calib_x.device)
    total = sum(c.total for c in costs)
    return {"image_forwards": total, "phases": {p: sum(c.forwards[p] for c in costs) for p in PHASES},
            "seconds_per_image": per_image, "device": device, "projected_seconds": total * per_image,
            "line": describe(costs, per_image, device)}


def fit_budget(config: PruneConfig, run: RunSpec, loaded: LoadedRun) -> PruneConfig:
    """The config with the tolerance or width ratio that meets run.target_flops; without one, the
    config's own stopping rule (DEFAULT_TOL where it gives none)."""
    if run.target_flops is None:
        return config.with_default_tol()
    if run.flops_search == "epsilon":
        tol = tol_for_flops(loaded.model, loaded.calib_x, run.target_flops, per_process(config),
                            labels=loaded.calib_y, gram_batches=loaded.gram_batches)
        return replace(config, tol=tol)
    ratio = width_ratio_for_flops(loaded.model, loaded.calib_x[:1], run.target_flops, config=config)
    return replace(config, width_ratio=ratio)


def per_process(config: PruneConfig) -> PruneConfig:
    """The config one process runs: the global --step-batch shared out over the processes."""
    return config if config.step_batch is None else replace(config, step_batch=config.step_batch // distributed.world_size())


def prune(config: PruneConfig, loaded: LoadedRun, graph: UnitGraph, *, progress: bool, checkpoint=None,
          resume: bool = False) -> tuple[list[UnitResult], float]:
    """Prune the loaded model in place; its unit results and the seconds it took (checkpoint,
    resume: prune_model's)."""
    start = time.perf_counter()
    results = prune_model(loaded.model, loaded.calib_x, per_process(config), labels=loaded.calib_y,
                          gram_batches=loaded.gram_batches, graph=graph, progress=progress, checkpoint=checkpoint,
                          resume=resume)
    return results, time.perf_counter() - start


def make_report(config: PruneConfig, run: RunSpec, loaded: LoadedRun, graph: UnitGraph, results: list[UnitResult],
                *, before: dict, prune_seconds: float) -> dict:
    """report.json's content: the run, the model before and after, every unit's result and the
    channel groups no method may prune."""
    return {
        "model": run.model, "data": run.data, "config": asdict(config), "method": config.method,
        "target_flops": run.target_flops, "flops_search": run.flops_search if run.target_flops is not None else None,
        "calib_samples": int(loaded.calib_x.shape[0]) * distributed.world_size(),
        "processes": distributed.world_size(),
        "before": before, "after_prune": model_stats(loaded.model, loaded.test_loader, loaded.calib_x),
        "prune_seconds": prune_seconds,
        "units": [{"unit": r.unit, "channels": r.channels, "asked": r.asked, "kept": r.width, "stop": r.stop,
                   "method": r.method, "fold": r.fold, "discrepancy": r.loss, "gated_discrepancy": r.gated_loss,
                   "exported_discrepancy": r.exported_loss, "refit_error": r.refit_error,
                   "removal_error": r.removal_error, "seconds": r.seconds, "candidates": r.candidates}
                  for r in results],
        # channel groups no method may prune (model outputs, normalised streams, heads, ...) or not asked for
        "left_unpruned": [{"producers": g.producers, "reason": g.reason} for g in graph.skipped]
                         + [{"producers": [u.producer, *u.co_producers], "reason": f"kind {u.kind!r} not in groups"}
                            for u in graph.units if u.kind not in config.groups],
    }


def finetune_settings(run: RunSpec) -> dict:
    """The fine-tuning's settings: the recipe's for the run's model, with run.finetune_settings
    over them and run.finetune_epochs."""
    settings = {**finetune_recipe(run.finetune_recipe, run.model), **run.finetune_settings,
                "epochs": run.finetune_epochs}
    if settings["lr"] is None:
        raise arg_error("lr", f"is needed: the paper recipe gives a learning rate for {', '.join(PAPER_FINETUNE_LR)} "
                              f"only, not {run.model!r}")
    return settings


def finetune_pruned(loaded: LoadedRun, run: RunSpec, checkpoint=None) -> dict:
    """Fine-tune the pruned model (harness.training.finetune with finetune_settings, checkpointing
    every epoch to `checkpoint`, resumed from it with run.resume); its stats after, and the recipe
    that ran."""
    settings = finetune_settings(run)
    loader = make_loader(loaded.train_set, settings["batch_size"], shuffle=True, seed=run.seed + 3,
                         drop_last=len(loaded.train_set) >= settings["batch_size"],  # as for the Gram batches
                         num_workers=run.loader_workers)
    finetune(loaded.model, loader, epochs=settings["epochs"], lr=settings["lr"], momentum=settings["momentum"],
             weight_decay=settings["weight_decay"], label_smoothing=settings["label_smoothing"], progress=run.progress,
             checkpoint=checkpoint, resume=run.resume and checkpoint is not None)
    return {**model_stats(loaded.model, loaded.test_loader, loaded.calib_x),
            "recipe": {"name": run.finetune_recipe, "settings": settings, "given": sorted(run.finetune_settings)}}


def write_outputs(out, report: dict, results: list[UnitResult], config: PruneConfig, run: RunSpec,
                  loaded: LoadedRun) -> None:
    """plan.json, pruned.pt (load_model), pruned.pt2 (torch.export.load(path).module(), where
    torch.export can take the model), with run.onnx pruned.onnx (an op without an ONNX translation
    is an error naming it), report.json and report.png, each written atomically."""
    save_plan(make_plan(results, model=run.model, data=run.data, method=config.method, fold=config.fold),
              out / "plan.json")
    save_model(loaded.model, out / "pruned.pt", data=run.data, method=config.method)
    try:
        export_program(loaded.model, loaded.calib_x[:1], out / "pruned.pt2")
        report["program"] = "pruned.pt2"
    except Exception as err:  # torch.export cannot take every model; the state dict file still works
        report["program"] = f"not written: torch.export failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if run.onnx:
        export_onnx(loaded.model, loaded.calib_x[:1], out / "pruned.onnx")
        report["onnx"] = "pruned.onnx"
    write_json(out / "report.json", report)
    plot_report(report, out / "report.png")
