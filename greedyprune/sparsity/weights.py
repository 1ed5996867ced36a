"""The weights PQI measures and SAP prunes: every floating tensor with more than one dimension,
their masks, and their segments at the three scopes (`neuron` = one output row, `layer` = one
weight, `global` = all of them as one vector) in the weights flattened one after another."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .. import ops
from ..checks import arg_error

SCOPES = ("neuron", "layer", "global")


def prunable_weights(source) -> dict[str, torch.Tensor]:
    """The measured weights (floating, dim > 1), detached, in order: from a module's parameters or a state_dict."""
    if isinstance(source, nn.Module):
        items = source.named_parameters()
    elif isinstance(source, Mapping):
        items = source.items()
    else:
        raise arg_error("weights", "must be an nn.Module or a mapping of names to tensors, "
                                    f"got {type(source).__name__}")
    return {name: t.detach() for name, t in items
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 1}


def check_masks(masks, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Masks keyed like `weights` (bool, same shapes); weights without a mask are fully kept."""
    if masks is None:
        return None
    if not isinstance(masks, Mapping):
        raise arg_error("masks", f"must be a mapping of weight names to bool tensors, got {type(masks).__name__}")
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise arg_error("masks", f"names weights that are not measured (floating, dim > 1): {unknown[:5]}")
    full = {}
    for name, w in weights.items():
        m = masks.get(name)
        if m is None:
            m = torch.ones_like(w, dtype=torch.bool)
        elif not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != w.shape:
            raise arg_error("masks", f"entry {name!r} must be a bool tensor of shape {tuple(w.shape)}, "
                                      f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
        full[name] = m.to(w.device)
    return full


def segment_offsets(shapes: Sequence[Sequence[int]], scope: str, device=None) -> torch.Tensor:
    """Offsets [L+1] of the scope's segments in the weights flattened one after the other."""
    if scope == "global":
        return ops.offsets_from_sizes([sum(math.prod(s) for s in shapes)], device)
    if scope == "layer":
        return ops.offsets_from_sizes([math.prod(s) for s in shapes], device)
    if scope == "neuron":
        rows = torch.tensor([s[0] for s in shapes], dtype=torch.int64)
        row_sizes = torch.tensor([math.prod(s[1:]) for s in shapes], dtype=torch.int64)
        sizes = torch.repeat_interleave(row_sizes, rows)
        return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(device)
    raise arg_error("scope", f"must be one of {SCOPES}, got {scope!r}")


def segment_sums(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of `values` (flat, bool or int) over each segment, as int64."""
    prefix = torch.cat([values.new_zeros(1, dtype=torch.int64), values.to(torch.int64).cumsum(0)])
    return prefix[offsets[1:]] - prefix[offsets[:-1]]
