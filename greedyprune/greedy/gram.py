"""Gram of neuron contributions at a unit's consumer (docs/DESIGN.md §2.1).

Channel i's contribution sigma_i is N times what it adds to the consumer's output
(so the original output is sum_i sigma_i / N). For a consumer reading columns X
(rows = samples x positions; a block of s columns per channel: s = 1 for Linear,
k*k for a kxk conv through im2col, H*W for a Linear after a flatten) with weight W:
    G_ij = N^2 / rows * sum over block(i) x block(j) of (X^T X) * (W^T W).
X^T X is streamed over batches (moments.py); the small Hadamard/block-sum happens once.
A unit with several readers (a residual stream) imitates all of them: its Gram is the sum of the
readers' Grams, each weighted by its output positions per image relative to the first reader's,
so the objective is the sum of the readers' squared output errors per image.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .moments import ConsumerMoments, reader_weights, stream_moments, unit_columns
from .precision import exact
from .surgery import Unit, UnitGraph


def gram_from_columns(xtx: torch.Tensor, rows: int, weight: torch.Tensor, channels: int) -> torch.Tensor:
    """G from the accumulated X^T X (float64), the row count and the consumer weight."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    s = w.shape[1] // channels
    # W^T W in float32 (a GEMM as big as X^T X, without the long row sum); the product in float64.
    with exact(w.device):
        prod = (xtx / max(rows, 1)) * (w.T @ w).double()
    G = prod.view(channels, s, channels, s).sum(dim=(1, 3)) * float(channels) ** 2
    # float32 GEMMs (X^T X per batch, W^T W) need not be bit-symmetric (it depends on the CPU's
    # kernels); the selection ops require a symmetric G, and G + G^T is exactly symmetric
    return (G + G.mT) * 0.5


def gram_of(moments: list[ConsumerMoments], graph: UnitGraph, unit: Unit) -> torch.Tensor:
    """G [N, N] (float64) of the unit from its readers' input moments (stream_moments' list). A reader
    through a concat adds the Gram of the unit's channels from their columns."""
    n = unit.channels
    G = torch.zeros(n, n, dtype=torch.float64, device=moments[0].xtx.device)
    for reader, m, weight in zip(unit.readers, moments, reader_weights(moments)):
        consumer = graph.module(reader.name)
        if reader.window is None:
            G.add_(gram_from_columns(m.xtx, m.rows, consumer.weight, n), alpha=weight)
            continue
        cols = unit_columns(reader, consumer, n)
        w = consumer.weight.detach().reshape(consumer.weight.shape[0], -1)[:, cols]
        G.add_(gram_from_columns(m.xtx[cols, cols], m.rows, w, n), alpha=weight)
    return G


def contribution_gram(graph: UnitGraph, unit: Unit, batches: Iterable[torch.Tensor], *,
                      positions_per_image: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stream `batches` (model inputs) through the model up to the unit's readers and
    return G [N, N] (float64). `positions_per_image` subsamples that many output positions
    of a conv consumer per image. Summed across ranks when torch.distributed is initialised."""
    moments, _ = stream_moments(graph, unit, batches, positions_per_image=positions_per_image, generator=generator)
    return gram_of(moments, graph, unit)
