"""Greedy local imitation of one unit (seed 000, section 2.1): the whole greedy path with
the closed-form line search runs in one `greedy_local` op call on the Gram of contributions."""
from __future__ import annotations

import time

import torch

from .. import ops
from .selection import Selection
from .suffix import SuffixEvaluator


def local_imitation(G: torch.Tensor, *, max_neurons: int, evaluator: SuffixEvaluator | None = None,
                    tol: float | None = None) -> Selection:
    """Prune with local imitation.

    Without `tol`: the greedy path up to `max_neurons` channels (or until no step improves).
    With `tol` and an evaluator: the fewest channels along the path whose network discrepancy
    is <= tol (bisection over the path length; the path is a prefix of the longer ones), capped
    at max_neurons. The result's loss is the network discrepancy when an evaluator is given,
    else the local (consumer-output) discrepancy.
    """
    n = G.shape[0]
    if not 1 <= max_neurons <= n:
        raise ValueError(f"greedyprune: argument 'max_neurons' must be in [1, {n}], got {max_neurons}")
    if tol is not None and evaluator is None:
        raise ValueError("greedyprune: argument 'tol' needs an 'evaluator' (network discrepancy)")
    start = time.perf_counter()
    timing = {"select": 0.0, "evaluate": 0.0}

    def path(width: int):
        t = time.perf_counter()
        p = ops.greedy_local(G, max_neurons=width)
        timing["select"] += time.perf_counter() - t
        return p

    def network_loss(a: torch.Tensor) -> float:
        t = time.perf_counter()
        loss = float(evaluator.evaluate((a * n).float())[0])
        timing["evaluate"] += time.perf_counter() - t
        return loss

    best = path(max_neurons)
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
    elif evaluator is not None:
        loss = network_loss(best.a)
    else:
        loss = float(best.losses[-1]) if best.losses.numel() else float("nan")
    timing["total"] = time.perf_counter() - start
    return Selection("local", best.a.double(), loss, int(best.order.numel()), [float(x) for x in best.losses], timing)
