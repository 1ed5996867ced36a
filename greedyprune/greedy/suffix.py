"""Exact network-output discrepancy of many gate vectors on one unit over one batch, running
only the part of the network after the unit (the prefix is computed once and cached).

The model is traced with torch.fx; the nodes that depend on the consumer's output form
the suffix, and the values they read from the rest of the graph are cached for the
batch. K candidates run as one batch of K*B rows (candidate-major). Models that fx cannot
trace, and units with several readers (a residual stream: the readers sit at different depths),
run full forwards with a gating hook on every reader (same results, slower).
`evaluator.SuffixEvaluator` runs this over calibration batches.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..checks import arg_error
from .outputs import check_discrepancy, discrepancy, logits_of
from .surgery import Reader, Unit, UnitGraph, apply_gates


class BatchSuffix:
    """Discrepancy of the model with the unit's channels gated, against fixed target logits,
    on one batch.

    inputs: the batch; target: the logits to imitate (default: the model's own output now,
    ungated); max_rows bounds K*B per suffix run (memory).
    """

    def __init__(self, graph: UnitGraph, unit: Unit, inputs: torch.Tensor, *, kind: str = "kl",
                 labels: torch.Tensor | None = None, target: torch.Tensor | None = None, max_rows: int = 4096,
                 use_fx: bool = True):
        check_discrepancy(kind)
        if max_rows < 1:
            raise arg_error("max_rows", f"must be >= 1, got {max_rows}")
        self.graph, self.unit, self.kind, self.labels = graph, unit, kind, labels
        self.model = graph.model
        self.inputs = inputs
        self.batch = inputs.shape[0]
        self.max_rows = max_rows
        self.channels = unit.channels
        self.model.eval()
        self._suffix = None
        self._all_contributions = None
        self._consumer_out_per_sample = None
        # a norm before the reader, or other layers' channels at its input (a concat): full forwards
        if use_fx and len(unit.readers) == 1 and not unit.norms and unit.readers[0].window is None:
            try:
                self._suffix = _TracedSuffix(self.model, unit.consumer, inputs)
            except (fx.proxy.TraceError, NotImplementedError, TypeError, ValueError, RuntimeError):
                self._suffix = None
        # bytes one input row takes through the suffix (every value it creates), to size chunks
        self.row_bytes = self._suffix.row_bytes if self._suffix is not None else _tensor_bytes(inputs) // self.batch * 4
        if target is None and self._suffix is not None:
            target = self._suffix.output  # the traced forward already ran the whole model
        if target is None:
            with torch.no_grad():
                target = logits_of(self.model(inputs))
        self.target = target
        self.hidden = self._suffix.hidden if self._suffix else None

    @property
    def traced(self) -> bool:
        """Whether the fast path runs (torch.fx traced the model: only the layers after the unit
        run per candidate); False means full forwards with a gating hook."""
        return self._suffix is not None

    @property
    def cached_bytes(self) -> int:
        """Memory this batch holds: the cached prefix values and per-channel contributions."""
        held = self._suffix.cached_bytes if self._suffix is not None else _tensor_bytes(self.inputs)
        return held + (_tensor_bytes(self._all_contributions) if self._all_contributions is not None else 0)

    def evaluate(self, gates: torch.Tensor) -> torch.Tensor:
        """Discrepancy for each row of gates [K, N] (or one gate vector [N] -> [1])."""
        gates = gates.reshape(-1, self.channels).to(self.target.device)
        per_run = max(1, self.max_rows // self.batch)
        out = []
        with torch.no_grad():
            for g in gates.split(per_run):
                out.append(discrepancy(self._logits(g), self.target, self.kind, self.labels))
        return torch.cat(out)

    def evaluate_steps(self, a: torch.Tensor, gamma: float, candidates: torch.Tensor) -> torch.Tensor:
        """Discrepancy of the fixed-step moves gates = N((1 - gamma) a + gamma e_i), i in candidates.

        The consumer is linear in its input, so its output for candidate i is (1 - gamma) times
        its output at N a plus gamma N times channel i's own contribution: one consumer pass
        for the base and the per-channel contributions (fixed, cached when small) replace one
        consumer pass per candidate; only the layers after the consumer run per candidate."""
        n = self.channels
        a = a.to(self.target.device, torch.float64)
        candidates = candidates.to(self.target.device)
        consumer = self.graph.module(self.unit.consumer)
        reader = self.unit.readers[0]
        if self._suffix is None or type(consumer) not in (nn.Conv2d, nn.Linear):
            gates = (1 - gamma) * a.unsqueeze(0) + gamma * torch.eye(n, dtype=torch.float64, device=a.device)[candidates]
            return self.evaluate((gates * n).float())
        hidden = self.hidden
        with torch.no_grad():
            base = _linear_part(consumer, apply_gates(hidden, (a * n).to(hidden.dtype), reader))
            base = (1 - gamma) * base
            if consumer.bias is not None:
                base = base + (consumer.bias if reader.channel_last
                               else consumer.bias.view(1, -1, *([1] * (base.dim() - 2))))
            per_run = max(1, self.max_rows // self.batch)
            out = []
            for chunk in candidates.split(per_run):
                contrib = self._contributions(consumer, chunk)
                y = (base.unsqueeze(0) + (gamma * n) * contrib).reshape(-1, *base.shape[1:])
                logits = self._suffix.run(None, chunk.numel(), consumer_output=y)
                logits = logits.view(chunk.numel(), self.batch, *logits.shape[1:])
                out.append(discrepancy(logits, self.target, self.kind, self.labels))
        return torch.cat(out)

    def evaluate_refit(self, fits: list[tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor]]) -> torch.Tensor:
        """Discrepancy [1] with each reader reading only its input `columns` (flat, as
        the moments order them: moments.kept_columns) through `weight` [out, |columns|] and `bias`: the
        unit as a least-squares refit exports it. fits: (reader name, weight, bias, columns) per reader."""

        def refit_output(consumer: nn.Module, weight, bias, columns, x: torch.Tensor) -> torch.Tensor:
            w = weight.to(x.dtype)
            b = None if bias is None else bias.to(x.dtype)
            if isinstance(consumer, nn.Linear):
                return F.linear(x[..., columns.to(x.device)], w, b)
            block = consumer.kernel_size[0] * consumer.kernel_size[1]
            kept = columns[::block].to(x.device) // block
            return F.conv2d(x[:, kept], w.view(w.shape[0], kept.numel(), *consumer.kernel_size), b, consumer.stride,
                            consumer.padding, consumer.dilation)

        with torch.no_grad():
            if self._suffix is not None:
                (name, weight, bias, columns), = fits
                y = refit_output(self.graph.module(name), weight, bias, columns, self.hidden)
                logits = self._suffix.run(None, 1, consumer_output=y)
            else:
                handles = []
                for name, weight, bias, columns in fits:
                    consumer = self.graph.module(name)
                    handles.append(consumer.register_forward_hook(
                        lambda m, args, _out, fit=(weight, bias, columns): refit_output(m, *fit, args[0])))
                try:
                    logits = logits_of(self.model(self.inputs))
                finally:
                    for handle in handles:
                        handle.remove()
        return discrepancy(logits.unsqueeze(0), self.target, self.kind, self.labels)

    def _contributions(self, consumer: nn.Module, chunk: torch.Tensor) -> torch.Tensor:
        """What each channel in chunk adds to the consumer's output alone: [K, B, out, *]."""
        if self._all_contributions is None:
            bytes_all = self.hidden.element_size() * self.batch * self.channels * self._consumer_out_numel(consumer)
            if bytes_all <= _CONTRIBUTION_CACHE_BYTES:
                self._all_contributions = _channel_contributions(consumer, self.hidden, self.channels,
                                                                 torch.arange(self.channels, device=chunk.device))
        if self._all_contributions is not None:
            return self._all_contributions[chunk]
        return _channel_contributions(consumer, self.hidden, self.channels, chunk)

    def _consumer_out_numel(self, consumer: nn.Module) -> int:
        if self._consumer_out_per_sample is None:
            with torch.no_grad():
                self._consumer_out_per_sample = _linear_part(consumer, self.hidden[:1]).numel()
        return self._consumer_out_per_sample

    def _logits(self, gates: torch.Tensor) -> torch.Tensor:
        k = gates.shape[0]
        if self._suffix is not None:
            gated = apply_gates(_repeat_batch(self.hidden, k), gates, self.unit.readers[0])
            logits = self._suffix.run(gated, k)
        else:
            with self.graph.gated(self.unit, gates):
                logits = logits_of(self.model(_repeat_batch(self.inputs, k)))
        return logits.view(k, self.batch, *logits.shape[1:])

    def taylor_inputs(self, gates: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(act, grad) per reader for ops.taylor_scores: the un-gated hidden channels [B, N, *] at
        the reader's input and the gradient of the discrepancy with respect to the gated ones, at
        `gates` [N]. A channel's directional derivative is the sum of its readers' scores."""
        gates = gates.reshape(1, self.channels).to(self.target.device)
        readers = self.unit.readers
        with torch.enable_grad():
            if self._suffix is not None:
                hidden = [self.hidden]
                gated = [apply_gates(self.hidden, gates, readers[0]).requires_grad_(True)]
                logits = self._suffix.run(gated[0], 1)
            else:
                # A later reader's input depends on an earlier reader's gates: the graph is kept
                # between readers, so an earlier reader's gradient holds every path after it.
                hidden, gated, handles = [None] * len(readers), [None] * len(readers), []
                gates = gates.detach().requires_grad_(True)
                for i, reader in enumerate(readers):
                    def hook(_m, args, i=i, reader=reader):
                        hidden[i] = args[0].detach()
                        gated[i] = apply_gates(args[0], gates, reader)
                        return (gated[i],) + tuple(args[1:])

                    handles.append(self.graph.module(reader.name).register_forward_pre_hook(hook))
                try:
                    with self.graph.renormalised(self.unit, gates):
                        logits = logits_of(self.model(self.inputs))
                finally:
                    for handle in handles:
                        handle.remove()
            loss = discrepancy(logits.unsqueeze(0), self.target, self.kind, self.labels).sum()
            grads = torch.autograd.grad(loss, gated, allow_unused=True)
        return [(_channels_second(h, reader, self.channels), _channels_second(torch.zeros_like(h) if g is None else g,
                                                                              reader, self.channels))
                for h, g, reader in zip(hidden, grads, readers)]


_CONTRIBUTION_CACHE_BYTES = 512 * 2 ** 20


def _linear_part(consumer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's output without its bias."""
    if isinstance(consumer, nn.Linear):
        return F.linear(x, consumer.weight)
    return F.conv2d(x, consumer.weight, None, consumer.stride, consumer.padding, consumer.dilation)


def _channels_second(x: torch.Tensor, reader: Reader, channels: int) -> torch.Tensor:
    """[B, N, rest]: a unit's channels of a reader's input as dim 1 (ops.taylor_scores' layout).
    Through a concat, the unit's channels are a slice of the reader's input."""
    b = x.shape[0]
    if reader.window is not None:
        x = x.movedim(-1, 1) if reader.channel_last else x
        return x[:, reader.window.offset:reader.window.offset + channels].reshape(b, channels, -1)
    if reader.channel_last:  # [B, *, N * s]: a block of s columns per channel at every position
        x = x.reshape(b, -1, channels, reader.columns_per_channel).transpose(1, 2)
    return x.reshape(b, channels, -1)


def _channel_contributions(consumer: nn.Module, hidden: torch.Tensor, channels: int, chunk: torch.Tensor) -> torch.Tensor:
    """[K, B, *, out]: the bias-free output of a Linear consumer (reading [B, *, in]) or
    [K, B, out, *] of a conv from each channel of chunk alone."""
    k, b = chunk.numel(), hidden.shape[0]
    w = consumer.weight
    if isinstance(consumer, nn.Linear):
        s = w.shape[1] // channels
        x = hidden.reshape(b, -1, channels, s)[:, :, chunk]  # [B, positions, K, s]
        y = torch.einsum("bmks,oks->kbmo", x, w.view(w.shape[0], channels, s)[:, chunk])
        return y.reshape(k, b, *hidden.shape[1:-1], w.shape[0])
    # One grouped conv: group j reads channel chunk[j] with that channel's filters.
    x = hidden[:, chunk]
    wk = w[:, chunk].transpose(0, 1).reshape(k * w.shape[0], 1, *w.shape[2:])
    y = F.conv2d(x, wk, None, consumer.stride, consumer.padding, consumer.dilation, groups=k)
    return y.view(b, k, w.shape[0], *y.shape[2:]).transpose(0, 1)


def _tensor_bytes(value) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _repeat_batch(x: torch.Tensor, k: int) -> torch.Tensor:
    return x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))


class _TracedSuffix:
    """The fx nodes downstream of the consumer, with the values they read cached."""

    def __init__(self, model: nn.Module, consumer: str, inputs: torch.Tensor):
        gm = fx.symbolic_trace(model)
        nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == consumer]
        if len(nodes) != 1:
            raise ValueError(f"greedyprune: module {consumer!r} is called {len(nodes)} times in the traced graph")
        self.gm, self.consumer_node = gm, nodes[0]
        downstream = {self.consumer_node}
        self.order = []
        for node in gm.graph.nodes:
            if node is self.consumer_node or any(a in downstream for a in node.all_input_nodes):
                downstream.add(node)
                self.order.append(node)
        hidden_node = self.consumer_node.args[0]
        needed = {a for n in self.order for a in n.all_input_nodes if a not in downstream}
        needed.add(hidden_node)
        self.batch = inputs.shape[0]
        cache = {}
        suffix_nodes = set(self.order)
        created = [0]

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if n in needed:
                    cache[n] = value
                if n in suffix_nodes:
                    created[0] += _tensor_bytes(value)
                return value

        with torch.no_grad():
            self.output = logits_of(Recorder(gm).run(inputs))
        self.hidden = cache[hidden_node]
        self.cache = cache
        self.row_bytes = max(1, created[0] // max(self.batch, 1))
        self.cached_bytes = sum(_tensor_bytes(v) for n, v in cache.items() if n.op != "get_attr")

    def run(self, gated_hidden: torch.Tensor | None, k: int, consumer_output: torch.Tensor | None = None) -> torch.Tensor:
        """The logits from the gated consumer input (or straight from the consumer's output)."""
        env = {}
        for n, value in self.cache.items():
            batched = isinstance(value, torch.Tensor) and n.op != "get_attr" and value.dim() > 0 and value.shape[0] == self.batch
            env[n] = _repeat_batch(value, k) if batched else value
        for node in self.order:
            if node is self.consumer_node and consumer_output is not None:
                env[node] = consumer_output
                continue
            if node is self.consumer_node:
                rest = fx.node.map_arg(node.args[1:], lambda a: env[a])
                env[node] = self.gm.get_submodule(node.target)(gated_hidden, *rest)
                continue
            args = fx.node.map_arg(node.args, lambda a: env[a])
            kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a])
            if node.op == "call_module":
                env[node] = self.gm.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "output":
                return logits_of(args[0])
        raise ValueError("greedyprune: the traced graph has no output after the consumer")
