"""Files written whole or not at all: a crash mid-write never leaves a truncated file under
the final name (temp file in the same folder, fsync, then os.replace)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch


def replace_atomically(path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a temp file beside `path`, then move it over `path`."""
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
