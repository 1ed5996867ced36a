"""Calibration data as (inputs, labels or None) batches: from a tensor, a sequence of batches read
on demand (never held whole, so memory does not grow with the calibration set), or another
iterable (a DataLoader), read once and kept."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from ..checks import arg_error

Batch = tuple[torch.Tensor, torch.Tensor | None]


def calibration_batches(data, labels: torch.Tensor | None = None) -> Sequence[Batch]:
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


def _pair(batch) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
    raise arg_error("calib", f"must yield tensors or (inputs, labels) batches, got {type(batch).__name__}")


class ReadOnDemand(Sequence):
    """A sequence whose item i is read (`_read(i)`) each time it is asked for; slices give lists."""

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(j) for j in range(*i.indices(len(self)))]
        return self._read(i)


class CalibrationBatches(ReadOnDemand):
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


class InputsOf(ReadOnDemand):
    """The inputs of each (inputs, labels) batch of a sequence, read on demand."""

    def __init__(self, batches: Sequence):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, i):
        return self.batches[i][0]
