"""Second moments of a unit's consumer input, streamed batch by batch: what the Gram of
contributions (gram.py) and the least-squares refit (refit.py) are computed from, so no
activations are kept whatever the number of calibration images.

The consumer reads columns X (rows = samples x positions: the last dim of a Linear's input, or
im2col of a conv's, with at most `positions_per_image` random output positions per image). The
stream sums X^T X, the column sums of X and the rows. Given a reference model (the unpruned
network, same module names), it also runs the reference up to the same consumer and sums X^T Y,
the sums of Y and of |Y|^2, where Y is the reference consumer's output at the same rows: the
output a refit of the pruned consumer matches. Every sum is taken over the processes under
torchrun.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..checks import arg_error
from .outputs import logits_of
from .surgery import Unit, UnitGraph


@dataclass
class ConsumerMoments:
    """Sums over the consumer's input rows x (float64): xtx = sum x x^T [C, C], x_sum [C], rows;
    against a reference output y: xty = sum x y^T [C, out], y_sum [out], yy = sum |y|^2."""

    xtx: torch.Tensor
    x_sum: torch.Tensor
    rows: int
    xty: torch.Tensor | None = None
    y_sum: torch.Tensor | None = None
    yy: float | None = None


class _StopForward(Exception):
    """Raised by a capture hook: nothing after what it captured is needed."""


def _positions(count: int, positions_per_image: int | None, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor | None:
    """The output positions kept per image (None: all of them)."""
    if positions_per_image is None or count <= positions_per_image:
        return None
    return torch.randperm(count, generator=generator)[:positions_per_image].to(device)


def _unfold(consumer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A conv consumer's input as [B, in_columns, positions] (im2col)."""
    if consumer.padding_mode != "zeros" or isinstance(consumer.padding, str):
        raise ValueError(f"greedyprune: consumer {consumer} must use zero padding given as integers")
    return F.unfold(x, consumer.kernel_size, dilation=consumer.dilation, padding=consumer.padding,
                    stride=consumer.stride)


def consumer_columns(consumer: nn.Module, x: torch.Tensor, positions_per_image: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The consumer's input as a [rows, in_columns] matrix (im2col for a conv, keeping at most
    `positions_per_image` random output positions per image)."""
    if isinstance(consumer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = _unfold(consumer, x)
    pick = _positions(cols.shape[2], positions_per_image, generator, cols.device)
    if pick is not None:
        cols = cols[:, :, pick]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def columns_per_channel(consumer: nn.Module, unit: Unit) -> int:
    """How many of the consumer's input columns one of the unit's channels feeds (a block)."""
    if isinstance(consumer, nn.Linear):
        return unit.columns_per_channel
    return consumer.kernel_size[0] * consumer.kernel_size[1]


def _rows(consumer: nn.Module, x: torch.Tensor, y: torch.Tensor | None, positions_per_image: int | None,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The consumer's input columns [rows, C] and, given, the output y at the same rows [rows, out]."""
    if isinstance(consumer, nn.Linear):
        return x.reshape(-1, x.shape[-1]), None if y is None else y.reshape(-1, y.shape[-1])
    cols = _unfold(consumer, x)
    outputs = None if y is None else y.reshape(y.shape[0], y.shape[1], -1)  # [B, out, positions], as im2col's
    pick = _positions(cols.shape[2], positions_per_image, generator, cols.device)
    if pick is not None:
        cols = cols[:, :, pick]
        outputs = None if outputs is None else outputs[:, :, pick]
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return rows, None if outputs is None else outputs.transpose(1, 2).reshape(-1, outputs.shape[1])


def stream_moments(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], *,
                   positions_per_image: int | None = None, generator: torch.Generator | None = None,
                   keep_logits: bool = False, reference: nn.Module | None = None
                   ) -> tuple[ConsumerMoments, dict[int, torch.Tensor]]:
    """Stream `batches` (model inputs) through the model up to the unit's consumer (to the end
    with keep_logits: the returned dict then holds every batch's logits, batch index -> logits).
    With `reference`, each batch also runs through it up to its module of the consumer's name."""
    if positions_per_image is not None and positions_per_image < 1:
        raise arg_error("positions_per_image", f"must be >= 1, got {positions_per_image}")
    consumer = graph.module(unit.consumer)
    if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
        raise ValueError(f"greedyprune: consumer {unit.consumer} is a grouped conv; it cannot be a unit's consumer")
    n_cols = consumer.weight[0].numel()
    if n_cols != unit.channels * columns_per_channel(consumer, unit):
        raise ValueError(f"greedyprune: consumer {unit.consumer} reads {n_cols} columns per output, "
                         f"not a whole block per channel of {unit.name}")
    device = consumer.weight.device
    f64 = dict(dtype=torch.float64, device=device)
    moments = ConsumerMoments(torch.zeros(n_cols, n_cols, **f64), torch.zeros(n_cols, **f64), 0)
    if reference is not None:
        outputs = reference.get_submodule(unit.consumer).weight.shape[0]
        moments.xty, moments.y_sum, moments.yy = torch.zeros(n_cols, outputs, **f64), torch.zeros(outputs, **f64), 0.0
    logits: dict[int, torch.Tensor] = {}
    reference_output: list[torch.Tensor] = []

    def capture_output(_module, _args, output):
        reference_output.append(output.detach())
        raise _StopForward

    def capture_input(_module, args):
        y = reference_output.pop() if reference is not None else None
        x2, y2 = _rows(consumer, args[0].detach(), y, positions_per_image, generator)
        # each batch's GEMM in the model's precision (16-bit models in float32), summed in float64
        x2 = x2.to(torch.promote_types(x2.dtype, torch.float32))
        moments.xtx.add_((x2.T @ x2).to(torch.float64))
        moments.x_sum.add_(x2.sum(0).to(torch.float64))
        moments.rows += x2.shape[0]
        if y2 is not None:
            y2 = y2.to(x2.dtype)
            moments.xty.add_((x2.T @ y2).to(torch.float64))
            moments.y_sum.add_(y2.sum(0).to(torch.float64))
            moments.yy += float(y2.double().square().sum())
        if not keep_logits:
            raise _StopForward

    model = graph.model
    modes = [(m, m.training) for m in (model, reference) if m is not None]
    handles = [consumer.register_forward_pre_hook(capture_input)]
    if reference is not None:
        handles.append(reference.get_submodule(unit.consumer).register_forward_hook(capture_output))
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            for i, x in enumerate(batches):
                x = x.to(device, non_blocking=True)
                if reference is not None:
                    try:
                        reference(x)
                    except _StopForward:
                        pass
                try:
                    out = model(x)
                except _StopForward:
                    continue
                logits[i] = logits_of(out)
    finally:
        for handle in handles:
            handle.remove()
        for m, was_training in modes:
            m.train(was_training)
    return _summed_over_processes(moments), logits


def _summed_over_processes(moments: ConsumerMoments) -> ConsumerMoments:
    distributed.all_reduce_sum(moments.xtx)
    distributed.all_reduce_sum(moments.x_sum)
    rows, yy = distributed.sum_numbers(moments.rows, moments.yy or 0.0)
    moments.rows = int(rows)
    if moments.rows == 0:
        raise arg_error("batches", "gave no data")
    if moments.xty is not None:
        distributed.all_reduce_sum(moments.xty)
        distributed.all_reduce_sum(moments.y_sum)
        moments.yy = yy
    return moments
