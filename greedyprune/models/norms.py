"""Norms over a residual stream's channels (a transformer's embedding width): which ones a pruned
stream may pass through, and what they compute once some channels are gone.

A LayerNorm (or an RMSNorm) over the last dim normalises each token by statistics over all the
stream's channels, so removing channel i changes every other channel's output: gating the channel
at the norm's readers is not removing it. `kept_channel_norm` computes the norm over the kept
channels only, which is what the pruned model's narrower norm computes, so a gated forward with it
is the pruned network's forward (surgery.UnitGraph.gated).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _is_rms_norm(module: nn.Module) -> bool:
    # torch's RMSNorm and Hugging Face's per-model classes (LlamaRMSNorm, Qwen2RMSNorm, ...)
    return isinstance(module, nn.RMSNorm) or type(module).__name__.endswith("RMSNorm")


def is_stream_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or _is_rms_norm(module)


def norm_refusal(name: str, module: nn.Module) -> str | None:
    """Why the stream cannot be pruned through this norm (None: it can)."""
    what = f"{name} ({type(module).__name__})"
    if isinstance(module, nn.GroupNorm):
        return f"{what} normalises over groups of channels"
    shape = getattr(module, "normalized_shape", None)
    if shape is not None and len(tuple(shape)) != 1:
        return f"{what} normalises over {len(tuple(shape))} dims"
    if not any(hasattr(module, attr) for attr in _EPS_NAMES):
        return f"{what} has no attribute eps or variance_epsilon (the epsilon it adds to the variance)"
    weight = getattr(module, "weight", None)
    if weight is not None and not isinstance(weight, torch.Tensor):
        return f"{what} has no per-channel weight"
    # a class named like a norm may compute something else (Gemma's RMSNorm scales by 1 + weight)
    channels = weight.numel() if weight is not None else tuple(getattr(module, "normalized_shape", (0,)))[0]
    if not channels:
        return f"{what} does not say its width"
    device = weight.device if weight is not None else None
    with torch.no_grad():
        probe = torch.randn(3, channels, device=device, dtype=torch.float32)
        expected = module(probe.to(weight.dtype if weight is not None else probe.dtype)).float()
        ours = kept_channel_norm(module, probe, torch.ones(channels, device=device)).float()
    if not torch.allclose(ours, expected, rtol=1e-2, atol=1e-3):
        return f"{what} computes something other than a LayerNorm or RMSNorm over its channels"
    return None


_EPS_NAMES = ("eps", "variance_epsilon")  # torch's, Hugging Face's


def _eps(module: nn.Module, x: torch.Tensor) -> float:
    for attr in _EPS_NAMES:
        eps = getattr(module, attr, None)
        if eps is not None:
            return float(eps)
    return torch.finfo(x.dtype).eps  # nn.RMSNorm's eps=None


def kept_channel_norm(module: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The norm's output with its statistics taken over the kept channels of the last dim.

    keep: [C] (any dtype, non-zero = kept), or [K, C] with x's batch K candidates of B rows each
    (candidate-major). Dropped channels' outputs are computed too (from the kept channels'
    statistics); the stream's readers gate them away.
    """
    mask = (keep != 0).to(torch.promote_types(x.dtype, torch.float32))
    xf = x.to(mask.dtype)
    if mask.dim() == 2:
        k = mask.shape[0]
        xf = xf.view(k, x.shape[0] // k, *x.shape[1:])
        mask = mask.view(k, *([1] * (x.dim() - 1)), mask.shape[1])
    count = mask.sum(-1, keepdim=True)
    if _is_rms_norm(module):
        y = xf * torch.rsqrt((xf.square() * mask).sum(-1, keepdim=True) / count + _eps(module, x))
    else:
        centred = xf - (xf * mask).sum(-1, keepdim=True) / count
        y = centred * torch.rsqrt((centred.square() * mask).sum(-1, keepdim=True) / count + _eps(module, x))
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(x.shape).to(x.dtype)
