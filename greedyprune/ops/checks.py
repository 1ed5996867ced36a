"""Argument checks of the op wrappers. Every message names the argument, as the C++
checks do (csrc/checks.h); the data checks here serve the backends without C++ checks."""
from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def arg_error(arg: str, msg: str) -> ValueError:
    return ValueError(f"greedyprune: argument '{arg}' {msg}")


def check_float(t, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise arg_error(arg, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES or (t.dtype == torch.float64 and t.device.type != "cpu"):
        raise arg_error(arg, f"must be float32, float16 or bfloat16 (or float64 on CPU), got {t.dtype} on {t.device}")


def check_dim(t: torch.Tensor, dim: int, arg: str) -> None:
    if t.dim() != dim:
        raise arg_error(arg, f"must have {dim} dimension(s), got shape {tuple(t.shape)}")


def check_bool(t, n: int, arg: str, n_arg: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
        raise arg_error(arg, f"must be a bool tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.numel() != n:
        raise arg_error(arg, f"must have as many entries as '{n_arg}' ({n}), got {t.numel()}")


def check_integer(value, arg: str) -> int:
    """value as an int: a fractional value is refused, not truncated."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise arg_error(arg, f"must be a whole number, got {value!r}")


def integer_tensor(value, arg: str, device) -> torch.Tensor:
    """value (a number, a sequence or a tensor) as int64: fractional entries are refused, not truncated."""
    t = torch.as_tensor(value, device=device)
    if t.dtype == torch.bool or t.is_complex():
        raise arg_error(arg, f"must hold whole numbers, got {t.dtype}")
    if t.is_floating_point():
        fractional = ~(torch.isfinite(t) & (t == t.trunc()))
        if bool(fractional.any()):
            raise arg_error(arg, f"must hold whole numbers, got {t[fractional].flatten()[0].item()}")
    return t.to(torch.int64)


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


def check_shape(cond, arg: str, msg: str) -> None:
    """A shape check of a fake (meta) kernel: cond may be symbolic (torch._check defers it)."""
    torch._check(cond, lambda: f"greedyprune: argument '{arg}' {msg}")
