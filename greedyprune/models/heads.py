"""Attention heads: their layouts, removal, and the unit of selection they form (greedy/surgery.py
kind "heads").

A heads unit is one attention module's heads. Its channels are key/value groups: a key/value head
and the query heads that share it (grouped-query attention, Llama); where there are as many
key/value heads as query heads, a group is one head. Group g's output is one contiguous block of
the output projection's input columns (heads_per_group x head_dim of them), so a gate on group g
is a gate on that block: the Gram of head contributions is the Gram of those column blocks
([G, G], gram.py), and the line search, the refit and the Taylor scores run as for any unit whose
reader takes a block of columns per channel. Removing group g removes its query, key and value
rows and its output columns, and lowers the module's head counts.

Layouts recognised by their attributes:
- fused: a `qkv` Linear whose rows are [3, heads, head_dim], a `proj` Linear and an int
  `num_heads` (greedyprune's ViT, timm's Attention); a `norm` over all heads before `proj` that
  is not an Identity (timm's scale_norm) is refused;
- separate: `q_proj`, `k_proj`, `v_proj` and `o_proj` Linears and an int `head_dim` (Hugging Face
  Llama, Mistral, Qwen2, ViT in transformers 5), key/value heads = k_proj's rows / head_dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Projection:
    """A Linear whose output rows are [parts, groups, rows_per_group] (parts = 3 for a fused qkv)."""

    name: str
    parts: int
    rows_per_group: int


@dataclass(frozen=True)
class HeadLayout:
    attention: str
    projections: tuple[Projection, ...]
    output: str
    groups: int
    heads_per_group: int
    head_dim: int

    @property
    def columns_per_group(self) -> int:
        return self.heads_per_group * self.head_dim


def _linear(module: nn.Module, attr: str) -> nn.Linear | None:
    found = getattr(module, attr, None)
    return found if isinstance(found, nn.Linear) else None


def head_layout(name: str, module: nn.Module) -> HeadLayout | str | None:
    """The module's head layout; a str saying why its heads cannot be pruned; None where it is
    no attention module of a recognised layout."""
    prefix = f"{name}." if name else ""
    qkv, proj = _linear(module, "qkv"), _linear(module, "proj")
    heads = getattr(module, "num_heads", None)
    if qkv is not None and proj is not None and isinstance(heads, int) and heads > 0:
        if qkv.out_features % (3 * heads) or proj.in_features * 3 != qkv.out_features:
            return f"{prefix}qkv has {qkv.out_features} rows, not 3 x {heads} heads x {proj.in_features // heads}"
        norm = getattr(module, "norm", None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            return f"{prefix}norm ({type(norm).__name__}) normalises over all heads"
        dim = proj.in_features // heads
        return HeadLayout(name, (Projection(f"{prefix}qkv", 3, dim),), f"{prefix}proj", heads, 1, dim)
    q, k, v, o = (_linear(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
    dim = getattr(module, "head_dim", None)
    if None in (q, k, v, o) or not isinstance(dim, int) or dim <= 0:
        return None
    if k.out_features % dim or v.out_features != k.out_features or q.out_features % k.out_features \
            or o.in_features != q.out_features:
        return (f"{prefix}q/k/v/o_proj widths {q.out_features}/{k.out_features}/{v.out_features}/{o.in_features} "
                f"do not split into heads of {dim}")
    groups = k.out_features // dim
    per_group = q.out_features // k.out_features
    return HeadLayout(name, (Projection(f"{prefix}q_proj", 1, per_group * dim), Projection(f"{prefix}k_proj", 1, dim),
                             Projection(f"{prefix}v_proj", 1, dim)), f"{prefix}o_proj", groups, per_group, dim)


def head_layouts(model: nn.Module) -> list[HeadLayout]:
    """The head layout of every attention module of a recognised layout whose heads can be pruned."""
    return [layout for name, module in model.named_modules()
            if isinstance(layout := head_layout(name, module), HeadLayout)]


def projection_names(name: str, module: nn.Module) -> list[str]:
    """The names of the module's Linears of either layout that make queries, keys or values."""
    prefix = f"{name}." if name else ""
    return [prefix + attr for attr in ("qkv", "q_proj", "k_proj", "v_proj") if _linear(module, attr) is not None]


def current_groups(model: nn.Module, layout: HeadLayout) -> int:
    return model.get_submodule(layout.output).in_features // layout.columns_per_group


def _indices(keep: torch.Tensor, block: int, parts: int = 1, groups: int = 0) -> torch.Tensor:
    """The indices of the kept groups along a dim laid out [parts, groups, block]."""
    part = torch.arange(parts)[:, None, None] * groups * block
    return (part + keep[None, :, None] * block + torch.arange(block)).flatten()


def group_l1(model: nn.Module, layout: HeadLayout) -> torch.Tensor:
    """[G] the L1 norm of every group's weights (its rows of each projection and its output
    columns), averaged over those layers as Torch-Pruning's group magnitude averages a group."""
    groups = current_groups(model, layout)
    scores = torch.zeros(groups, dtype=torch.float64)
    for projection in layout.projections:
        w = model.get_submodule(projection.name).weight.detach().double().abs().sum(1).cpu()
        scores += w.view(projection.parts, groups, projection.rows_per_group).sum(dim=(0, 2))
    w = model.get_submodule(layout.output).weight.detach().double().abs().sum(0).cpu()
    scores += w.view(groups, layout.columns_per_group).sum(1)
    return scores / (len(layout.projections) + 1)


def _select(module: nn.Linear, index: torch.Tensor, dim: int) -> None:
    index = index.to(module.weight.device)
    module.weight = nn.Parameter(module.weight.detach().index_select(dim, index).clone(),
                                 requires_grad=module.weight.requires_grad)
    if dim == 0 and module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach().index_select(0, index).clone(),
                                   requires_grad=module.bias.requires_grad)
    if dim == 0:
        module.out_features = index.numel()
    else:
        module.in_features = index.numel()


def remove_groups(model: nn.Module, layout: HeadLayout, keep: torch.Tensor) -> None:
    """Keep only the groups `keep` (sorted indices into the current groups): their query, key and
    value rows and output columns, and the module's head counts lowered to match."""
    groups = current_groups(model, layout)
    keep = keep.cpu()
    for projection in layout.projections:
        _select(model.get_submodule(projection.name),
                _indices(keep, projection.rows_per_group, projection.parts, groups), 0)
    _select(model.get_submodule(layout.output), _indices(keep, layout.columns_per_group), 1)
    set_head_counts(model, layout)


def set_head_counts(model: nn.Module, layout: HeadLayout) -> None:
    """Set the attention module's head-count attributes to what its output projection's width
    holds now (after removal, or after a pruned model's layers were resized on loading)."""
    attention = model.get_submodule(layout.attention)
    groups = current_groups(model, layout)
    # what a module may read its head counts from (the separate layout reshapes with -1 in
    # transformers 5; older releases and forks keep the counts as attributes)
    for attr, value in (("num_heads", groups * layout.heads_per_group),
                        ("num_attention_heads", groups * layout.heads_per_group),
                        ("num_key_value_heads", groups)):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, value)
