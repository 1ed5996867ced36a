"""One process of tests/test_distributed.py, started by torchrun (gloo, CPU) with 1, 2 or 3 processes.

Each process loads the same trained CNN, takes every world_size-th calibration image, and saves
what every driver decided into OUT/rank<r>.pt: the first unit's Gram, Taylor sums and candidate
discrepancies; prune_model's kept channels, gates, discrepancies and BatchNorm statistics for
local / global (all images and mini-batches) / hybrid / gfs; SR-popup's keep mask, scores, losses
and statistics (BN kept and BN updated) and its BN re-estimation; SAP's masks, losses and
statistics (also after a resume); a fine-tuning epoch; what each process draws after its own
random states went through a checkpoint; and the one-line errors for a last batch with fewer
samples than processes. Training batches and the training subset are cut into unequal shares. With 1 process (torchrun sets WORLD_SIZE=1) no process group starts: the plain
single-process drivers run.
Usage: torchrun --nproc_per_node N tests/distributed_worker.py WEIGHTS OUT
"""
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

from greedyprune import distributed
from greedyprune.greedy import prune_model
from greedyprune.greedy.evaluator import SuffixEvaluator
from greedyprune.greedy.gram import contribution_gram
from greedyprune.greedy.moments import stream_moments
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.harness.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from greedyprune.harness.data import load_dataset, make_loader
from greedyprune.harness.model_source import resolve_model
from greedyprune.harness.training import finetune
from greedyprune.popup import SearchConfig, search, wrap
from greedyprune.popup.search import reestimate_batchnorm
from greedyprune.sparsity.sap import SAPConfig, run_sap

CALIB_IMAGES = 96  # 1, 2 and 3 processes take equal shares
TRAIN_IMAGES = 239  # training: 2 and 3 divide neither the batch nor the dataset, shares differ by one
BATCH = 50  # the last batch holds 39
STEP_BATCH = 48  # global-imitation mini-batches (global)
METHODS = ("local", "global", "hybrid", "gfs")


def calibration(rank: int, world: int):
    """The first CALIB_IMAGES training images, every world-th one from `rank` on."""
    x, y = load_dataset("digits", "train").tensors
    return x[:CALIB_IMAGES][rank::world], y[:CALIB_IMAGES][rank::world]


def bn_statistics(model) -> dict:
    return {name: b.detach().clone() for name, b in model.named_buffers() if "running" in name}


def first_unit_statistics(model, x, y) -> dict:
    """Gram, Taylor sums at random gates (at uniform ones the gradient is zero), the
    discrepancy of three gate rows and the refit's cross moments with a reference network, first unit."""
    graph = UnitGraph(model, x[:1])
    unit = graph.units[0]
    evaluator = SuffixEvaluator(graph, unit, x, kind="kl")
    gates = torch.rand(4, unit.channels, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        next(reference.parameters()).mul_(1.1)
    (moments,), _ = stream_moments(graph, unit, x.split(16), reference=reference)
    return {"gram": contribution_gram(graph, unit, [x]),
            "taylor": evaluator.taylor_r(gates[3] / gates[3].sum()),
            "discrepancy": evaluator.evaluate(gates[:3]),
            "refit_moments": torch.cat([moments.xty.flatten(), moments.y_sum, torch.tensor([moments.yy, moments.rows],
                                                                                           dtype=torch.float64)])}


def prune_runs(model, x, y, world: int) -> dict:
    """prune_model for every method on the first two units (gfs, exact at every step: the first),
    all calibration images at once, and global on STEP_BATCH mini-batches (prune_model's
    step_batch counts this process's images: its share of each). Per unit the kept channels and
    method, the gates, the discrepancies and every method's outcome; the pruned model's BN statistics."""
    units = [unit.name for unit in UnitGraph(model, x[:1]).units[:2]]
    settings = {name: dict(method=name, units=units) for name in METHODS}
    settings["gfs"]["units"] = units[:1]
    settings["global_minibatch"] = dict(method="global", units=units, step_batch=STEP_BATCH // world)
    runs = {}
    for name, options in settings.items():
        pruned = copy.deepcopy(model)
        results = prune_model(pruned, x, **{"step_batch": None, **options}, width_ratio=0.125, exact_until=2,
                              taylor_top=2, labels=y, progress=False)
        runs[name] = {"units": [(r.kept, r.method) for r in results], "scales": [r.scales for r in results],
                      "losses": [[r.loss, r.exported_loss, r.gated_loss] for r in results],
                      "candidates": [{m: {k: v for k, v in c.items() if k != "seconds"} for m, c in r.candidates.items()}
                                     for r in results],
                      "bn": bn_statistics(pruned)}
    return runs


def popup_runs(model, train_set, test_set) -> dict:
    """SR-popup with BN kept and BN updated (train-mode BN over the global batch), then BN re-estimated."""
    runs = {}
    for bn in ("keep", "update"):
        masked = wrap(copy.deepcopy(model))
        history = search(masked, train_set, test_set, SearchConfig(epochs=1, batch_size=BATCH, sparsity=0.8, lr=3.0, bn=bn),
                         progress=False)
        runs[bn] = {"keep": masked.keep.clone(), "scores": masked.scores.detach().clone(), "history": history,
                    "bn": bn_statistics(masked)}
    reestimate_batchnorm(masked, train_set, batch_size=BATCH)
    runs["reestimated_bn"] = bn_statistics(masked)
    return runs


def refusals(model, train_set, test_set, world: int) -> dict:
    """The errors of a batch that leaves a last batch of fewer samples than processes, per driver."""
    if world == 1:
        return {}
    errors = {}
    batch = (TRAIN_IMAGES - 1) // 2  # the last batch holds 1 sample
    attempts = {
        "search": lambda: search(wrap(copy.deepcopy(model)), train_set, test_set,
                                 SearchConfig(epochs=1, batch_size=batch), progress=False),
        "sap": lambda: run_sap(copy.deepcopy(model), train_set, test_set, SAPConfig(iterations=1, epochs=1,
                                                                                     batch_size=batch), progress=False,
                               figure=False),
        "finetune": lambda: finetune(copy.deepcopy(model), make_loader(train_set, batch, shuffle=True), epochs=1,
                                     progress=False),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except ValueError as err:
            errors[name] = str(err)
    return errors


def rng_round_trip(out: Path, rank: int) -> dict:
    """Each process seeds its own stream, the checkpoint (written by rank 0) keeps every one, and
    after a reseed each process restores its own: the draws after the restore repeat those after
    the save."""
    torch.manual_seed(1000 + rank)
    states = rng_states()
    expected = torch.rand(3)
    save_checkpoint({"format": 1, "rng": states}, out / "rng.pt")
    if distributed.active():
        torch.distributed.barrier()
    torch.manual_seed(0)
    restore_rng_states(load_checkpoint(out / "rng.pt", kind="test", file_format=1)["rng"])
    return {"rng_expected": expected, "rng_restored": torch.rand(3)}


def main(weights: str, out: str) -> None:
    distributed.init_from_env()
    rank, world = distributed.rank(), distributed.world_size()
    model = resolve_model("cnn", "digits", without_weights="refuse", weights=weights).eval()
    x, y = calibration(rank, world)
    result = {"world": world, "bn_before": bn_statistics(model), **first_unit_statistics(model, x, y),
              "prune": prune_runs(model, x, y, world)}

    train_set, test_set = Subset(load_dataset("digits", "train"), range(TRAIN_IMAGES)), load_dataset("digits", "test")
    result["popup"] = popup_runs(model, train_set, test_set)

    sap = run_sap(copy.deepcopy(model), train_set, test_set,
                  SAPConfig(iterations=2, epochs=1, batch_size=BATCH, lr=0.01), progress=False, figure=False)
    result["sap"] = {"masks": sap.masks, "history": sap.history, "bn": bn_statistics(sap.model)}

    tuned = copy.deepcopy(model)
    losses = finetune(tuned, make_loader(train_set, BATCH, shuffle=True, seed=3), epochs=1, progress=False)
    result["finetune"] = {"losses": losses, "bn": bn_statistics(tuned), "weights": tuned.state_dict()}

    # resume: rank 0 writes the checkpoint (t = 0, 1), every process reads it and goes on to t = 2
    config = SAPConfig(iterations=1, epochs=1, batch_size=BATCH, lr=0.01)
    run_sap(copy.deepcopy(model), train_set, test_set, config, out_dir=Path(out) / "sap", progress=False, figure=False)
    if distributed.active():
        torch.distributed.barrier()
    resumed = run_sap(copy.deepcopy(model), train_set, test_set, dataclasses.replace(config, iterations=2),
                      out_dir=Path(out) / "sap", resume=True, progress=False, figure=False)
    result["resumed_iterations"] = len(resumed.history)
    result["resumed_masks"] = resumed.masks
    result.update(rng_round_trip(Path(out), rank))
    result["refusals"] = refusals(model, train_set, test_set, world)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    distributed.finish()


if __name__ == "__main__":
    main(*sys.argv[1:3])
