"""Argument checks of the op wrappers and fake kernels. Every bad argument raises
`greedyprune.checks.ArgumentError` naming it, with the wording of the C++ checks (csrc/checks.h).

An op's shape, dtype and device rules are written once, as spec functions (here and in the
op's family module) that take a `require(cond, arg, message)`: the wrapper passes
`require_argument`, the fake kernel `require_traced`. `message` is a string, or a
zero-argument callable that builds it, so that only a failing check formats sizes (on fake
tensors they may be symbolic). The value checks here (finite, not NaN) serve the backends
without C++ checks (backend.PYTHON_CHECKED).
"""
from __future__ import annotations

import numbers
from typing import Callable, Union

import torch

from ..checks import arg_error

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Message = Union[str, Callable[[], str]]
Require = Callable[[object, str, Message], None]


def _text(message: Message) -> str:
    return message() if callable(message) else message


def require_argument(cond, arg: str, message: Message) -> None:
    """The wrappers' require: an ArgumentError naming `arg` unless cond holds."""
    if not cond:
        raise arg_error(arg, _text(message))


def require_traced(cond, arg: str, message: Message) -> None:
    """The fake kernels' require: cond may be a symbolic SymBool, which torch._check defers."""
    torch._check(cond, lambda: str(arg_error(arg, _text(message))))


# ---------------------------------------------------------------- shared specs


def float_spec(t, arg: str, require: Require) -> None:
    """A float tensor; float64 on CPU only (a meta tensor may stand for a CPU one)."""
    require(isinstance(t, torch.Tensor), arg, lambda: f"must be a torch.Tensor, got {type(t).__name__}")
    require(t.dtype in FLOAT_DTYPES and (t.dtype != torch.float64 or t.device.type in ("cpu", "meta")), arg,
            lambda: f"must be float32, float16 or bfloat16 (or float64 on CPU), got {t.dtype} on {t.device}")


def dim_spec(t: torch.Tensor, dim: int, arg: str, require: Require) -> None:
    require(t.dim() == dim, arg, lambda: f"must have {dim} dimension(s), got shape {tuple(t.shape)}")


def bool_spec(t, n, arg: str, n_arg: str, require: Require) -> None:
    """A bool tensor with n entries, one per entry of argument `n_arg`."""
    require(isinstance(t, torch.Tensor) and t.dtype == torch.bool, arg,
            lambda: f"must be a bool tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    require(t.numel() == n, arg, lambda: f"must have as many entries as '{n_arg}' ({n}), got {t.numel()}")


def device_spec(t: torch.Tensor, ref: torch.Tensor, arg: str, ref_arg: str, require: Require) -> None:
    """On the device of `ref`: a kernel reads its inputs through one device's pointers."""
    require(t.device == ref.device, arg, lambda: f"must be on the same device as '{ref_arg}' ({ref.device}), got {t.device}")


# ------------------------------------------------------ argument conversions


def check_integer(value, arg: str) -> int:
    """value as an int: a fractional value is refused, not truncated."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise arg_error(arg, f"must be a whole number, got {value!r}")


def check_number(value, arg: str) -> float:
    """value as a float; its range is the op's spec."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise arg_error(arg, f"must be a number, got {value!r}") from None


def as_tensor(value, arg: str, device) -> torch.Tensor:
    """value (a number, a sequence or a tensor) as a tensor on `device`."""
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise arg_error(arg, f"must be a tensor or a sequence of numbers, got {type(value).__name__}") from None


def integer_tensor(value, arg: str, device) -> torch.Tensor:
    """value (a number, a sequence or a tensor) as int64: fractional entries are refused, not truncated."""
    t = as_tensor(value, arg, device)
    if t.dtype == torch.bool or t.is_complex():
        raise arg_error(arg, f"must hold whole numbers, got {t.dtype}")
    if t.is_floating_point():
        fractional = ~(torch.isfinite(t) & (t == t.trunc()))
        if bool(fractional.any()):
            raise arg_error(arg, f"must hold whole numbers, got {t[fractional].flatten()[0].item()}")
    return t.to(torch.int64)


# ------------------------------------------------------------- value checks


def check_finite(t: torch.Tensor, arg: str, where: torch.Tensor | None = None, where_arg: str = "") -> None:
    """t is finite (where `where` holds, when given: other entries may hold anything)."""
    _check_entries(t, ~torch.isfinite(t), arg, "must be finite", where, where_arg)


def check_not_nan(t: torch.Tensor, arg: str, where: torch.Tensor | None = None, where_arg: str = "") -> None:
    """t holds no NaN (where `where` holds, when given: other entries may hold anything)."""
    _check_entries(t, torch.isnan(t), arg, "must not contain NaN", where, where_arg)


def _check_entries(t, bad, arg: str, rule: str, where, where_arg: str) -> None:
    """The error for the first entry of t where `bad` (and `where`) holds, if any."""
    if where is not None:
        bad = bad & where
        rule += f" where '{where_arg}' is True"
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise arg_error(arg, f"{rule}, but {arg}[{', '.join(map(str, idx))}] = {t[idx].item()}")
