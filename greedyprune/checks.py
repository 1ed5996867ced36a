"""Argument checks shared by the drivers: every bad argument raises `ArgumentError`, naming it.

ArgumentError is a ValueError (what the README promises and the command line turns into one
line) and a TypeError (so code that catches TypeError for a wrong type still does).
The op layer (greedyprune.ops) has its own checks of tensors.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn


class ArgumentError(ValueError, TypeError):
    """A bad argument of a greedyprune function; the message names it."""


def arg_error(name: str, message: str) -> ArgumentError:
    return ArgumentError(f"greedyprune: argument '{name}' {message}")


def is_real(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise arg_error(name, f"must be an int, got {type(value).__name__}")
    if value < minimum:
        raise arg_error(name, f"must be >= {minimum}, got {value}")
    return value


def check_real(name: str, value, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
               high_open: bool = False) -> float:
    """A finite number in the interval [low, high] (ends open as asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise arg_error(name, f"must be a number, got {type(value).__name__}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise arg_error(name, f"must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise arg_error(name, f"must be one of {tuple(choices)}, got {value!r}")
    return value


def check_module(model, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise arg_error(name, f"must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_device(name: str, value):
    """A torch.device that exists here: 'cpu', 'cuda' or 'cuda:N' with CUDA available."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise arg_error(name, f"must be a device such as 'cpu' or 'cuda', got {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise arg_error(name, f"asks for {value!r}, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise arg_error(name, f"asks for {value!r}, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise arg_error(name, f"must be 'cpu' or 'cuda[:N]', got {value!r}")
    return device


def check_finite_weights(name: str, tensors) -> None:
    """Every tensor in `tensors` ({layer name: tensor} or a module's parameters) finite; else an
    error naming argument `name` and the first layer that is not."""
    items = tensors.named_parameters() if isinstance(tensors, nn.Module) else tensors.items()
    for layer, value in items:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise arg_error(name, f"layer {layer!r} holds {bad} non-finite value(s) (NaN or inf) of {value.numel()}; "
                                  "was its training diverging?")


def check_file(name: str, path) -> str:
    """`path` as a str when it names an existing file; else an error naming the argument."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise arg_error(name, f"{str(path)!r} does not exist or is not a file")
    return os.fspath(path)


def check_callable(name: str, value):
    if not callable(value):
        raise arg_error(name, f"must be callable, got {type(value).__name__}")
    return value
