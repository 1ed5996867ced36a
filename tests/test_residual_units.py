"""Residual streams as units (surgery.py kind "residual"): discovery, exact surgery, the Gram of
several readers, the refit of each reader, Taylor scores over readers, and the `groups` switch."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.checks import ArgumentError
from greedyprune.greedy import PruneConfig, prune_model
from greedyprune.greedy.gram import contribution_gram
from greedyprune.greedy.refit import expectations
from greedyprune.greedy.refit_selection import RefitPath
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph
from finite_differences import assert_gr_is_the_directional_derivative


class _TinyResNet(nn.Module):
    """stem -> identity block -> projection block (stride 2) -> pool -> fc: two residual streams,
    the first read by three layers (block1.a, block2.c, the 1x1 shortcut e), the second by fc."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.a, self.bna = nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b, self.bnb = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c, self.bnc = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5)
        self.d, self.bnd = nn.Conv2d(5, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.e, self.bne = nn.Conv2d(6, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        s = F.relu(self.bn0(self.stem(x)))
        s = F.relu(self.bnb(self.b(F.relu(self.bna(self.a(s))))) + s)
        s = F.relu(self.bnd(self.d(F.relu(self.bnc(self.c(s))))) + self.bne(self.e(s)))
        return self.fc(F.adaptive_avg_pool2d(s, 1).flatten(1))


def _net() -> _TinyResNet:
    torch.manual_seed(0)
    model = _TinyResNet()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):  # non-trivial statistics
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval()


def _images(n: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _streams(graph: UnitGraph):
    return [u for u in graph.units if u.kind == "residual"]


def test_streams_are_units_with_every_producer_and_reader():
    graph = UnitGraph(_net(), _images()[:2])
    first, second = _streams(graph)
    assert (first.producer, first.co_producers, [r.name for r in first.readers]) == ("stem", ["b"], ["a", "c", "e"])
    assert sorted(first.members) == ["bn0", "bnb"]
    assert (second.producer, second.co_producers, [r.name for r in second.readers]) == ("d", ["e"], ["fc"])
    assert first.name == "stem->a+2" and second.name == "d->fc"
    assert first.fold_target is None and graph.fold_used(first, "producer") == "consumer"
    assert [u.name for u in graph.units if u.kind == "inner"] == ["a->b", "c->d"]


def test_resnet20_streams_cover_the_stage_widths():
    from greedyprune.models import build_model
    graph = UnitGraph(build_model("resnet20").eval(), torch.randn(2, 3, 16, 16))
    streams = _streams(graph)
    assert [u.channels for u in streams] == [16, 32, 64]
    assert [r.name for r in streams[0].readers] == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                                                     "layer2.0.conv1", "layer2.0.downsample.0"]
    assert sorted([streams[0].producer, *streams[0].co_producers]) == ["conv1", "layer1.0.conv2", "layer1.1.conv2",
                                                                        "layer1.2.conv2"]
    assert [r.name for r in streams[2].readers][-1] == "fc"
    assert len(graph.units) == 12 and [s.producers for s in graph.skipped] == [["fc"]]


@pytest.mark.parametrize("stream", [0, 1])
def test_removing_stream_channels_computes_the_gated_network(stream):
    """Gates on every reader, zero on the dropped channels, then surgery with the kept gates
    folded into the readers: the same outputs (float64)."""
    model, x = _net(), _images()
    graph = UnitGraph(model, x[:2])
    unit = _streams(graph)[stream]
    keep = torch.tensor([0, 2, 3] if stream == 0 else [1, 4, 5, 7])
    gates = torch.zeros(unit.channels, dtype=torch.float64)
    gates[keep] = torch.tensor([0.7, 1.3, 0.9, 1.1][:keep.numel()], dtype=torch.float64)
    with torch.no_grad(), graph.gated(unit, gates):
        expected = model(x)
    graph.prune(unit, keep, gates[keep], fold="consumer")
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert model.stem.out_channels == (3 if stream == 0 else 6) and model.fc.in_features == (8 if stream == 0 else 4)


def test_stream_gram_is_the_position_weighted_sum_of_the_readers_grams():
    model, x = _net(), _images()
    graph = UnitGraph(model, x[:2])
    unit = _streams(graph)[0]
    n = unit.channels
    inputs = {}
    handles = [graph.module(r.name).register_forward_pre_hook(
        lambda _m, args, name=r.name: inputs.__setitem__(name, args[0].detach())) for r in unit.readers]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    expected, first_positions = torch.zeros(n, n, dtype=torch.float64), None
    for reader in unit.readers:
        conv, hidden = graph.module(reader.name), inputs[reader.name]
        sigma = []
        for i in range(n):  # channel i's contribution alone, times N
            alone = torch.zeros_like(hidden)
            alone[:, i] = hidden[:, i]
            sigma.append(n * F.conv2d(alone, conv.weight, None, conv.stride, conv.padding))
        flat = torch.stack(sigma).permute(0, 1, 3, 4, 2).reshape(n, -1, conv.out_channels)  # [N, rows, out]
        rows, positions = flat.shape[1], sigma[0].shape[2] * sigma[0].shape[3]
        first_positions = first_positions or positions
        expected += torch.einsum("irc,jrc->ij", flat, flat) / rows * (positions / first_positions)
    G = contribution_gram(graph, unit, x.split(7))
    torch.testing.assert_close(G, expected, rtol=1e-6, atol=1e-9)  # W^T W is taken in float32 (gram.py)


def test_reconstruct_refits_every_reader_to_the_unpruned_network():
    """With refit_target "original", each reader's new weights are the ridge regression of the
    unpruned reader's output on the kept channels of its input (no bias: through the origin)."""
    model, x = _net(), _images(32)
    reference = copy.deepcopy(model)
    graph = UnitGraph(model, x[:2])
    unit = _streams(graph)[0]
    inputs, outputs = {}, {}

    def record(name):
        def hook(_m, args, out):
            inputs[name], outputs[name] = args[0], out
        return hook

    hooks = [reference.get_submodule(r.name).register_forward_hook(record(r.name)) for r in unit.readers]
    with torch.no_grad():
        reference(x)
    for h in hooks:
        h.remove()
    results = prune_model(model, x, method="refit", width_ratio=0.5, fold="reconstruct", recalibrate_bn=False,
                          units=[unit.name], graph=graph, progress=False)
    kept = torch.tensor(results[0].kept)
    assert results[0].fold == "reconstruct" and results[0].refit_error < results[0].removal_error
    for reader in unit.readers:
        conv = reference.get_submodule(reader.name)
        cols = F.unfold(inputs[reader.name][:, kept], conv.kernel_size, padding=conv.padding, stride=conv.stride)
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        Y = outputs[reader.name].permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
        xx = X.T @ X / len(X)
        lam = 0.01 * float(xx.diagonal().mean())
        W = torch.linalg.solve(xx + lam * torch.eye(len(xx), dtype=X.dtype), X.T @ Y / len(X)).T
        torch.testing.assert_close(graph.module(reader.name).weight.reshape(conv.out_channels, -1), W,
                                   rtol=1e-7, atol=1e-9)


def test_the_joint_refit_path_adds_the_readers_gains():
    model, x = _net(), _images()
    graph = UnitGraph(model, x[:2])
    unit = _streams(graph)[0]
    from greedyprune.greedy.moments import stream_moments
    moments, _ = stream_moments(graph, unit, [x])
    systems = [(expectations(m, graph.module(r.name).weight.reshape(graph.module(r.name).out_channels, -1).double(),
                             None), 9 if r.name != "e" else 1, False) for r, m in zip(unit.readers, moments)]
    alone = RefitPath(systems[:1], unit.channels, damping=0.01).extend(4)
    assert RefitPath([systems[0], systems[0]], unit.channels, damping=0.01).extend(4) == alone
    assert RefitPath(systems, unit.channels, damping=0.01, weights=[1.0, 0.0, 0.0]).extend(4) == alone
    joint = RefitPath(systems, unit.channels, damping=0.01)
    assert sorted(joint.extend(unit.channels)) == list(range(unit.channels))
    assert all(a >= b - 1e-12 for a, b in zip(joint.residuals, joint.residuals[1:]))  # each pick lowers it


def test_taylor_scores_over_readers_equal_finite_differences():
    model, x = _net(), _images(16)
    graph = UnitGraph(model, x[:2])
    unit = _streams(graph)[0]
    ev = BatchSuffix(graph, unit, x)
    assert not ev.traced  # several readers: full forwards gated at every reader
    n = unit.channels
    a = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a /= a.sum()
    pairs = ev.taylor_inputs(a * n)
    assert len(pairs) == len(unit.readers)
    gr = sum(ops.taylor_scores(act, grad, a, 3).gr for act, grad in pairs)
    assert_gr_is_the_directional_derivative(ev, a, gr)


@pytest.mark.parametrize("method,fold", [("refit", "reconstruct"), ("local", "none"), ("global", "consumer"),
                                         ("hybrid", "none"), ("magnitude", "reconstruct")])
def test_every_method_prunes_the_streams(method, fold):
    model, x = _net(), _images()
    results = prune_model(model, x, method=method, fold=fold, width_ratio=0.5, progress=False)
    by_name = {r.unit: r for r in results}
    assert by_name["stem->a+2"].width == 3 and by_name["d->fc"].width == 4
    assert model.stem.out_channels == model.b.out_channels == model.a.in_channels == model.e.in_channels == 3
    assert model.fc.in_features == model.e.out_channels == 4
    assert model(x).shape == (24, 3) and torch.isfinite(model(x)).all()


def test_groups_choose_the_kinds_pruned():
    x = _images()
    inner = prune_model(_net(), x, method="local", width_ratio=0.5, groups=("inner",), progress=False)
    assert [r.unit for r in inner] == ["a->b", "c->d"]
    streams = prune_model(_net(), x, method="local", width_ratio=0.5, groups=["residual"], progress=False)
    assert [r.unit for r in streams] == ["stem->a+2", "d->fc"]
    for bad in ("inner", (), ("inner", "embedding")):
        with pytest.raises(ArgumentError, match="'groups'"):
            PruneConfig(groups=bad)


def test_the_report_lists_the_streams_left_by_groups(tmp_path, monkeypatch):
    from greedyprune.greedy.pipeline import RunSpec, run_pruning
    from greedyprune.greedy.report import format_report
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    run = dict(model="resnet20", data="digits", calib_samples=32, gram_samples=32, train_epochs=1, progress=False)
    report = run_pruning(PruneConfig(method="local", width_ratio=0.5), RunSpec(out=tmp_path / "all", **run))
    assert len(report["units"]) == 12
    assert report["left_unpruned"] == [{"producers": ["fc"], "reason": "no linear consumer (model output)"}]
    report = run_pruning(PruneConfig(method="local", width_ratio=0.5, groups=("inner",)),
                         RunSpec(out=tmp_path / "inner", **run))
    left = [g for g in report["left_unpruned"] if g["reason"] == "kind 'residual' not in groups"]
    assert len(report["units"]) == 9 and len(left) == 3
    assert sorted(left[0]["producers"]) == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert "left unpruned: 4 channel group(s) (3 kind 'residual' not in groups" in format_report(report)


def test_cli_groups_flag_rejects_unknown_kinds(capsys):
    from greedyprune.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["prune", "--model", "cnn", "--data", "digits", "--groups", "inner,embedding"])
    assert stop.value.code == 2
    assert "--groups" in capsys.readouterr().err


def test_mobilenet_v2_bottleneck_streams_prune_exactly():
    from greedyprune.models import build_model
    torch.manual_seed(2)
    model = build_model("mobilenet_v2", num_classes=5).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    graph = UnitGraph(model, x[:2])
    streams = _streams(graph)
    assert len(streams) == 5  # the bottleneck widths tied by the inverted residuals (24, 32, 64, 96, 160)
    assert [u.channels for u in streams] == [24, 32, 64, 96, 160]
    unit = streams[1]
    keep = torch.arange(0, unit.channels, 2)
    gates = torch.zeros(unit.channels, dtype=torch.float64)
    gates[keep] = 1
    with torch.no_grad(), graph.gated(unit, gates):
        expected = model(x)
    graph.prune(unit, keep, fold="none")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-11)


def test_a_layer_read_by_two_layers_is_one_unit_with_both_readers():
    """ResNet-50's stem feeds the first bottleneck and its projection shortcut (no add before them):
    an inner unit with two readers, pruned exactly."""
    from greedyprune.models import build_model
    torch.manual_seed(3)
    model = build_model("resnet50", num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = UnitGraph(model, x)
    stem = graph.units[0]
    assert (stem.kind, stem.producer, [r.name for r in stem.readers]) == ("inner", "conv1",
                                                                          ["layer1.0.conv1", "layer1.0.downsample.0"])
    assert stem.fold_target is None and not graph.skipped[1:]
    keep = torch.arange(0, 64, 3)
    gates = torch.zeros(64, dtype=torch.float64)
    gates[keep] = 1.5
    with torch.no_grad(), graph.gated(stem, gates):
        expected = model(x)
    graph.prune(stem, keep, gates[keep], fold="producer")  # falls back to the readers' columns
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-11)
