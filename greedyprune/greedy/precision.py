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

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forwards_in(precision: str, device: torch.device):
    """The context the run's forwards take: autocast to `precision` on `device` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def exact(device: torch.device):
    """Inside a forward (a capture hook), arithmetic in the tensors' own dtypes: autocast off."""
    return torch.autocast(device.type, enabled=False)
