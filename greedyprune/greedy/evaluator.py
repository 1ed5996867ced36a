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
from collections.abc import Iterable, Mapping, Sequence

import torch

from .. import distributed, ops
from ..checks import arg_error
from .suffix import DISCREPANCIES, NEEDS_LABELS, BatchSuffix, discrepancy, logits_of
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


def calibration_batches(data, labels: torch.Tensor | None = None) -> Sequence[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs, labels or None) batches from a tensor (one batch, with `labels`), a sequence of
    batches (read on demand, see `CalibrationBatches`), or another iterable of input tensors or
    (inputs, labels, ...) batches (e.g. a DataLoader: read once and kept)."""
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise arg_error("calib", f"must hold at least one sample, got shape {tuple(data.shape)}")
        if labels is not None and labels.shape[0] != data.shape[0]:
            raise arg_error("labels", f"must have one label per sample ({data.shape[0]}), got {labels.shape[0]}")
        return [(data, labels)]
    if labels is not None:
        raise arg_error("labels", "goes with a tensor of inputs; batches carry their own labels")
    if is_sequence(data):
        if len(data) == 0:
            raise arg_error("calib", "yielded no batch")
        return CalibrationBatches(data)
    if not isinstance(data, Iterable):
        raise arg_error("calib", f"must be a tensor or an iterable of batches, got {type(data).__name__}")
    batches = [_pair(batch) for batch in data]
    if not batches:
        raise arg_error("calib", "yielded no batch")
    return batches


def is_sequence(data) -> bool:
    """Whether `data` can be read again by index: a list, tuple or any object with len() and [i]."""
    return isinstance(data, Sequence) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")
                                          and not isinstance(data, (Mapping, str, bytes, torch.Tensor)))


def _pair(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise arg_error("calib", f"must yield tensors or (inputs, labels) batches, got {type(batch).__name__}")


class _ReadOnDemand(Sequence):
    """A sequence whose item i is read (`_read(i)`) each time it is asked for; slices give lists."""

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(j) for j in range(*i.indices(len(self)))]
        return self._read(i)


class CalibrationBatches(_ReadOnDemand):
    """(inputs, labels or None) batches read from `source` (a sequence of batches) when asked for
    and not kept, so memory does not grow with the calibration set; with `step`, every source
    batch is cut into mini-batches of that many images (the sizes are read once, up front)."""

    def __init__(self, source: Sequence, step: int | None = None):
        self.source = source
        if step is None:
            self.index = [(i, 0, None) for i in range(len(source))]
        else:
            sizes = [_pair(source[i])[0].shape[0] for i in range(len(source))]
            self.index = [(i, start, step) for i, size in enumerate(sizes) for start in range(0, size, step)]

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, i):
        which, start, step = self.index[i]
        x, y = _pair(self.source[which])
        if step is None:
            return x, y
        return x[start:start + step], None if y is None else y[start:start + step]


class InputsOf(_ReadOnDemand):
    """The inputs of each (inputs, labels) batch of a sequence, read on demand."""

    def __init__(self, batches: Sequence):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, i):
        return self.batches[i][0]


class SuffixEvaluator:
    """Discrepancy of the model with the unit's channels gated, against the model's own output
    before the gates (or `target`), averaged over the images of every calibration batch.

    data: a tensor (one batch) or an iterable of batches (see `calibration_batches`); labels:
    with a tensor, for kind "ce"; target: with a tensor, the logits to imitate. per_step: the
    step methods (`evaluate_steps`, `taylor_candidates`) use the current batch only; `advance`
    moves to the next one (cyclically). `evaluate` always covers every batch.
    memory_budget: bytes for candidate chunks and cached prefixes (default: a quarter of the
    free memory); max_rows caps K*B per suffix run.
    """

    def __init__(self, graph: UnitGraph, unit: Unit, data, *, kind: str = "kl", labels: torch.Tensor | None = None,
                 target: torch.Tensor | None = None, per_step: bool = False, memory_budget: int | None = None,
                 max_rows: int | None = None, use_fx: bool = True):
        if kind not in DISCREPANCIES:
            raise arg_error("discrepancy", f"must be one of {DISCREPANCIES}, got {kind!r}")
        if max_rows is not None and max_rows < 1:
            raise arg_error("max_rows", f"must be >= 1, got {max_rows}")
        self.batches = calibration_batches(data, labels)
        if target is not None and len(self.batches) != 1:
            raise arg_error("target", "goes with a tensor of inputs (one batch)")
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
        self._target = target
        self._targets: dict[int, torch.Tensor] = {}  # logits before the gates, per batch (small)
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
            engine = BatchSuffix(self.graph, self.unit, x, kind=self.kind, labels=y,
                                 target=self._targets.get(index, self._target), max_rows=1, use_fx=self.use_fx)
            self._targets.setdefault(index, engine.target)
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
            act, grad = engine.taylor_inputs(a32 * self.channels)
            part = ops.taylor_scores(act, grad, a32.to(act.dtype), 0).r.to(torch.float64) * engine.batch
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

    def record_targets(self, targets: dict[int, torch.Tensor] | None = None) -> None:
        """Record the logits to imitate for every batch without evaluating any gates: `targets`
        (batch index -> logits of the model as it is now, e.g. the previous unit's `logits_now`),
        or one forward of the model over every batch."""
        if targets is not None:
            self._targets.update(targets)
            return
        with torch.no_grad():
            for i in range(len(self.batches)):
                self._targets[i] = logits_of(self.graph.model(self.batches[i][0].to(self.device)))

    def discrepancy_now(self) -> float:
        """The discrepancy of the model as it is now (no gates) from the logits recorded before
        the unit was touched, over every batch visited so far (one forward of each). Its logits
        stay in `logits_now`."""
        with torch.no_grad():
            logits = {i: logits_of(self.graph.model(self.batches[i][0].to(self.device))) for i in self._targets}
        return self.discrepancy_of(logits)

    def discrepancy_of(self, logits: Mapping[int, torch.Tensor]) -> float:
        """As `discrepancy_now`, from the model's logits already computed (batch index -> logits,
        e.g. by the next unit's Gram pass); they stay in `logits_now`."""
        missing = sorted(set(self._targets) - set(logits))
        if missing:
            raise ValueError(f"greedyprune: logits of calibration batches {missing[:5]} are missing")
        self.logits_now = dict(logits)
        total, images = 0.0, 0
        for i, target in self._targets.items():
            out = self.logits_now[i]
            y = self.batches[i][1] if self.kind in NEEDS_LABELS else None  # loads the batch only for its labels
            y = None if y is None else y.to(self.device)
            total += float(discrepancy(out.unsqueeze(0), target, self.kind, y)[0]) * out.shape[0]
            images += out.shape[0]
        total, images = distributed.sum_numbers(total, images)
        return total / images
