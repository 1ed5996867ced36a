"""Exact network-output discrepancy of many gate vectors on one unit, running only the
part of the network after the unit (the prefix is computed once and cached).

The model is traced with torch.fx; the nodes that depend on the consumer's output form
the suffix, and the values they read from the rest of the graph are cached for the
calibration batch. K candidates run as one batch of K*B rows (candidate-major). Models
that fx cannot trace fall back to full forwards with a gating hook (same results, slower).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..surgery import Unit, UnitGraph, apply_gates

DISCREPANCIES = ("kl", "mse", "ce")


def discrepancy(logits: torch.Tensor, target: torch.Tensor, kind: str, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-candidate discrepancy of logits [K, B, C] from the original logits [B, C]:
    "kl" = mean KL(original || pruned), "mse" = mean squared error summed over outputs,
    "ce" = cross-entropy on true labels (the authors' forward selection)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits, target = logits.float(), target.float()
    if kind == "mse":
        return (logits - target).pow(2).flatten(2).sum(-1).mean(-1)
    if kind == "kl":
        t = F.log_softmax(target, dim=-1)
        return (t.exp() * (t - F.log_softmax(logits, dim=-1))).sum(-1).mean(-1)
    if kind == "ce":
        if labels is None:
            raise ValueError("greedyprune: discrepancy 'ce' needs argument 'labels'")
        k, b = logits.shape[:2]
        return F.cross_entropy(logits.reshape(k * b, -1), labels.repeat(k), reduction="none").view(k, b).mean(-1)
    raise ValueError(f"greedyprune: argument 'discrepancy' must be one of {DISCREPANCIES}, got {kind!r}")


class SuffixEvaluator:
    """Discrepancy of the model with the unit's channels gated, against fixed target logits.

    inputs: the calibration batch; target: the logits to imitate (default: the model's own
    output now, ungated); max_rows bounds K*B per suffix run (memory).
    """

    def __init__(self, graph: UnitGraph, unit: Unit, inputs: torch.Tensor, *, kind: str = "kl",
                 labels: torch.Tensor | None = None, target: torch.Tensor | None = None, max_rows: int = 4096,
                 use_fx: bool = True):
        if kind not in DISCREPANCIES:
            raise ValueError(f"greedyprune: argument 'discrepancy' must be one of {DISCREPANCIES}, got {kind!r}")
        if max_rows < 1:
            raise ValueError("greedyprune: argument 'max_rows' must be >= 1")
        self.graph, self.unit, self.kind, self.labels = graph, unit, kind, labels
        self.model = graph.model
        self.inputs = inputs
        self.batch = inputs.shape[0]
        self.max_rows = max_rows
        self.channels = unit.channels
        self.model.eval()
        self._suffix = None
        if use_fx:
            try:
                self._suffix = _TracedSuffix(self.model, unit.consumer, inputs)
            except (fx.proxy.TraceError, NotImplementedError, TypeError, ValueError, RuntimeError):
                self._suffix = None
        with torch.no_grad():
            self.target = self.model(inputs) if target is None else target
            self.hidden = self._suffix.hidden if self._suffix else None

    @property
    def traced(self) -> bool:
        return self._suffix is not None

    def evaluate(self, gates: torch.Tensor) -> torch.Tensor:
        """Discrepancy for each row of gates [K, N] (or one gate vector [N] -> [1])."""
        gates = gates.reshape(-1, self.channels).to(self.target.device)
        per_run = max(1, self.max_rows // self.batch)
        out = []
        with torch.no_grad():
            for g in gates.split(per_run):
                out.append(discrepancy(self._logits(g), self.target, self.kind, self.labels))
        return torch.cat(out)

    def _logits(self, gates: torch.Tensor) -> torch.Tensor:
        k = gates.shape[0]
        if self._suffix is not None:
            gated = apply_gates(_repeat_batch(self.hidden, k), gates, self.unit.columns_per_channel)
            logits = self._suffix.run(gated, k)
        else:
            with self.graph.gated(self.unit, gates):
                logits = self.model(_repeat_batch(self.inputs, k))
        return logits.view(k, self.batch, *logits.shape[1:])

    def taylor_inputs(self, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(act, grad) for ops.taylor_scores: the un-gated hidden channels [B, N, *] and the
        gradient of the discrepancy with respect to the gated ones, at `gates` [N]."""
        gates = gates.reshape(1, self.channels).to(self.target.device)
        with torch.enable_grad():
            if self._suffix is not None:
                hidden = self.hidden
                gated = apply_gates(hidden, gates, self.unit.columns_per_channel).requires_grad_(True)
                logits = self._suffix.run(gated, 1)
            else:
                captured = {}

                def hook(_m, args):
                    captured["hidden"] = args[0].detach()
                    captured["gated"] = apply_gates(args[0].detach(), gates, self.unit.columns_per_channel).requires_grad_(True)
                    return (captured["gated"],) + tuple(args[1:])

                handle = self.graph.module(self.unit.consumer).register_forward_pre_hook(hook)
                try:
                    logits = self.model(self.inputs)
                finally:
                    handle.remove()
                hidden, gated = captured["hidden"], captured["gated"]
            loss = discrepancy(logits.unsqueeze(0), self.target, self.kind, self.labels).sum()
            (grad,) = torch.autograd.grad(loss, gated)
        shape = (self.batch, self.channels, -1)
        return hidden.reshape(shape), grad.reshape(shape)


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

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if n in needed:
                    cache[n] = value
                return value

        with torch.no_grad():
            Recorder(gm).run(inputs)
        self.hidden = cache[hidden_node]
        self.cache = cache
        self.hidden_node = hidden_node

    def run(self, gated_hidden: torch.Tensor, k: int) -> torch.Tensor:
        env = {}
        for n, value in self.cache.items():
            batched = isinstance(value, torch.Tensor) and n.op != "get_attr" and value.dim() > 0 and value.shape[0] == self.batch
            env[n] = _repeat_batch(value, k) if batched else value
        for node in self.order:
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
                out = args[0]
                if not isinstance(out, torch.Tensor):
                    raise ValueError("greedyprune: the model must return one logits tensor")
                return out
        raise ValueError("greedyprune: the traced graph has no output after the consumer")
