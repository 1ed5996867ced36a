"""Gram of neuron contributions at a unit's consumer (docs/DESIGN.md §2.1).

Channel i's contribution sigma_i is N times what it adds to the consumer's output
(so the original output is sum_i sigma_i / N). For a consumer reading columns X
(rows = samples x positions; a block of s columns per channel: s = 1 for Linear,
k*k for a kxk conv through im2col, H*W for a Linear after a flatten) with weight W:
    G_ij = N^2 / rows * sum over block(i) x block(j) of (X^T X) * (W^T W).
The GEMM X^T X is streamed over batches; the small Hadamard/block-sum happens once.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..checks import arg_error
from .outputs import logits_of
from .surgery import Unit, UnitGraph


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the consumer's input is needed."""


def consumer_columns(consumer: nn.Module, x: torch.Tensor, positions_per_image: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The consumer's input as a [rows, in_columns] matrix (im2col for a conv, keeping at most
    `positions_per_image` random output positions per image)."""
    if isinstance(consumer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if consumer.padding_mode != "zeros" or isinstance(consumer.padding, str):
        raise ValueError(f"greedyprune: consumer {consumer} must use zero padding given as integers")
    cols = F.unfold(x, consumer.kernel_size, dilation=consumer.dilation, padding=consumer.padding, stride=consumer.stride)
    if positions_per_image is not None and cols.shape[2] > positions_per_image:
        pick = torch.randperm(cols.shape[2], generator=generator)[:positions_per_image].to(cols.device)
        cols = cols[:, :, pick]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _block_size(consumer: nn.Module, unit: Unit) -> int:
    if isinstance(consumer, nn.Linear):
        return unit.columns_per_channel
    return consumer.kernel_size[0] * consumer.kernel_size[1]


def gram_from_columns(xtx: torch.Tensor, rows: int, weight: torch.Tensor, channels: int) -> torch.Tensor:
    """G from the accumulated X^T X (float64), the row count and the consumer weight."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    s = w.shape[1] // channels
    # W^T W in float32 (a GEMM as big as X^T X, without the long row sum); the product in float64.
    prod = (xtx / max(rows, 1)) * (w.T @ w).double()
    return prod.view(channels, s, channels, s).sum(dim=(1, 3)) * float(channels) ** 2


def contribution_gram(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], *,
                      positions_per_image: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stream `batches` (model inputs) through the model up to the unit's consumer and
    return G [N, N] (float64). `positions_per_image` subsamples that many output positions
    of a conv consumer per image. Summed across ranks when torch.distributed is initialised."""
    return _stream(graph, unit, batches, positions_per_image, generator, keep_logits=False)[0]


def contribution_gram_and_logits(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], *,
                                 positions_per_image: int | None = None, generator: torch.Generator | None = None
                                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """As `contribution_gram`, with the forwards run on to the end: also every batch's logits
    (batch index -> logits of the model as it is), from the same pass."""
    return _stream(graph, unit, batches, positions_per_image, generator, keep_logits=True)


def _stream(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], positions_per_image: int | None,
            generator: torch.Generator | None, *, keep_logits: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    if positions_per_image is not None and positions_per_image < 1:
        raise arg_error("positions_per_image", f"must be >= 1, got {positions_per_image}")
    consumer = graph.module(unit.consumer)
    if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
        raise ValueError(f"greedyprune: consumer {unit.consumer} is a grouped conv; it cannot be a unit's consumer")
    n_cols = consumer.weight[0].numel()
    if n_cols != unit.channels * _block_size(consumer, unit):
        raise ValueError(f"greedyprune: consumer {unit.consumer} reads {n_cols} columns per output, "
                         f"not a whole block per channel of {unit.name}")
    xtx = torch.zeros(n_cols, n_cols, dtype=torch.float64, device=consumer.weight.device)
    rows = 0
    logits: dict[int, torch.Tensor] = {}

    def capture(_module, args):
        nonlocal rows
        x2 = consumer_columns(consumer, args[0].detach(), positions_per_image, generator).float()
        xtx.add_((x2.T @ x2).to(torch.float64))
        rows += x2.shape[0]
        if not keep_logits:
            raise _StopForward

    model = graph.model
    was_training = model.training
    model.eval()
    handle = consumer.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                try:
                    out = model(x.to(consumer.weight.device, non_blocking=True))
                except _StopForward:
                    continue
                logits[i] = logits_of(out)
    finally:
        handle.remove()
        model.train(was_training)
    distributed.all_reduce_sum(xtx)
    rows = int(distributed.sum_numbers(rows)[0])
    if rows == 0:
        raise arg_error("batches", "gave no data")
    return gram_from_columns(xtx, rows, consumer.weight, unit.channels), logits
