"""Prunable units of a model and physical channel removal (Torch-Pruning's DependencyGraph).

A unit is a group of hidden channels made by one layer (Conv2d/Linear, then any BN,
activation or depthwise conv that keeps channels apart) and read by exactly one linear
consumer (a Linear, or a Conv2d with groups=1, possibly after a flatten). Greedy imitation
weighs channel i of a unit by a gate c_i on the consumer's input; removing channel i is
then exact surgery: the producer's output channel, everything channel-wise in between, and
the consumer's input columns go, and the consumer's columns of the kept channels are
scaled by their gates. Channels tied to residual adds are left out, as the paper does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp


@dataclass
class Unit:
    """Hidden channels of `producer` read by `consumer` (module names in the model)."""

    producer: str
    consumer: str
    channels: int
    # Consumer input columns per channel: 1 for Linear / conv, H*W for a Linear after a flatten.
    columns_per_channel: int
    members: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.producer}->{self.consumer}"


@dataclass
class SkippedGroup:
    producers: list[str]
    reason: str


def _is_linear_consumer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _out_channel_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


class UnitGraph:
    """The prunable units of `model`, discovered once from an example input.

    Raises ValueError naming the module when the model cannot be traced or has no unit.
    Pruning a unit (`prune`) keeps the graph valid for the other units.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        if not isinstance(model, nn.Module):
            raise ValueError(f"greedyprune: argument 'model' must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._names = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()
        try:
            self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as err:  # Torch-Pruning raises many kinds; say which model failed
            raise ValueError(
                f"greedyprune: cannot trace {type(model).__name__} with Torch-Pruning ({err}); "
                "the model's forward must run on 'example_inputs'") from err
        finally:
            model.train(was_training)
        order = {n: i for i, n in enumerate(self._names.values())}
        self.units: list[Unit] = []
        self.skipped: list[SkippedGroup] = []
        for group in self.graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
            self._classify(group)
        self.units.sort(key=lambda u: order[u.consumer])

    def _classify(self, group) -> None:
        producers, consumers, members = [], [], []
        residual = False
        for item in group:
            dep = item.dep
            module = dep.target.module
            name = self._names.get(module)
            if name is None:  # Torch-Pruning's own nodes: flatten, elementwise ops, adds
                residual |= "AddBackward" in str(dep.target.name)
                continue
            if self.graph.is_out_channel_pruning_fn(dep.handler):
                if _is_linear_consumer(module):
                    producers.append(name)
                elif name not in members:
                    members.append(name)
            elif self.graph.is_in_channel_pruning_fn(dep.handler) and _is_linear_consumer(module):
                consumers.append(name)
        producers = list(dict.fromkeys(producers))
        consumers = list(dict.fromkeys(consumers))
        if residual or len(producers) > 1:
            self.skipped.append(SkippedGroup(producers, "tied to a residual add"))
        elif len(producers) != 1 or len(consumers) != 1:
            reason = "no linear consumer (model output)" if not consumers else f"read by {len(consumers)} layers"
            self.skipped.append(SkippedGroup(producers, reason))
        else:
            producer = self.module(producers[0])
            consumer = self.module(consumers[0])
            channels = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
            in_cols = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
            if in_cols % channels:
                self.skipped.append(SkippedGroup(producers, f"{consumers[0]} reads {in_cols} columns from {channels} channels"))
                return
            self.units.append(Unit(producers[0], consumers[0], channels, in_cols // channels, members))

    def module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"greedyprune: the model has no module named {name!r}") from err

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise ValueError(f"greedyprune: no prunable unit named {name!r}; units: {[u.name for u in self.units]}")

    @contextlib.contextmanager
    def gated(self, unit: Unit, gates: torch.Tensor):
        """Multiply the unit's channels by `gates` ([N], or [K, N] with the batch repeated K times)
        at the consumer's input, for the duration of the block."""
        handle = self.module(unit.consumer).register_forward_pre_hook(
            lambda _m, args: (apply_gates(args[0], gates, unit.columns_per_channel),) + tuple(args[1:]))
        try:
            yield
        finally:
            handle.remove()

    def prune(self, unit: Unit, keep: torch.Tensor, scales: torch.Tensor | None = None) -> None:
        """Scale the consumer's columns of the kept channels by `scales` and remove the others.

        keep: sorted channel indices (original numbering of the unit) to keep, at least one.
        """
        keep = torch.as_tensor(keep, dtype=torch.long).flatten()
        n = self._current_channels(unit)
        if keep.numel() == 0:
            raise ValueError(f"greedyprune: argument 'keep' must keep at least one channel of {unit.name}")
        if keep.min() < 0 or keep.max() >= n or keep.unique().numel() != keep.numel():
            raise ValueError(f"greedyprune: argument 'keep' must hold distinct channel indices in [0, {n}) for {unit.name}")
        keep = keep.sort().values
        consumer = self.module(unit.consumer)
        if scales is not None:
            scales = torch.as_tensor(scales, dtype=consumer.weight.dtype, device=consumer.weight.device).flatten()
            if scales.numel() != keep.numel():
                raise ValueError(f"greedyprune: argument 'scales' must have one value per kept channel ({keep.numel()})")
            full = torch.zeros(n, dtype=scales.dtype, device=scales.device)
            full[keep] = scales
            with torch.no_grad():
                consumer.weight.mul_(_column_factors(consumer, full, unit.columns_per_channel))
        drop = sorted(set(range(n)) - set(keep.tolist()))
        if drop:
            producer = self.module(unit.producer)
            group = self.graph.get_pruning_group(producer, _out_channel_fn(producer), idxs=drop)
            group.prune()

    def _current_channels(self, unit: Unit) -> int:
        producer = self.module(unit.producer)
        return producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels


def apply_gates(x: torch.Tensor, gates: torch.Tensor, columns_per_channel: int) -> torch.Tensor:
    """x * gates over the channel dim (dim 1; for a flattened input, blocks of columns).

    gates [N] multiplies x as is; gates [K, N] multiplies x repeated K times along the batch
    (x's batch must then already be K*B, laid out candidate-major).
    """
    n = gates.shape[-1]
    g = gates.to(x.dtype)
    if columns_per_channel > 1 and x.dim() == 2:
        g = g.repeat_interleave(columns_per_channel, dim=-1)
        n = n * columns_per_channel
    tail = (1,) * (x.dim() - 2)
    if g.dim() == 1:
        return x * g.view(1, n, *tail)
    k = g.shape[0]
    b = x.shape[0] // k
    return (x.view(k, b, *x.shape[1:]) * g.view(k, 1, n, *tail)).view(x.shape)


def _column_factors(consumer: nn.Module, per_channel: torch.Tensor, columns_per_channel: int) -> torch.Tensor:
    """Per-channel factors shaped to multiply the consumer's weight along its input dim."""
    f = per_channel.repeat_interleave(columns_per_channel) if columns_per_channel > 1 else per_channel
    if isinstance(consumer, nn.Linear):
        return f.view(1, -1)
    return f.view(1, -1, *([1] * (consumer.weight.dim() - 2)))
