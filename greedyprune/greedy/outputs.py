"""What the greedy driver reads from a network's output: the logits, and the kinds of
discrepancy between a pruned network's logits and the original's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import ArgumentError, arg_error

DISCREPANCIES = ("kl", "mse", "ce-gap", "ce")
NEEDS_LABELS = ("ce-gap", "ce")


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: a tensor, or the `logits` of a Hugging Face style output
    (attribute or key), or the first entry of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    found = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0]
    if not isinstance(found, torch.Tensor):
        raise ValueError(f"greedyprune: the model returned {type(output).__name__}; it must return a logits tensor, "
                         "an output with .logits or a tuple starting with the logits")
    return found


def check_discrepancy(kind: str) -> str:
    if kind not in DISCREPANCIES:
        raise arg_error("discrepancy", f"must be one of {DISCREPANCIES}, got {kind!r}")
    return kind


def discrepancy(logits: torch.Tensor, target: torch.Tensor, kind: str, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-candidate discrepancy of logits [K, B, *, C] from the original logits [B, *, C]
    (* = e.g. tokens): "kl" = KL(original || pruned) averaged over samples and positions,
    "mse" = squared error summed over a sample's outputs, averaged over samples, "ce-gap" = the
    rise of the cross-entropy on true labels [B, *] over the original's (the training-loss gap
    that seed 000's epsilon bounds, section 3.2), "ce" = that cross-entropy itself (the authors'
    forward selection)."""
    check_discrepancy(kind)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits, target = logits.float(), target.float()
    k = logits.shape[0]
    if kind == "mse":
        return (logits - target).pow(2).flatten(2).sum(-1).mean(-1)
    if kind == "kl":
        t = F.log_softmax(target, dim=-1)
        return (t.exp() * (t - F.log_softmax(logits, dim=-1))).sum(-1).reshape(k, -1).mean(-1)
    if labels is None:
        raise ArgumentError(f"greedyprune: discrepancy {kind!r} needs argument 'labels' (cross-entropy on true labels)")
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, labels.reshape(-1).repeat(k), reduction="none").view(k, -1).mean(-1)
    if kind == "ce":
        return ce
    return ce - F.cross_entropy(target.reshape(-1, target.shape[-1]), labels.reshape(-1))
