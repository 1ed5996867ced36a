"""Time a full PQI report (neuron, layer and global scopes; the paper's 10 x 11 grid of (p, q)) over
ResNet-50's weights against the PQI authors' way: a Python loop over torch.linalg.vector_norm per
(p, q, scope) on float32, which overflows for small p. Same run, same weights, same pairs.

    python benchmarks/bench_pqi_report.py                  # prints the results
    python benchmarks/bench_pqi_report.py --write-results  # ... and writes its section of benchmarks/RESULTS.md

The section sits between two HTML comments in RESULTS.md's "Drivers" part (which
`benchmarks/run.py --write-results` keeps) and is replaced on every write.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from greedyprune.models import build_model
from greedyprune.sparsity import SCOPES, grid_pairs, pqi_report, prunable_weights
from results_section import RESULTS_MD, markers, write_section
from run import machine

BEGIN, END = markers("bench_pqi_report")
REPEATS = 5  # timed calls of greedyprune's report (after one warm-up call)


def authors_pqi(x: torch.Tensor, dim: int, p: float, q: float) -> torch.Tensor:
    """PQI the authors' way: 1 - d^(1/q - 1/p) ||x||_p / ||x||_q with float32 norms (no mask: d = size)."""
    d = torch.ones_like(x).sum(dim=dim)
    norm_q = torch.linalg.vector_norm(x, q, dim=dim)
    return (norm_q - d ** (1 / q - 1 / p) * torch.linalg.vector_norm(x, p, dim=dim)) / norm_q


def authors_report(weights: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    """Per scope, PQI [segments, pairs]: for every (p, q) pair, each scope's norms computed afresh."""
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    return {
        "neuron": torch.stack([torch.cat([authors_pqi(w.reshape(w.shape[0], -1), 1, p, q) for w in weights.values()])
                               for p, q in pairs], dim=1),
        "layer": torch.stack([torch.stack([authors_pqi(w.reshape(-1), -1, p, q) for w in weights.values()])
                              for p, q in pairs], dim=1),
        "global": torch.stack([authors_pqi(flat, -1, p, q) for p, q in pairs]).reshape(1, -1),
    }


def float64_pqi(weights: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    """Layer and global PQI [segments, pairs] straight from Definition 1 with float64 power sums (the yardstick)."""
    powers = sorted({x for pair in pairs for x in pair})
    layer_sums = torch.tensor([[float(w.double().abs().pow(x).sum()) for x in powers] for w in weights.values()],
                              dtype=torch.float64)
    sizes = torch.tensor([w.numel() for w in weights.values()], dtype=torch.float64)
    out = {}
    scopes = (("layer", layer_sums, sizes), ("global", layer_sums.sum(0, keepdim=True), sizes.sum(0, keepdim=True)))
    for scope, sums, d in scopes:
        out[scope] = torch.stack([1 - d ** (1 / q - 1 / p) * sums[:, powers.index(p)] ** (1 / p)
                                  / sums[:, powers.index(q)] ** (1 / q) for p, q in pairs], dim=1)
    return out


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def measure() -> dict:
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000)
    weights = prunable_weights(model)
    pairs = grid_pairs()
    host = machine()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    pqi_report(weights, pairs, gini=False)  # warm-up
    ours_times, ours = timed(lambda: pqi_report(weights, pairs, gini=False), REPEATS)
    gini_times, _ = timed(lambda: pqi_report(weights, pairs, gini=True), 2)
    authors_times, authors = timed(lambda: authors_report(weights, pairs), 1)
    host["load_average_at_end"] = os.getloadavg()[0]

    exact = float64_pqi(weights, pairs)
    overflow, error = {}, {}
    for scope in SCOPES:
        theirs = authors[scope].double()
        bad = ~torch.isfinite(theirs)
        bad_pairs = bad.any(dim=0)
        overflow[scope] = {"values": int(bad.sum()), "of": bad.numel(), "pairs": int(bad_pairs.sum()),
                           "p": sorted({pairs[j][0] for j in torch.nonzero(bad_pairs).flatten().tolist()})}
        if scope in exact:
            error[scope] = {"greedyprune": float((ours.stats(scope).pqi - exact[scope]).abs().max()),
                            "authors_where_finite": float((theirs - exact[scope])[~bad].abs().max())}
    return {
        "date": started, "machine": host,
        "sizes": {"weights": len(weights), "entries": sum(w.numel() for w in weights.values()),
                  "neurons": sum(w.shape[0] for w in weights.values()), "pairs": len(pairs)},
        "seconds": {"greedyprune": ours_times, "greedyprune_with_gini": gini_times, "authors": authors_times},
        "authors_overflow": overflow, "max_abs_error_vs_float64": error,
    }


def section(r: dict) -> str:
    m, s, t = r["machine"], r["sizes"], r["seconds"]
    ours = statistics.median(t["greedyprune"])

    def row(name: str, what: str, times: list[float]) -> str:
        median = statistics.median(times)
        return (f"| {name} | {what} | {median:.3f} | {min(times):.3f} | {len(times)} | {median / ours:.1f} |")

    overflow = "; ".join(
        f"{scope}: {o['values']:,} of {o['of']:,} values in {o['pairs']} of {s['pairs']} pairs"
        + (f" (p = {', '.join(f'{p:g}' for p in o['p'])})" if o["p"] else "")
        for scope, o in r["authors_overflow"].items())
    errors = "; ".join(f"{scope}: greedyprune {e['greedyprune']:.1e}, authors {e['authors_where_finite']:.1e}"
                       for scope, e in r["max_abs_error_vs_float64"].items())
    lines = [
        BEGIN,
        "### PQI report vs the PQI authors' way",
        "",
        f"Written by `python benchmarks/bench_pqi_report.py --write-results` (run started {r['date']}); "
        "rerun it rather than edit this section.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores available; torch {m['torch']}, {m['threads']} threads; "
        f"greedyprune backend: {m['greedyprune_backend']}",
        f"- 1-minute load average at the start and end of the run: {m['load_average_at_start']:.2f}, "
        f"{m['load_average_at_end']:.2f}",
        f"- Weights: ResNet-50 (`build_model(\"resnet50\")`, 1000 classes, seed 0): {s['weights']} weights with "
        f"dim > 1 (53 conv + fc), {s['entries']:,} float32 entries, {s['neurons']:,} output rows (neurons); no masks",
        f"- Work: PQI of every neuron, every layer and the whole model for the {s['pairs']} pairs (p < q) of the "
        "paper's grid p in 0.1..1.0 x q in 1.0..2.0",
        "- greedyprune: `pqi_report(weights, grid_pairs(), gini=False)`: one `ops.pq_norms` call per weight (20 "
        "powers, per neuron), layer/global sums by log-sum-exp; with Gini: `gini=True` (sorts every neuron, layer "
        "and the whole)",
        "- authors: for every (p, q) and scope, `torch.linalg.vector_norm` for ||w||_p and ||w||_q in float32 "
        "(`authors_report` in this script)",
        "",
        "| provider | what | median s | min s | calls timed | x greedyprune time |",
        "|---|---|---:|---:|---:|---:|",
        row("greedyprune", "PQI report, 3 scopes x 109 pairs", t["greedyprune"]),
        row("greedyprune + Gini", "the same and the Gini index of every segment", t["greedyprune_with_gini"]),
        row("authors", "loop over vector_norm per (p, q, scope)", t["authors"]),
        "",
        f"The authors' way takes {statistics.median(t['authors']) / ours:.0f}x the time of greedyprune's report. "
        f"Its float32 norms overflow (non-finite PQI): {overflow}. "
        "Largest absolute PQI error against float64 power sums (Definition 1 evaluated directly; authors: where "
        f"finite) over all pairs: {errors}.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-results", action="store_true", help="write this benchmark's section of RESULTS.md")
    args = parser.parse_args()
    text = section(measure())
    print(text)
    if args.write_results:
        write_section("bench_pqi_report", text)
        print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
