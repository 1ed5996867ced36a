"""Calibration batches given as dicts of keyword inputs (Hugging Face's `input_ids`,
`attention_mask`, `pixel_values`, ...), as tokenizers and data collators make them.

Everything that streams calibration data cuts, repeats and moves one tensor per batch, so a dict
batch is packed into one tensor, its inputs stacked on dim 1 ([B, keys, ...]: the keys must share
shape and dtype), and while pruning runs a forward pre-hook on the model unpacks it into the
keyword arguments again. A "labels" entry is the batch's labels. Module names stay the model's.
The attention mask reaches the model, but padded positions count in the Grams and discrepancies
like the others: calibrate on unpadded (packed or equal-length) sequences where that matters.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..checks import arg_error
from .calibration import ReadOnDemand, is_sequence

LABELS = "labels"


def _input_keys(batch: Mapping, argument: str) -> tuple[str, ...]:
    keys = tuple(k for k, v in batch.items() if k != LABELS and v is not None)
    if not keys:
        raise arg_error(argument, "dict batches must hold at least one input besides 'labels'")
    first = batch[keys[0]]
    for key in keys:
        value = batch[key]
        if not isinstance(value, torch.Tensor):
            raise arg_error(argument, f"dict batches must hold tensors; {key!r} is a {type(value).__name__}")
        if value.shape != first.shape or value.dtype != first.dtype:
            raise arg_error(argument, f"the inputs of a dict batch must share shape and dtype to be packed: "
                                      f"{keys[0]!r} is {tuple(first.shape)} {first.dtype}, {key!r} is "
                                      f"{tuple(value.shape)} {value.dtype}")
    return keys


def _packed(batch, keys: tuple[str, ...], argument: str):
    if not isinstance(batch, Mapping):
        raise arg_error(argument, f"mixes dict batches with {type(batch).__name__} batches")
    if _input_keys(batch, argument) != keys:
        raise arg_error(argument, f"dict batches must all have the keys {list(keys)}, got {list(batch)}")
    inputs = torch.stack([batch[k] for k in keys], dim=1)
    labels = batch.get(LABELS)
    return inputs if labels is None else (inputs, labels)


class _PackedSequence(ReadOnDemand):
    """A sequence of dict batches, packed when read (read on demand like the source)."""

    def __init__(self, source: Sequence, keys: tuple[str, ...], argument: str):
        self.source, self.keys, self.argument = source, keys, argument

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, i):
        return _packed(self.source[i], self.keys, self.argument)


def pack_keyword_batches(data, argument: str = "calib", keys: tuple[str, ...] | None = None):
    """(data with every dict batch packed, the keys) where `data` is a dict batch or holds dict
    batches; (data, `keys`) as it is otherwise. With `keys`, dict batches must have those keys."""
    if data is None or isinstance(data, torch.Tensor):
        return data, keys
    if isinstance(data, Mapping):
        keys = keys or _input_keys(data, argument)
        return [_packed(data, keys, argument)], keys
    if is_sequence(data):
        if len(data) == 0 or not isinstance(data[0], Mapping):
            return data, keys
        keys = keys or _input_keys(data[0], argument)
        return _PackedSequence(data, keys, argument), keys
    if not isinstance(data, Iterable):
        return data, keys
    batches = list(data)  # an iterable is read once either way (calibration.calibration_batches)
    if not batches or not isinstance(batches[0], Mapping):
        return batches, keys
    keys = keys or _input_keys(batches[0], argument)
    return [_packed(b, keys, argument) for b in batches], keys


@contextlib.contextmanager
def keyword_inputs(model: nn.Module, keys: tuple[str, ...] | None):
    """For the duration of the block, calling `model` on a packed tensor calls it with the keyword
    inputs it packs (nothing changes with keys None)."""
    if keys is None:
        yield
        return

    def unpack(_module, args, kwargs):
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return None
        packed = args[0]
        return (), {key: packed[:, i] for i, key in enumerate(keys)}

    handle = model.register_forward_pre_hook(unpack, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
