"""Files written whole or not at all: a crash mid-write never leaves a truncated file under
the final name (temp file in the same folder, fsync, then os.replace); under torchrun, by rank 0 only."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import torch

from .distributed import is_main


def replace_atomically(path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a temp file beside `path`, then move it over `path`, with the permission bits
    open() would give (a new file 0666 less the umask, a replaced one its own). In a torchrun job
    only rank 0 writes (every process holds the same results; see distributed.py)."""
    if not is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _mode_open_would_give(path))  # mkstemp's 0600 would hide the file from other users
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_open_would_give(path: Path) -> int:
    """The permission bits open(path, "wb") leaves: an existing file's own, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def torch_save_atomically(obj, path) -> None:
    replace_atomically(path, lambda f: torch.save(obj, f))


# torch.save's two formats: a zip archive holding <name>/data.pkl (since torch 1.6), or the legacy
# pickle stream that opens with MAGIC_NUMBER (a LONG1 of 10 bytes within the first bytes).
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x8a\x0a" + torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")


def read_torch_file(path, *, argument: str, mmap: bool = False):
    """What torch.save wrote to `path`, loaded on the CPU with weights_only=True. An empty file,
    a file of another kind (text, a zip without data.pkl), a truncated or damaged torch file and
    one holding more than tensors and plain data are each one ArgumentError naming `argument`
    and the file. mmap: map a zip-format file's tensors instead of reading them (to check a file)."""
    from .checks import arg_error, check_file

    check_file(argument, path)
    name = repr(str(path))
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise arg_error(argument, f"{name} is empty (0 bytes), not a PyTorch file")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(_ZIP_LOCAL_HEADER):
        raise arg_error(argument, f"{name} is a truncated PyTorch file (a zip archive without its end)")
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if not any(n.rpartition("/")[2] == "data.pkl" for n in archive.namelist()):
                raise arg_error(argument, f"{name} is a zip archive but not a PyTorch file (no data.pkl in it)")
    elif _LEGACY_MAGIC not in head:
        raise arg_error(argument, f"{name} is not a PyTorch file (neither of torch.save's formats)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))  # the class or function the pickle asks for
        detail = f"it names {named.group(1)}" if named else str(err).splitlines()[0][:120]
        raise arg_error(argument, f"{name} holds more than tensors and plain data (refused, loading it could run "
                                  f"code: {detail})") from None
    except Exception as err:  # a damaged stream fails anywhere in torch's reader, with any type
        raise arg_error(argument, f"{name} is a truncated or damaged PyTorch file ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:120] if str(err) else 'no detail'})") from None



def read_weights_file(path, *, argument: str, mmap: bool = False):
    """A weights file's content: a .safetensors file (Hugging Face's cache, timm's weights) as a
    state dict, any other file as read_torch_file reads it."""
    if str(path).endswith(".safetensors"):
        return read_safetensors(path, argument=argument)
    return read_torch_file(path, argument=argument, mmap=mmap)


def read_safetensors(path, *, argument: str) -> dict:
    """The tensors of a .safetensors file on the CPU (the format holds tensors only, no code);
    an unreadable one is one ArgumentError naming `argument` and the file."""
    from .checks import arg_error, check_file

    check_file(argument, path)
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as err:
        raise ImportError(f"greedyprune: {str(path)!r} is a .safetensors file, which needs safetensors "
                          "(pip install safetensors)") from err
    try:
        return load_file(path, device="cpu")
    except OSError:
        raise
    except Exception as err:  # safetensors reports a bad header or a short file with its own error types
        raise arg_error(argument, f"{str(path)!r} is not a readable safetensors file ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:120] if str(err) else 'no detail'})") from None


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
