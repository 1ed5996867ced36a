"""Save and load whole models (pruned ones have changed shapes, so the module itself is pickled)."""
import os
import pickle

import torch
from torch import nn

FILE_FORMAT = 1


def save_model(model: nn.Module, path, **meta) -> None:
    """torch.save `{"model": model, "meta": meta, "format": 1}` to `path`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_model: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    torch.save({"model": model, "meta": meta, "format": FILE_FORMAT}, path)


def load_model(path):
    """Return `(model, meta)` from a file written by `save_model`.

    Unpickles with `weights_only=False`, so load only files you trust. Tensors saved on a GPU are
    mapped to the CPU when CUDA is not available. Raises ValueError naming 'path' when it is not such a file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"load_model: argument 'path' ({path!r}) is not an existing file")
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        content = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(f"load_model: argument 'path' ({path!r}) is not a file written by "
                         f"save_model ({type(error).__name__}: {error})") from error
    if not (isinstance(content, dict) and content.get("format") == FILE_FORMAT
            and isinstance(content.get("model"), nn.Module) and isinstance(content.get("meta"), dict)):
        raise ValueError(f"load_model: argument 'path' ({path!r}) is not a file written by save_model "
                         f"(expected a dict with 'model', 'meta' and 'format': {FILE_FORMAT})")
    return content["model"], content["meta"]
