"""Size and speed of a model: parameter count, FLOPs of one forward, latency."""
from __future__ import annotations

import os
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..checks import arg_error, check_int, check_module
from .training import eval_mode, evaluate


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (shared parameters counted once)."""
    check_module(model)
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_input) -> int:
    """FLOPs of one forward on `example_input` (a tensor or tuple of tensors) as
    torch.utils.flop_counter counts them: 2 per multiply-accumulate, matmuls and convolutions only."""
    check_module(model)
    args = _as_args(example_input)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(*args)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, example_input, *, warmup: int = 5, repeats: int = 30) -> dict:
    """Wall time of one forward on `example_input` in ms (time.perf_counter, eval mode,
    torch.inference_mode): median, 10th and 90th percentile over `repeats` runs after `warmup`,
    with the thread count and the 1-minute load average before and after (the figure depends on them)."""
    check_module(model)
    args = _as_args(example_input)
    check_int("warmup", warmup, minimum=0)
    check_int("repeats", repeats, minimum=1)
    on_cuda = any(a.is_cuda for a in args)
    times_ms = []
    load_before = os.getloadavg()[0]
    with eval_mode(model), torch.inference_mode():
        for run in range(warmup + repeats):
            start = time.perf_counter()
            model(*args)
            if on_cuda:  # kernels run asynchronously: time until they finish
                torch.cuda.synchronize()
            if run >= warmup:
                times_ms.append((time.perf_counter() - start) * 1e3)
    p10, median, p90 = torch.tensor(times_ms, dtype=torch.float64).quantile(
        torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return dict(median_ms=median, p10_ms=p10, p90_ms=p90, repeats=repeats, threads=torch.get_num_threads(),
                load=[load_before, os.getloadavg()[0]])


def _as_args(example_input) -> tuple[torch.Tensor, ...]:
    args = (example_input,) if torch.is_tensor(example_input) else example_input
    if not isinstance(args, (tuple, list)) or not args or not all(torch.is_tensor(a) for a in args):
        raise arg_error("example_input", "must be a tensor or a non-empty tuple of tensors, "
                        f"got {type(example_input).__name__}")
    return tuple(args)


def model_stats(model: nn.Module, test_loader, example: torch.Tensor) -> dict:
    """Parameters, FLOPs and MACs (papers and Torch-Pruning quote MACs; torch's flop counter gives
    2 FLOPs per multiply-accumulate), test accuracy and loss, and latency at batch 1 and 64 on the
    model's device, which `latency_device` names (what the drivers report before and after pruning)."""
    acc = evaluate(model, test_loader)
    device = next((p.device for p in model.parameters()), example.device)
    example = example[:1].to(device)
    batch64 = example.expand(64, *example.shape[1:]).contiguous()
    one, many = measure_latency(model, example), measure_latency(model, batch64, repeats=10)
    flops = count_flops(model, example)
    return {"params": count_params(model), "flops": flops, "macs": flops // 2,
            "accuracy": acc["accuracy"], "test_loss": acc["loss"],
            "latency_ms_batch1": one["median_ms"], "latency_ms_batch64": many["median_ms"],
            "latency_device": device_name(device), "latency_threads": one["threads"],
            "latency_load": [one["load"][0], many["load"][1]]}


def device_name(device: torch.device) -> str:
    """"CPU" or the GPU's name (the device a latency was measured on)."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
