"""The precision of the criteria's forwards during pruning (PruneConfig.precision).

"bf16" / "fp16" run the forwards a criterion makes under torch.autocast (global imitation's
candidates and Taylor passes, tolerance probes, refit evaluations): convolutions and matmuls in
16 bits, for the GPU's tensor cores. They are nearly all of a global or hybrid run's FLOPs. The
passes that make statistics stay in float32: the Gram / moments pass (one forward per unit; in bf16
it changed 22-50% of local imitation's kept channels on the digits cnn at width 0.5), the export,
BN re-estimation and the exported discrepancy. Inside autocast, what must stay exact leaves it
(`exact`): X^T X and W^T W are float32 GEMMs summed in float64; discrepancies take float32 logits;
solves run in float64.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forwards_in(precision: str, device: torch.device):
    """The context the run's forwards take: autocast to `precision` on `device` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def uses_channels_last(setting: bool | None, model: nn.Module) -> bool:
    """Whether a run lays the model's convolutions out channels-last: `setting`, or (None) on a
    CUDA device for a model with a 2-D convolution (on CPUs NHWC is no faster in general)."""
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if setting is None:
        first = next(model.parameters(), None)
        return convs and first is not None and first.device.type == "cuda"
    return setting and convs


def lay_out(model: nn.Module, channels_last: bool) -> None:
    """`model`'s 4-D parameters and buffers channels-last (NHWC) or contiguous again; a layer the
    surgery resized gets new, contiguous tensors, so a run lays the model out after every unit."""
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def exact(device: torch.device):
    """Inside a forward (a capture hook), arithmetic in the tensors' own dtypes: autocast off."""
    return torch.autocast(device.type, enabled=False)
