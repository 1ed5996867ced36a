"""Masked Conv2d/Linear layers with straight-through scores, model wrapping and export.

`wrap(model)` returns a `MaskedModel`: a copy of the model whose Conv2d/Linear layers compute
with `weight * keep`. All scores of all wrapped layers live in ONE flat parameter
(`MaskedModel.scores`) and all keep masks in ONE flat bool buffer (`MaskedModel.keep`), cut into
per-layer segments by `MaskedModel.offsets`, so the SR-popup swap of every layer is a single
`ops.popup_swap(scores, keep, rate, offsets)` call. Each layer reads its segment as a view
shaped like its weight: `MaskedModel.forward` cuts the scores with one `split`, whose backward
gathers all layers' gradients in one pass (slicing per layer would cost a full-size gradient
per layer). Backward sends the straight-through gradient `(dL/dW_eff) * W` to the
scores (seed 002, eqs. 6 and 18); weights, biases and BatchNorm affine parameters are frozen.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from ..checks import ArgumentError, check_finite_weights
from .. import ops

WRAPPED_TYPES = (nn.Conv2d, nn.Linear)


class StraightThroughMask(torch.autograd.Function):
    """W_eff = weight * keep; dL/dscores = dL/dW_eff * weight (the mask's straight-through gradient)."""

    @staticmethod
    def forward(ctx, weight, scores, keep):
        ctx.save_for_backward(weight, keep)
        ctx.scores_dtype = scores.dtype
        return weight * keep

    @staticmethod
    def backward(ctx, grad):
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_scores = (grad * weight).to(ctx.scores_dtype) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class _MaskedLayer:
    """Reads its segment of the owner's flat scores and keep as tensors shaped like the weight."""

    def _attach(self, owner: "MaskedModel", index: int, begin: int, end: int) -> None:
        # A plain attribute, not a submodule: the owner contains this layer.
        object.__setattr__(self, "_owner", owner)
        self.segment_index = index
        self.segment = (begin, end)

    def scores_view(self) -> torch.Tensor:
        views = self._owner.score_views
        if views is not None:  # inside MaskedModel.forward
            return views[self.segment_index].view(self.weight.shape)
        begin, end = self.segment  # called on its own
        return self._owner.scores[begin:end].view(self.weight.shape)

    def keep_view(self) -> torch.Tensor:
        begin, end = self.segment
        return self._owner.keep[begin:end].view(self.weight.shape)

    def masked_weight(self) -> torch.Tensor:
        return StraightThroughMask.apply(self.weight, self.scores_view(), self.keep_view())


class MaskedConv2d(_MaskedLayer, nn.Conv2d):
    """nn.Conv2d computing with weight * keep (padding modes, groups and dilation as the original)."""

    def forward(self, x):
        return self._conv_forward(x, self.masked_weight(), self.bias)


class MaskedLinear(_MaskedLayer, nn.Linear):
    """nn.Linear computing with weight * keep."""

    def forward(self, x):
        return F.linear(x, self.masked_weight(), self.bias)


def segment_counts(mask: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """True entries of a flat bool mask per segment, int64 [L]."""
    prefix = torch.cat([mask.new_zeros(1, dtype=torch.int64), mask.cumsum(0)])
    return prefix[offsets[1:]] - prefix[offsets[:-1]]


def _rebuild(layer: nn.Module, cls: type) -> nn.Module:
    """A `cls` instance with `layer`'s hyper-parameters, sharing its weight and bias parameters."""
    if isinstance(layer, nn.Conv2d):
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, device="meta")
    else:
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def _check_patterns(patterns, argument: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise ArgumentError(f"wrap: argument '{argument}' must be module-name patterns (str), got {patterns!r}")
    return patterns


def select_layers(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                  exclude_classifier: bool = False) -> list[str]:
    """Names of the Conv2d/Linear modules `wrap` masks, in module order.

    Candidates are modules whose type is exactly nn.Conv2d or nn.Linear (subclasses may not
    call their own forward, e.g. attention's out_proj). `include`/`exclude` are fnmatch patterns
    over module names (include None: every candidate); the classifier is the last candidate and is
    masked unless `exclude_classifier` (seed 002's sparsity covers all weights).
    """
    include, exclude = _check_patterns(include, "include"), _check_patterns(exclude, "exclude")
    candidates = [name for name, m in model.named_modules() if type(m) in WRAPPED_TYPES]
    if not candidates:
        raise ArgumentError(f"wrap: argument 'model' ({type(model).__name__}) has no nn.Conv2d or nn.Linear module")
    for patterns, argument in ((include, "include"), (exclude, "exclude")):
        for p in patterns or []:
            if not any(fnmatch.fnmatchcase(name, p) for name in candidates):
                raise ArgumentError(f"wrap: argument '{argument}' pattern {p!r} matches no Conv2d/Linear module "
                                    f"(candidates: {', '.join(candidates)})")
    chosen = [name for name in candidates
              if (include is None or any(fnmatch.fnmatchcase(name, p) for p in include))
              and not any(fnmatch.fnmatchcase(name, p) for p in exclude or [])
              and not (exclude_classifier and name == candidates[-1])]
    if not chosen:
        raise ArgumentError("wrap: arguments 'include'/'exclude'/'exclude_classifier' leave no layer to mask")
    return chosen


class MaskedModel(nn.Module):
    """A model whose selected Conv2d/Linear layers are masked; forward is the inner model's.

    Attributes: `model` (the inner model, with MaskedConv2d/MaskedLinear layers), `scores` (flat
    float32 parameter, the only trainable one), `keep` (flat bool buffer), `offsets` (int64 [L+1]
    segment borders), `layer_names` (the wrapped modules, in segment order), `unmasked` (the
    Conv2d/Linear modules left dense, e.g. an excluded classifier).
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.layer_names = list(layer_names)
        self.unmasked = [name for name, m in model.named_modules()
                         if type(m) in WRAPPED_TYPES and name not in self.layer_names]
        sizes = [model.get_submodule(name).weight.numel() for name in self.layer_names]
        offsets = ops.offsets_from_sizes(sizes)
        device = model.get_submodule(self.layer_names[0]).weight.device
        self.scores = nn.Parameter(torch.ones(offsets[-1].item(), dtype=torch.float32, device=device))
        self.register_buffer("keep", torch.ones(offsets[-1].item(), dtype=torch.bool, device=device))
        self.register_buffer("offsets", offsets.to(device))
        bounds = offsets.tolist()
        for index, name in enumerate(self.layer_names):
            dense = model.get_submodule(name)
            masked = _rebuild(dense, MaskedConv2d if isinstance(dense, nn.Conv2d) else MaskedLinear)
            masked._attach(self, index, bounds[index], bounds[index + 1])
            model.set_submodule(name, masked)
        self.segment_sizes = sizes
        self.score_views = None  # the per-layer views of `scores` while forward runs

    def forward(self, *args, **kwargs):
        self.score_views = self.scores.split(self.segment_sizes)
        try:
            return self.model(*args, **kwargs)
        finally:
            self.score_views = None

    @property
    def layers(self) -> list[nn.Module]:
        return [self.model.get_submodule(name) for name in self.layer_names]

    def flat_weights(self) -> torch.Tensor:
        """All wrapped weights, concatenated in segment order (a copy)."""
        return torch.cat([layer.weight.detach().reshape(-1).float() for layer in self.layers])

    def keep_counts(self) -> torch.Tensor:
        """Kept entries per layer, int64 [L]."""
        return segment_counts(self.keep, self.offsets)


def wrap(model: nn.Module, *, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
         exclude_classifier: bool = False) -> MaskedModel:
    """A MaskedModel over a deep copy of `model` (the argument is left untouched).

    Every parameter of the copy is frozen (requires_grad False), so only `scores` trains;
    keep starts all True and scores all 1 (see `search.initialize` for magnitude init).
    """
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"wrap: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    check_finite_weights("model", model)
    names = select_layers(model, include, exclude, exclude_classifier)
    model = copy.deepcopy(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return MaskedModel(model, names)


def export(masked: MaskedModel, *, prune_masks: bool = False) -> nn.Module:
    """A plain copy of the inner model with `weight * keep` baked into every wrapped layer.

    The masked layers become plain nn.Conv2d/nn.Linear and every parameter requires grad again.
    With `prune_masks`, each of those layers also carries a `torch.nn.utils.prune` mask
    (`weight_orig`, `weight_mask`, via prune.custom_from_mask), so masked entries stay zero under
    further training and `prune.remove` gives the baked weight back.
    """
    if not isinstance(masked, MaskedModel):
        raise ArgumentError(f"export: argument 'masked' must be a MaskedModel, got {type(masked).__name__}")
    # The memo entry stops the copy at the layers' owner reference (the scores are not copied).
    model = copy.deepcopy(masked.model, memo={id(masked): None})
    keep = masked.keep
    for name in masked.layer_names:
        layer = model.get_submodule(name)
        begin, end = layer.segment
        mask = keep[begin:end].view(layer.weight.shape)
        plain = _rebuild(layer, nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear)
        plain.weight = nn.Parameter(layer.weight.detach() * mask)
        if prune_masks:
            prune.custom_from_mask(plain, "weight", mask.clone())
        model.set_submodule(name, plain)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
