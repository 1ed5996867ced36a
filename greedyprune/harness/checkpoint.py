"""Checkpoints of the long loops (SR-popup search, SAP): tensors and plain data only, written
atomically and read back with torch.load(weights_only=True), so a crafted file cannot run code.
RNG states travel as tensors, settings as dicts."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..checks import ArgumentError, arg_error
from ..files import read_torch_file, torch_save_atomically


def rng_state() -> dict:
    """The torch (CPU and every CUDA device), numpy (legacy global) and python RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": python_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_states() -> dict:
    """Every process's `rng_state`, in rank order, for a checkpoint: under torchrun the processes
    draw different numbers (DataLoader worker seeds, dropout), and a resumed run restores each
    its own. A collective: every process calls it (they all build the checkpoint; rank 0 writes)."""
    return {"ranks": distributed.gather_objects(rng_state())}


def restore_rng_states(saved: dict) -> None:
    """This process's states from `rng_states` (a single `rng_state`, as older checkpoints hold,
    serves every process). Resumed by another number of processes than wrote it, process r takes
    the states of process r mod (the writers' count), with a warning: the run goes on, but does
    not repeat the uninterrupted one."""
    states = saved["ranks"] if "ranks" in saved else [saved]
    world, rank = distributed.world_size(), distributed.rank()
    if len(states) != world and len(states) > 1 and distributed.is_main():
        warnings.warn(f"greedyprune: the checkpoint's random states come from {len(states)} processes, this run has "
                      f"{world}: process r resumes with those of process r mod {len(states)}", stacklevel=2)
    set_rng_state(states[rank % len(states)])


def save_checkpoint(state: dict, path) -> None:
    torch_save_atomically(state, path)


def load_checkpoint(path, *, kind: str, file_format: int) -> dict:
    """A checkpoint written by `save_checkpoint`, on the CPU; `kind` names it in errors.

    Anything else (a truncated or empty file, another kind of file, a pickle carrying code) is a
    ValueError naming 'resume' and the file."""
    path = Path(path)
    try:
        state = read_torch_file(path, argument="resume")
    except ArgumentError as err:
        raise ArgumentError(f"{err}; delete it or start without resuming") from None
    if isinstance(state, dict) and isinstance(state.get("format"), int) and state["format"] != file_format:
        raise arg_error("resume", f"{str(path)!r} is a {kind} checkpoint of format {state['format']}, this greedyprune "
                                  f"resumes format {file_format} only (what the settings mean changed); start without "
                                  "resuming")
    if not isinstance(state, dict) or state.get("format") != file_format:
        raise arg_error("resume", f"{str(path)!r} is not a {kind} checkpoint (format {file_format})")
    return state


def setting_differences(saved: dict, wanted: dict, *, ignore=()) -> list[str]:
    """'name=saved (now wanted)' for every setting that differs, for one clear resume error."""
    return [f"{k}={saved.get(k)!r} (now {wanted[k]!r})" for k in sorted(wanted)
            if k not in ignore and saved.get(k) != wanted[k]]
