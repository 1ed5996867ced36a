"""Global imitation on one unit: greedyprune's driver (prefix cached, candidates batched through
the suffix, Taylor + top-5 after 25 channels) against a faithful plain-PyTorch re-implementation
of the authors' candidate loop (every candidate scored by its own full forward pass), same model,
data, step rule (gamma = 1/(k+1)) and width. Also the breakdown of a whole Algorithm-2 run.

    python benchmarks/bench_global_imitation.py [--width 32] [--calib 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from greedyprune.data import load_dataset, make_loader
from greedyprune.greedy import SuffixEvaluator, global_imitation
from greedyprune.greedy.suffix import discrepancy
from greedyprune.models import build_model
from greedyprune.greedy.surgery import UnitGraph


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--unit", type=int, default=2, help="index of the unit of the digits CNN")
    parser.add_argument("--exact-until", type=int, default=25, help="Taylor + top-5 once the unit has more channels")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=8).eval()
    x, _ = next(iter(make_loader(load_dataset("digits", "train"), args.calib, shuffle=True, seed=0)))
    graph = UnitGraph(model, x[:2])
    unit = graph.units[args.unit]
    with torch.no_grad():
        target = model(x)
    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        rows.append({"provider": name, "seconds": time.perf_counter() - start})
        print(f"{name:>32}: {rows[-1]['seconds']:.2f} s")
        return out

    ev = SuffixEvaluator(graph, unit, x, kind="kl", target=target)
    exact = timed("greedyprune exact (cached+batched)",
                  lambda: global_imitation(ev, max_neurons=args.width, exact_until=unit.channels))
    timed(f"greedyprune taylor after {args.exact_until}",
          lambda: global_imitation(ev, max_neurons=args.width, exact_until=args.exact_until))
    a = timed("authors' loop (full forward each)", lambda: authors_loop(graph, unit, x, target, args.width, "kl"))
    same = torch.equal((a > 0), (exact.a > 0))
    base = rows[2]["seconds"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "model": "cnn (PQI paper) on digits 8x8", "unit": unit.name, "channels": unit.channels,
        "width": args.width, "calib_samples": args.calib, "exact_until": args.exact_until, "rows": rows,
        "speedup_exact": base / rows[0]["seconds"], "speedup_taylor": base / rows[1]["seconds"],
        "same_channels_as_authors_loop": same,
    }
    print(f"speed-up vs the authors' loop: exact x{result['speedup_exact']:.1f}, "
          f"Taylor x{result['speedup_taylor']:.1f}; same channels as the loop: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
