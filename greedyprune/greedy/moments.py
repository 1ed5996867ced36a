"""Second moments of the input of each of a unit's readers (its consumers), streamed batch by
batch: what the Gram of contributions (gram.py) and the least-squares refit (refit.py) are
computed from, so no activations are kept whatever the number of calibration images.

Each reader reads columns X (rows = samples x positions: the last dim of a Linear's input, or
im2col of a conv's, with at most `positions_per_image` random output positions per image). The
stream sums X^T X, the column sums of X and the rows. Given a reference model (the unpruned
network, same module names), it also runs the reference up to the same consumer and sums X^T Y,
the sums of Y and of |Y|^2, where Y is the reference consumer's output at the same rows: the
output a refit of the pruned consumer matches. A residual stream's readers are streamed in the
same pass. Every sum is taken over the processes under torchrun.
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
from .precision import exact
from .surgery import Reader, Unit, UnitGraph


@dataclass
class ConsumerMoments:
    """Sums over one reader's input rows x (float64): xtx = sum x x^T [C, C], x_sum [C], rows;
    against a reference output y: xty = sum x y^T [C, out], y_sum [out], yy = sum |y|^2.
    positions: the reader's output positions per image (all of them, before any subsampling)."""

    xtx: torch.Tensor
    x_sum: torch.Tensor
    rows: int
    positions: int = 1
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


def columns_per_channel(consumer: nn.Module, reader: Reader) -> int:
    """How many of the reader's input columns (im2col's for a conv) one channel feeds (a block)."""
    if isinstance(consumer, nn.Linear):
        return reader.columns_per_channel
    return consumer.kernel_size[0] * consumer.kernel_size[1]


def kept_columns(kept: torch.Tensor, block: int) -> torch.Tensor:
    """The flat input columns (as the moments order them: im2col, a block per channel) of the kept
    channels, `block` each."""
    return (kept[:, None] * block + torch.arange(block, device=kept.device)).flatten()


def reader_columns(reader: Reader, consumer: nn.Module, kept: torch.Tensor, channels: int) -> torch.Tensor:
    """The reader's flat input columns left when its unit (of `channels`) keeps `kept` (sorted): those
    of the kept channels and, through a concat, those of the other layers' channels."""
    return kept_columns(reader.input_channels(kept, channels), columns_per_channel(consumer, reader))


def unit_columns(reader: Reader, consumer: nn.Module, channels: int) -> slice:
    """The reader's flat input columns that its unit's `channels` feed (all of them but through a concat)."""
    if reader.window is None:
        return slice(None)
    block, offset = columns_per_channel(consumer, reader), reader.window.offset
    return slice(offset * block, (offset + channels) * block)


def reader_weights(moments: list[ConsumerMoments]) -> list[float]:
    """How a unit's readers' errors add up: each reader's output positions per image relative to the
    first reader's, so the sum is of squared output errors per image (gram.py, refit_selection.py)."""
    return [m.positions / moments[0].positions for m in moments]


def _rows(consumer: nn.Module, x: torch.Tensor, y: torch.Tensor | None, positions_per_image: int | None,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The consumer's input columns [rows, C], given y the output at the same rows [rows, out], and
    the consumer's output positions per image (before any subsampling)."""
    if isinstance(consumer, nn.Linear):
        return (x.reshape(-1, x.shape[-1]), None if y is None else y.reshape(-1, y.shape[-1]),
                max(1, x[0].numel() // x.shape[-1]))
    cols = _unfold(consumer, x)
    positions = cols.shape[2]
    outputs = None if y is None else y.reshape(y.shape[0], y.shape[1], -1)  # [B, out, positions], as im2col's
    pick = _positions(positions, positions_per_image, generator, cols.device)
    if pick is not None:
        cols = cols[:, :, pick]
        outputs = None if outputs is None else outputs[:, :, pick]
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return rows, None if outputs is None else outputs.transpose(1, 2).reshape(-1, outputs.shape[1]), positions


def stream_moments(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], *,
                   positions_per_image: int | None = None, generator: torch.Generator | None = None,
                   keep_logits: bool = False, reference: nn.Module | None = None
                   ) -> tuple[list[ConsumerMoments], dict[int, torch.Tensor]]:
    """Stream `batches` (model inputs) through the model up to the unit's last reader (to the end
    with keep_logits: the returned dict then holds every batch's logits, batch index -> logits).
    Returns one ConsumerMoments per reader (unit.readers' order). With `reference`, each batch also
    runs through it up to its modules of the readers' names."""
    if positions_per_image is not None and positions_per_image < 1:
        raise arg_error("positions_per_image", f"must be >= 1, got {positions_per_image}")
    streams = [_ReaderStream(graph, unit, reader, reference, positions_per_image, generator)
               for reader in unit.readers]
    # the readers this batch has not reached yet, in the model and in the reference
    waiting, reference_waiting = set(), set()
    logits: dict[int, torch.Tensor] = {}

    def stop_when_done(index: int, pending: set, stop: bool = True):
        pending.discard(index)
        if not pending and stop:
            raise _StopForward

    model = graph.model
    modes = [(m, m.training) for m in (model, reference) if m is not None]
    handles = []
    for index, stream in enumerate(streams):
        handles += stream.hooks(lambda index=index: stop_when_done(index, waiting, not keep_logits),
                                lambda index=index: stop_when_done(index, reference_waiting))
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad():
            for i, x in enumerate(batches):
                x = x.to(streams[0].device, non_blocking=True)
                if reference is not None:
                    reference_waiting.update(range(len(streams)))
                    _run_until_stopped(reference, x)
                waiting.update(range(len(streams)))
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
    return [_summed_over_processes(stream.moments) for stream in streams], logits


def _run_until_stopped(model: nn.Module, x: torch.Tensor) -> None:
    try:
        model(x)
    except _StopForward:
        pass


class _ReaderStream:
    """The sums of one reader's input (and of the reference reader's output at the same rows)."""

    def __init__(self, graph: UnitGraph, unit: Unit, reader: Reader, reference: nn.Module | None,
                 positions_per_image: int | None, generator: torch.Generator | None):
        consumer = graph.module(reader.name)
        if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
            raise ValueError(f"greedyprune: reader {reader.name} is a grouped conv; it cannot read a unit's channels")
        n_cols = consumer.weight[0].numel()
        inputs = unit.channels if reader.window is None else reader.window.inputs
        if n_cols != inputs * columns_per_channel(consumer, reader):
            raise ValueError(f"greedyprune: reader {reader.name} reads {n_cols} columns per output, "
                             f"not a whole block per channel of {unit.name}")
        self.consumer, self.reader, self.reference = consumer, reader, reference
        self.positions_per_image, self.generator = positions_per_image, generator
        self.device = consumer.weight.device
        f64 = dict(dtype=torch.float64, device=self.device)
        self.moments = ConsumerMoments(torch.zeros(n_cols, n_cols, **f64), torch.zeros(n_cols, **f64), 0)
        if reference is not None:
            outputs = reference.get_submodule(reader.name).weight.shape[0]
            self.moments.xty = torch.zeros(n_cols, outputs, **f64)
            self.moments.y_sum, self.moments.yy = torch.zeros(outputs, **f64), 0.0
        self.reference_output: list[torch.Tensor] = []

    def hooks(self, reached, reference_reached) -> list:
        """Register the capture hooks; `reached()` / `reference_reached()` are called when the
        model's / the reference's reader has run (they may stop the forward)."""
        def capture_input(_module, args):
            self.add(args[0].detach())
            reached()

        def capture_output(_module, _args, output):
            self.reference_output.append(output.detach())
            reference_reached()

        handles = [self.consumer.register_forward_pre_hook(capture_input)]
        if self.reference is not None:
            handles.append(self.reference.get_submodule(self.reader.name).register_forward_hook(capture_output))
        return handles

    def add(self, x: torch.Tensor) -> None:
        moments = self.moments
        y = self.reference_output.pop() if self.reference is not None else None
        x2, y2, moments.positions = _rows(self.consumer, x, y, self.positions_per_image, self.generator)
        # each batch's GEMM in the model's precision (16-bit models and autocast forwards in
        # float32), summed in float64
        x2 = x2.to(torch.promote_types(x2.dtype, torch.float32))
        with exact(x2.device):
            moments.xtx.add_((x2.T @ x2).to(torch.float64))
            moments.x_sum.add_(x2.sum(0).to(torch.float64))
            moments.rows += x2.shape[0]
            if y2 is not None:
                y2 = y2.to(x2.dtype)
                moments.xty.add_((x2.T @ y2).to(torch.float64))
                moments.y_sum.add_(y2.sum(0).to(torch.float64))
                moments.yy += float(y2.double().square().sum())


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
