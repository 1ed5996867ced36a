"""SR-popup lottery-jackpot search (seed 002, Algorithm 1): initialisation, swap-rate schedules,
the search loop with exact checkpoint/resume, and the mask overlap of eq. 7.

Ranking scope: the paper's sparsity and its TopK (eqs. 1, 5, 8, 28) run over all weights at once,
so by default (scope "global") the swap ranks every wrapped weight together: the total kept count
is constant and the per-layer counts move. scope "layer" freezes each layer's count at its
initial value (edge-popup's per-layer top-k).

Choices (documented where the paper is silent): BatchNorm layers stay in train mode during the
search (batch statistics, running statistics updated, affine frozen), as in the authors' code;
the learning rate follows a cosine per iteration; the swap of iteration t (1-based) uses the rate
of step t, so the last step of the `paper` schedule swaps nothing.
"""
from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import distributed, ops
from ..checks import arg_error, check_choice, check_int, check_real
from ..harness.data import make_loader
from ..harness.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint, setting_differences
from ..harness.training import cosine_factor, evaluate, recalibrate_batchnorm
from .masked import MaskedModel, segment_counts

SCHEDULES = ("paper", "constant", "inverse")
INIT_METHODS = ("global", "uniform")
SCORE_INITS = ("magnitude", "random")
SCOPES = ("global", "layer")  # what one swap ranks together: all wrapped weights, or each layer
BN_MODES = ("keep", "update")  # BatchNorm statistics during the search
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
_EPOCH_SEED_STRIDE = 1_000_003  # per-epoch data seed = seed * stride + epoch


# ------------------------------------------------------------ initialisation


def magnitudes(masked: MaskedModel) -> torch.Tensor:
    """|w| of every wrapped weight, flat in segment order (float32)."""
    return masked.flat_weights().abs()


def layer_keep_counts(masked: MaskedModel, sparsity: float, method: str = "global") -> torch.Tensor:
    """Entries each layer keeps, int64 [L].

    global: the round((1 - sparsity) * N) largest |w| over all wrapped weights (one threshold;
    ties: lower index), counted per layer. uniform: round((1 - sparsity) * n_l) per layer.
    """
    sparsity = check_real("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    check_choice("method", method, INIT_METHODS)
    sizes = masked.offsets[1:] - masked.offsets[:-1]
    if method == "uniform":
        return torch.round((1 - sparsity) * sizes.double()).to(torch.int64)
    total = round((1 - sparsity) * int(masked.offsets[-1]))
    return segment_counts(ops.segment_select(magnitudes(masked), total), masked.offsets)


def magnitude_keep(masked: MaskedModel, counts: torch.Tensor) -> torch.Tensor:
    """Magnitude top-k mask: per layer the counts[l] largest |w| (ties: lower index)."""
    return ops.segment_select(magnitudes(masked), counts, masked.offsets)


@torch.no_grad()
def initialize(masked: MaskedModel, sparsity: float, *, method: str = "global", eta: float = 0.99,
               scores: str = "magnitude", seed: int = 0) -> torch.Tensor:
    """Magnitude init (eq. 8): keep = per-layer magnitude top-k, scores 1 where kept and eta elsewhere.
    scores="random": edge-popup's init instead, scores uniform in [0, 1) drawn from `seed` and keep
    = their per-layer top-k (the SR-popup paper's "w/o M" ablation with its schedule).

    Returns the per-layer keep counts (the search keeps their total constant, and each one under
    scope "layer").
    """
    eta = check_real("eta", eta, low=0.0, high=1.0, high_open=True)
    check_choice("scores", scores, SCORE_INITS)
    counts = layer_keep_counts(masked, sparsity, method)
    if scores == "random":
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.rand(masked.scores.shape, generator=generator).to(masked.scores)
        masked.scores.copy_(drawn)
        masked.keep = ops.segment_select(drawn.float(), counts, masked.offsets)
        return counts
    keep = magnitude_keep(masked, counts)
    masked.keep = keep
    masked.scores.copy_(torch.where(keep, 1.0, eta))
    return counts


def overlap(keep_a: torch.Tensor, keep_b: torch.Tensor) -> float:
    """Eq. 7: 1 - ||m_a - m_b||_1 / k, the fraction of the k entries where two binary masks agree."""
    if not (isinstance(keep_a, torch.Tensor) and isinstance(keep_b, torch.Tensor)) or keep_a.shape != keep_b.shape:
        raise arg_error("keep_b", "must be a tensor shaped like 'keep_a'")
    if keep_a.numel() == 0:
        raise arg_error("keep_a", "must not be empty")
    return 1.0 - (keep_a != keep_b).sum().item() / keep_a.numel()


# ----------------------------------------------------------------- schedules


def swap_rate(schedule: str, step: int, total_steps: int) -> float:
    """The fraction of Psi* that swaps at iteration `step` (1-based) of `total_steps` (eq. 29).

    paper: (1 - t/t_f)^4; constant: 1 (edge-popup); inverse: (t/t_f)^4 (the paper's ablation).
    """
    check_choice("schedule", schedule, SCHEDULES)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= total_steps:
        raise arg_error("step", f"must be an int in [1, total_steps = {total_steps}], got {step!r}")
    if schedule == "constant":
        return 1.0
    progress = step / total_steps
    return (1.0 - progress) ** 4 if schedule == "paper" else progress ** 4


def reestimate_batchnorm(masked: MaskedModel, train_set, *, batch_size: int = 256, seed: int = 0) -> int:
    """Re-estimate the BatchNorm running statistics of the masked model over one pass of the
    training set (recalibrate_batchnorm); returns the number of BN layers."""
    return recalibrate_batchnorm(masked, make_loader(train_set, batch_size, shuffle=True, seed=seed))


def ranking_offsets(masked: MaskedModel, scope: str = "global") -> torch.Tensor:
    """Segment borders of the swap: [0, N] (every wrapped weight ranked together) for "global",
    the layers' borders for "layer"."""
    check_choice("scope", scope, SCOPES)
    if scope == "layer":
        return masked.offsets
    return masked.offsets[[0, -1]]


@torch.no_grad()
def popup_step(masked: MaskedModel, rate: float, scope: str = "global") -> torch.Tensor:
    """One SR-popup swap (one op call) ranking as `scope` says; returns q, the swaps per ranked
    segment (one number for "global", one per layer for "layer")."""
    result = ops.popup_swap(masked.scores.detach(), masked.keep, rate, ranking_offsets(masked, scope))
    masked.keep = result.keep
    return result.q


# ---------------------------------------------------------------------- loop


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search; defaults follow the paper (SGD momentum 0.9, lr 0.1, eta 0.99, batch 256,
    one ranking over all wrapped weights: scope "global"; "layer" keeps each layer's count fixed).

    bn: "keep" (default) normalises with the pre-trained statistics and leaves them untouched, so
    no weight or statistic is modified (the paper's "no weight is modified"); "update" runs
    BatchNorm in train mode during the search (batch statistics; the running statistics follow the
    masked network), as the authors' and edge-popup's code do: then part of the gain over the
    magnitude mask is BatchNorm adapting to it (the demo reports both, and magnitude pruning with
    re-estimated statistics). `reestimate_batchnorm` re-estimates the statistics after a search
    either way."""

    sparsity: float = 0.9
    schedule: str = "paper"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init: str = "global"
    scores: str = "magnitude"  # "random": edge-popup's score init
    eta: float = 0.99
    seed: int = 0
    bn: str = "keep"
    scope: str = "global"

    def __post_init__(self):
        check_real("sparsity", self.sparsity, low=0.0, high=1.0, high_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr)
                                                                                        and self.lr > 0):
            raise arg_error("lr", f"must be a finite number > 0, got {self.lr!r}")
        check_real("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or not (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise arg_error("weight_decay", f"must be a finite number >= 0, got {self.weight_decay!r}")
        check_choice("init", self.init, INIT_METHODS)
        check_choice("scores", self.scores, SCORE_INITS)
        check_real("eta", self.eta, low=0.0, high=1.0, high_open=True)
        check_int("seed", self.seed, minimum=0)
        check_choice("bn", self.bn, BN_MODES)
        check_choice("scope", self.scope, SCOPES)


class StepInfo(NamedTuple):
    """What `search` passes to `on_step` after every swap."""

    step: int  # 1-based iteration
    epoch: int  # 0-based
    lr: float  # learning rate of this step
    rate: float  # swap rate of this step
    loss: float  # batch loss before the step
    swaps: torch.Tensor  # q per ranked segment, int64: [1] for scope "global", [L] for "layer"


def checkpoint_path(out_dir) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


@contextmanager
def _deferred_interrupt():
    """Ctrl-C (SIGINT) sets a flag the loop reads between steps; a second one interrupts at once."""
    flag = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    previous = signal.default_int_handler if previous is None else previous

    def request(signum, frame):
        flag["requested"] = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, request)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _epoch_totals() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "samples": 0, "swaps": 0}


def search(masked: MaskedModel, train_set, test_set, config: SearchConfig = SearchConfig(), *, out_dir=None,
           resume: bool = False, progress: bool = True,
           on_step: Callable[[StepInfo], None] | None = None) -> list[dict]:
    """Search a lottery jackpot in `masked` (Algorithm 1); returns the per-epoch history.

    Starts with `initialize` (or, with `resume`, from out_dir/checkpoint.pt when it exists).
    Every iteration: cross-entropy on a batch, SGD (momentum, weight decay, cosine lr per
    iteration) on the flat scores, then one `popup_swap` at the schedule's rate, ranking all
    wrapped weights together (config.scope "global") or each layer apart ("layer").
    Batches of epoch e come from make_loader(train_set, shuffle, seed = seed * 1_000_003 + e).
    Under torchrun the scores train in DDP on each process's share of every batch, so every
    process holds the same scores and makes the same swaps; rank 0 writes the checkpoint.
    With `out_dir`, a checkpoint (scores, keep, BN statistics, optimizer, step, RNG state,
    history) is written atomically after every epoch and when Ctrl-C stops the run (between
    steps, then KeyboardInterrupt is raised); resuming continues bit-for-bit, mid-epoch included.
    History entries: epoch (0: after init), step, lr, rate, swaps, train_loss, train_accuracy
    (None at epoch 0), test_loss, test_accuracy, overlap (eq. 7, with the magnitude mask).
    """
    if not isinstance(masked, MaskedModel):
        raise arg_error("masked", f"must be a MaskedModel (see popup.wrap), got {type(masked).__name__}")
    if not isinstance(config, SearchConfig):
        raise arg_error("config", f"must be a SearchConfig, got {type(config).__name__}")
    if resume and out_dir is None:
        raise arg_error("resume", "needs 'out_dir' (where the checkpoint is)")
    if on_step is not None and not callable(on_step):
        raise arg_error("on_step", f"must be callable, got {type(on_step).__name__}")
    if len(train_set) == 0:
        raise arg_error("train_set", "is empty")
    steps_per_epoch = len(make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed))
    total_steps = config.epochs * steps_per_epoch
    device = masked.scores.device
    test_loader = make_loader(test_set, config.batch_size, shuffle=False)
    optimizer = torch.optim.SGD([masked.scores], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    path = checkpoint_path(out_dir) if out_dir is not None else None

    if resume and path.is_file():
        state = load_checkpoint(path, kind="search", file_format=CHECKPOINT_FORMAT)
        differ = setting_differences(state.get("config") or {}, asdict(config))
        if differ:
            raise arg_error("resume", f"checkpoint {str(path)!r} was written with other settings: {', '.join(differ)}; "
                                      "resume needs the same settings")
        if state["layer_names"] != masked.layer_names:
            raise arg_error("masked", "wraps other layers than the checkpoint's model")
        masked.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"])
        step, history, totals = state["step"], state["history"], state["epoch_totals"]
    else:
        initialize(masked, config.sparsity, method=config.init, eta=config.eta, scores=config.scores,
                   seed=config.seed)
        step, history, totals = 0, [], _epoch_totals()
    # The magnitude mask of the initial counts (not of today's: under scope "global" they move).
    magnitude = magnitude_keep(masked, layer_keep_counts(masked, config.sparsity, config.init))

    def save() -> None:
        if path is not None:
            save_checkpoint({"format": CHECKPOINT_FORMAT, "config": asdict(config), "layer_names": masked.layer_names,
                             "model": masked.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_states(),
                             "step": step, "history": history, "epoch_totals": totals}, path)

    def stop() -> None:
        where = f"; checkpoint in {path}: resume with --resume (resume=True in Python)" if path else ""
        raise KeyboardInterrupt(f"search interrupted after step {step}/{total_steps}{where}")

    if not history:
        test = evaluate(masked, test_loader)
        history.append(dict(epoch=0, step=0, lr=None, rate=None, swaps=0, train_loss=None, train_accuracy=None,
                            test_loss=test["loss"], test_accuracy=test["accuracy"],
                            overlap=overlap(masked.keep, magnitude)))
        save()

    was_training = masked.training
    net = distributed.ddp(masked)
    bar = tqdm(total=total_steps, initial=step, desc=f"search ({config.schedule})", disable=not progress)
    try:
        with _deferred_interrupt() as interrupt:
            # The last recorded epoch, not step // steps_per_epoch: a run stopped after the last
            # step of an epoch resumes with that epoch's evaluation.
            for epoch in range(history[-1]["epoch"], config.epochs):
                masked.train()
                if config.bn == "keep":
                    for module in masked.modules():
                        if isinstance(module, nn.modules.batchnorm._BatchNorm):
                            module.eval()
                loader = make_loader(train_set, config.batch_size, shuffle=True,
                                     seed=config.seed * _EPOCH_SEED_STRIDE + epoch)
                done_in_epoch = step - epoch * steps_per_epoch
                for index, (inputs, targets) in enumerate(loader):
                    if index < done_in_epoch:
                        continue  # consumed before the interruption: keep the epoch's data stream
                    inputs, targets = inputs.to(device), targets.to(device)
                    lr = config.lr * cosine_factor(step, total_steps)
                    rate = swap_rate(config.schedule, step + 1, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    logits = net(inputs)
                    summed = F.cross_entropy(logits, targets, reduction="sum")
                    loss, batch_loss = distributed.global_mean(summed, len(targets))  # the global batch's mean
                    if not math.isfinite(batch_loss):  # stop before NaN scores reach the swap
                        raise FloatingPointError(f"greedyprune.popup: search loss became {batch_loss} at step "
                                                 f"{step + 1} (lr {lr:.3g}); try a smaller 'lr'")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    swaps = popup_step(masked, rate, config.scope)
                    step += 1
                    totals["loss_sum"] += float(summed.detach())
                    totals["correct"] += (logits.argmax(1) == targets).sum().item()
                    totals["samples"] += len(targets)
                    totals["swaps"] += int(swaps.sum())
                    bar.update()
                    bar.set_postfix(loss=f"{batch_loss:.4f}", lr=f"{lr:.3g}", rate=f"{rate:.3g}", refresh=False)
                    if on_step is not None:
                        on_step(StepInfo(step, epoch, lr, rate, batch_loss, swaps))
                    if interrupt["requested"]:
                        save()
                        stop()
                distributed.average_buffers(masked)
                shared = ("loss_sum", "correct", "samples")  # the swaps are the same on every process
                for key, value in zip(shared, distributed.sum_numbers(*(totals[k] for k in shared))):
                    totals[key] = value
                test = evaluate(masked, test_loader)
                history.append(dict(epoch=epoch + 1, step=step, lr=config.lr * cosine_factor(step - 1, total_steps),
                                    rate=swap_rate(config.schedule, step, total_steps), swaps=totals["swaps"],
                                    train_loss=totals["loss_sum"] / totals["samples"],
                                    train_accuracy=totals["correct"] / totals["samples"],
                                    test_loss=test["loss"], test_accuracy=test["accuracy"],
                                    overlap=overlap(masked.keep, magnitude)))
                totals = _epoch_totals()
                save()
                if interrupt["requested"]:  # Ctrl-C during the evaluation
                    stop()
    finally:
        bar.close()
        masked.train(was_training)
    return history
