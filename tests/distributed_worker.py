"""One process of tests/test_distributed.py, started by torchrun (gloo, CPU).

Each process loads the same trained CNN, takes every world_size-th calibration image, and saves
what every driver decided into OUT/rank<r>.pt: the first unit's Gram, Taylor sums and candidate
discrepancies, the greedy plan, the SR-popup keep mask and the SAP masks (also after a resume),
and what each process draws after its own random states went through a checkpoint.
Usage: torchrun --nproc_per_node 2 tests/distributed_worker.py WEIGHTS OUT
"""
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

from greedyprune import distributed
from greedyprune.greedy.evaluator import SuffixEvaluator
from greedyprune.greedy.gram import contribution_gram
from greedyprune.greedy.moments import stream_moments
from greedyprune.greedy.plan import select_channels
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.harness.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from greedyprune.harness.data import load_dataset
from greedyprune.harness.model_source import resolve_model
from greedyprune.popup import SearchConfig, search, wrap
from greedyprune.sparsity.sap import SAPConfig, run_sap

CALIB_IMAGES = 96


def calibration(rank: int, world: int):
    """The first CALIB_IMAGES training images, every world-th one from `rank` on."""
    x, y = load_dataset("digits", "train").tensors
    return x[:CALIB_IMAGES][rank::world], y[:CALIB_IMAGES][rank::world]


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


def plan(model, x, y) -> dict:
    """Hybrid imitation of the first two units (global's Taylor-screened steps included)."""
    units = [unit.name for unit in UnitGraph(model, x[:1]).units[:2]]
    return select_channels(model, x, method="hybrid", width_ratio=0.5, step_batch=None, exact_until=0, taylor_top=2,
                           labels=y, units=units, progress=False)


def rng_round_trip(out: Path, rank: int) -> dict:
    """Each process seeds its own stream, the checkpoint (written by rank 0) keeps every one, and
    after a reseed each process restores its own: the draws after the restore repeat those after
    the save."""
    torch.manual_seed(1000 + rank)
    states = rng_states()
    expected = torch.rand(3)
    save_checkpoint({"format": 1, "rng": states}, out / "rng.pt")
    torch.distributed.barrier()
    torch.manual_seed(0)
    restore_rng_states(load_checkpoint(out / "rng.pt", kind="test", file_format=1)["rng"])
    return {"rng_expected": expected, "rng_restored": torch.rand(3)}


def main(weights: str, out: str) -> None:
    distributed.init_from_env()
    rank, world = distributed.rank(), distributed.world_size()
    model = resolve_model("cnn", "digits", without_weights="refuse", weights=weights).eval()
    x, y = calibration(rank, world)
    result = {"world": world, **first_unit_statistics(model, x, y), "plan": plan(model, x, y)}

    train_set, test_set = Subset(load_dataset("digits", "train"), range(256)), load_dataset("digits", "test")
    masked = wrap(copy.deepcopy(model))
    search(masked, train_set, test_set, SearchConfig(epochs=1, batch_size=64, sparsity=0.8), progress=False)
    result["popup_keep"] = masked.keep.clone()
    result["popup_scores"] = masked.scores.detach().clone()

    sap = run_sap(copy.deepcopy(model), train_set, test_set,
                  SAPConfig(iterations=2, epochs=1, batch_size=64, lr=0.01), progress=False, figure=False)
    result["sap_masks"] = sap.masks

    # resume: rank 0 writes the checkpoint (t = 0, 1), every process reads it and goes on to t = 2
    config = SAPConfig(iterations=1, epochs=1, batch_size=64, lr=0.01)
    run_sap(copy.deepcopy(model), train_set, test_set, config, out_dir=Path(out) / "sap", progress=False, figure=False)
    torch.distributed.barrier()
    resumed = run_sap(copy.deepcopy(model), train_set, test_set, dataclasses.replace(config, iterations=2),
                      out_dir=Path(out) / "sap", resume=True, progress=False, figure=False)
    result["resumed_iterations"] = len(resumed.history)
    result["resumed_masks"] = resumed.masks
    result.update(rng_round_trip(Path(out), rank))
    torch.save(result, Path(out) / f"rank{rank}.pt")
    distributed.finish()


if __name__ == "__main__":
    main(*sys.argv[1:3])
