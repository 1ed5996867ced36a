"""The "pqi_report" benchmark: a full PQI report (neuron, layer and global scopes; the paper's
10 x 11 grid of (p, q)) over ResNet-50's weights against the PQI authors' way: a Python loop
over torch.linalg.vector_norm per (p, q, scope) on float32, which overflows for small p.
Same run, same weights, same pairs; both are compared with float64 power sums.

Quick sizes: ResNet-20's weights, the grid's corners p in {0.1, 1} x q in {1, 2}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from greedyprune.models import build_model
from greedyprune.sparsity import PAPER_P, PAPER_Q, SCOPES, grid_pairs, pqi_report, prunable_weights
from harness import Benchmark, Case, quiet_medians

# greedyprune's report against float64 power sums; its log-sum accumulation is far inside this.
MAX_ABS_ERROR = 1e-5
# The (p, q) grid, keyed by quick: the paper's 10 x 11 sweep, or its corners.
GRIDS = {False: (PAPER_P, PAPER_Q), True: ((0.1, 1.0), (1.0, 2.0))}


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


@dataclass(frozen=True)
class ReportInputs:
    weights: dict[str, torch.Tensor]
    pairs: list[tuple[float, float]]
    sizes: str


def report_inputs(quick: bool) -> ReportInputs:
    torch.manual_seed(0)
    name, classes = ("resnet20", 10) if quick else ("resnet50", 1000)
    weights = prunable_weights(build_model(name, num_classes=classes))
    ps, qs = GRIDS[quick]
    pairs = grid_pairs(ps, qs)
    sizes = (f"`build_model(\"{name}\")` ({classes} classes, seed 0): {len(weights)} weights with dim > 1, "
             f"{sum(w.numel() for w in weights.values()):,} float32 entries, "
             f"{sum(w.shape[0] for w in weights.values()):,} output rows (neurons), no masks; PQI of every neuron, "
             f"every layer and the whole model for the {len(pairs)} pairs (p < q) of "
             f"p in {{{', '.join(map(str, ps))}}} x q in {{{', '.join(map(str, qs))}}}")
    return ReportInputs(weights, pairs, sizes)


def _accuracy(x: ReportInputs, out: dict) -> dict:
    """Where the authors' float32 norms overflow, and each side's largest error against float64."""
    exact = float64_pqi(x.weights, x.pairs)
    overflow, error = {}, {}
    for scope in SCOPES:
        theirs = out["authors"][scope].double()
        bad = ~torch.isfinite(theirs)
        bad_pairs = bad.any(dim=0)
        overflow[scope] = {"values": int(bad.sum()), "of": bad.numel(), "pairs": int(bad_pairs.sum()),
                           "p": sorted({x.pairs[j][0] for j in torch.nonzero(bad_pairs).flatten().tolist()})}
        if scope in exact:
            ours = float((out["greedyprune"].stats(scope).pqi - exact[scope]).abs().max())
            assert ours <= MAX_ABS_ERROR, f"greedyprune's {scope} PQI is {ours:.1e} off float64"
            theirs_error = float((theirs - exact[scope])[~bad].abs().max())
            error[scope] = {"greedyprune": ours, "authors_where_finite": theirs_error}
    return {"pairs": len(x.pairs), "authors_overflow": overflow, "max_abs_error_vs_float64": error}


PQI_REPORT = Case(
    name="pqi_report",
    title="PQI report vs the PQI authors' way",
    subject="greedyprune",
    make_inputs=report_inputs,
    providers={
        "greedyprune": lambda x: pqi_report(x.weights, x.pairs, gini=False),
        "greedyprune_with_gini": lambda x: pqi_report(x.weights, x.pairs, gini=True),
        "authors": lambda x: authors_report(x.weights, x.pairs),
    },
    check=_accuracy,
    calls={"greedyprune": 5, "greedyprune_with_gini": 2, "authors": 1},
)


def notes(section: dict) -> list[str]:
    record = section["cases"].get("pqi_report")
    if record is None:
        return []
    facts = record["facts"]
    ms = quiet_medians(record)
    overflow = "; ".join(
        f"{scope}: {o['values']:,} of {o['of']:,} values in {o['pairs']} of {facts['pairs']} pairs"
        + (f" (p = {', '.join(f'{p:g}' for p in o['p'])})" if o["p"] else "")
        for scope, o in facts["authors_overflow"].items())
    errors = "; ".join(f"{scope}: greedyprune {e['greedyprune']:.1e}, authors {e['authors_where_finite']:.1e}"
                       for scope, e in facts["max_abs_error_vs_float64"].items())
    return [f"The authors' way takes {ms['authors'] / ms['greedyprune']:.0f}x the time of greedyprune's report. "
            f"Its float32 norms overflow (non-finite PQI): {overflow}. Largest absolute PQI error against float64 "
            f"power sums (Definition 1 evaluated directly; authors: where finite) over all pairs: {errors}."]


BENCHMARK = Benchmark(
    name="pqi_report",
    title="PQI report vs the PQI authors' way",
    about="greedyprune: `pqi_report(weights, grid_pairs(), gini=False)`, one `ops.pq_norms` call per weight (20 "
          "powers, per neuron), layer/global sums by log-sum-exp; `greedyprune_with_gini`: `gini=True` (sorts every "
          "neuron, layer and the whole). authors: for every (p, q) and scope, `torch.linalg.vector_norm` for "
          "||w||_p and ||w||_q in float32 (`authors_report` in bench_pqi_report.py), timed with one call.",
    cases=[PQI_REPORT],
    notes=notes,
)
