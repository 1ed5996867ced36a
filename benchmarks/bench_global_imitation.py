"""The "global_imitation" benchmark: global imitation on one unit, greedyprune's driver (prefix
cached, candidates batched through the suffix; exactly, or Taylor + top-5 after a few channels)
against a faithful plain-PyTorch re-implementation of the authors' candidate loop (every
candidate scored by its own full forward pass): same model, data, step rule (gamma = 1/(k+1))
and width.

Quick sizes: a unit of 64 channels grown to 3, 16 samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from greedyprune.harness.data import load_dataset, make_loader
from greedyprune.greedy import SuffixEvaluator, global_imitation
from greedyprune.greedy.outputs import discrepancy
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.models import build_model
from harness import Benchmark, Case, quiet_medians

KIND = "kl"
# (unit of the digits CNN, width, calibration samples, exact_until), keyed by quick. Unit 2 is
# block3.conv -> block4.conv (256 channels), unit 0 block1.conv -> block2.conv (64).
SIZES = {False: (2, 8, 64, 4), True: (0, 3, 16, 2)}


def authors_loop(graph: UnitGraph, unit, x: torch.Tensor, target: torch.Tensor, width: int, kind: str) -> torch.Tensor:
    """Fixed-step forward selection as released: for every step, every candidate gets one full
    forward of the network with its gates; the best is taken."""
    n = unit.channels
    counts = torch.zeros(n, dtype=torch.float64)
    steps = 0
    with torch.no_grad():
        while int((counts > 0).sum()) < width:
            gamma = 1.0 / (steps + 1)
            a = counts / max(steps, 1)
            best, best_loss = 0, float("inf")
            for i in range(n):
                gates = (1 - gamma) * a
                gates[i] += gamma
                with graph.gated(unit, (gates * n).float()):
                    loss = float(discrepancy(graph.model(x).unsqueeze(0), target, kind)[0])
                if loss < best_loss:
                    best, best_loss = i, loss
            counts[best] += 1
            steps += 1
    return counts / steps


@dataclass(frozen=True)
class UnitInputs:
    graph: UnitGraph
    unit: object
    x: torch.Tensor
    target: torch.Tensor
    evaluator: SuffixEvaluator
    width: int
    exact_until: int
    sizes: str


def unit_inputs(quick: bool) -> UnitInputs:
    unit_index, width, calib, exact_until = SIZES[quick]
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=8).eval()
    x, _ = next(iter(make_loader(load_dataset("digits", "train"), calib, shuffle=True, seed=0)))
    graph = UnitGraph(model, x[:2])
    unit = graph.units[unit_index]
    with torch.no_grad():
        target = model(x)
    sizes = (f"the PQI paper's CNN on the 8x8 digits (random init), unit {unit.name} ({unit.channels} channels) "
             f"grown to {width} channels with the fixed step 1/(k+1), {KIND.upper()} discrepancy over {calib} "
             f"samples; greedyprune_taylor: Taylor scores + exact top-5 once the unit has > {exact_until} channels")
    return UnitInputs(graph, unit, x, target, SuffixEvaluator(graph, unit, x, kind=KIND, target=target), width,
                      exact_until, sizes)


def _same_channels(x: UnitInputs, out: dict) -> dict:
    # A fact, not an assertion: the loop breaks ties between equal losses its own way.
    return {"exact_same_channels_as_authors_loop": bool(torch.equal(out["greedyprune_exact"].a > 0,
                                                                    out["authors_loop"] > 0))}


GLOBAL_IMITATION = Case(
    name="global_imitation",
    title="Global imitation of one unit vs the authors' candidate loop",
    subject="greedyprune_exact",
    make_inputs=unit_inputs,
    providers={
        "greedyprune_exact": lambda x: global_imitation(x.evaluator, max_neurons=x.width,
                                                        exact_until=x.unit.channels),
        "greedyprune_taylor": lambda x: global_imitation(x.evaluator, max_neurons=x.width,
                                                         exact_until=x.exact_until),
        "authors_loop": lambda x: authors_loop(x.graph, x.unit, x.x, x.target, x.width, KIND),
    },
    check=_same_channels,
    calls={"greedyprune_exact": 1, "greedyprune_taylor": 1, "authors_loop": 1},
)


def notes(section: dict) -> list[str]:
    record = section["cases"].get("global_imitation")
    if record is None:
        return []
    ms = quiet_medians(record)
    same = "keeps" if record["facts"]["exact_same_channels_as_authors_loop"] else "does NOT keep"
    return [f"Speed-up over the authors' loop: exact {ms['authors_loop'] / ms['greedyprune_exact']:.0f}x, Taylor "
            f"{ms['authors_loop'] / ms['greedyprune_taylor']:.0f}x. The exact driver {same} the same channels as the "
            "authors' loop (checked in the run)."]


BENCHMARK = Benchmark(
    name="global_imitation",
    title="Global imitation vs the authors' candidate loop",
    about="greedyprune's global imitation (prefix cached; consumer output = base + per-channel contribution; the "
          "rest batched over all candidates), every candidate exact or Taylor-screened, against the authors' "
          "loop: one full forward of the network per candidate and step (plain PyTorch). Each timed with one call.",
    cases=[GLOBAL_IMITATION],
    notes=notes,
)
