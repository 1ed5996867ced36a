"""Training, fine-tuning and evaluation loops for the pruning drivers.

Loaders yield (inputs, targets) batches. Finding and building the model to train is
model_source's.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import distributed
from ..checks import arg_error, check_callable, check_choice, check_int, check_module, check_real
from .checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint, setting_differences

PRECISIONS = ("auto", "fp32", "bf16")
# The command lines' --channels-last: auto (on CUDA) / on / off, as train's channels_last argument.
CHANNELS_LAST_CHOICES = {"auto": None, "on": True, "off": False}


def train(model: nn.Module, loader, *, epochs: int, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
          label_smoothing: float = 0.0, nesterov: bool = False, device=None,
          params: Iterable[torch.Tensor] | None = None,
          after_step: Callable[[nn.Module, int], None] | None = None,
          progress: bool = True, desc: str = "train", precision: str = "auto",
          channels_last: bool | None = None, checkpoint=None, resume: bool = False) -> list[float]:
    """SGD with cosine learning-rate decay per iteration (lr at step 0, 0 after the last step).

    Optimizes `params` if given, else every parameter of `model` that requires grad, on
    cross-entropy with `label_smoothing`. `after_step(model, step)` runs after each
    optimizer step (step = 0 .. epochs*len(loader)-1) while the optimizer's lr is still the
    one that step used. `device`: where the model and batches go (default: the model's).
    Returns the mean training loss of each epoch; the model's train/eval mode is restored.
    Under torchrun the model trains wrapped in DDP on a sharded loader (make_loader): each step's
    loss is the mean over the global batch however it is shared (distributed.global_mean), the
    epoch losses are means over every process's samples, and BatchNorm normalises by the global
    batch.
    precision: "bf16" runs the forward and the loss under torch.autocast(bfloat16) (weights,
    gradients and optimizer state stay float32); "fp32" does not; "auto": bf16 on a CUDA device
    that supports it. channels_last: conv weights and 4-D inputs in NHWC layout while training
    (default: on CUDA); the weights are contiguous again afterwards.
    checkpoint: a file written atomically after every epoch (the model, optimizer, schedule, random
    states, the loader's position and the losses); with resume, training continues from it when it
    exists, as the uninterrupted run would (bit for bit on the CPU). Settings that differ from the
    checkpoint's are refused, named.
    """
    check_module(model)
    check_choice("precision", precision, PRECISIONS)
    check_int("epochs", epochs, minimum=1)
    check_real("lr", lr, low=0.0, low_open=True)
    check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
    check_real("weight_decay", weight_decay, low=0.0)
    check_real("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
    if nesterov and momentum == 0:
        raise arg_error("nesterov", "needs momentum > 0")
    if after_step is not None:
        check_callable("after_step", after_step)
    steps_per_epoch = _check_loader(loader)
    device = _place(model, device)
    trained = _check_params(model, params)
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    nhwc = device.type == "cuda" if channels_last is None else bool(channels_last)

    optimizer = torch.optim.SGD(trained, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))

    settings = dict(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    label_smoothing=label_smoothing, nesterov=nesterov, steps_per_epoch=steps_per_epoch,
                    bf16=bf16, world_size=distributed.world_size())
    if resume and checkpoint is None:
        raise arg_error("resume", "needs 'checkpoint' (the file to resume from)")
    epoch_losses, first_epoch = [], 0
    if resume and Path(checkpoint).is_file():
        epoch_losses = _resume(checkpoint, settings, model, optimizer, schedule, loader)
        first_epoch = len(epoch_losses)
    was_training = model.training
    model.train()
    if nhwc:
        model.to(memory_format=torch.channels_last)
    net = distributed.ddp(model)
    step = first_epoch * steps_per_epoch
    try:
        for epoch in range(first_epoch, epochs):
            loss_sum, samples = 0.0, 0
            batches = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for batch in batches:
                inputs, targets = _unpack(batch, device)
                if nhwc and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    summed = F.cross_entropy(net(inputs), targets, label_smoothing=label_smoothing, reduction="sum")
                loss, batch_loss = distributed.global_mean(summed, len(targets))
                local_sum, step_lr = float(summed.detach()), optimizer.param_groups[0]["lr"]
                if not math.isfinite(batch_loss):  # stop before a NaN step spoils the weights
                    raise FloatingPointError(f"greedyprune: training loss became {batch_loss} at epoch {epoch + 1}, "
                                             f"step {step} (lr {step_lr:.3g}); try a smaller 'lr'")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step(model, step)
                schedule.step()
                step += 1
                loss_sum += local_sum
                samples += len(targets)
                batches.set_postfix(loss=f"{batch_loss:.4f}", lr=f"{step_lr:.3g}", refresh=False)
            loss_sum, samples = distributed.sum_numbers(loss_sum, samples)
            epoch_losses.append(loss_sum / samples)
            if checkpoint is not None:
                save_checkpoint({"format": TRAIN_CHECKPOINT_FORMAT, "settings": settings, "losses": epoch_losses,
                                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "schedule": schedule.state_dict(), "rng": rng_states(),
                                 "loader": loader.position() if hasattr(loader, "position") else None}, checkpoint)
    finally:
        model.train(was_training)
        if nhwc:
            model.to(memory_format=torch.contiguous_format)
    distributed.average_buffers(model)
    return epoch_losses


TRAIN_CHECKPOINT_FORMAT = 1


def _resume(checkpoint, settings: dict, model: nn.Module, optimizer, schedule, loader) -> list[float]:
    """Restore what `train` saved after its last epoch; returns the losses of the epochs done."""
    state = load_checkpoint(checkpoint, kind="training", file_format=TRAIN_CHECKPOINT_FORMAT)
    differ = setting_differences(state["settings"], settings)
    if differ:
        raise arg_error("resume", f"checkpoint {str(checkpoint)!r} was written with other settings: {', '.join(differ)}")
    if len(state["losses"]) > settings["epochs"]:
        raise arg_error("resume", f"checkpoint {str(checkpoint)!r} is past epoch {settings['epochs']}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise arg_error("resume", f"checkpoint {str(checkpoint)!r} does not fit the model ({err})") from None
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    restore_rng_states(state["rng"])
    if state["loader"] is not None and hasattr(loader, "restore"):
        loader.restore(state["loader"])
    return list(state["losses"])


def cosine_factor(step: int, total_steps: int) -> float:
    """The learning-rate factor of cosine decay per iteration: 1 at step 0, approaching 0 after
    the last of total_steps (steps count from 0)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


# Seed 000's fine-tuning (sec. 5): SGD, momentum 0.9, weight decay 5e-5, cosine decay, 150 epochs at
# batch 256, no label smoothing; lr 0.001 for ResNet-34 and 0.01 for MobileNetV2 and V3. It gives no
# learning rate for other models.
PAPER_FINETUNE = dict(epochs=150, batch_size=256, momentum=0.9, weight_decay=5e-5, label_smoothing=0.0)
PAPER_FINETUNE_LR = {"resnet34": 0.001, "mobilenet_v2": 0.01, "mobilenet_v3_small": 0.01, "mobilenet_v3_large": 0.01}
# A short run to try things: the paper's optimizer for 3 epochs at batch 64, lr 0.01, and label smoothing
# 0.1, which the paper does not use (`finetune`'s defaults).
QUICK_FINETUNE = dict(epochs=3, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-5, label_smoothing=0.1)
FINETUNE_RECIPES = ("quick", "paper")
RECIPE_SETTINGS = tuple(QUICK_FINETUNE)  # what a recipe sets, in the order reports give them


def finetune_recipe(recipe: str, arch: str) -> dict:
    """The fine-tuning settings (epochs, batch_size, lr, momentum, weight_decay, label_smoothing) of
    `recipe` for the architecture `arch` (a zoo name, or torchvision:/timm:<name>): "quick" is
    QUICK_FINETUNE; "paper" is PAPER_FINETUNE with seed 000's lr for `arch`, lr None for an
    architecture the paper gives none for."""
    check_choice("recipe", recipe, FINETUNE_RECIPES)
    if recipe == "quick":
        return dict(QUICK_FINETUNE)
    return dict(PAPER_FINETUNE, lr=PAPER_FINETUNE_LR.get(str(arch).rpartition(":")[2]))


def finetune(model: nn.Module, loader, *, epochs: int, lr: float = QUICK_FINETUNE["lr"],
             weight_decay: float = QUICK_FINETUNE["weight_decay"],
             label_smoothing: float = QUICK_FINETUNE["label_smoothing"], **kw) -> list[float]:
    """`train` for fine-tuning: SGD momentum 0.9 and cosine decay as seed 000, with the quick
    recipe's lr 0.01, weight decay 5e-5 and label smoothing 0.1 unless given (the paper's, per
    model: `finetune_recipe("paper", arch)`)."""
    kw.setdefault("desc", "finetune")
    return train(model, loader, epochs=epochs, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing,
                 **kw)


def evaluate(model: nn.Module, loader, *, device=None) -> dict:
    """Mean cross-entropy `loss`, `accuracy` (fraction correct) and `samples` over `loader`,
    in eval mode without grad; the model's previous mode is restored. A sharded loader's sums
    are taken over every process (make_loader)."""
    check_module(model)
    _check_loader(loader)
    device = _place(model, device)
    loss_sum, correct, samples = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for batch in loader:
            inputs, targets = _unpack(batch, device)
            logits = model(inputs)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(dim=1) == targets).sum().item()
            samples += len(targets)
    if getattr(loader, "sharded", False):
        loss_sum, correct, samples = distributed.sum_numbers(loss_sum, correct, samples)
        correct, samples = int(correct), int(samples)
    if samples == 0:
        raise arg_error("loader", "yielded no samples")
    return dict(loss=loss_sum / samples, accuracy=correct / samples, samples=samples)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable, *, device=None) -> int:
    """Re-estimate every BatchNorm's running mean and variance from `batches` (input tensors or
    (inputs, targets) pairs), as train-mode BN with momentum None does: each batch normalised by
    its own statistics, the running mean the average of the batches' means, the running variance
    the average of their unbiased variances (every batch weighs the same). Dropout stays off and
    no grad is taken. A batch's statistics are sums of x and x^2 and counts over every process
    under torchrun, so the statistics are those of the global batch, whatever the process count.
    Returns the number of BN layers; on an error the old statistics stay."""
    check_module(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    device = _place(model, device)
    sums = {m: [torch.zeros(m.num_features, dtype=torch.float64, device=device) for _ in range(2)] for m in norms}
    handles = [m.register_forward_hook(lambda m, args, _out: _global_batch_norm(m, args[0], sums[m])) for m in norms]
    seen = 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                inputs = batch if torch.is_tensor(batch) else batch[0]
                model(inputs.to(device))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise arg_error("batches", "yielded no batch")
    with torch.no_grad():
        for m in norms:
            mean_sum, var_sum = sums[m]
            m.running_mean.copy_(mean_sum / seen)
            m.running_var.copy_(var_sum / seen)
            m.num_batches_tracked.fill_(seen)
    return len(norms)


def _global_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, sums: list[torch.Tensor]):
    """`module`'s train-mode output on x with the global batch's statistics (summed over the
    processes in float64); adds the batch mean and unbiased variance to `sums`."""
    dims = [0, *range(2, x.dim())]
    xd = x.double()
    count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
    sums_of_x = distributed.all_reduce_sum(torch.cat([xd.sum(dims), xd.square().sum(dims), count]))  # one collective
    c = x.shape[1]
    n = float(sums_of_x[2 * c])
    mean = sums_of_x[:c] / n
    var = (sums_of_x[c:2 * c] / n - mean.square()).clamp_min(0)
    sums[0].add_(mean)
    sums[1].add_(var * (n / max(n - 1, 1)))
    shape = (1, -1, *([1] * (x.dim() - 2)))
    y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
    if module.affine:
        y = y * module.weight.double().view(shape) + module.bias.double().view(shape)
    return y.to(x.dtype)


@contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode inside the block; its previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _place(model: nn.Module, device) -> torch.device:
    """The device batches go to: `device` (the model is moved there) or the model's own."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    first = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    return first.device if first is not None else torch.device("cpu")


def _unpack(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise arg_error("loader", f"must yield (inputs, targets) batches, got {type(batch).__name__}")
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _check_loader(loader) -> int:
    """The number of batches per epoch; an error unless `loader` is a non-empty sized iterable."""
    try:
        steps = len(loader)
    except TypeError:
        raise arg_error("loader", f"must be an iterable with len() (e.g. a DataLoader), "
                        f"got {type(loader).__name__}") from None
    if steps < 1:
        raise arg_error("loader", "has no batches")
    return steps


def _check_params(model: nn.Module, params) -> list[torch.Tensor]:
    if params is None:
        trained = [p for p in model.parameters() if p.requires_grad]
        if not trained:
            raise arg_error("model", "has no parameter that requires grad")
        return trained
    if torch.is_tensor(params):
        raise arg_error("params", "must be an iterable of tensors, not a single tensor")
    trained = list(params)
    if not trained:
        raise arg_error("params", "is empty")
    for p in trained:
        if not torch.is_tensor(p) or not p.is_leaf or not p.requires_grad:
            raise arg_error("params", "must hold leaf tensors that require grad")
    return trained

