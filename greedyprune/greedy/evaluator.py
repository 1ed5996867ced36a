"""The network discrepancy of gated units over calibration batches, within a memory budget.

Every quantity global imitation needs is a sum over images: the discrepancy of each candidate,
the Taylor scores. `SuffixEvaluator` accumulates them batch by batch (`suffix.BatchSuffix` does
one batch), so memory does not grow with the number of calibration images:
- candidates x images run in chunks that fit half of `memory_budget`;
- each batch's cached prefix is kept while the caches fit the other half, else recomputed;
- with `per_step=True` (Algorithm 1, line 4 of seed 000) each greedy step draws the next
  mini-batch (`advance`), so a step costs one batch whatever the calibration set's size.
Under torchrun every sum is also taken over the processes (each holding its share of the
calibration images), so all of them choose the same channels.
"""
from __future__ import annotations

import os

import torch

from .. import distributed, ops
from ..checks import arg_error
from .calibration import calibration_batches
from .forward_cache import Targets
from .outputs import NEEDS_LABELS, check_discrepancy
from .suffix import BatchSuffix
from .surgery import Unit, UnitGraph

_DEFAULT_BUDGET_CAP = 8 * 2 ** 30


def default_memory_budget(device: torch.device) -> int:
    """A quarter of the free memory of `device` (at most 8 GiB): what candidate chunks and
    prefix caches may take."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_host_memory()
    return int(min(free // 4, _DEFAULT_BUDGET_CAP))


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class SuffixEvaluator:
    """Discrepancy of the model with the unit's channels gated, against the model's own output
    before the gates (or `target`), averaged over the images of every calibration batch.

    data: a tensor (one batch) or an iterable of batches (see `calibration.calibration_batches`);
    labels: with a tensor, for kind "ce"; target: with a tensor, the logits to imitate, or the
    unit's `Targets` (per batch; the evaluator records those it computes). per_step: the
    step methods (`evaluate_steps`, `taylor_candidates`) use the current batch only; `advance`
    moves to the next one (cyclically). `evaluate` always covers every batch.
    memory_budget: bytes for candidate chunks and cached prefixes (default: a quarter of the
    free memory); max_rows caps K*B per suffix run.
    """

    def __init__(self, graph: UnitGraph, unit: Unit, data, *, kind: str = "kl", labels: torch.Tensor | None = None,
                 target: torch.Tensor | Targets | None = None, per_step: bool = False,
                 memory_budget: int | None = None, max_rows: int | None = None, use_fx: bool = True):
        check_discrepancy(kind)
        if max_rows is not None and max_rows < 1:
            raise arg_error("max_rows", f"must be >= 1, got {max_rows}")
        self.batches = calibration_batches(data, labels)
        if isinstance(target, torch.Tensor):
            if len(self.batches) != 1:
                raise arg_error("target", "goes with a tensor of inputs (one batch)")
            target = Targets({0: target})
        if kind in NEEDS_LABELS and any(y is None for _, y in self.batches):
            raise arg_error("labels", f"are needed for discrepancy {kind!r} (cross-entropy on true labels)")
        self.graph, self.unit, self.kind = graph, unit, kind
        self.channels = unit.channels
        self.per_step = per_step
        self.use_fx = use_fx
        self.max_rows = max_rows
        weight = graph.module(unit.consumer).weight
        self.device = weight.device
        self.memory_budget = default_memory_budget(self.device) if memory_budget is None else int(memory_budget)
        if self.memory_budget < 1:
            raise arg_error("memory_budget", f"must be >= 1 byte, got {memory_budget}")
        self.targets = Targets() if target is None else target  # logits before the gates, per batch
        self._engines: dict[int, BatchSuffix] = {}
        self.current = 0

    # ------------------------------------------------------------------ batches

    def advance(self) -> None:
        """Per-step mode: the next batch becomes the step batch (cyclically)."""
        if self.per_step and len(self.batches) > 1:
            self._engines.pop(self.current, None)
            self.current = (self.current + 1) % len(self.batches)

    def _step_indices(self) -> list[int]:
        return [self.current] if self.per_step else list(range(len(self.batches)))

    def _engine(self, index: int) -> BatchSuffix:
        engine = self._engines.get(index)
        if engine is None:
            x, y = self.batches[index]
            x = x.to(self.device, non_blocking=True)
            y = None if y is None else y.to(self.device, non_blocking=True)
            engine = BatchSuffix(self.graph, self.unit, x, kind=self.kind, labels=y, target=self.targets.get(index),
                                 max_rows=1, use_fx=self.use_fx)
            self.targets.record(index, engine.target)
            rows = max(1, (self.memory_budget // 2) // engine.row_bytes)
            engine.max_rows = min(rows, self.max_rows) if self.max_rows is not None else rows
            held = sum(e.cached_bytes for e in self._engines.values())
            if held + engine.cached_bytes <= self.memory_budget // 2 or not self._engines:
                self._engines[index] = engine
            elif self.per_step:
                self._engines = {index: engine}
        return engine

    def _mean(self, indices: list[int], per_batch) -> torch.Tensor:
        """The image-weighted mean of per_batch(engine) [K] over the batches `indices`."""
        total, images = None, 0
        for i in indices:
            engine = self._engine(i)
            value = per_batch(engine).to(torch.float64) * engine.batch
            total = value if total is None else total + value
            images += engine.batch
        distributed.all_reduce_sum(total)
        return total / distributed.sum_numbers(images)[0]

    # --------------------------------------------------------------- discrepancy

    @property
    def traced(self) -> bool:
        """Whether only the layers after the unit run per candidate (torch.fx traced the model)."""
        return self._engine(self.current).traced

    def evaluate(self, gates: torch.Tensor) -> torch.Tensor:
        """Discrepancy [K] of each row of gates [K, N] (or [N] -> [1]) over every batch."""
        return self._mean(list(range(len(self.batches))), lambda e: e.evaluate(gates))

    def evaluate_refit(self, fits) -> float:
        """Discrepancy over every batch with each reader refit on its input columns: fits holds
        (reader name, weight, bias, columns) per reader (suffix.BatchSuffix.evaluate_refit)."""
        return float(self._mean(list(range(len(self.batches))), lambda e: e.evaluate_refit(fits))[0])

    def evaluate_steps(self, a: torch.Tensor, gamma: float, candidates: torch.Tensor) -> torch.Tensor:
        """Discrepancy of the fixed-step moves N((1 - gamma) a + gamma e_i), i in candidates,
        over the step batches."""
        return self._mean(self._step_indices(), lambda e: e.evaluate_steps(a, gamma, candidates))

    def taylor_r(self, a: torch.Tensor) -> torch.Tensor:
        """r [N] (float64) of ops.taylor_scores at gates N a for the mean discrepancy over the step
        batches (and the processes under torchrun): each batch's r weighted by its images."""
        a32 = a.to(self.device, torch.float32)
        r, images = None, 0
        for i in self._step_indices():
            engine = self._engine(i)
            inputs = engine.taylor_inputs(a32 * self.channels)
            part = sum(_taylor_r(act, grad, a32) for act, grad in inputs) * engine.batch
            r = part if r is None else r + part
            images += engine.batch
        return distributed.all_reduce_sum(r) / distributed.sum_numbers(images)[0]

    def taylor_candidates(self, a: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """The k channels with the most negative Taylor score gr at gates N a over the step batches
        (ties: lowest index), leaving out `exclude` (bool [N])."""
        r = self.taylor_r(a)
        gr = r - (a.to(r) * r).sum()
        if exclude is not None:
            gr = gr.masked_fill(exclude.to(gr.device), float("inf"))
            k = min(k, int((~exclude).sum()))
        return torch.sort(gr, stable=True).indices[:k]


def _taylor_r(act: torch.Tensor, grad: torch.Tensor, a32: torch.Tensor) -> torch.Tensor:
    """One reader's Taylor sums r (float64) in the activations' dtype, 16-bit ones (autocast
    forwards) in float32."""
    dtype = torch.float32 if act.dtype in (torch.float16, torch.bfloat16) else act.dtype
    return ops.taylor_scores(act.to(dtype), grad.to(dtype), a32.to(dtype), 0).r.to(torch.float64)
