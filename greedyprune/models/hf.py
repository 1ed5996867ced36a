"""Pruned Hugging Face `transformers` models out: a config that states the pruned widths, so
`save_pretrained` writes a folder that `from_pretrained` loads as it is.

A transformers config gives one width per kind for all layers (hidden_size, intermediate_size,
num_attention_heads / num_key_value_heads, head_dim). `pruned_config` reads them from the pruned
layers, refuses in one line where the layers of a kind differ (the config cannot say so), and
checks the result by building the model from it on the meta device: every parameter must have
the pruned shape.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from ..checks import arg_error
from .heads import head_layouts
from .norms import is_stream_norm

# The hidden layer of a transformer MLP, by attribute: Llama's gate_proj, BERT/ViT's intermediate.dense,
# GPT-2-like fc_in / c_fc, timm-like fc1.
_MLP_HIDDEN = ("gate_proj", "fc1", "fc_in", "c_fc")


def _one(widths: dict[str, int], field: str, config_name: str) -> int | None:
    """The one width all layers share (None where there is none); refused where they differ."""
    values = sorted(set(widths.values()))
    if len(values) > 1:
        shown = ", ".join(f"{name}: {w}" for name, w in list(widths.items())[:4])
        raise arg_error("model", f"its layers have different {field} ({shown}{', ...' if len(widths) > 4 else ''}), "
                                 f"which one {config_name} cannot state; prune with a width ratio alone (no "
                                 "tolerance or FLOP target: every unit of a kind keeps the same share) or save "
                                 "with greedyprune.models.io.save_model")
    return values[0] if values else None


def _mlp_widths(model: nn.Module) -> dict[str, int]:
    widths = {}
    for name, module in model.named_modules():
        hidden = next((getattr(module, a) for a in _MLP_HIDDEN if isinstance(getattr(module, a, None), nn.Linear)), None)
        if hidden is None and name.endswith("intermediate") and isinstance(getattr(module, "dense", None), nn.Linear):
            hidden = module.dense
        if hidden is not None:
            widths[name] = hidden.out_features
    return widths


def pruned_config(model: nn.Module):
    """A copy of `model.config` with the pruned model's widths (see the module doc)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise arg_error("model", f"{type(model).__name__} is no transformers model (it has no config)")
    config = copy.deepcopy(config)
    name = type(config).__name__
    hidden = _one({n: m.weight.numel() for n, m in model.named_modules()
                   if is_stream_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor)}, "hidden sizes", name)
    layouts = head_layouts(model)
    heads = _one({l.attention: l.groups * l.heads_per_group for l in layouts}, "head counts", name)
    kv_heads = _one({l.attention: l.groups for l in layouts}, "key/value head counts", name)
    head_dim = _one({l.attention: l.head_dim for l in layouts}, "head sizes", name)
    intermediate = _one(_mlp_widths(model), "MLP widths", name)
    for field, value in (("hidden_size", hidden), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads),
                         ("intermediate_size", intermediate)):
        if value is not None and hasattr(config, field):
            setattr(config, field, value)
    if head_dim is not None:
        config.head_dim = head_dim  # no longer hidden_size / num_attention_heads once either is pruned
    _check_expresses(model, config)
    return config


def _check_expresses(model: nn.Module, config) -> None:
    """Refuse where the model built from `config` has a parameter of another shape than `model`'s."""
    with torch.device("meta"):
        built = type(model)(config)
    built_shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    for key, value in model.state_dict().items():
        if key in built_shapes and built_shapes[key] != tuple(value.shape):
            raise arg_error("model", f"{type(config).__name__} with the pruned widths builds {key} as "
                                     f"{built_shapes[key]}, the pruned model has {tuple(value.shape)}: the config "
                                     "cannot state this model; save it with greedyprune.models.io.save_model")


def save_pretrained(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False, **kwargs) -> None:
    """`model.save_pretrained(path)` with the config stating the pruned widths; the folder loads
    with `type(model).from_pretrained(path)`. The model's own config is updated too. The folder
    is written whole or not at all (a temporary folder beside it, renamed); an existing non-empty
    folder is replaced only with `overwrite`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise arg_error("path", f"{str(path)!r} exists; pass overwrite=True to replace it")
    config = pruned_config(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.config = config
        model.save_pretrained(staging, **kwargs)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
