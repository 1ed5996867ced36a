"""Prunable units of a model and physical channel removal (Torch-Pruning's DependencyGraph).

A unit is a group of hidden channels removed together, with the linear layers that read them
(its readers: Linears, or Conv2d with groups=1, possibly after a flatten). Two kinds:
- "inner": channels made by one layer (Conv2d/Linear, then any BN, activation or depthwise conv
  that keeps channels apart) and read by one or more readers (a CNN's inner channels, a ViT's MLP,
  a ResNet-50 stem read by the first block and its projection shortcut;
  also the shared hidden neurons of a gated MLP, act(gate(x)) * up(x) -> down: two producers
  multiplied channel by channel);
- "residual": a residual stream, the channels that residual adds tie together: every producer
  of the stream (the stem and each block's last layer, a projection shortcut), their BNs, and
  every layer that reads the stream (each block's first layer, a projection shortcut, the head);
- "heads": an attention module's heads (key/value groups under grouped-query attention), whole
  heads removed from its q/k/v projections and its output projection (heads.py);
- "embed": a residual stream normalised by LayerNorms or RMSNorms (a transformer's embedding
  width), with the norms, positional embeddings and class token among its members. The norms'
  statistics change when channels go, so a gated forward takes them over the kept channels
  (models/norms.py) and stays the pruned network's forward. The Gram imitates the readers' inputs,
  the norms' outputs as the unpruned model computes them (docs/DESIGN.md §units).
A Linear reads its channels on the last dim, so (batch, tokens, channels) activations are units too.
A layer whose channels are concatenated with others' (Inception, DenseNet) is an inner unit read
through a Window, where its channels sit in each reader's input; a split is left whole.
Greedy imitation weighs channel i of a unit by a gate c_i on every reader's input. Where the
stream's only other users are adds and channel-wise ops that end in readers, gating every reader
by c with c_i = 0 computes what the network without channel i computes; removing channel i is
then exact surgery: every producer's output channel, everything channel-wise in between, and
each reader's input columns go, and the kept channels' gates are folded into the weights.

Where a gate is folded (`FOLDS`) matters for fine-tuning, not for the function:
- "consumer": multiply the readers' input columns (always exact);
- "producer": multiply the output channel of the last per-channel affine layer before the
  consumer (the unit's BN, depthwise conv, or the producer itself); exact when everything
  after that layer is positively homogeneous (ReLU, max/avg pooling, flatten, dropout), so
  units with ReLU6/GELU/SiLU on the path, and residual streams, fall back to "consumer";
- "split": sqrt(gate) on each side (same condition);
- "none": the gates are dropped; the kept channels are removed plainly.
Streams normalised by a GroupNorm and attention layouts heads.py does not recognise are left out;
run_pruning lists every group left out in report.json ("left_unpruned").
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch_pruning as tp

from ..checks import arg_error, check_choice
from ..models.heads import HeadLayout, current_groups, group_l1, head_layout, projection_names, remove_groups
from ..models.norms import is_stream_norm, kept_channel_norm, norm_refusal
from .outputs import logits_of


@dataclass(frozen=True)
class Window:
    """Where a reader reads a unit's channels through a concat: the unit's N channels are the
    reader's input channels offset..offset+N-1, of `inputs` in all (the rest are other layers')."""

    offset: int
    inputs: int

    def spread(self, values: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """[..., inputs]: values [..., N] of the unit's channels placed at the reader's input
        channels, `fill` at the channels of other layers."""
        out = values.new_full((*values.shape[:-1], self.inputs), fill)
        out[..., self.offset:self.offset + values.shape[-1]] = values
        return out

    def input_channels(self, kept: torch.Tensor, channels: int) -> torch.Tensor:
        """The reader's input channels left when the unit (of `channels`) keeps `kept` (sorted)."""
        return torch.cat([torch.arange(self.offset, device=kept.device), kept + self.offset,
                          torch.arange(self.offset + channels, self.inputs, device=kept.device)])


@dataclass(frozen=True)
class Reader:
    """A linear layer that reads a unit's channels (its module name)."""

    name: str
    # Input columns per channel: 1 for Linear / conv, H*W for a Linear after a flatten.
    columns_per_channel: int = 1
    # Where it reads the channels: the last dim (Linear) or dim 1 (conv).
    channel_last: bool = False
    # Through a concat (None: its input is the unit's channels alone).
    window: Window | None = None

    def spread(self, values: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """values [..., N] over the unit's channels as [..., the reader's input channels]."""
        return values if self.window is None else self.window.spread(values, fill)

    def input_channels(self, kept: torch.Tensor, channels: int) -> torch.Tensor:
        """The reader's input channels left when its unit (of `channels`) keeps `kept` (sorted)."""
        return kept if self.window is None else self.window.input_channels(kept, channels)


UNIT_KINDS = ("inner", "residual", "heads", "embed")


@dataclass
class Unit:
    """Hidden channels of `producer` (and `co_producers`) read by `readers` (module names in the
    model; readers in model order)."""

    producer: str
    readers: list[Reader]
    channels: int
    members: list[str] = field(default_factory=list)
    # Further producers of the channels: multiplied channel by channel with the producer's (a
    # gated MLP, kind "inner") or added to it (kind "residual").
    co_producers: list[str] = field(default_factory=list)
    kind: str = "inner"
    # The module whose output channels a "producer" fold scales, or None with the reason.
    fold_target: str | None = None
    fold_blocker: str = ""
    # Kind "heads": the attention module's layout (its channels are key/value groups).
    heads: HeadLayout | None = None
    # Kind "embed": the norms over the stream's channels (models/norms.py).
    norms: list[str] = field(default_factory=list)

    @property
    def consumer(self) -> str:
        """The first reader (where the network first reads the channels)."""
        return self.readers[0].name

    @property
    def name(self) -> str:
        more = f"+{len(self.readers) - 1}" if len(self.readers) > 1 else ""
        return f"{self.producer}->{self.consumer}{more}"


@dataclass
class SkippedGroup:
    producers: list[str]
    reason: str


FOLDS = ("consumer", "producer", "split", "none")

# Autograd nodes of ops f with f(s x) = s f(x) for s > 0, channel by channel.
_HOMOGENEOUS = re.compile(
    r"(Relu|LeakyRelu|MaxPool\w*|AvgPool\w*|AdaptiveAvgPool\w*|AdaptiveMaxPool\w*|Mean|Sum|View|UnsafeView|"
    r"ReshapeAlias|Permute|Transpose|Clone|Squeeze\w*|Unsqueeze\w*|Expand|NativeDropout|Flatten|Cat)Backward\d*")


def check_fold(fold: str) -> str:
    return check_choice("fold", fold, FOLDS)


def _is_linear_consumer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _out_channel_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


_ATTENTION_OPS = re.compile(r"ScaledDotProduct|Bmm|Softmax")


class UnitGraph:
    """The prunable units of `model`, discovered once from an example input.

    Raises ValueError naming the module when the model cannot be traced or has no unit.
    Pruning a unit (`prune`) keeps the graph valid for the other units.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        if not isinstance(model, nn.Module):
            raise arg_error("model", f"must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._names = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()
        try:
            self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                                               output_transform=logits_of)
        except Exception as err:  # Torch-Pruning raises many kinds; say which model failed
            raise ValueError(
                f"greedyprune: cannot trace {type(model).__name__} with Torch-Pruning ({err}); "
                "the model's forward must run on 'example_inputs'") from err
        finally:
            model.train(was_training)
        self._order = {n: i for i, n in enumerate(self._names.values())}
        self._norm_weights = {m.weight: n for n, m in model.named_modules()
                              if is_stream_norm(m) and isinstance(getattr(m, "weight", None), nn.Parameter)}
        self.units: list[Unit] = []
        self.skipped: list[SkippedGroup] = []
        # Layers whose channels feed attention are no Torch-Pruning group (Torch-Pruning 1.6 never
        # finishes the groups of a Hugging Face Llama's q/k/v projections, so they are not asked
        # for); the attention modules of a known layout are heads units instead.
        attention_fed = [m for m in self._names if isinstance(m, (nn.Conv2d, nn.Linear)) and self._feeds_attention(m)]
        for group in self.graph.get_all_groups(ignored_layers=attention_fed, root_module_types=(nn.Conv2d, nn.Linear)):
            self._classify(group)
        covered = self._head_units()
        self.skipped += [SkippedGroup([self._names[m]], covered.get(self._names[m], "feeds attention (heads)"))
                         for m in attention_fed if covered.get(self._names[m]) != ""]
        self.units.sort(key=lambda u: (self._order[u.consumer], self._order[u.producer]))

    def _head_units(self) -> dict[str, str]:
        """Add a heads unit per attention module of a known layout; returns, per projection of
        every attention module found, "" (a unit's) or why its heads are left whole."""
        covered = {}
        for name, module in self.model.named_modules():
            layout = head_layout(name, module)
            if layout is None:
                continue
            if isinstance(layout, str):
                covered.update({p: f"attention heads of {name or 'the model'} left whole: {layout}"
                                for p in projection_names(name, module)})
                continue
            projections = [p.name for p in layout.projections]
            if layout.groups < 2:
                covered.update({p: f"attention {name} has one key/value group" for p in projections})
                continue
            self.units.append(Unit(projections[0], [Reader(layout.output, layout.columns_per_group, True)],
                                   layout.groups, [name], co_producers=projections[1:], kind="heads",
                                   fold_blocker="attention heads (the softmax is not homogeneous)", heads=layout))
            covered.update({p: "" for p in projections})
        return covered

    def _feeds_attention(self, module: nn.Module, max_nodes: int = 256) -> bool:
        """Whether the module's output reaches an attention op (matmul of activations, softmax,
        scaled dot-product attention) before any other Conv2d/Linear reads it; a transpose alone is no
        attention (a ViT's patch embedding transposes its output into tokens)."""
        start = self.graph.module2node.get(module)
        if start is None:
            return False
        frontier, seen = list(start.outputs), set()
        while frontier and len(seen) < max_nodes:
            node = frontier.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, (nn.Conv2d, nn.Linear)) and node.module in self._names:
                continue  # read by the next layer: the channels end here
            if _ATTENTION_OPS.search(type(node.grad_fn).__name__ if node.grad_fn is not None else ""):
                return True
            frontier.extend(node.outputs)
        return False

    def _classify(self, group) -> None:
        producers, consumers, members, others = [], [], [], []
        read_columns: dict[str, set[int]] = {}  # the input columns of each reader the group's channels feed
        residual = gated = False
        for item in group:
            dep = item.dep
            module = dep.target.module
            name = self._names.get(module)
            if name is None and module in self._norm_weights:
                # a norm Torch-Pruning traced op by op (Hugging Face's RMSNorms): its weight is the member
                others.append(self._norm_weights[module])
                continue
            if name is None:  # Torch-Pruning's own nodes: flatten, elementwise ops, adds
                # an add of two tensors (a residual); x + 1 has one input and keeps channels apart
                residual |= "AddBackward" in str(dep.target.name) and len(dep.target.inputs) > 1
                gated |= "MulBackward" in str(dep.target.name)
                continue
            if self.graph.is_out_channel_pruning_fn(dep.handler):
                if _is_linear_consumer(module):
                    producers.append(name)
                elif name not in members:
                    members.append(name)
            elif self.graph.is_in_channel_pruning_fn(dep.handler) and _is_linear_consumer(module):
                consumers.append(name)
                read_columns.setdefault(name, set()).update(int(i) for i in item.idxs)
            elif name not in others:
                others.append(name)
        producers = sorted(dict.fromkeys(producers), key=self._order.__getitem__)  # model order
        consumers = sorted(dict.fromkeys(consumers), key=self._order.__getitem__)
        made = _out_channels(self.module(producers[0])) if producers else 0
        # a reader with other layers' channels at its input (a concat), or some of the channels (a split)
        partial = next((n for n in consumers if read_columns[n] != set(range(_in_columns(self.module(n))))
                        or _in_columns(self.module(n)) < made), None)
        windows = {}
        if partial is not None:
            if residual or len(producers) != 1:
                cols = sorted(read_columns[partial])
                self.skipped.append(SkippedGroup(producers, f"{partial} reads these channels at {len(cols)} of its "
                                                            f"{_in_columns(self.module(partial))} input columns "
                                                            f"({cols[0]}..{cols[-1]}: a concat or split) of a "
                                                            "residual stream or of several producers"))
                return
            windows = self._windows(producers[0], consumers)
            if isinstance(windows, str):
                self.skipped.append(SkippedGroup(producers, windows))
                return
        if residual:
            self._classify_stream(producers, consumers, members + others)
        elif len(producers) > 1 and not gated:
            self.skipped.append(SkippedGroup(producers, "several producers joined by an op other than an add"))
        elif not producers or not consumers:
            reason = "no linear producer" if not producers else "no linear consumer (model output)"
            self.skipped.append(SkippedGroup(producers, reason))
        else:
            unit = self._unit(producers, consumers, members, "inner", windows)
            if unit is not None:
                unit.fold_target, unit.fold_blocker = self._fold_target(unit)
                self.units.append(unit)

    def _classify_stream(self, producers: list[str], readers: list[str], members: list[str]) -> None:
        """A residual stream: a unit when its members only pass channels along (BN, identity), else
        skipped with the first member that does not."""
        if not producers or not readers:
            self.skipped.append(SkippedGroup(producers, "residual stream without a linear " +
                                             ("producer" if not producers else "reader (model output)")))
            return
        norms = []
        for name in dict.fromkeys(members):
            module = self.module(name)
            if is_stream_norm(module):
                refusal = norm_refusal(name, module)
                if refusal is not None:
                    self.skipped.append(SkippedGroup(producers, f"residual stream normalised by {refusal}"))
                    return
                norms.append(name)
            elif not isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout, nn.Embedding)):
                self.skipped.append(SkippedGroup(producers, f"residual stream through {name} "
                                                            f"({type(module).__name__})"))
                return
        unit = self._unit(producers, readers, members, "embed" if norms else "residual")
        if unit is not None:
            unit.norms = norms
            unit.fold_blocker = f"a residual stream read by {len(readers)} layer(s)"
            self.units.append(unit)

    def _windows(self, producer: str, readers: list[str]) -> dict[str, Window] | str:
        """Where each reader reads the producer's channels through concats (a Window per reader that
        does not read exactly them), or why they cannot be followed. Torch-Pruning maps one channel
        at a time: channel j's group holds the input channel each reader reads it at."""
        module = self.module(producer)
        channels = _out_channels(module)
        read: dict[str, dict[int, list[int]]] = {name: {} for name in readers}
        for j in range(channels):
            for item in self.graph.get_pruning_group(module, _out_channel_fn(module), idxs=[j]):
                name = self._names.get(item.dep.target.module)
                if name in read and self.graph.is_in_channel_pruning_fn(item.dep.handler):
                    read[name].setdefault(j, []).extend(int(i) for i in item.idxs)
        windows = {}
        for name, columns in read.items():
            if len(columns) < channels:
                return (f"a split: {name} reads {len(columns)} of the {channels} channels (torch.split / chunk "
                        "cut at sizes in the forward's code, which removing channels would break)")
            offset = columns[0][0]
            if any(columns[j] != [offset + j] for j in range(channels)):
                return (f"{name} reads them through a concat, not one input column per channel in order "
                        "(a flatten or a permutation after it)")
            inputs = _in_columns(self.module(name))
            if (offset, inputs) != (0, channels):
                windows[name] = Window(offset, inputs)
        return windows

    def _unit(self, producers: list[str], readers: list[str], members: list[str], kind: str,
              windows: dict[str, Window] | None = None) -> Unit | None:
        """The unit, or None (skipped with the reason) where a reader's columns or a producer's
        width do not match the channels."""
        channels = _out_channels(self.module(producers[0]))
        if any(_out_channels(self.module(p)) != channels for p in producers[1:]):
            self.skipped.append(SkippedGroup(producers, "producers of different widths"))
            return None
        found = []
        for name in readers:
            module = self.module(name)
            if windows and name in windows:
                found.append(Reader(name, 1, isinstance(module, nn.Linear), windows[name]))
                continue
            in_cols = _in_columns(module)
            if in_cols % channels:
                self.skipped.append(SkippedGroup(producers, f"{name} reads {in_cols} columns from {channels} channels"))
                return None
            found.append(Reader(name, in_cols // channels, isinstance(module, nn.Linear)))
        return Unit(producers[0], found, channels, members, co_producers=producers[1:], kind=kind)

    def _fold_target(self, unit: Unit) -> tuple[str | None, str]:
        """The last per-channel affine module between producer and consumer, when every op
        after it is positively homogeneous (then scaling its output channels by s > 0 scales
        the consumer's input channels by s)."""
        if unit.co_producers:
            return None, f"its channels are a product of {len(unit.co_producers) + 1} producers"
        node = self.graph.module2node[self.module(unit.producer)]
        consumer = self.module(unit.consumer)
        target, blocker = unit.producer, ""
        while node.module is not consumer:
            if len(node.outputs) != 1:
                return None, f"{self._names.get(node.module, node.name)} feeds {len(node.outputs)} ops"
            node = node.outputs[0]
            module = node.module
            name = self._names.get(module)
            if module is consumer:
                break
            if name is not None and _scales_channels(module):
                target, blocker = name, ""
            elif name is not None and isinstance(module, (nn.Identity, nn.Dropout)):
                continue
            elif not _HOMOGENEOUS.fullmatch(type(node.grad_fn).__name__ if node.grad_fn is not None else ""):
                what = name or (type(node.grad_fn).__name__ if node.grad_fn is not None else node.name)
                blocker = blocker or f"{what} is not positively homogeneous"
        return (None, blocker) if blocker else (target, "")

    def module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"greedyprune: the model has no module named {name!r}") from err

    def name_of(self, layer: str | nn.Module, argument: str) -> str:
        """The module's name in the model (a name is checked); ArgumentError naming `argument`."""
        if isinstance(layer, nn.Module):
            if layer not in self._names:
                raise arg_error(argument, f"holds a {type(layer).__name__} that is not a module of the model")
            return self._names[layer]
        if not isinstance(layer, str) or layer not in self._order:
            raise arg_error(argument, f"holds {layer!r}, which names no module of the model")
        return layer

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise ValueError(f"greedyprune: no prunable unit named {name!r}; units: {[u.name for u in self.units]}")

    @contextlib.contextmanager
    def gated(self, unit: Unit, gates: torch.Tensor):
        """Multiply the unit's channels by `gates` ([N], or [K, N] with the batch repeated K times)
        at every reader's input, for the duration of the block."""
        handles = [self.module(reader.name).register_forward_pre_hook(
            lambda _m, args, reader=reader: (apply_gates(args[0], gates, reader),) + tuple(args[1:]))
            for reader in unit.readers]
        try:
            with self.renormalised(unit, gates):
                yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def renormalised(self, unit: Unit, gates: torch.Tensor):
        """For the duration of the block, the unit's norms (kind "embed") take their statistics
        over the channels whose gate is not zero, as they do once the others are removed; with
        the readers gated too, a gated forward is the pruned network's."""
        keep = gates.detach()
        handles = [self.module(name).register_forward_hook(
            lambda module, args, _out: kept_channel_norm(module, args[0], keep)) for name in unit.norms]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def fold_used(self, unit: Unit, fold: str) -> str:
        """The fold `prune` applies for `fold` on this unit ("producer"/"split" fall back to
        "consumer" where the path after the unit's last affine layer is not homogeneous)."""
        check_fold(fold)
        return "consumer" if fold in ("producer", "split") and unit.fold_target is None else fold

    def prune(self, unit: Unit, keep: torch.Tensor, scales: torch.Tensor | None = None, *,
              fold: str = "consumer") -> str:
        """Fold `scales` (one positive factor per kept channel) into the weights as `fold`
        says, and remove the other channels. Returns the fold used (see `fold_used`).

        keep: sorted channel indices (original numbering of the unit) to keep, at least one.
        """
        keep = torch.as_tensor(keep, dtype=torch.long).flatten()
        n = self._current_channels(unit)
        if keep.numel() == 0:
            raise arg_error("keep", f"must keep at least one channel of {unit.name}")
        if keep.min() < 0 or keep.max() >= n or keep.unique().numel() != keep.numel():
            raise arg_error("keep", f"must hold distinct channel indices in [0, {n}) for {unit.name}")
        keep = keep.sort().values
        fold = self.fold_used(unit, fold)
        if scales is not None and fold != "none":
            self.rescale(unit, keep, scales, fold)
        drop = sorted(set(range(n)) - set(keep.tolist()))
        if drop and unit.heads is not None:
            remove_groups(self.model, unit.heads, keep)
        elif drop:
            producer = self.module(unit.producer)
            group = self.graph.get_pruning_group(producer, _out_channel_fn(producer), idxs=drop)
            group.prune()
            self._shift_windows(unit, torch.tensor(drop))
        return fold

    def _shift_windows(self, unit: Unit, drop: torch.Tensor) -> None:
        """After `unit` lost its channels `drop`: where it is read through a concat, the reader's
        other units' windows move to the input channels left, and so does its own."""
        removed = {}  # reader -> the input channels it lost
        for i, reader in enumerate(unit.readers):
            if reader.window is not None:
                removed[reader.name] = drop + reader.window.offset
                unit.readers[i] = replace(reader, window=replace(reader.window,
                                                                 inputs=reader.window.inputs - drop.numel()))
        for other in self.units:
            for i, reader in enumerate(other.readers):
                gone = removed.get(reader.name) if other is not unit else None
                if gone is not None and reader.window is not None:
                    w = reader.window
                    other.readers[i] = replace(reader, window=replace(
                        w, offset=w.offset - int((gone < w.offset).sum()), inputs=w.inputs - gone.numel()))

    def rescale(self, unit: Unit, keep: torch.Tensor, scales: torch.Tensor, fold: str = "consumer") -> None:
        """Multiply the unit's channels `keep` by `scales` at the consumer's input, folded into the
        weights as `fold` says ("none": nothing). Other channels are left as they are."""
        fold = self.fold_used(unit, fold)
        if fold == "none":
            return
        keep = torch.as_tensor(keep, dtype=torch.long).flatten()
        scales = torch.as_tensor(scales, dtype=torch.float64).flatten()
        if scales.numel() != keep.numel():
            raise arg_error("scales", f"must have one value per kept channel ({keep.numel()})")
        if fold != "consumer" and not bool((scales > 0).all()):
            raise arg_error("scales", f"must be > 0 to fold into the producer of {unit.name}")
        full = torch.ones(self._current_channels(unit), dtype=torch.float64)
        full[keep] = scales
        producer_part = full if fold == "producer" else full.sqrt() if fold == "split" else None
        consumer_part = full if producer_part is None else full / producer_part
        with torch.no_grad():
            if fold != "producer":
                for reader in unit.readers:
                    w = self.module(reader.name).weight
                    w.mul_(_column_factors(w, consumer_part.to(w), reader))
            if producer_part is not None:
                _scale_output_channels(self.module(unit.fold_target), producer_part)

    def group(self, unit: Unit):
        """The unit's Torch-Pruning group over all its channels (its producers, channel-wise layers
        and the consumer's input), as Torch-Pruning's importances take it (heads are no group)."""
        if unit.heads is not None:
            raise ValueError(f"greedyprune: the heads of {unit.heads.attention} are no Torch-Pruning group")
        producer = self.module(unit.producer)
        return self.graph.get_pruning_group(producer, _out_channel_fn(producer),
                                            idxs=list(range(self._current_channels(unit))))

    def magnitude(self, unit: Unit) -> torch.Tensor:
        """[N] each channel's L1 norm over its whole group (Torch-Pruning's group magnitude)."""
        if unit.heads is not None:
            return group_l1(self.model, unit.heads)
        return tp.importance.GroupMagnitudeImportance(p=1)(self.group(unit)).double().cpu()

    def _current_channels(self, unit: Unit) -> int:
        if unit.heads is not None:
            return current_groups(self.model, unit.heads)
        return _out_channels(self.module(unit.producer))


def _in_columns(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def apply_gates(x: torch.Tensor, gates: torch.Tensor, reader: Reader) -> torch.Tensor:
    """x * gates over a unit's channels at a reader's input: the last dim for a Linear
    (blocks of columns after a flatten), dim 1 for a conv.

    gates [N] multiplies x as is; gates [K, N] multiplies x repeated K times along the batch
    (x's batch must then already be K*B, laid out candidate-major).
    """
    g = reader.spread(gates.to(x.dtype))
    if reader.columns_per_channel > 1:
        g = g.repeat_interleave(reader.columns_per_channel, dim=-1)
    n = g.shape[-1]
    # g's shape against one sample's dims (x without its batch dim)
    per_sample = [1] * (x.dim() - 1)
    per_sample[-1 if reader.channel_last else 0] = n
    if g.dim() == 1:
        return x * g.view(1, *per_sample)
    k = g.shape[0]
    b = x.shape[0] // k
    return (x.view(k, b, *x.shape[1:]) * g.view(k, 1, *per_sample)).view(x.shape)


def _scales_channels(module: nn.Module) -> bool:
    """A module whose output channel c is an affine function of its own parameters' slice c."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, nn.LayerNorm):
        return module.weight is not None
    if isinstance(module, nn.Conv2d):
        return True  # the producer itself, or a depthwise conv inside the unit
    return isinstance(module, nn.Linear)


def _scale_output_channels(module: nn.Module, factors: torch.Tensor) -> None:
    """Multiply output channel c of `module` (weight row / BN affine and its bias) by factors[c]."""
    w = module.weight
    shape = (-1,) + (1,) * (w.dim() - 1)
    w.mul_(factors.to(w).view(shape))
    if getattr(module, "bias", None) is not None:
        module.bias.mul_(factors.to(module.bias))


def _column_factors(weight: torch.Tensor, per_channel: torch.Tensor, reader: Reader) -> torch.Tensor:
    """Per-channel factors shaped to multiply a reader's weight along its input dim."""
    step = reader.columns_per_channel
    f = reader.spread(per_channel)
    f = f.repeat_interleave(step) if step > 1 else f
    return f.view(1, -1, *([1] * (weight.dim() - 2)))
