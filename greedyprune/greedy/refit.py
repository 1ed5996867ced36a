"""Least-squares refit of a pruned unit's consumer from the second moments of its input.

With the consumer's input columns X (rows = samples x positions), the kept columns S and the
output Y to match (the consumer's own output, X W^T + b, or a reference network's: moments.py),
the refit is the ridge regression
    W' = argmin_W' E|Y - X_S W'^T - b'|^2 + lambda |W'|^2,
solved in float64 by Cholesky from E[X^T X] and E[X^T Y] alone (no activations are kept). With a
bias the fit is centred (b' = E[Y] - W' E[X_S]); a consumer without one is fitted through the
origin. lambda = damping x the mean diagonal of the system (SparseGPT's damping): it keeps the
system positive definite when kept columns are collinear or constant. A system that Cholesky
still refuses after raising lambda 1000-fold (rounding made it indefinite) is solved on its
eigenvalues clipped at 0, plus lambda; moments that are not finite are no system (None, with a
warning naming the unit).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .moments import ConsumerMoments

DAMPING_STEPS = 4  # lambda, then x10, x100, x1000 before giving up


@dataclass
class Refit:
    """weight [out, |S|] and bias [out] (None without one) of the refit consumer, float64;
    error: its E|Y - Y'|^2 / E|Y|^2; removal_error: the same for the current weights on S alone
    (plain removal); damping: the lambda the solve used."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    error: float
    removal_error: float
    damping: float


@dataclass
class Expectations:
    """E[X^T X], E[X], E[X^T Y], E[Y], E|Y|^2 over the consumer's input rows (float64)."""

    xx: torch.Tensor
    x: torch.Tensor
    xy: torch.Tensor
    y: torch.Tensor
    yy: float


def expectations(moments: ConsumerMoments, weight: torch.Tensor, bias: torch.Tensor | None) -> Expectations:
    """The expectations a refit reads: Y is the reference output the moments hold, else the consumer's
    own, X W^T + b (weight [out, C] float64)."""
    rows = moments.rows
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    xx, x = moments.xtx / rows, moments.x_sum / rows
    if moments.xty is not None:
        return Expectations(xx, x, moments.xty / rows, moments.y_sum / rows, moments.yy / rows)
    b = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device) if bias is None else bias
    xy = xx @ weight.T + x[:, None] * b[None, :]
    yy = float((weight @ xx * weight).sum() + 2 * b @ (weight @ x) + b @ b)
    return Expectations(xx, x, xy, weight @ x + b, yy)


def normal_equations(t: Expectations, columns: torch.Tensor | None, *, centred: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """E[X_S^T X_S] and E[X_S^T Y] over `columns` (None: every column); centred (covariances) for a
    fit with an intercept, which then takes the means."""
    xx, xs, xy = t.xx, t.x, t.xy
    if columns is not None:
        xx, xs, xy = xx[columns][:, columns], xs[columns], xy[columns]
    if centred:
        xx, xy = xx - xs[:, None] * xs[None, :], xy - xs[:, None] * t.y[None, :]
    return xx, xy


def damping_of(xx: torch.Tensor, damping: float) -> float:
    """lambda: `damping` x the mean diagonal of the system (x 1 where that is 0: constant inputs)."""
    scale = float(xx.diagonal().mean()) if xx.numel() else 0.0
    return damping * (scale if scale > 0 else 1.0)


def _relative_error(t: Expectations, columns: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
    """E|Y - X_S weight^T - bias|^2 / E|Y|^2."""
    xx, xs, xy = t.xx[columns][:, columns], t.x[columns], t.xy[columns]
    cross = float((weight.T * xy).sum())  # E[Y . X_S weight^T]
    fitted = float((weight @ xx * weight).sum())  # E|X_S weight^T|^2
    if bias is not None:
        cross += float(bias @ t.y)
        fitted += float(2 * bias @ (weight @ xs) + bias @ bias)
    error = t.yy - 2 * cross + fitted
    return max(error, 0.0) / t.yy if t.yy > 0 else 0.0


def refit_consumer(moments: ConsumerMoments, weight: torch.Tensor, bias: torch.Tensor | None, columns: torch.Tensor,
                   *, damping: float, unit: str) -> Refit | None:
    """The refit of a consumer with weight [out, C] (its input columns flattened) and bias [out]
    (or None) restricted to `columns` (int64, sorted), or None where the system cannot be solved."""
    weight = weight.detach().to(torch.float64)
    bias = None if bias is None else bias.detach().to(torch.float64)
    columns = columns.to(weight.device)
    t = expectations(moments, weight, bias)
    xx, xy = normal_equations(t, columns, centred=bias is not None)
    xs = t.x[columns]
    lam = damping_of(xx, damping)
    xx = (xx + xx.T) / 2
    eye = torch.eye(columns.numel(), dtype=torch.float64, device=weight.device)
    fitted = None
    if bool(torch.isfinite(xx).all() and torch.isfinite(xy).all()):
        for _ in range(DAMPING_STEPS):
            factor, info = torch.linalg.cholesky_ex(xx + lam * eye)
            if int(info) == 0:
                fitted = torch.cholesky_solve(xy, factor).T  # [out, |S|]
                break
            lam *= 10
        else:  # rounding made the system indefinite beyond the damping: solve on its eigenvalues >= lambda
            try:
                values, vectors = torch.linalg.eigh(xx)
                fitted = (vectors @ ((vectors.T @ xy) / values.clamp_min(0).add(lam)[:, None])).T
            except torch.linalg.LinAlgError:  # LAPACK gives up on some degenerate systems
                fitted = None
    if fitted is None or not bool(torch.isfinite(fitted).all()):
        warnings.warn(f"greedyprune: the refit of unit {unit} cannot be solved (its input moments are not finite or "
                      "too degenerate to factor); its channels are removed without a refit", RuntimeWarning,
                      stacklevel=2)
        return None
    new_bias = None if bias is None else t.y - fitted @ xs
    return Refit(fitted, new_bias, _relative_error(t, columns, fitted, new_bias),
                 _relative_error(t, columns, weight[:, columns], bias), lam)
