"""PQ Index and Gini index of a model's weights at three scopes, many (p, q) pairs at once (seed 003).

The weights measured are every floating tensor with more than one dimension (Linear, Conv,
Embedding weights). Scopes: `neuron` = one output row W[i] (flattened), `layer` = one weight,
`global` = all of them as one vector. Masks (bool, shaped like each weight) restrict every
measure to the kept entries. One `ops.pq_norms` call per weight gives the log power sums of its
neurons for every power the pairs need; layer and global sums are log-sum-exps of those, so all
scopes and all pairs come from a single pass over the weights.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import ops
from ..checks import arg_error, check_finite_weights
from .weights import SCOPES, check_masks, prunable_weights

PAPER_PAIR = (0.5, 1.0)  # the paper's default (p, q), used for every PQI it plots
PAPER_P = tuple(round(0.1 * i, 1) for i in range(1, 11))  # the paper's sweep, p in 0.1 .. 1.0
PAPER_Q = tuple(round(1.0 + 0.1 * i, 1) for i in range(11))  # q in 1.0 .. 2.0


def grid_pairs(ps: Sequence[float] = PAPER_P, qs: Sequence[float] = PAPER_Q) -> list[tuple[float, float]]:
    """Every (p, q) of the grid ps x qs with p < q, p-major (the paper's grid gives 109 pairs)."""
    return [(float(p), float(q)) for p in ps for q in qs if p < q]


def pair_key(p: float, q: float) -> str:
    """The text key of a pair in dicts and JSON, e.g. "0.5,1"."""
    return f"{p:g},{q:g}"


def check_pairs(pairs) -> tuple[tuple[float, float], ...]:
    """Pairs as a tuple of (p, q) floats; ValueError unless every pair has 0 < p < q (finite)."""
    try:
        checked = tuple((float(p), float(q)) for p, q in pairs)
    except (TypeError, ValueError):
        raise arg_error("pairs", f"must be a sequence of (p, q) number pairs, got {pairs!r}") from None
    if not checked:
        raise arg_error("pairs", "must hold at least one (p, q) pair")
    for p, q in checked:
        if not (math.isfinite(q) and 0 < p < q):
            raise arg_error("pairs", f"must satisfy 0 < p < q for every pair, got p = {p:g}, q = {q:g}")
        warn_outside_theorem(p, q)
    return checked


class PQIRangeWarning(UserWarning):
    """A (p, q) pair outside the range where the PQ Index provably measures sparsity."""


def warn_outside_theorem(p: float, q: float) -> bool:
    """Warn (PQIRangeWarning) unless 0 < p <= 1 <= q: seed 003 proves the sparsity properties for
    0 < p <= 1 < q (Definition 1, Theorem 1) and its appendix's proof holds for q = 1 too, the
    pair the paper itself uses (p = 0.5, q = 1); outside, (D1) or (D3) can fail. Returns whether it warned."""
    if 0 < p <= 1 <= q and p < q:
        return False
    warnings.warn(f"greedyprune: PQ Index with p = {p:g}, q = {q:g} is outside 0 < p <= 1 <= q, where the PQI paper "
                  "proves it measures sparsity (Theorem 1; its own pair is p = 0.5, q = 1); its values may not rank "
                  "sparsity", PQIRangeWarning, stacklevel=3)
    return True


def _log_sum_exp_layers(log_sums: torch.Tensor, peaks: torch.Tensor, layer_of_row: torch.Tensor) -> torch.Tensor:
    """Per layer, log sum exp of its rows of `log_sums` [R, P] (-inf where all are -inf), shifted by the
    layer's `peaks` [L, P] (the per-layer maxima) so nothing overflows or underflows."""
    shift = torch.where(torch.isfinite(peaks), peaks, torch.zeros_like(peaks))
    scaled = torch.exp(log_sums - shift[layer_of_row])
    return torch.log(torch.zeros_like(shift).index_add_(0, layer_of_row, scaled)) + shift


def _gini_rows(w: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Gini index (Hurley & Rickard) of every row of w [R, n] over its kept entries, float64.

    With the kept magnitudes sorted ascending c_1..c_N: sum_k (2k - N - 1) c_k / (N sum_k c_k);
    0 for equal magnitudes, 1 - 1/N for one non-zero entry, NaN for empty or all-zero rows.
    """
    magnitude = w.abs()
    if keep is None:
        kept = torch.full((w.shape[0],), w.shape[1], dtype=torch.float64, device=w.device)
    else:
        magnitude = magnitude.masked_fill(~keep, math.inf)  # pruned entries sort last
        kept = keep.sum(1, dtype=torch.float64)
    ranked = torch.sort(magnitude, dim=1).values.double()
    positions = torch.arange(1, w.shape[1] + 1, dtype=torch.float64, device=w.device)
    ranked = ranked.masked_fill_(positions > kept[:, None], 0.0)
    total = ranked.sum(1)
    weighted = ranked @ positions
    return (2 * weighted - (kept + 1) * total) / (kept * total)


def gini_index(w: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Gini index of |w| over the entries where `mask` is True (all if None); NaN if none are non-zero."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise arg_error("w", f"must be a floating tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != w.shape):
        raise arg_error("mask", f"must be a bool tensor shaped like 'w' {tuple(w.shape)}")
    return float(_gini_rows(w.reshape(1, -1), None if mask is None else mask.reshape(1, -1))[0])


@dataclass(frozen=True)
class ScopeStats:
    """Measures of one scope's segments (neurons in weight order and row order, layers, or the one global)."""

    counts: torch.Tensor  # [L] int64, kept entries per segment
    sizes: torch.Tensor  # [L] int64, all entries per segment
    pqi: torch.Tensor  # [L, K] float64, column k for pairs[k]; NaN for empty or all-zero segments
    gini: torch.Tensor | None  # [L] float64 (None when not computed)


@dataclass(frozen=True)
class PQIReport:
    """PQ Index (and Gini index) per scope; see `pqi_report`."""

    pairs: tuple[tuple[float, float], ...]
    names: tuple[str, ...]  # measured weights, in order
    shapes: tuple[tuple[int, ...], ...]
    scopes: dict[str, ScopeStats]

    def column(self, p: float, q: float) -> int:
        """The column of pair (p, q) in every `pqi` tensor."""
        try:
            return self.pairs.index((float(p), float(q)))
        except ValueError:
            raise arg_error("p/q", f"pair ({p:g}, {q:g}) is not in this report's pairs "
                                    f"{[pair_key(*x) for x in self.pairs][:8]}") from None

    def stats(self, scope: str) -> ScopeStats:
        if scope not in self.scopes:
            raise arg_error("scope", f"{scope!r} was not computed; this report has {tuple(self.scopes)}")
        return self.scopes[scope]

    def pqi(self, scope: str = "global", p: float = PAPER_PAIR[0], q: float = PAPER_PAIR[1]) -> torch.Tensor:
        """PQI_{p,q} of every segment of `scope` [L]."""
        return self.stats(scope).pqi[:, self.column(p, q)]

    def neuron_slices(self) -> dict[str, slice]:
        """Which rows of the neuron scope belong to each weight."""
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            out[name] = slice(start, start + shape[0])
            start += shape[0]
        return out

    def to_dict(self, neurons: bool = False) -> dict:
        """JSON-ready dict (NaN as None): global and per-layer values, neuron summaries (or every neuron)."""
        keys = [pair_key(*pair) for pair in self.pairs]

        def values(stats: ScopeStats, rows) -> dict:
            cell = {"kept": int(stats.counts[rows].sum()), "size": int(stats.sizes[rows].sum())}
            cell["pqi"] = {k: json_number(v) for k, v in zip(keys, stats.pqi[rows].tolist())}
            if stats.gini is not None:
                cell["gini"] = json_number(float(stats.gini[rows]))
            return cell

        out: dict = {"pairs": [list(pair) for pair in self.pairs]}
        if "global" in self.scopes:
            out["global"] = values(self.scopes["global"], 0)
        layers = []
        slices = self.neuron_slices()
        for i, (name, shape) in enumerate(zip(self.names, self.shapes)):
            layer: dict = {"name": name, "shape": list(shape)}
            if "layer" in self.scopes:
                layer.update(values(self.scopes["layer"], i))
            if "neuron" in self.scopes:
                layer["neurons"] = _neuron_summary(self.scopes["neuron"], slices[name], keys, neurons)
            layers.append(layer)
        if "layer" in self.scopes or "neuron" in self.scopes:
            out["layers"] = layers
        return out


def json_number(x: float) -> float | None:
    """`x` for a JSON file: NaN (no kept weight to measure) as None, which JSON can hold."""
    return None if math.isnan(x) else x


def _nan_stats(t: torch.Tensor) -> dict:
    finite = t[~torch.isnan(t)]
    if finite.numel() == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(finite.mean()), "min": float(finite.min()), "max": float(finite.max())}


def _neuron_summary(stats: ScopeStats, rows: slice, keys: list[str], every_neuron: bool) -> dict:
    pqi = stats.pqi[rows]
    out = {"count": pqi.shape[0], "pqi": {k: _nan_stats(pqi[:, j]) for j, k in enumerate(keys)}}
    if stats.gini is not None:
        out["gini"] = _nan_stats(stats.gini[rows])
    if every_neuron:
        out["kept"] = stats.counts[rows].tolist()
        out["pqi_each"] = {k: [json_number(v) for v in pqi[:, j].tolist()] for j, k in enumerate(keys)}
        if stats.gini is not None:
            out["gini_each"] = [json_number(v) for v in stats.gini[rows].tolist()]
    return out


def pqi_report(weights, pairs=(PAPER_PAIR,), *, masks=None, scopes: Sequence[str] = SCOPES, gini: bool = True,
               backend=None) -> PQIReport:
    """PQ Index of every (p, q) in `pairs` (0 < p < q) at each of `scopes`, from one pass over the weights.

    weights: an nn.Module or a state_dict-like mapping (its floating tensors with dim > 1 are measured);
    masks: {name: bool tensor} restricting each weight to its kept entries (missing names: all kept);
    gini: also compute the Gini index per segment (sorts every segment, slower than the PQI).
    """
    tensors = prunable_weights(weights)
    if not tensors:
        raise arg_error("weights", "holds no floating tensor with more than one dimension")
    check_finite_weights("weights", tensors)
    pairs = check_pairs(pairs)
    if isinstance(scopes, str) or not scopes or any(s not in SCOPES for s in scopes):
        raise arg_error("scopes", f"must be a non-empty sequence drawn from {SCOPES}, got {scopes!r}")
    full_masks = check_masks(masks, tensors)
    names = tuple(tensors)
    shapes = tuple(tuple(t.shape) for t in tensors.values())
    device = next(iter(tensors.values())).device

    # one pq_norms call per weight (no copy of the weights): log power sums of each of its rows;
    # a layer's sums are the log-sum-exp of its rows', the global ones that of the layers'
    powers = sorted({x for pair in pairs for x in pair})
    row_sums, row_counts, row_sizes, layer_peaks = [], [], [], []
    for name, w in tensors.items():
        rows, cols = w.shape[0], math.prod(w.shape[1:])
        offsets = torch.arange(rows + 1, dtype=torch.int64, device=device) * cols
        log_sums, counts = ops.pq_norms(w, powers, offsets, None if full_masks is None else full_masks[name],
                                        backend=backend)
        row_sums.append(log_sums)
        row_counts.append(counts)
        row_sizes.append(torch.full_like(counts, cols))
        layer_peaks.append(log_sums.amax(0))
    row_sums, row_counts, row_sizes = torch.cat(row_sums), torch.cat(row_counts), torch.cat(row_sizes)
    rows_per_layer = torch.tensor([s[0] for s in shapes], dtype=torch.int64, device=device)
    layer_of_row = torch.repeat_interleave(torch.arange(len(shapes), device=device), rows_per_layer)
    layer_sums = _log_sum_exp_layers(row_sums, torch.stack(layer_peaks), layer_of_row)
    layer_counts = torch.zeros(len(shapes), dtype=torch.int64, device=device).index_add_(0, layer_of_row, row_counts)
    layer_sizes = torch.tensor([math.prod(s) for s in shapes], dtype=torch.int64, device=device)
    sums = {
        "neuron": (row_sums, row_counts, row_sizes),
        "layer": (layer_sums, layer_counts, layer_sizes),
        "global": (_log_sum_exp_layers(layer_sums, layer_sums.amax(0, keepdim=True), torch.zeros_like(layer_counts)),
                   layer_counts.sum(0, keepdim=True), layer_sizes.sum(0, keepdim=True)),
    }

    # every pair at once: [L, K] log sums of the pairs' p and q, p and q as [K] rows (broadcast)
    p_column = torch.tensor([powers.index(p) for p, _ in pairs], device=device)
    q_column = torch.tensor([powers.index(q) for _, q in pairs], device=device)
    p_row = torch.tensor([p for p, _ in pairs], dtype=torch.float64, device=device)
    q_row = torch.tensor([q for _, q in pairs], dtype=torch.float64, device=device)

    stats = {}
    for scope in (name for name in SCOPES if name in scopes):
        log_sums, counts, sizes = sums[scope]
        pqi = ops.pq_index_from_log_sums(log_sums[:, p_column], log_sums[:, q_column], counts[:, None], p_row, q_row)
        stats[scope] = ScopeStats(counts, sizes, pqi, _scope_gini(scope, tensors, full_masks) if gini else None)
    return PQIReport(pairs, names, shapes, stats)


def _scope_gini(scope: str, tensors: dict, masks: dict | None) -> torch.Tensor:
    if scope == "global":
        flat = torch.cat([t.reshape(1, -1) for t in tensors.values()], dim=1)
        return _gini_rows(flat, None if masks is None else torch.cat([m.reshape(1, -1) for m in masks.values()], dim=1))
    per_layer = []
    for name, w in tensors.items():
        rows = w.shape[0] if scope == "neuron" else 1
        per_layer.append(_gini_rows(w.reshape(rows, -1), None if masks is None else masks[name].reshape(rows, -1)))
    return torch.cat(per_layer)


# ---------------------------------------------------------------- text output


def format_number(x: float | None) -> str:
    """A PQI or Gini value for a text table: 4 decimals, "nan" when there is none."""
    return "nan" if x is None or math.isnan(x) else f"{x:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_table(report: PQIReport, pairs=None, max_pairs: int = 4) -> str:
    """Plain-text tables of `report`, one per scope: global, per layer, and per layer's neurons
    (mean [min, max]). Columns: `pairs` (default: the report's first `max_pairs` pairs) and Gini."""
    shown = report.pairs[:max_pairs] if pairs is None else check_pairs(pairs)
    columns = [report.column(p, q) for p, q in shown]
    pqi_heads = [f"PQI({pair_key(p, q)})" for p, q in shown]
    lines = []

    def kept(stats: ScopeStats, i) -> str:
        c, s = int(stats.counts[i].sum()), int(stats.sizes[i].sum())
        return f"{c:,}/{s:,} ({100 * c / s:.1f}%)" if s else "0/0"

    def gini(stats: ScopeStats, i: int) -> list[str]:
        return [] if stats.gini is None else [format_number(float(stats.gini[i]))]

    for scope in [s for s in SCOPES[::-1] if s in report.scopes]:
        st = report.scopes[scope]
        gini_head = [] if st.gini is None else ["Gini"]
        if scope == "global":
            rows = [["all weights", kept(st, 0)] + [format_number(float(st.pqi[0, j])) for j in columns] + gini(st, 0)]
            header = ["segment", "kept/size"]
        elif scope == "layer":
            rows = [[name, "x".join(map(str, shape)), kept(st, i)]
                    + [format_number(float(st.pqi[i, j])) for j in columns] + gini(st, i)
                    for i, (name, shape) in enumerate(zip(report.names, report.shapes))]
            header = ["layer", "shape", "kept/size"]
        else:
            rows = []
            for name, rows_of in report.neuron_slices().items():
                cells = [name, str(rows_of.stop - rows_of.start), kept(st, rows_of)]
                for j in columns:
                    s = _nan_stats(st.pqi[rows_of, j])
                    cells.append(f"{format_number(s['mean'])} [{format_number(s['min'])}, {format_number(s['max'])}]")
                if st.gini is not None:
                    s = _nan_stats(st.gini[rows_of])
                    cells.append(f"{format_number(s['mean'])} [{format_number(s['min'])}, {format_number(s['max'])}]")
                rows.append(cells)
            header = ["layer", "neurons", "kept/size"]
        title = f"scope: {scope}" + (" (mean [min, max] over each layer's neurons)" if scope == "neuron" else "")
        lines += [title] + _table(header + pqi_heads + gini_head, rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def format_grid(report: PQIReport, scope: str = "global", segment: int = 0) -> str:
    """PQI of one segment over the report's pairs as a p-by-q matrix ('-' where a pair is absent)."""
    stats = report.stats(scope)
    if not 0 <= segment < stats.pqi.shape[0]:
        raise arg_error("segment", f"must lie in [0, {stats.pqi.shape[0]}), got {segment}")
    ps = sorted({p for p, _ in report.pairs})
    qs = sorted({q for _, q in report.pairs})
    index = {pair: j for j, pair in enumerate(report.pairs)}
    rows = [[f"p={p:g}"] + [format_number(float(stats.pqi[segment, index[(p, q)]])) if (p, q) in index else "-"
                            for q in qs]
            for p in ps]
    return "\n".join([f"PQI, scope {scope}, segment {segment}"] + _table(["", *[f"q={q:g}" for q in qs]], rows)) + "\n"
