"""The model a command names: a save_model file, or a model name (zoo, torchvision:<name>,
timm:<name>) with an optional weights file; a name without weights is trained on the data and
cached (`pretrained`), freshly initialised, or refused, as the caller asks.

`check_model_source` validates what the user typed before any work; `resolve_model` builds it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checks import arg_error, check_callable, check_choice, check_file, check_int, check_module
from ..files import read_torch_file, torch_save_atomically
from ..models import EXTERNAL_LIBRARIES, MODEL_NAMES, build_model, load_model, load_weights_into
from .data import dataset_info, load_dataset, make_loader
from .training import train

# what a model name without a weights file gives: trained on the data (and cached), a fresh
# initialisation drawn from the seed, or an error
WITHOUT_WEIGHTS = ("train", "init", "refuse")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_model_source(source, weights=None, *, without_weights: str, source_flag: str = "--model",
                       weights_flag: str = "--weights") -> None:
    """`source` names an existing save_model file (then without `weights`, as the file holds its
    own) or a model name; `weights`, if given, an existing file; a name without weights is refused
    when without_weights="refuse". Each file given must be a readable PyTorch file (read with its
    tensors mapped, not loaded). The errors name `source_flag` and `weights_flag`, the arguments
    as the user typed them."""
    check_choice("without_weights", without_weights, WITHOUT_WEIGHTS)
    if not isinstance(source, (str, os.PathLike)):
        raise arg_error(source_flag, f"must be a file or a model name, got {type(source).__name__}")
    source = os.fspath(source)
    if os.path.isfile(source):
        if weights is not None:
            check_file(weights_flag, weights)
            raise arg_error(weights_flag, "goes with a model name (resnet50, torchvision:vit_b_16, ...), not with "
                                          f"the saved model {source!r}, which holds its own weights")
        read_torch_file(source, argument=source_flag, mmap=True)
        return
    if weights is None and without_weights == "refuse":
        raise arg_error(source_flag, f"{source!r} is not a file; give a save_model file, or a model name with "
                                     f"{weights_flag}")
    if os.sep in source or source.endswith((".pt", ".pth")):
        raise arg_error(source_flag, f"{source!r} does not exist (give a save_model file or a zoo name)")
    if source not in MODEL_NAMES and source.partition(":")[0] not in EXTERNAL_LIBRARIES:
        raise arg_error(source_flag, f"{source!r} is neither a file nor a model name ({', '.join(MODEL_NAMES)}, "
                                     "torchvision:<name>, timm:<name>)")
    if weights is not None:
        read_torch_file(weights, argument=weights_flag, mmap=True)


def resolve_model(source, data: str, *, without_weights: str, weights=None, seed: int = 0, epochs: int | None = None,
                  lr: float = 0.05, batch_size: int = 64, device=None, progress: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """The model `source` names, sized for dataset `data` (checked as `check_model_source` does).

    A save_model file loads as saved. A model name is built with its initial weights drawn from
    `seed`, then: with `weights` (a state dict in torchvision / timm layout, or a checkpoint
    holding one under state_dict / model / ...; `module.` prefixes stripped; missing, unexpected
    or misshapen keys are one error naming a few) those are loaded; without, `without_weights`
    decides: "train" trains it on `data` (`train`: SGD, cosine decay, `epochs`, `lr`,
    `batch_size`, data order from `seed`, on `device`) and caches it by those settings (see
    `pretrained`), "init" returns the initialisation itself, "refuse" is an error.
    """
    check_model_source(source, weights, without_weights=without_weights, source_flag="source",
                       weights_flag="weights")
    if os.path.isfile(source):
        return load_model(source)[0]
    if weights is not None:
        return load_weights_into(_seeded_model(source, data, seed), weights)
    if without_weights == "init":
        return _seeded_model(source, data, seed)
    check_int("epochs", epochs, minimum=1)  # before the cache, whose key holds it
    return _trained_model(source, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                          progress=progress, cache_dir=cache_dir)


def pretrained(name_key: str, build: Callable[[], nn.Module], fit: Callable[[nn.Module], object], *,
               cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """`build()` with the weights cached under `name_key`; on a cache miss `fit(model)` trains it
    and its state_dict is saved atomically (temp file, then os.replace).

    cache_dir: default $GREEDYPRUNE_CACHE, else ~/.cache/greedyprune. name_key: letters,
    digits, '.', '_', '-' (not first), at most 200 characters.
    """
    if not isinstance(name_key, str) or not _SAFE_NAME.fullmatch(name_key):
        raise arg_error("name_key", "must be a safe file name (letters, digits, '.', '_', '-', not starting with "
                                    f"'.', '_' or '-', at most 200 characters), got {name_key!r}")
    check_callable("build", build)
    check_callable("fit", fit)
    folder = Path(cache_dir or os.environ.get("GREEDYPRUNE_CACHE") or Path.home() / ".cache" / "greedyprune")
    folder = folder.expanduser()
    path = folder / f"{name_key}.pt"

    model = build()
    check_module(model, name="build()'s result")
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:
            raise RuntimeError(f"greedyprune: cached weights {str(path)!r} do not load into build()'s model "
                               f"({err}); delete the file to retrain") from err
        return model

    fit(model)
    torch_save_atomically(model.state_dict(), path)
    return model


def _seeded_model(arch: str, data: str, seed: int) -> nn.Module:
    """`build_model(arch)` sized for dataset `data`, its initial weights drawn from `seed`."""
    info = dataset_info(data)
    torch.manual_seed(seed)
    return build_model(arch, num_classes=info["num_classes"], in_channels=info["in_channels"],
                       image_size=info["image_size"])


def _trained_model(arch: str, data: str, *, epochs: int, lr: float, batch_size: int, seed: int, device,
                   progress: bool, cache_dir) -> nn.Module:
    """Model `arch` trained on `data`, cached under a key of every setting that shapes its weights."""
    source = data if data == "digits" else Path(data).name
    key = re.sub(r"[^A-Za-z0-9._-]", "-", f"{arch}-{source}-e{epochs}-lr{lr:g}-b{batch_size}-s{seed}")

    def fit(model):
        loader = make_loader(load_dataset(data, "train"), batch_size, shuffle=True, seed=seed)
        train(model, loader, epochs=epochs, lr=lr, device=device, progress=progress, desc=f"train {arch}")

    return pretrained(key, lambda: _seeded_model(arch, data, seed), fit, cache_dir=cache_dir)
