"""Channels that reach a reader through a concat: each concatenated layer is a unit whose gates sit
at its window of the reader's input, so a gated forward is the pruned network's, the Gram is of the
unit's columns and a refit keeps the other layers' columns. A split (its sizes are in the forward's
code) is listed with its reason and the rest of the model prunes."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.greedy import prune_model
from greedyprune.greedy.gram import gram_of
from greedyprune.greedy.moments import reader_columns, stream_moments
from greedyprune.greedy.refit import expectations, refit_consumer
from greedyprune.greedy.refit_selection import RefitPath
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph, Window
from finite_differences import assert_gr_is_the_directional_derivative


class Concat(nn.Module):
    """Branches of 3, 5 and 4 channels concatenated, read by a conv (Inception)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.e = nn.Conv2d(3, 4, 1)
        self.c, self.fc = nn.Conv2d(12, 6, 3, padding=1), nn.Linear(6, 5)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)), torch.relu(self.e(x))], 1)
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


class Dense(nn.Module):
    """A DenseNet block: every layer reads BN(ReLU) of the concat of all before it, so the stem's
    channels reach three readers at three windows, behind a BN each."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(6 + 4 * i) for i in range(3))
        self.layers = nn.ModuleList(nn.Conv2d(6 + 4 * i, 4, 3, padding=1) for i in range(2))
        self.head = nn.Linear(14, 5)

    def forward(self, x):
        features = [self.stem(x)]
        for norm, layer in zip(self.norms, self.layers):
            features.append(layer(torch.relu(norm(torch.cat(features, 1)))))
        h = torch.relu(self.norms[2](torch.cat(features[::-1], 1)))  # the head reads them reversed
        return self.head(h.mean((2, 3)))


class Split(nn.Module):
    """One conv's channels split between two convs, concatenated again for the head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b, self.c = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.d, self.fc = nn.Conv2d(12, 7, 1), nn.Linear(7, 5)

    def forward(self, x):
        left, right = torch.relu(self.a(x)).split(4, 1)
        h = torch.cat([torch.relu(self.b(left)), torch.relu(self.c(right))], 1)
        return self.fc(torch.relu(self.d(h)).mean((2, 3)))


def _images(n=6):
    return torch.randn(n, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _model(cls):
    torch.manual_seed(0)
    model = cls().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that are not the identity
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def test_each_concatenated_layer_is_a_unit_at_its_window():
    graph = UnitGraph(_model(Concat), _images(2))
    windows = {u.name: [r.window for r in u.readers] for u in graph.units}
    assert windows == {"a->c": [Window(0, 12)], "b->c": [Window(3, 12)], "e->c": [Window(8, 12)], "c->fc": [None]}
    dense = UnitGraph(_model(Dense), _images(2))
    stem = dense.unit("stem->layers.0+2")
    assert [(r.name, r.window) for r in stem.readers] == [
        ("layers.0", None), ("layers.1", Window(0, 10)), ("head", Window(8, 14))]


@pytest.mark.parametrize("cls", [Concat, Dense])
def test_pruning_unit_after_unit_is_the_gated_network(cls):
    """Each unit's removal (gates folded into the reader) is its gated forward, also after the units
    before it moved the windows they share a reader with."""
    model, x = _model(cls), _images()
    graph = UnitGraph(model, x[:2])
    generator = torch.Generator().manual_seed(1)
    for unit in list(graph.units):
        gates = torch.rand(unit.channels, dtype=torch.float64, generator=generator) + 0.5
        keep = torch.randperm(unit.channels, generator=generator)[:max(1, unit.channels // 2)].sort().values
        gates_off = torch.zeros_like(gates)
        gates_off[keep] = gates[keep]
        with graph.gated(unit, gates_off):
            expected = model(x)
        graph.prune(unit, keep, gates[keep], fold="consumer")
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_the_gram_of_a_window_is_that_of_the_units_contributions():
    """G_ij = N^2 E<W_i x_i, W_j x_j>, summed over every reader's output positions per image, per
    output position of the first reader (gram.py)."""
    model, x = _model(Dense), _images()
    graph = UnitGraph(model, x[:2])
    unit = graph.unit("stem->layers.0+2")
    moments, _ = stream_moments(graph, unit, [x])
    n, expected = unit.channels, torch.zeros(unit.channels, unit.channels, dtype=torch.float64)
    inputs = {}
    hooks = [graph.module(r.name).register_forward_pre_hook(lambda m, a, name=r.name: inputs.update({name: a[0]}))
             for r in unit.readers]
    model(x)
    for h in hooks:
        h.remove()
    for reader in unit.readers:
        consumer = graph.module(reader.name)
        per_channel = []
        for i in range(n):
            window = reader.window or Window(0, n)
            only = torch.zeros(window.inputs, dtype=torch.float64)
            only[window.offset + i] = n
            h = inputs[reader.name] * only.view(1, -1, 1, 1) if consumer.weight.dim() == 4 else None
            out = (F.conv2d(h, consumer.weight, None, consumer.stride, consumer.padding) if h is not None
                   else F.linear(inputs[reader.name] * only, consumer.weight))
            per_channel.append(out.flatten(2) if out.dim() == 4 else out.unsqueeze(-1))
        c = torch.stack(per_channel)  # [N, B, out, positions]
        expected += torch.einsum("ibop,jbop->ij", c, c) / (c.shape[1] * moments[0].positions)
    # W^T W is taken in float32 (gram.py)
    torch.testing.assert_close(gram_of(moments, graph, unit), expected, rtol=1e-6, atol=1e-8)


def test_the_refit_path_keeps_the_other_layers_columns():
    """The first channel the refit path picks lowers the refit's error the most, the refit keeping
    every column of the other concatenated layers; its residual is that refit's error."""
    model, x = _model(Concat), _images(12)
    graph = UnitGraph(model, x[:2])
    unit = graph.unit("b->c")
    (moments,), _ = stream_moments(graph, unit, [x])
    consumer, reader = graph.module("c"), unit.readers[0]
    weight = consumer.weight.detach().reshape(consumer.weight.shape[0], -1)
    t = expectations(moments, weight, consumer.bias.detach())
    path = RefitPath([(t, 9, True, reader.window)], unit.channels, damping=1e-12)
    errors = [refit_consumer(moments, weight, consumer.bias, reader_columns(reader, consumer, torch.tensor([j]), 5),
                             damping=1e-12, unit="b->c").error for j in range(unit.channels)]
    (first,) = path.extend(1)
    assert first == min(range(unit.channels), key=errors.__getitem__)
    assert path.residuals[0] == pytest.approx(errors[first], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method,fold,options", [("local", "consumer", {}), ("global", "consumer", {}),
                                                 ("global", "consumer", {"exact_until": 0}),  # Taylor scores
                                                 ("refit", "reconstruct", {}), ("magnitude", "reconstruct", {})])
def test_every_method_prunes_the_concatenated_layers(method, fold, options):
    model, x = _model(Dense), _images()
    before = model(x)
    results = prune_model(model, x, method=method, width_ratio=0.5, fold=fold, progress=False, **options)
    assert {r.unit: r.width for r in results} == {"stem->layers.0+2": 3, "layers.0->layers.1+1": 2,
                                                  "layers.1->head": 2}
    assert [model.layers[0].in_channels, model.layers[1].in_channels, model.head.in_features] == [3, 5, 7]
    assert model.norms[2].num_features == 7 and model(x).shape == before.shape


def test_a_split_is_left_whole_with_its_reason_and_the_rest_prunes():
    model, x = _model(Split), _images()
    graph = UnitGraph(model, x[:2])
    assert [u.name for u in graph.units] == ["b->d", "c->d", "d->fc"]
    reasons = {tuple(g.producers): g.reason for g in graph.skipped}
    assert reasons[("a",)].startswith("a split: b reads 4 of the 8 channels (torch.split / chunk")
    prune_model(copy.deepcopy(model), x, method="local", width_ratio=0.5, progress=False)
    prune_model(model, x, method="global", width_ratio=0.5, progress=False)
    assert (model.a.out_channels, model.d.in_channels, model.d.out_channels) == (8, 6, 4)
    assert model(x).shape == (6, 5)


@pytest.mark.parametrize("unit_name", ["stem->layers.0+2", "layers.0->layers.1+1"])
def test_taylor_scores_through_a_concat_equal_finite_differences(unit_name):
    model, x = _model(Dense), _images(8)
    graph = UnitGraph(model, x[:2])
    unit = graph.unit(unit_name)
    ev = BatchSuffix(graph, unit, x)
    n = unit.channels
    a = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a /= a.sum()
    gr = sum(ops.taylor_scores(act, grad, a, 3).gr for act, grad in ev.taylor_inputs(a * n))
    assert_gr_is_the_directional_derivative(ev, a, gr)
