"""Save and load models as data: a state dict plus a plain description of the architecture,
never a pickled module, so loading a file cannot run code (torch.load(weights_only=True)).

A file written by `save_model` holds {"format": 2, "arch": {"name", "num_classes",
"in_channels", "image_size"}, "state_dict", "meta"}. `load_model` builds the zoo model of that
description, resizes every Conv/Linear/norm layer to the shapes in the state dict (pruned
models have fewer channels), sets the attention modules' head counts to match (models/heads.py)
and loads it; torch.nn.utils.prune masks (weight_orig/weight_mask)
are re-attached. Without greedyprune, plain PyTorch reads the same file with
`torch.load(path, weights_only=True)["state_dict"]`; `export_program` writes a torch.export
program that `torch.export.load(path).module()` runs without any greedyprune code, `export_onnx`
an ONNX file for ONNX Runtime / TensorRT.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from ..checks import arg_error, check_module
from ..extras import require_onnx
from ..files import read_torch_file, read_weights_file, replace_atomically, torch_save_atomically
from .heads import head_layouts, set_head_counts

FILE_FORMAT = 2
ARCH_KEYS = ("name", "num_classes", "in_channels", "image_size")
STATE_DICT_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "module")


def save_model(model: nn.Module, path, *, arch: Mapping | None = None, **meta) -> None:
    """Write `model` (its state dict) and its architecture to `path`, atomically.

    arch: the build_model description; default: the one build_model attached to the model. A
    model build_model did not make is saved without one (arch None): `load_weights_into(model,
    path)` loads it into a model of the same shapes. meta: plain data and tensors (e.g. masks)."""
    check_module(model)
    arch = dict(arch) if arch is not None else getattr(model, "greedyprune_arch", None)
    if arch is not None and set(arch) != set(ARCH_KEYS):
        raise arg_error("arch", f"must describe the model as build_model does ({', '.join(ARCH_KEYS)}), got {arch}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save_atomically({"format": FILE_FORMAT, "arch": arch, "state_dict": state, "meta": meta}, path)


def load_model(path, *, map_location=None):
    """`(model, meta)` from a file written by `save_model` (eval mode). ValueError naming 'path'
    when it is not such a file, cannot be read, or holds code."""
    content = _read(path)
    if not (isinstance(content, dict) and content.get("format") == FILE_FORMAT
            and isinstance(content.get("state_dict"), Mapping)):
        raise arg_error("path", f"{str(path)!r} is not a file written by save_model (format {FILE_FORMAT}); "
                                "state dicts load with --weights and --arch")
    if not isinstance(content.get("arch"), dict):
        raise arg_error("path", f"{str(path)!r} holds a model build_model did not make (no architecture): load it "
                                "with load_weights_into(model, path)")
    from . import build_model

    arch = content["arch"]
    model = build_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                        image_size=arch["image_size"])
    load_state_dict_resized(model, content["state_dict"], source=str(path))
    if map_location is not None:
        model.to(map_location)
    return model.eval(), dict(content.get("meta") or {})


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The weights in `path`: a save_model file, a plain state dict, a checkpoint holding one
    under a usual key (state_dict, model, ...), or a .safetensors file; `module.` prefixes (DDP)
    are stripped."""
    return _state_dict_of(read_weights_file(path, argument="path"), path)


def _state_dict_of(content, path) -> dict[str, torch.Tensor]:
    if isinstance(content, Mapping) and content.get("format") == FILE_FORMAT and "state_dict" in content:
        content = content["state_dict"]
    elif isinstance(content, Mapping) and not _is_state_dict(content):
        inner = next((content[k] for k in STATE_DICT_KEYS if _is_state_dict(content.get(k))), None)
        if inner is None:
            raise arg_error("weights", f"{str(path)!r} holds no state dict (keys: {sorted(map(str, content))[:6]})")
        content = inner
    if not _is_state_dict(content):
        raise arg_error("weights", f"{str(path)!r} holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in content.items()}


def load_weights(path, arch: str | None = None, **build_kw):
    """`(weights, masks or None)` to measure: the model of a save_model file (its masks from the
    meta), or a state dict (loaded into build_model(arch, **build_kw) when arch is given).
    torch.nn.utils.prune entries become the effective weight (weight_orig * weight_mask) with the
    mask as its mask."""
    content = _read(path)
    if isinstance(content, Mapping) and content.get("format") == FILE_FORMAT and isinstance(content.get("arch"), dict):
        model, meta = load_model(path)
        return model, meta.get("masks")
    state = _state_dict_of(content, path)
    masks = {}
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[:-len("_orig")]
        if f"{base}_mask" in state:
            mask = state.pop(f"{base}_mask").bool()
            state[base] = state.pop(key) * mask
            masks[base] = mask
    if arch is None:
        return state, masks or None
    from . import build_model

    model = build_model(arch, **build_kw)
    _load_checked(model, state, path)
    return model, masks or None


def load_weights_into(model: nn.Module, path) -> nn.Module:
    """Load the state dict in `path` into `model` (same architecture); missing or unexpected keys
    and shape mismatches are one error naming a few of them."""
    _load_checked(model, read_state_dict(path), path)
    return model


def load_pruned(model: nn.Module, path) -> nn.Module:
    """Load a pruned model's weights (a save_model file such as prune's pruned.pt, a state dict or
    a checkpoint holding one) into `model`, a fresh model of the architecture it was pruned from:
    every layer is resized to the file's shapes first (pruned channels, heads, embedding width).
    Returns `model` in eval mode; an error names the first layer that does not fit."""
    load_state_dict_resized(model, read_state_dict(path), source=str(path))
    return model.eval()


def _load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], path, argument: str = "weights") -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise arg_error(argument, f"{str(path)!r} does not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state)


def load_state_dict_resized(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Resize model's layers to the state dict's shapes (pruned channels and heads), re-attach
    torch.nn.utils.prune masks, then load it strictly."""
    # the head layouts as built (head_dim is fixed), to set the head counts the resized layers hold
    layouts = head_layouts(model)
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if f"{prefix}weight_orig" in state and f"{prefix}weight_mask" in state:
            resized = _resized(module, state[f"{prefix}weight_orig"].shape, state, prefix)
            if resized is not module:
                model.set_submodule(name, resized)
            prune.custom_from_mask(resized, "weight", torch.ones_like(state[f"{prefix}weight_mask"], dtype=torch.bool))
        elif f"{prefix}weight" in state and isinstance(module, _RESIZED_BY_TYPE) \
                and tuple(module.weight.shape) != tuple(state[f"{prefix}weight"].shape):
            model.set_submodule(name, _resized(module, state[f"{prefix}weight"].shape, state, prefix))
    _resize_parameters(model, state)
    for layout in layouts:
        set_head_counts(model, layout)
    _load_checked(model, state, source, argument="path")
    for module in model.modules():  # the masked weight from the loaded weight_orig and weight_mask
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def export_program(model: nn.Module, example_input: torch.Tensor, path) -> None:
    """torch.export the model (eval mode) with a dynamic batch dimension (and a dynamic sequence
    length for token ids [B, T], where the model allows it) and save the program to `path`,
    atomically; plain PyTorch runs it at any batch size with `torch.export.load(path).module()(x)`."""
    program = _exported_with_dynamic_batch(model, example_input)
    replace_atomically(path, lambda f: torch.export.save(program, f))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path) -> None:
    """The model (eval mode) as an ONNX file at `path`, written atomically, through torch.onnx's
    dynamo exporter, with the dynamic dimensions of export_program (batch; token ids' length
    where the model allows it): ONNX Runtime runs it at any batch size. Needs the `onnx` extra
    (onnx, onnxscript; onnxruntime to run it); an op ONNX has no translation for is one error
    naming it, and nothing is written. The weights are stored inside the file (ONNX's 2 GiB limit)."""
    require_onnx()
    program = _exported_with_dynamic_batch(model, example_input)
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    except Exception as err:  # torch.onnx raises its own error types, with the cause chained
        raise arg_error("model", f"cannot be exported to ONNX: {_onnx_failure(err)}") from err
    model_bytes = onnx_program.model_proto.SerializeToString()
    replace_atomically(path, lambda f: f.write(model_bytes))


def _onnx_failure(err: BaseException) -> str:
    """What stopped the ONNX conversion, in one line: the op without an ONNX translation when
    that is the cause (torch.onnx says so in a DispatchError down the cause chain)."""
    while err is not None:
        op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", str(err))
        if op:
            return f"op {op.group(1)}.{op.group(2)} has no ONNX translation"
        if err.__cause__ is None:
            break
        err = err.__cause__
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'no detail'}"


def _exported_with_dynamic_batch(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of `model` in eval mode with the batch dimension dynamic, and the sequence
    length of token ids [B, T] too where the model allows it."""
    # an example of batch 1 would specialise the batch dimension to 1
    example = example_input.repeat(2, *([1] * (example_input.dim() - 1))) if example_input.shape[0] == 1 \
        else example_input
    batch = {0: torch.export.Dim("batch", min=1)}
    model.eval()

    def export(dims: dict):
        return torch.export.export(model, (example,), dynamic_shapes=(dims,))

    if not example.is_floating_point() and example.dim() == 2:  # token ids: a dynamic length where it can be
        try:
            return export({**batch, 1: torch.export.Dim("tokens", min=1)})
        except Exception:  # torch.export raises many kinds; a fixed sequence length is the fallback
            pass
    return export(batch)


def _read(path):
    return read_torch_file(path, argument="path")


def _is_state_dict(value) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _resize_parameters(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give every other parameter the state dict's shape (a positional embedding, a class token,
    an RMSNorm's weight: a pruned embedding width); loading fills them."""
    for key, param in list(model.named_parameters()):
        if key in state and tuple(param.shape) != tuple(state[key].shape):
            owner, _, attr = key.rpartition(".")
            setattr(model.get_submodule(owner), attr,
                    nn.Parameter(param.new_empty(state[key].shape), requires_grad=param.requires_grad))


# Layers resized to a file's shapes: a copy of the layer with new tensors and size attributes, so a
# subclass keeps its type, its activation and its other state (timm's BatchNormAct2d, StdConv2d).
_RESIZED_BY_TYPE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.Embedding)


def _resized(module: nn.Module, weight_shape, state, prefix: str) -> nn.Module:
    """A copy of `module` whose weight has the shape `weight_shape` and whose other tensors have
    the file's shapes; a layer whose layout or state cannot follow is refused, by name."""
    name = prefix[:-1]
    if not isinstance(module, _RESIZED_BY_TYPE) or isinstance(module, nn.modules.conv._ConvTransposeNd):
        raise arg_error("path", f"cannot resize layer {name!r} ({type(module).__name__}) to {tuple(weight_shape)}")
    own = {**module._parameters, **module._buffers}
    # the layer's own tensors are shared, not copied (they are replaced below); its submodules are copied
    resized = copy.deepcopy(module, {id(t): t for t in own.values() if t is not None})
    for attr, tensor in own.items():
        if tensor is None or tensor.dim() == 0:  # no bias; BatchNorm's num_batches_tracked
            continue
        key = f"{prefix}{attr}"
        if attr == "weight":
            shape = tuple(weight_shape)
        else:
            shape = tuple(state[key].shape) if key in state else None
        if shape is None and attr == "bias":
            resized.register_parameter("bias", None)  # the pruned file's layer has none
        elif shape is None:
            raise arg_error("path", f"cannot resize layer {name!r} ({type(module).__name__}): its {attr} "
                                    f"{tuple(tensor.shape)} is not in the file, so its new shape is unknown")
        elif attr in module._parameters:
            setattr(resized, attr, nn.Parameter(tensor.new_empty(shape), requires_grad=tensor.requires_grad))
        else:
            setattr(resized, attr, tensor.new_empty(shape))
    out_size, in_size = weight_shape[0], weight_shape[1] if len(weight_shape) > 1 else None
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        resized.groups = out_size if depthwise else module.groups
        resized.out_channels, resized.in_channels = out_size, in_size * resized.groups
    elif isinstance(module, nn.Linear):
        resized.out_features, resized.in_features = out_size, in_size
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        resized.num_features = out_size
    elif isinstance(module, nn.LayerNorm):
        resized.normalized_shape = tuple(weight_shape)
    else:
        resized.num_embeddings, resized.embedding_dim = out_size, in_size
    return resized
