"""Files written whole or not at all: a crash mid-write never leaves a truncated file under
the final name (temp file in the same folder, fsync, then os.replace); under torchrun, by rank 0 only."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import torch

from .distributed import is_main


def replace_atomically(path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a temp file beside `path`, then move it over `path`. In a torchrun job only
    rank 0 writes (every process holds the same results; see distributed.py)."""
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def torch_save_atomically(obj, path) -> None:
    replace_atomically(path, lambda f: torch.save(obj, f))



def write_json(path, obj, *, indent: int = 1) -> None:
    """`obj` as strict JSON (NaN/inf -> null, tensors and tuples -> lists) to `path`, atomically."""
    text = json.dumps(plain_json(obj), indent=indent, allow_nan=False) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode()))


def plain_json(value):
    """`value` with NaN/inf floats as None, tuples and tensors as lists, keys as str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if hasattr(value, "tolist"):
        return plain_json(value.tolist())
    return value


def save_figure(fig, path, *, dpi: int = 120) -> None:
    """A matplotlib figure as PNG to `path`, atomically."""
    replace_atomically(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def prepare_output_dir(path, *, finished: str, resume: bool = False, overwrite: bool = False,
                       argument: str = "--out") -> Path:
    """Check, before any work, that `path` can hold a run's files: the folder is created if
    missing and must be writable, and a folder holding a finished run (its `finished` file)
    is refused unless resume (continue it) or overwrite (start again) is asked."""
    from .checks import arg_error

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise arg_error(argument, f"{str(path)!r} exists and is not a folder")
    if (path / finished).exists() and not (resume or overwrite):
        raise arg_error(argument, f"{str(path)!r} holds a finished run ({finished}): pass --resume to continue it or "
                                  "--overwrite to start again")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise arg_error(argument, f"{str(path)!r} is not a writable folder ({err.strerror or err})") from None
    return path
