"""The check the Taylor-score tests share: ops.taylor_scores' gr is the derivative of the
evaluator's discrepancy along e_i - a, taken here by central differences."""
import math

import torch


def assert_gr_is_the_directional_derivative(evaluator, a: torch.Tensor, gr: torch.Tensor, channels=None, *,
                                            h: float = 1e-6, abs_tol: float = 1e-9) -> None:
    """For each channel i (default every one): the discrepancy at gates N((1 - t) a + t e_i),
    differentiated at t = 0, equals N gr_i (rel_tol 1e-4)."""
    n = a.numel()
    for i in range(n) if channels is None else channels:
        e = torch.eye(n, dtype=torch.float64)[i]
        fd = float(evaluator.evaluate(((1 - h) * a + h * e) * n) - evaluator.evaluate(((1 + h) * a - h * e) * n)) / (2 * h)
        assert math.isclose(fd, n * float(gr[i]), rel_tol=1e-4, abs_tol=abs_tol), i
