"""The model a command names: a save_model file, or a model name (zoo, torchvision:<name>,
timm:<name>) with an optional weights file; a name without weights is trained on the data and
cached (`pretrained`), freshly initialised, or refused, as the caller asks.

`check_model_source` validates what the user typed before any work; `resolve_model` builds it.
`published_weights_file` finds a torchvision / timm model's published weights in the local caches
(never the network) and `published_transform` the preprocessing they were trained with.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from ..checks import arg_error, check_callable, check_choice, check_file, check_int, check_module
from ..files import read_torch_file, read_weights_file, torch_save_atomically
from ..models import EXTERNAL_LIBRARIES, MODEL_NAMES, build_model, load_model, load_weights_into
from .data import ImageTransform, dataset_info, load_dataset, make_loader
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
        read_weights_file(weights, argument=weights_flag, mmap=True)


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


# Hugging Face file names timm's weights are published under, in the order timm tries them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def published_weights_file(source, weights=None, *, flag: str = "--pretrained") -> Path:
    """The local file of the published weights of `source` ('torchvision:<name>': its default
    weights enum's file in torch.hub.get_dir()/checkpoints; 'timm:<name>[.<tag>]': its pretrained
    config's Hugging Face file in the hub cache, or its torch hub file), found without network.
    Not there: an error naming `flag` and the exact path to put the file at."""
    library, _, name = str(source).partition(":")
    if weights is not None:
        raise arg_error(flag, "and --weights cannot be given together (the published weights or a file, not both)")
    if library not in EXTERNAL_LIBRARIES or not name:
        raise arg_error(flag, f"goes with a torchvision:<name> or timm:<name> model, not {str(source)!r} (give a "
                              "weights file with --weights instead)")
    if importlib.util.find_spec(library) is None:
        raise arg_error(flag, f"needs {library} to look up {str(source)!r}'s weights (pip install {library})")
    candidates = _torchvision_weights_files(name, flag) if library == "torchvision" else _timm_weights_files(name, flag)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise arg_error(flag, f"no local copy of {source}'s weights (no network is used): put the file at "
                              f"{candidates[0]}" + (f" (or {candidates[1]})" if len(candidates) > 1 else ""))
    return found


def published_transform(source) -> ImageTransform | None:
    """The evaluation preprocessing `source`'s published weights were made with: torchvision's
    weights.transforms() (resize, crop, interpolation, mean, std), timm's pretrained config
    (input_size, interpolation, mean, std, crop_pct); None for other models."""
    library, _, name = str(source).partition(":")
    if library == "torchvision":
        from torchvision.models import get_model_weights

        preset = get_model_weights(name).DEFAULT.transforms()
        return ImageTransform(crop=preset.crop_size[0], resize=preset.resize_size[0],
                              interpolation=preset.interpolation.value, mean=tuple(preset.mean), std=tuple(preset.std))
    if library == "timm":
        import timm

        config = timm.models.get_pretrained_cfg(name)
        if config is None:
            return None
        crop = config.input_size[-1]
        return ImageTransform(crop=crop, resize=math.floor(crop / config.crop_pct), interpolation=config.interpolation,
                              mean=tuple(config.mean), std=tuple(config.std))
    return None


def _torchvision_weights_files(name: str, flag: str) -> list[Path]:
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as err:
        raise arg_error(flag, f"torchvision publishes no weights for {name!r} ({err})") from None
    return [_hub_checkpoint(weights.url)]


def _timm_weights_files(name: str, flag: str) -> list[Path]:
    """The Hugging Face cache's file where it holds one, else the paths to put it at."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        raise arg_error(flag, f"timm publishes no weights for {name!r}")
    if config.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in HF_WEIGHT_FILES:
            cached = try_to_load_from_cache(config.hf_hub_id, filename)
            if isinstance(cached, str):  # else None or a "known missing" marker
                return [Path(cached)]
        # the cache reads snapshots/<revision>/, revision 'main' itself where refs/main is absent
        folder = Path(constants.HF_HUB_CACHE) / f"models--{config.hf_hub_id.replace('/', '--')}" / "snapshots" / "main"
        return [folder / filename for filename in HF_WEIGHT_FILES]
    if config.url:
        return [_hub_checkpoint(config.url)]
    raise arg_error(flag, f"timm's pretrained config of {name!r} names no file to load")


def _hub_checkpoint(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
