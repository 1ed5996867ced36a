"""Greedy global imitation of one unit (seed 000, section 2.2) and the authors' released
fixed-step forward selection (the baseline).

Both grow a = counts / (k + 1) with the fixed step gamma_k = 1 / (k + 1), scoring
candidates by the discrepancy of the whole network's output. Global imitation evaluates
every candidate exactly while nnz(a) <= exact_until, then only the `taylor_top` with the
most negative Taylor score (the directional derivative from `ops.taylor_scores`).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..checks import arg_error
from .criterion import Criterion, UnitContext
from .evaluator import SuffixEvaluator
from .selection import Selection

# The default step cap per allowed channel: steps that re-weight a kept channel add none.
STEPS_PER_NEURON = 4


class GlobalImitation(Criterion):
    """Global imitation: fixed steps scored by the network discrepancy of gated candidates,
    exactly while the unit is small, by Taylor scores and an exact re-check after."""

    name = "global"

    def progress_total(self, max_neurons: int) -> int:
        return STEPS_PER_NEURON * max_neurons

    def select(self, context: UnitContext) -> Selection:
        config = context.config
        return global_imitation(context.evaluator, max_neurons=context.max_neurons, tol=config.tol,
                                exact_until=config.exact_until,
                                # a unit narrower than taylor_top re-checks every channel
                                taylor_top=min(config.taylor_top, context.unit.channels), fill=config.fill,
                                progress=context.progress)


class ForwardSelection(GlobalImitation):
    """The authors' released forward selection (GFS): every candidate scored exactly on the
    cross-entropy of true labels."""

    name = "gfs"
    needs_labels = True

    def discrepancy_kind(self, config) -> str:
        return "ce"

    def select(self, context: UnitContext) -> Selection:
        config = context.config
        return forward_selection(context.evaluator, max_neurons=context.max_neurons, tol=config.tol, fill=config.fill,
                                 progress=context.progress)


def global_imitation(evaluator: SuffixEvaluator, *, max_neurons: int, tol: float | None = None,
                     exact_until: int = 25, taylor_top: int = 5, max_steps: int | None = None,
                     fill: bool = False, progress=None, method: str = "global",
                     on_step: Callable[[torch.Tensor], None] | None = None) -> Selection:
    """Stop when the discrepancy <= tol, nnz(a) reaches max_neurons, or after max_steps
    steps (default STEPS_PER_NEURON * max_neurons; steps that re-weight a kept channel add none).

    fill: max_neurons is a width to reach, not a cap: when max_steps ends the path short of it,
    every further step adds the best channel not yet kept, until nnz(a) = max_neurons (or tol
    is met). The result's `stop` says which rule ended the path; `filled` counts the forced
    additions. `progress` (a tqdm bar or None) is advanced per step; `on_step` is called with the
    path's a (float64 [N]) after every step, the first included.
    With a per-step evaluator a step's loss is on one mini-batch; tol counts as met only when
    the loss over all calibration images meets it too (a lucky mini-batch does not end the path)."""
    n = evaluator.channels
    if not 1 <= max_neurons <= n:
        raise arg_error("max_neurons", f"must be in [1, {n}], got {max_neurons}")
    if exact_until < 0:
        raise arg_error("exact_until", f"must be >= 0, got {exact_until}")
    if not 1 <= taylor_top <= n:
        raise arg_error("taylor_top", f"must be in [1, {n}], got {taylor_top}")
    max_steps = STEPS_PER_NEURON * max_neurons if max_steps is None else max_steps
    if max_steps < 1:
        raise arg_error("max_steps", f"must be >= 1, got {max_steps}")
    timing = {"evaluate": 0.0, "taylor": 0.0}
    start = time.perf_counter()
    device = evaluator.device
    everyone = torch.arange(n, device=device)

    def evaluate(a, gamma, candidates):
        t = time.perf_counter()
        out = evaluator.evaluate_steps(a, gamma, candidates)
        timing["evaluate"] += time.perf_counter() - t
        return out

    def meets_tol(step_loss: float) -> bool:
        if tol is None or step_loss > tol:
            return False
        if not evaluator.per_step:
            return True
        t = time.perf_counter()
        whole = float(evaluator.evaluate(counts / steps * n)[0])
        timing["evaluate"] += time.perf_counter() - t
        return whole <= tol

    # Step 0: the best single channel (gates N e_i).
    evaluator.advance()
    losses = evaluate(torch.zeros(n, dtype=torch.float64, device=device), 1.0, everyone)
    best = int(torch.argmin(losses))
    counts = torch.zeros(n, dtype=torch.float64, device=device)
    counts[best] = 1
    loss = float(losses[best])
    path = [loss]
    steps, filled = 1, 0
    if on_step is not None:
        on_step(counts / steps)
    while not meets_tol(loss) and int((counts > 0).sum()) < max_neurons:
        forced = steps >= max_steps
        if forced and not fill:
            break
        a = counts / steps
        gamma = 1.0 / (steps + 1)
        evaluator.advance()
        if int((counts > 0).sum()) <= exact_until:
            candidates = everyone[counts == 0] if forced else everyone
        else:
            t = time.perf_counter()  # forced: the steepest channels among those not kept yet
            candidates = evaluator.taylor_candidates(a, taylor_top, exclude=(counts > 0) if forced else None)
            timing["taylor"] += time.perf_counter() - t
        losses = evaluate(a, gamma, candidates)
        pick = int(torch.argmin(losses))
        counts[candidates[pick]] += 1
        loss = float(losses[pick])
        path.append(loss)
        steps += 1
        filled += forced
        if on_step is not None:
            on_step(counts / steps)
        if progress is not None:
            progress.update(1)
    if evaluator.per_step:  # the path's losses are each on one mini-batch; report all of them
        t = time.perf_counter()
        loss = float(evaluator.evaluate(counts / steps * n)[0])
        timing["evaluate"] += time.perf_counter() - t
    timing["total"] = time.perf_counter() - start
    width = int((counts > 0).sum())
    stop = ("tol" if tol is not None and loss <= tol else "width" if width >= max_neurons and not filled
            else "step cap, filled" if filled else "step cap")
    return Selection(method, counts / steps, loss, steps, path, timing, stop=stop, filled=filled)


def forward_selection(evaluator: SuffixEvaluator, *, max_neurons: int, tol: float | None = None,
                      max_steps: int | None = None, fill: bool = False, progress=None) -> Selection:
    """The authors' released method (GFS): fixed step 1/(k+1), every candidate scored
    exactly, on the evaluator's loss (they use cross-entropy on true labels: kind "ce")."""
    return global_imitation(evaluator, max_neurons=max_neurons, tol=tol, exact_until=evaluator.channels,
                            taylor_top=1, max_steps=max_steps, fill=fill, progress=progress, method="gfs")
