"""Greedy local imitation of one unit (seed 000, section 2.1): the whole greedy path with
the closed-form line search runs in one `greedy_local` op call on the Gram of contributions."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from .. import ops
from ..checks import arg_error
from .criterion import Criterion, UnitContext
from .evaluator import SuffixEvaluator
from .selection import Selection


class LocalImitation(Criterion):
    """Local imitation: the closed-form greedy path on the Gram of the unit's contributions to its
    consumer. It needs the network discrepancy only to meet a tolerance (or to report its loss)."""

    name = "local"
    needs_gram = True

    def needs_evaluator(self, config) -> bool:
        return not config.fill

    def select(self, context: UnitContext) -> Selection:
        config = context.config
        if not context.measure_network:  # its loss would be the consumer's, not the network's: left to the export
            chosen = local_imitation(context.gram, max_neurons=context.max_neurons, fill=config.fill)
            return replace(chosen, loss=None)
        return local_imitation(context.gram, max_neurons=context.max_neurons, tol=config.tol, fill=config.fill,
                               evaluator=context.evaluator)


def local_imitation(G: torch.Tensor, *, max_neurons: int, evaluator: SuffixEvaluator | None = None,
                    tol: float | None = None, fill: bool = False, max_steps: int | None = None) -> Selection:
    """Prune with local imitation.

    Without `tol`: the greedy path up to `max_neurons` channels (or until no step improves, or
    max_steps steps: the op's default, 64 * max_neurons). fill: max_neurons is a
    width to reach: a path that ends short of it is completed by forced steps that each add the
    unused channel with the lowest local loss at step max(its optimal gamma, 1/(k+1)).
    With `tol` and an evaluator: the fewest channels along the path whose network discrepancy
    is <= tol (bisection over the path length; the path is a prefix of the longer ones), capped
    at max_neurons. The result's loss is the network discrepancy when an evaluator is given,
    else the local (consumer-output) discrepancy.
    """
    n = G.shape[0]
    if not 1 <= max_neurons <= n:
        raise arg_error("max_neurons", f"must be in [1, {n}], got {max_neurons}")
    if tol is not None and evaluator is None:
        raise arg_error("tol", "needs an 'evaluator' (network discrepancy)")
    start = time.perf_counter()
    timing = {"select": 0.0, "evaluate": 0.0}

    def path(width: int):
        t = time.perf_counter()
        p = ops.greedy_local(G, max_neurons=width, max_steps=max_steps)
        timing["select"] += time.perf_counter() - t
        return p

    def network_loss(a: torch.Tensor) -> float:
        t = time.perf_counter()
        loss = float(evaluator.evaluate((a * n).float())[0])
        timing["evaluate"] += time.perf_counter() - t
        return loss

    best = path(max_neurons)
    width = int((best.a > 0).sum())
    stop = "width" if width >= max_neurons else "step cap" if best.capped else "no improvement"
    filled = 0
    if fill and width < max_neurons and tol is None:
        t = time.perf_counter()
        best = best._replace(a=_fill(G, best.a.double(), max_neurons))
        timing["select"] += time.perf_counter() - t
        filled = max_neurons - width
        stop += ", filled"
    if tol is not None:
        loss = network_loss(best.a)
        if loss <= tol:
            lo, hi = 1, int((best.a > 0).sum())
            while lo < hi:
                mid = (lo + hi) // 2
                cand = path(mid)
                cand_loss = network_loss(cand.a)
                if cand_loss <= tol:
                    hi, best, loss = mid, cand, cand_loss
                else:
                    lo = mid + 1
            stop = "tol"
    elif evaluator is not None:
        loss = network_loss(best.a)
    else:
        loss = float(best.losses[-1]) if best.losses.numel() else float("nan")
    timing["total"] = time.perf_counter() - start
    return Selection("local", best.a.double(), loss, int(best.order.numel()) + filled, [float(x) for x in best.losses],
                     timing, stop=stop, filled=filled)


def _fill(G: torch.Tensor, a: torch.Tensor, width: int) -> torch.Tensor:
    """Add unused channels to `a` until it has `width`, each by the step of the line search
    (seed 000 eq. 4) restricted to gamma >= 1/(k+1), so every added channel gets a real weight."""
    G = G.double()
    n = G.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=G.device)
    a = a.to(G.device)
    v = G @ w
    diag = torch.diagonal(G)
    while int((a > 0).sum()) < width:
        k = int((a > 0).sum())
        u = G @ a
        aGa, aGw = float(a @ u), float(a @ v)
        rd = (u - v) - (aGa - aGw)
        dd = (diag - 2 * u + aGa).clamp_min(1e-30)
        gamma = (-rd / dd).clamp(1.0 / (k + 1), 1.0)
        loss = 2 * gamma * rd + gamma.square() * dd  # + ||r||^2, the same for every candidate
        loss = loss.masked_fill(a > 0, float("inf"))
        i = int(torch.argmin(loss))
        g = float(gamma[i])
        a = (1 - g) * a
        a[i] += g
    return a
