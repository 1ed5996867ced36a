"""Sparsity-informed Adaptive Pruning (SAP, seed 003 Algorithm 1) and its two baselines.

As the paper's Algorithm 1, pruning iterations t = 0, 1, ..., T (T + 1 training rounds, T =
`SAPConfig.iterations`); every iteration t: rewind the model to its initial values with mask m_t
(lottery-ticket style: weights, biases and BatchNorm all rewound, masks kept), train E epochs with
the pruned weights held at zero, measure (accuracy, PQI, Gini), then drop c smallest-magnitude kept
weights per scope to make m_{t+1}. SAP takes c from the PQI bound (`ops.sap_prune_count`); "lottery" drops a fixed
ratio of each scope's kept weights; "one-shot" trains once and prunes the trained w_0 by the same
fixed ratio each iteration without retraining (the paper's One Shot). `keep_last_weight` (off, as
in the paper and the authors' code) keeps each neuron's largest weight when a drop would empty it.
After every iteration a checkpoint is written atomically; a resumed run is bit-exact
because every iteration draws its randomness from its own seed.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..checks import arg_error, check_finite_weights, is_real
from ..harness.data import make_loader
from ..harness.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint, setting_differences
from ..files import write_json
from ..models import save_model
from ..harness.training import evaluate, train
from . import report as reporting
from .pqi import PAPER_PAIR, PQIReport, json_number, pqi_report, warn_outside_theorem
from .weights import SCOPES, check_masks, prunable_weights, segment_offsets, segment_sums

METHODS = ("sap", "lottery", "one-shot")
CHECKPOINT_FORMAT = 2  # 2: iterations is the paper's T (T + 1 rounds) and keep_last_weight is a setting
CHECKPOINT_FILE = "checkpoint.pt"
RESULTS_FILE = "results.json"
FIGURE_FILE = "results.png"
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class SAPConfig:
    """Hyperparameters of one pruning run (paper defaults: p=0.5, q=1, eta=0, gamma=1, beta=0.9, ratio=0.2)."""

    method: str = "sap"  # "sap", "lottery" (fixed ratio, retrain) or "one-shot" (fixed ratio, no retraining)
    scope: str = "global"  # "neuron", "layer" or "global": where counts and magnitudes are compared
    p: float = 0.5
    q: float = 1.0
    eta: float = 0.0  # the bound's eta_r
    gamma: float = 1.0  # scales the bound's pruning fraction
    beta: float = 0.9  # at most this fraction of a scope is pruned per iteration (SAP)
    ratio: float = 0.2  # the baselines' fixed fraction of kept weights pruned per iteration
    iterations: int = 10  # T: rounds t = 0..T (T + 1 of them) each rewind, train, measure, then prune
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    batch_size: int = 250
    seed: int = 0
    stop_on_rising_pqi: bool = False  # stop once the global PQI_{p,q} of the retrained model rises
    keep_last_weight: bool = False  # a neuron never loses its last kept weight (neither the paper's rule nor its code's)

    def __post_init__(self):
        if self.method not in METHODS:
            raise arg_error("method", f"must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise arg_error("scope", f"must be one of {SCOPES}, got {self.scope!r}")
        if not (is_real(self.p) and is_real(self.q) and 0 < self.p < self.q):
            raise arg_error("p", f"must satisfy 0 < p < q (finite), got p = {self.p}, q = {self.q}")
        warn_outside_theorem(self.p, self.q)
        for name, low, high in (("eta", 0.0, math.inf), ("gamma", 0.0, math.inf), ("beta", 0.0, 1.0),
                                ("momentum", 0.0, 1.0), ("weight_decay", 0.0, math.inf)):
            value = getattr(self, name)
            if not (is_real(value) and low <= value <= high):
                raise arg_error(name, f"must lie in [{low}, {high}], got {value!r}")
        if not (is_real(self.ratio) and 0 < self.ratio < 1):
            raise arg_error("ratio", f"must lie in (0, 1), got {self.ratio!r}")
        if not isinstance(self.keep_last_weight, bool):
            raise arg_error("keep_last_weight", f"must be a bool, got {self.keep_last_weight!r}")
        if self.nesterov and self.momentum == 0:
            raise arg_error("nesterov", "needs momentum > 0")
        if not (is_real(self.lr) and self.lr > 0):
            raise arg_error("lr", f"must be > 0, got {self.lr!r}")
        for name, low in (("iterations", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise arg_error(name, f"must be an int >= {low}, got {value!r}")

    @property
    def label(self) -> str:
        if self.method == "sap":
            return f"SAP (p={self.p:g}, q={self.q:g})"
        return {"lottery": "Lottery Ticket", "one-shot": "One Shot"}[self.method] + f" ({self.ratio:g})"


# ------------------------------------------------------------------ masks


def full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """All-True masks for the model's prunable weights (floating, dim > 1)."""
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_weights(model).items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned entries of the model's weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def rewind(model: nn.Module, initial_state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer to its initial value, then zero the pruned weights."""
    model.load_state_dict(initial_state)
    apply_masks(model, masks)


class MaskedTraining:
    """While active: gradients of pruned weights are zeroed in backward (so weight decay and momentum
    see zero weights and zero gradients) and `after_step` re-applies the masks after every step."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model, self.masks, self.handles = model, masks, []

    def __enter__(self) -> "MaskedTraining":
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            self.handles.append(params[name].register_hook(lambda grad, mask=mask: grad * mask))
        return self

    def after_step(self, model: nn.Module, step: int) -> None:
        apply_masks(model, self.masks)

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


# ---------------------------------------------------------------- pruning


def prune_counts(report: PQIReport, config: SAPConfig) -> torch.Tensor:
    """How many kept weights each segment of `config.scope` loses this iteration [L] int64.

    SAP: c = floor(d * clamp(gamma (1 - r/d), 0, beta)) with r the PQI bound of the segment's
    trained weights; baselines: floor(d * ratio). `report` must hold the scope (and, for SAP, (p, q)).
    """
    stats = report.stats(config.scope)
    if config.method == "sap":
        pqi = report.pqi(config.scope, config.p, config.q)
        return ops.sap_prune_count(pqi, stats.counts, config.p, config.q, config.eta, config.gamma, config.beta)
    return torch.floor(stats.counts.to(torch.float64) * config.ratio).to(torch.int64)


def prune_smallest(weights, masks: dict[str, torch.Tensor] | None, counts, scope: str, *,
                   keep_last_weight: bool = False) -> dict[str, torch.Tensor]:
    """New masks: per segment of `scope`, the counts[l] smallest |w| among kept entries (masks None: all) dropped
    (ties: lower index first). keep_last_weight: a neuron (output row) never loses its last kept weight, a row
    the drop would empty keeps its largest one (then fewer than counts[l] leave). weights: a module or
    {name: tensor} (see prunable_weights)."""
    weights = prunable_weights(weights)
    masks = check_masks({} if masks is None else masks, weights)
    names = list(weights)
    shapes = [tuple(weights[n].shape) for n in names]
    device = weights[names[0]].device
    magnitude = torch.cat([weights[n].detach().abs().reshape(-1) for n in names])
    keep = torch.cat([masks[n].reshape(-1) for n in names])
    counts = torch.as_tensor(counts, dtype=torch.int64, device=device)
    drop = ops.segment_select(magnitude, counts, segment_offsets(shapes, scope, device),
                              eligible=keep, largest=False)
    new_keep = keep & ~drop
    if keep_last_weight:
        rows = segment_offsets(shapes, "neuron", device)
        emptied = (segment_sums(keep, rows) > 0) & (segment_sums(new_keep, rows) == 0)
        if bool(emptied.any()):
            new_keep |= ops.segment_select(magnitude, emptied.to(torch.int64), rows, eligible=drop, largest=True)
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = new_keep[start:start + n].view(shape)
        start += n
    return out


# ----------------------------------------------------------------- driver


@dataclass
class SAPResult:
    config: SAPConfig
    history: list[dict]  # one entry per completed iteration (see `run_sap`)
    model: nn.Module  # the last retrained model (pruned weights are zero)
    masks: dict[str, torch.Tensor]  # its masks
    next_masks: dict[str, torch.Tensor]  # the masks the next iteration would train with
    stopped: str | None  # "pqi_rising" when stop_on_rising_pqi ended the run early


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of one iteration (training order and every other random draw in it)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def _load_checkpoint(path: Path, config: SAPConfig, model: nn.Module) -> dict:
    state = load_checkpoint(path, kind="SAP", file_format=CHECKPOINT_FORMAT)
    differ = setting_differences(dict(state["config"]), dataclasses.asdict(config), ignore=("iterations",))
    if differ:
        raise arg_error("resume", f"checkpoint {str(path)!r} was written with other settings: {', '.join(differ)}")
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise arg_error("resume", f"checkpoint {str(path)!r} does not fit the model ({err})") from None
    return state


def run_sap(model: nn.Module, train_set, test_set, config: SAPConfig, *, out_dir=None, resume: bool = False,
            progress: bool = True, figure: bool = True, recipe: str | None = None) -> SAPResult:
    """Prune `model` (its current weights are the initial ones) over iterations t = 0..config.iterations.

    train_set/test_set: map-style datasets of (input, label). With `out_dir`, writes after every
    iteration checkpoint.pt (masks, current and initial weights, RNG states, history, iteration
    index) and results.json, and at the end model.pt (save_model, masks in meta) and, with `figure`,
    results.png. resume: continue from out_dir/checkpoint.pt when it exists (same settings;
    `iterations` may grow; the checkpoint holds tensors and plain data only, loaded with weights_only).
    recipe: what chose the budget (e.g. "paper"), recorded in results.json.
    Every iteration seeds torch, numpy and random from (config.seed, t).

    History entries (one per iteration t): accuracy/loss of the retrained model (w_t, mask m_t),
    remaining (kept weights) and remaining_percent, pqi (global PQI at the paper's (0.5, 1)), pqi_pq
    (global PQI at config's (p, q)), gini (global), per-layer values, pruned (weights dropped to make
    m_{t+1}), pruned_accuracy / pruned_pqi of w_t with m_{t+1}, train_loss, seconds.
    """
    if not isinstance(model, nn.Module):
        raise arg_error("model", f"must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, SAPConfig):
        raise arg_error("config", f"must be a SAPConfig, got {type(config).__name__}")
    if not prunable_weights(model):
        raise arg_error("model", "has no parameter with more than one dimension to prune")
    check_finite_weights("model", model)
    out = None if out_dir is None else Path(out_dir)
    if resume and out is None:
        raise arg_error("resume", "needs 'out_dir' (where the checkpoint is)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint = None if out is None else out / CHECKPOINT_FILE

    total = sum(w.numel() for w in prunable_weights(model).values())
    if resume and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, config, model)
        device = next(model.parameters()).device
        initial = {k: v.to(device) for k, v in state["init_state"].items()}
        masks = check_masks({k: v.to(device) for k, v in state["masks"].items()}, prunable_weights(model))
        next_masks = check_masks({k: v.to(device) for k, v in state["next_masks"].items()}, prunable_weights(model))
        history, start, stopped = state["history"], state["next_iteration"], state["stopped"]
        restore_rng_states(state["rng"])
    else:
        initial = _clone_state(model)
        masks = full_masks(model)
        next_masks = masks
        history, start, stopped = [], 0, None

    test_loader = make_loader(test_set, config.batch_size, shuffle=False)
    pairs = tuple(dict.fromkeys([PAPER_PAIR, (config.p, config.q)]))
    scopes = tuple(dict.fromkeys(["layer", "global", config.scope]))
    remaining_iterations = range(start, config.iterations + 1) if stopped is None else range(0)
    bar = tqdm(remaining_iterations, desc=config.label, disable=not progress, initial=start,
               total=config.iterations + 1)
    for t in bar:
        began = time.perf_counter()
        masks = next_masks
        seed = iteration_seed(config.seed, t)
        _set_seed(seed)
        if config.method == "one-shot" and t > 0:
            apply_masks(model, masks)  # w_0 with the new mask, no retraining
            losses = []
        else:
            rewind(model, initial, masks)
            loader = make_loader(train_set, config.batch_size, shuffle=True, seed=seed)
            with MaskedTraining(model, masks) as masked:
                losses = train(model, loader, epochs=config.epochs, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov,
                               after_step=masked.after_step, progress=progress, desc=f"iteration {t}")
        retrained = evaluate(model, test_loader)
        weights = prunable_weights(model)
        measured = pqi_report(weights, pairs, masks=masks, scopes=scopes)
        entry = _entry(t, measured, masks, total, retrained, losses, config)
        if config.stop_on_rising_pqi and history and _rose(history[-1]["pqi_pq"], entry["pqi_pq"]):
            next_masks, stopped = masks, "pqi_rising"
            entry.update(pruned=0, stopped=stopped)
        else:
            next_masks = prune_smallest(weights, masks, prune_counts(measured, config), config.scope,
                                        keep_last_weight=config.keep_last_weight)
            entry.update(_pruned_entry(model, weights, masks, next_masks, test_loader))
        entry["seconds"] = time.perf_counter() - began
        history.append(entry)
        bar.set_postfix(acc=f"{entry['accuracy']:.3f}", remaining=f"{entry['remaining_percent']:.1f}%", refresh=False)
        if out is not None:
            save_checkpoint({
                "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "next_iteration": t + 1,
                "masks": masks, "next_masks": next_masks, "model_state": model.state_dict(), "init_state": initial,
                "history": history, "rng": rng_states(), "stopped": stopped}, checkpoint)
            write_json(out / RESULTS_FILE, run_summary(config, history, stopped, recipe))
        if stopped is not None:
            break
    bar.close()

    result = SAPResult(config, history, model, masks, next_masks, stopped)
    if out is not None:
        write_json(out / RESULTS_FILE, run_summary(config, history, stopped, recipe))
        if figure:
            reporting.plot_runs({config.label: history}, out / FIGURE_FILE, title=config.label)
        save_model(model, out / MODEL_FILE, masks={k: v.cpu() for k, v in masks.items()},
                   config=dataclasses.asdict(config))
    return result


def _entry(t: int, measured: PQIReport, masks: dict, total: int, retrained: dict, losses: list[float],
           config: SAPConfig) -> dict:
    kept = _kept(masks)
    layer = measured.stats("layer")
    layers = {name: {"remaining_percent": 100 * int(layer.counts[i]) / int(layer.sizes[i]),
                     "pqi": json_number(float(layer.pqi[i, measured.column(*PAPER_PAIR)])),
                     "gini": json_number(float(layer.gini[i]))}
              for i, name in enumerate(measured.names)}
    return {
        "iteration": t,
        "accuracy": retrained["accuracy"],
        "loss": retrained["loss"],
        "remaining": kept,
        "remaining_percent": 100 * kept / total,
        "pqi": json_number(float(measured.pqi("global", *PAPER_PAIR)[0])),
        "pqi_pq": json_number(float(measured.pqi("global", config.p, config.q)[0])),
        "gini": json_number(float(measured.stats("global").gini[0])),
        "train_loss": losses[-1] if losses else None,
        "layers": layers,
    }


def _pruned_entry(model: nn.Module, weights: dict, masks: dict, next_masks: dict, test_loader) -> dict:
    """Accuracy and PQI of the trained weights with the new masks; the model is left as it was."""
    params = dict(model.named_parameters())
    removed = {name: masks[name] & ~next_masks[name] for name in masks}
    saved = {name: params[name].detach()[r].clone() for name, r in removed.items()}
    apply_masks(model, next_masks)
    pruned = evaluate(model, test_loader)
    pruned_pqi = pqi_report(weights, (PAPER_PAIR,), masks=next_masks, scopes=("global",), gini=False)
    with torch.no_grad():
        for name, r in removed.items():
            params[name][r] = saved[name]
    return {"pruned": sum(int(r.sum()) for r in removed.values()), "pruned_accuracy": pruned["accuracy"],
            "pruned_loss": pruned["loss"], "pruned_pqi": json_number(float(pruned_pqi.pqi("global")[0]))}


def _rose(before: float | None, now: float | None) -> bool:
    return before is not None and now is not None and now > before


def run_summary(config: SAPConfig, history: list[dict], stopped: str | None, recipe: str | None = None) -> dict:
    """The JSON written to results.json: settings, the recipe that chose them, every iteration, and the last
    one's headline numbers."""
    last = history[-1] if history else {}
    return {"label": config.label, "config": dataclasses.asdict(config), "recipe": recipe, "stopped": stopped,
            "final": {k: last.get(k) for k in ("iteration", "accuracy", "remaining_percent", "pqi", "gini")},
            "history": history}
