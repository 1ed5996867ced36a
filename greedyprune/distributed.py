"""torch.distributed for every driver, started by torchrun (docs/DESIGN.md §7).

Under `torchrun --nproc_per_node N -m greedyprune.cli ...` each process runs the same command on
its shard of the data: training loaders deal every global batch over the processes
(harness.data.GlobalBatches), training wraps the model
in DDP, and every statistic a decision rests on (Grams, Taylor sums, discrepancies, accuracy,
BatchNorm statistics) is summed over the processes, so all of them make the same decisions and
hold the same model. Only rank 0 writes files (files.replace_atomically). NCCL on GPUs (process
i on cuda:LOCAL_RANK), gloo on CPUs. Without a process group every function here is a no-op.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn

from .checks import arg_error


def init_from_env() -> bool:
    """Join the process group torchrun describes when WORLD_SIZE > 1 (NCCL with CUDA, each process
    on cuda:LOCAL_RANK; else gloo). Returns whether this process is one of several."""
    if active():
        return True
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("greedyprune: WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK") or 0))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def finish(*, wait: bool = True) -> None:
    """Leave the process group; with `wait`, first wait for every process (rank 0 may still be
    writing). A failed process leaves without waiting: the others may never get there."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes (in place where the collective can work on it); every
    process gets the same bits. Returned unchanged without a process group."""
    if not active():
        return tensor
    device = _collective_device()
    if tensor.device == device:
        dist.all_reduce(tensor)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved)
    tensor.copy_(moved)
    return tensor


def sum_numbers(*values: float) -> list[float]:
    """The float64 sums over the processes of each value."""
    if not active():
        return [float(v) for v in values]
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def gather_objects(obj) -> list:
    """Every process's `obj` (picklable), in rank order; [obj] without a process group."""
    if not active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def check_same(what: str, value) -> None:
    """Refuse, naming `what` and the first process that differs from rank 0, where the processes
    hold different `value`s (a fingerprint of their model or data: a run must see the same model
    and dataset everywhere)."""
    values = gather_objects(value)
    differing = next((r for r, v in enumerate(values) if v != values[0]), None)
    if differing is not None:
        raise arg_error(what, f"differs between processes: process {differing} has {values[differing]}, "
                              f"process 0 has {values[0]} (every process must load the same)")


def check_same_inputs(model: nn.Module, dataset) -> None:
    """Refuse, in one line naming 'model' or 'data' and the first process that differs, where the
    processes loaded different models (weights' fingerprint) or datasets (sample count): each would
    compute another answer. A no-op without a process group."""
    if active():
        check_same("model", fingerprint(model))
        check_same("data", len(dataset))


def fingerprint(model: nn.Module) -> tuple:
    """The model's parameter count and the float64 sums of its weights and their squares, rounded:
    equal models give equal fingerprints on every process."""
    with torch.no_grad():
        params = [p.detach().double() for p in model.state_dict().values() if p.is_floating_point()]
        total = sum(float(p.sum()) for p in params)
        squares = sum(float(p.square().sum()) for p in params)
    return sum(p.numel() for p in params), round(total, 6), round(squares, 6)


def average_buffers(model: nn.Module, weight: float = 1.0) -> None:
    """Floating buffers set to their `weight`-weighted mean over the processes, so every process
    holds the same model after training (BatchNorm running statistics trained through `ddp` are
    equal already; a model's other buffers need not be)."""
    if not active():
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    total = sum_numbers(weight)[0]
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers]) * weight
    all_reduce_sum(flat)
    flat /= total
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def global_mean(loss_sum: torch.Tensor, count: int) -> tuple[torch.Tensor, float]:
    """The loss to back-propagate, and the global batch's mean loss: `loss_sum` is the sum over
    this process's `count` samples, scaled by world_size over the global count so that DDP's
    average of the gradients is the gradient of the mean over every process's samples however
    unequal the shares. The mean is the same number on every process (a non-finite one stops all)."""
    total, samples = sum_numbers(float(loss_sum.detach()), count)
    return loss_sum * (world_size() / samples), total / samples


def per_rank(count: int, name: str) -> int:
    """`count` (a global batch or sample count) split evenly over the processes; an error naming
    `name` when the world size does not divide it."""
    world = world_size()
    if count % world:
        raise arg_error(name, f"({count}) must be divisible by the number of processes ({world}) so each "
                              "process takes an equal share")
    return count // world


def ddp(model: nn.Module) -> nn.Module:
    """`model` wrapped in DistributedDataParallel (gradients averaged over the processes;
    parameters and buffers copied from rank 0 first), or `model` itself without a process group.
    Every forward through the wrapper runs train-mode BatchNorm on the global batch
    (`global_batch_norm`), so the gradients, losses and running statistics are those one process
    computes on the whole batch. Buffers are not broadcast every step: `average_buffers`
    reconciles any others after training."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    class GlobalBatchNormDDP(DistributedDataParallel):
        def forward(self, *args, **kwargs):
            with global_batch_norm(self.module):
                return super().forward(*args, **kwargs)

    device = next(model.parameters()).device
    # torch >= 2.13 names the switch forward_sync_buffers (and still syncs buffers at init)
    names = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}
    return GlobalBatchNormDDP(model, device_ids=[device] if device.type == "cuda" else None, **no_sync)


@contextlib.contextmanager
def global_batch_norm(model: nn.Module):
    """Inside the block, every BatchNorm of `model` that normalises by batch statistics (train
    mode, or no running statistics) takes them from the sums of x and x^2 and the counts over
    all the processes, with their gradient (what torch's SyncBatchNorm does on GPUs only), and
    updates its running statistics with them; eval-mode BatchNorm is untouched. A no-op
    without a process group."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if active() else []
    for m in norms:
        m.forward = functools.partial(_global_batch_norm_forward, m, type(m).forward.__get__(m))
    try:
        yield model
    finally:
        for m in norms:
            del m.forward


class _SumOverProcesses(torch.autograd.Function):
    """The sum over the processes; its gradient with respect to each process's part is the sum
    of every process's gradient of the result (each process's loss depends on every part)."""

    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_sum(tensor.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.clone())


def _global_batch_norm_forward(module: nn.modules.batchnorm._BatchNorm, local_forward, x: torch.Tensor):
    if not (module.training or module.running_mean is None):
        return local_forward(x)
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    shape = (1, c, *([1] * (x.dim() - 2)))
    # shifted by the running mean, so that E[x^2] - E[x]^2 keeps float32 precision
    shift = module.running_mean.detach().float().clone() if module.running_mean is not None else x.new_zeros(c).float()
    xs = x.float() - shift.view(shape)
    count = xs.new_full((1,), x.numel() / c)
    sums = _SumOverProcesses.apply(torch.cat([xs.sum(dims), xs.square().sum(dims), count]).double())
    n = sums[2 * c].detach()
    centred_mean = sums[:c] / n
    var = (sums[c:2 * c] / n - centred_mean.square()).clamp_min(0)
    mean = centred_mean + shift.double()
    if module.training and module.track_running_stats:
        with torch.no_grad():
            module.num_batches_tracked.add_(1)
            factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
            module.running_mean.lerp_(mean.to(module.running_mean.dtype), factor)
            module.running_var.lerp_((var * (n / max(float(n) - 1, 1))).to(module.running_var.dtype), factor)
    y = (x.float() - mean.float().view(shape)) * torch.rsqrt(var.float().view(shape) + module.eps)
    if module.affine:
        y = y * module.weight.float().view(shape) + module.bias.float().view(shape)
    return y.to(x.dtype)
