"""pq_norms and what is built on it: the PQ Index and SAP's prune counts
(kernels: csrc/cpu/pq_norms.cpp, csrc/cuda/pq_norms.cu, triton/pq_norms.py)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..checks import arg_error
from .backend import HAS_C, call, resolve_backend
from .checks import (Require, as_tensor, bool_spec, check_finite, check_number, device_spec, float_spec,
                     require_argument, require_traced)
from .offsets import check_offset_values, offsets_argument, offsets_spec


class PQNorms(NamedTuple):
    log_sums: torch.Tensor  # [L, P] float64, log sum |w|^p_j over masked entries (-inf if none/all zero)
    counts: torch.Tensor  # [L] int64, masked entries per segment


def _powers_spec(powers, arg: str, require: Require) -> None:
    """At least one power, each finite and > 0."""
    require(len(powers) > 0, arg, "must name at least one power")
    for p in powers:
        require(math.isfinite(p) and p > 0, arg, lambda: f"must all be finite and > 0, got {p}")


def _powers_argument(powers, arg: str) -> list[float]:
    """powers (a number or a sequence of them) as a checked list of floats."""
    powers = [check_number(p, arg) for p in (powers if isinstance(powers, (list, tuple)) else [powers])]
    _powers_spec(powers, arg, require_argument)
    return powers


def _mask_spec(w: torch.Tensor, mask, require: Require) -> None:
    """pq_norms' mask: None, or bool with one entry per entry of w, on its device."""
    if mask is not None:
        bool_spec(mask, w.numel(), "mask", "w", require)
        device_spec(mask, w, "mask", "w", require)


def _check_pq_norms_values(w, offsets, powers, mask) -> None:
    """pq_norms' data checks, on the kernel's arguments."""
    check_offset_values(offsets, w.numel(), "w")
    check_finite(w, "w", mask, "mask")


def pq_norms(w: torch.Tensor, powers, offsets=None, mask: torch.Tensor | None = None, *, backend=None) -> PQNorms:
    """Log power sums for many powers per segment in one pass over w (and mask).

    w: any shape, read flat, finite where mask is True (a masked-out entry may hold
    anything, NaN or inf included: it is ignored); offsets: int64 [L+1] (None: one
    segment, the global scope); powers: floats > 0; mask: bool like w (None: all entries).
    The Triton backend sums in float32 and refuses float64 w.
    """
    float_spec(w, "w", require_argument)
    offsets = offsets_argument(offsets, w, "w")
    powers = _powers_argument(powers, "powers")
    _mask_spec(w, mask, require_argument)
    name = resolve_backend("pq_norms", backend, w)
    if name == "triton" and w.dtype == torch.float64:
        raise arg_error("w", "must be float32, float16 or bfloat16 on the Triton backend (it sums in float32), got float64")
    flat, mask = w.reshape(-1), None if mask is None else mask.reshape(-1)
    return PQNorms(*call("pq_norms", name, flat, offsets, powers, mask, check_values=_check_pq_norms_values))


def _check_pair(p, q) -> None:
    """0 < p < q, both finite: numbers or tensors (every entry)."""
    pt, qt = as_tensor(p, "p", None).to(torch.float64), as_tensor(q, "q", None).to(torch.float64)
    if not bool((torch.isfinite(pt) & (pt > 0)).all()):
        raise arg_error("p", f"must be finite and > 0, got p = {p}")
    if not bool(torch.isfinite(qt).all()):
        raise arg_error("q", f"must be finite, got q = {q}")
    if not bool((pt < qt).all()):
        raise arg_error("p", f"must satisfy 0 < p < q, got p = {p}, q = {q}")


def _check_broadcasts(t, shape: torch.Size, arg: str, to_arg: str) -> None:
    t_shape = as_tensor(t, arg, None).shape
    try:
        fits = torch.broadcast_shapes(t_shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise arg_error(arg, f"must broadcast to the shape of '{to_arg}' {tuple(shape)}, got shape {tuple(t_shape)}")


def pq_index_from_log_sums(log_sum_p: torch.Tensor, log_sum_q: torch.Tensor, counts: torch.Tensor, p, q) -> torch.Tensor:
    """PQI_{p,q} = 1 - d^(1/q - 1/p) ||w||_p / ||w||_q, from log power sums (no overflow).

    log_sum_p, log_sum_q: log sums of the same segments (same shape); counts, p and q
    broadcast to that shape (numbers or tensors, 0 < p < q). Empty and all-zero segments give NaN.
    """
    for t, arg in ((log_sum_p, "log_sum_p"), (log_sum_q, "log_sum_q"), (counts, "counts")):
        if not isinstance(t, torch.Tensor):
            raise arg_error(arg, f"must be a torch.Tensor, got {type(t).__name__}")
    if log_sum_q.shape != log_sum_p.shape:
        raise arg_error("log_sum_q", f"must have the shape of 'log_sum_p' {tuple(log_sum_p.shape)}, got {tuple(log_sum_q.shape)}")
    for t, arg in ((counts, "counts"), (p, "p"), (q, "q")):
        _check_broadcasts(t, log_sum_p.shape, arg, "log_sum_p")
    _check_pair(p, q)
    log_d = torch.log(counts.to(torch.float64))
    return 1 - torch.exp((1 / q - 1 / p) * log_d + log_sum_p / p - log_sum_q / q)


def pq_index(w: torch.Tensor, p=0.5, q=1.0, offsets=None, mask=None, *, backend=None) -> torch.Tensor:
    """PQ Index per segment (seed 003), all (p, q) pairs from one `pq_norms` pass.

    With scalar p and q (0 < p < q) returns [L]; with sequences returns the grid
    [L, len(p), len(q)], NaN where p >= q (e.g. the paper's p in 0.1..1.0, q in 1.0..2.0).
    """
    grid = isinstance(p, (list, tuple)) or isinstance(q, (list, tuple))
    ps, qs = _powers_argument(p, "p"), _powers_argument(q, "q")
    if not grid and not ps[0] < qs[0]:
        raise arg_error("p", f"must satisfy 0 < p < q, got p = {ps[0]}, q = {qs[0]}")
    powers = sorted(set(ps + qs))
    sums, counts = pq_norms(w, powers, offsets, mask, backend=backend)
    col = {x: i for i, x in enumerate(powers)}
    out = torch.full((counts.numel(), len(ps), len(qs)), math.nan, dtype=torch.float64)
    for i, pi in enumerate(ps):
        for j, qj in enumerate(qs):
            if pi < qj:
                out[:, i, j] = pq_index_from_log_sums(sums[:, col[pi]], sums[:, col[qj]], counts, pi, qj)
    return out if grid else out[:, 0, 0]


def sap_prune_count(pqi: torch.Tensor, counts: torch.Tensor, p: float, q: float, eta: float = 0.0,
                    gamma: float = 1.0, beta: float = 0.9) -> torch.Tensor:
    """How many weights SAP prunes per scope (seed 003, Algorithm 1), as int64.

    pqi: [L] PQ Index per scope; counts: [L] weights per scope (>= 0), same shape.
    r = d (1+eta)^(-q/(q-p)) (1-PQI)^(qp/(q-p)) (in logs), c = floor(d * clamp(gamma (1 - r/d), 0, beta)).
    NaN PQI (empty or all-zero scope) prunes nothing.
    """
    for t, arg in ((pqi, "pqi"), (counts, "counts")):
        if not isinstance(t, torch.Tensor):
            raise arg_error(arg, f"must be a torch.Tensor, got {type(t).__name__}")
    if counts.shape != pqi.shape:
        raise arg_error("counts", f"must have the shape of 'pqi' {tuple(pqi.shape)}, got {tuple(counts.shape)}")
    if not bool((counts >= 0).all()):
        raise arg_error("counts", f"must all be >= 0, got {counts[~(counts >= 0)][0].item()}")
    _check_pair(p, q)
    eta, gamma, beta = check_number(eta, "eta"), check_number(gamma, "gamma"), check_number(beta, "beta")
    for value, arg in ((eta, "eta"), (gamma, "gamma")):
        if not (math.isfinite(value) and value >= 0):
            raise arg_error(arg, f"must be finite and >= 0, got {value}")
    if not 0 <= beta <= 1:
        raise arg_error("beta", f"must lie in [0, 1], got {beta}")
    d = counts.to(torch.float64)
    log_ratio = -q / (q - p) * math.log1p(eta) + q * p / (q - p) * torch.log1p(-pqi.to(torch.float64))  # log(r/d)
    frac = torch.clamp(gamma * (1 - torch.exp(log_ratio)), 0.0, beta)
    c = torch.floor(d * frac)
    c = torch.where(torch.isnan(c), torch.zeros_like(c), c)
    return torch.minimum(c, d).to(torch.int64)


if HAS_C:

    @torch.library.register_fake("greedyprune::pq_norms")
    def _(w, offsets, powers, mask):
        float_spec(w, "w", require_traced)
        offsets_spec(offsets, w, "w", require_traced)
        _powers_spec(powers, "powers", require_traced)
        _mask_spec(w, mask, require_traced)
        L = offsets.shape[0] - 1
        return w.new_empty((L, len(powers)), dtype=torch.float64), w.new_empty(L, dtype=torch.int64)
