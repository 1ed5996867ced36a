"""Greedy imitation drivers (seed 000): Gram builders vs explicit contributions, local
imitation vs brute force, Taylor scores vs finite differences, the fx suffix evaluator,
Algorithm 2, plans."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from greedyprune import ops
from greedyprune.greedy import (SuffixEvaluator, apply_plan, choose, contribution_gram, global_imitation, load_plan,
                                local_imitation, make_plan, prune_model, save_plan)
from greedyprune.greedy.selection import Selection
from greedyprune.greedy.suffix import BatchSuffix
from greedyprune.greedy.surgery import UnitGraph
from finite_differences import assert_gr_is_the_directional_derivative


def _explicit_contributions(consumer: nn.Module, hidden: torch.Tensor, n: int) -> torch.Tensor:
    """sigma [N, rows, out]: N x what channel i alone adds to the consumer's (bias-free) output."""
    sig = []
    for i in range(n):
        h = torch.zeros_like(hidden)
        if isinstance(consumer, nn.Linear):
            s = hidden.shape[1] // n
            h[:, i * s:(i + 1) * s] = hidden[:, i * s:(i + 1) * s]
            out = F.linear(h, consumer.weight)
        else:
            h[:, i] = hidden[:, i]
            out = F.conv2d(h, consumer.weight, None, consumer.stride, consumer.padding, consumer.dilation)
            out = out.permute(0, 2, 3, 1)
        sig.append(n * out.reshape(-1, out.shape[-1]))
    return torch.stack(sig).double().detach()


def _net(consumer: nn.Module, channels: int, flatten: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    layers += [nn.Flatten()] if flatten else []
    layers += [consumer, nn.Flatten() if not flatten else nn.Identity(), nn.LazyLinear(4)]
    return nn.Sequential(*layers)


CONSUMERS = {
    "linear_after_flatten": (lambda n: nn.Linear(n * 5 * 5, 6), True),
    "conv1x1": (lambda n: nn.Conv2d(n, 6, 1), False),
    "conv3x3_stride1_pad1": (lambda n: nn.Conv2d(n, 6, 3, padding=1), False),
    "conv3x3_stride2_pad1": (lambda n: nn.Conv2d(n, 6, 3, stride=2, padding=1), False),
    "conv3x3_stride2_pad0_dilation2": (lambda n: nn.Conv2d(n, 6, 3, stride=2, dilation=2), False),
}


@pytest.mark.parametrize("kind", sorted(CONSUMERS))
def test_gram_equals_explicit_contributions(kind):
    torch.manual_seed(0)
    n = 7
    make, flatten = CONSUMERS[kind]
    model = _net(make(n), n, flatten).eval()
    x = torch.randn(5, 3, 5, 5)
    model(x)  # materialise the lazy classifier
    graph = UnitGraph(model, x[:2])
    (unit,) = [u for u in graph.units if u.producer == "0"]
    G = contribution_gram(graph, unit, [x[:2], x[2:]])
    hidden = model[2](model[1](model[0](x))).detach()
    if flatten:
        hidden = hidden.flatten(1)
    sigma = _explicit_contributions(graph.module(unit.consumer), hidden, n)
    expected = torch.einsum("irc,jrc->ij", sigma, sigma) / sigma.shape[1]
    torch.testing.assert_close(G, expected, rtol=1e-5, atol=1e-6)


def test_gram_position_subsampling_keeps_every_position_when_asked_for_all():
    torch.manual_seed(1)
    model = _net(nn.Conv2d(6, 4, 3, padding=1), 6).eval()
    x = torch.randn(4, 3, 5, 5)
    model(x)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    full = contribution_gram(graph, unit, [x])
    sub = contribution_gram(graph, unit, [x], positions_per_image=25)
    torch.testing.assert_close(full, sub)
    fewer = contribution_gram(graph, unit, [x], positions_per_image=3, generator=torch.Generator().manual_seed(0))
    assert fewer.shape == full.shape and not torch.allclose(fewer, full)


def test_local_imitation_equals_brute_force():
    """Every step of the path is the best (neuron, step size) over a fine grid, and the
    reported losses are the explicit local discrepancies of the consumer's output."""
    torch.manual_seed(2)
    n = 6
    consumer = nn.Linear(n, 3, bias=False)
    hidden = torch.relu(torch.randn(40, n))
    sigma = _explicit_contributions(consumer, hidden, n)
    target = sigma.mean(0)
    G = torch.einsum("irc,jrc->ij", sigma, sigma) / sigma.shape[1]

    def loss(a):
        return float(((torch.einsum("i,irc->rc", a, sigma) - target) ** 2).sum(-1).mean())

    prev = torch.zeros(n, dtype=torch.float64)
    full = ops.greedy_local(G, max_neurons=n, max_steps=8)
    for t in range(1, full.order.numel() + 1):
        step = ops.greedy_local(G, max_neurons=n, max_steps=t)
        assert math.isclose(loss(step.a), float(step.losses[-1]), rel_tol=1e-6, abs_tol=1e-9)
        brute = math.inf
        for i in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[i] = 1
            if t == 1:
                brute = min(brute, loss(e))
                continue
            lo = 0.0 if prev[i] == 0 else -float(prev[i] / (1 - prev[i]))
            for g in torch.linspace(lo, 1.0, 401).tolist():
                brute = min(brute, loss((1 - g) * prev + g * e))
        assert float(step.losses[-1]) <= brute + 1e-9
        prev = step.a.double()
    # the driver keeps exactly the path's channels
    sel = local_imitation(G, max_neurons=3)
    assert sel.width <= 3 and math.isclose(sel.loss, loss(sel.a), rel_tol=1e-6)


def _small_cnn(dtype=torch.float32):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                          nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    for bn in (model[1], model[4]):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval()


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_taylor_scores_equal_finite_differences(kind):
    model = _small_cnn(torch.float64)
    x = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    ev = BatchSuffix(graph, unit, x, kind=kind)
    n = unit.channels
    a = torch.rand(n, dtype=torch.float64)
    a /= a.sum()
    (act, grad), = ev.taylor_inputs(a * n)
    scores = ops.taylor_scores(act, grad, a, 3)
    assert_gr_is_the_directional_derivative(ev, a, scores.gr, abs_tol=1e-8)


def test_suffix_evaluator_batched_fx_equals_full_forward():
    from greedyprune.models import build_model
    torch.manual_seed(4)
    model = build_model("resnet20", num_classes=5).eval()
    x = torch.randn(6, 3, 16, 16)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[4]
    traced = SuffixEvaluator(graph, unit, x, max_rows=12)
    assert traced.traced
    eager = SuffixEvaluator(graph, unit, x, use_fx=False)
    gates = torch.rand(5, unit.channels) * 2
    batched = traced.evaluate(gates)
    one_by_one = torch.cat([eager.evaluate(g) for g in gates])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-6)
    assert float(traced.evaluate(torch.ones(unit.channels))) < 1e-10  # all gates 1 = the original


@pytest.mark.parametrize("budget", [None, 1])
def test_evaluator_over_batches_equals_one_batch(budget):
    """Discrepancies and Taylor sums are sums over images: split into batches (with a budget so
    small that nothing is cached and every chunk is one row) they are the same."""
    model = _small_cnn(torch.float64)
    x = torch.randn(20, 2, 6, 6, dtype=torch.float64)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[1]
    whole = SuffixEvaluator(graph, unit, x)
    split = SuffixEvaluator(graph, unit, [x[:7], x[7:15], x[15:]], memory_budget=budget)
    n = unit.channels
    gates = torch.rand(4, n, dtype=torch.float64) * 2
    torch.testing.assert_close(split.evaluate(gates), whole.evaluate(gates), rtol=1e-10, atol=1e-12)
    a = torch.rand(n, dtype=torch.float64)
    a /= a.sum()
    candidates = torch.tensor([3, 0, 11])
    torch.testing.assert_close(split.evaluate_steps(a, 0.3, candidates), whole.evaluate_steps(a, 0.3, candidates),
                               rtol=1e-10, atol=1e-12)
    (act, grad), = BatchSuffix(graph, unit, x).taylor_inputs(a * n)
    expected = ops.taylor_scores(act, grad, a, 5).topk
    assert split.taylor_candidates(a, 5).tolist() == expected.tolist() == whole.taylor_candidates(a, 5).tolist()
    # per-step mode: the step methods see one batch at a time, cyclically
    per_step = SuffixEvaluator(graph, unit, [x[:7], x[7:15], x[15:]], per_step=True)
    for start, stop in ((7, 15), (15, 20), (0, 7)):
        per_step.advance()
        one = SuffixEvaluator(graph, unit, x[start:stop])
        torch.testing.assert_close(per_step.evaluate_steps(a, 0.3, candidates), one.evaluate_steps(a, 0.3, candidates),
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(per_step.evaluate(gates), whole.evaluate(gates), rtol=1e-10, atol=1e-12)


def test_global_imitation_first_step_is_the_best_single_channel_and_loss_falls():
    model = _small_cnn()
    x = torch.randn(32, 2, 6, 6)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[1]
    ev = SuffixEvaluator(graph, unit, x, kind="mse")
    n = unit.channels
    singles = ev.evaluate(torch.eye(n) * n)
    sel = global_imitation(ev, max_neurons=n, max_steps=1)
    assert sel.width == 1 and int(sel.kept[0]) == int(torch.argmin(singles))
    longer = global_imitation(ev, max_neurons=n, max_steps=12, exact_until=3, taylor_top=4)
    assert longer.steps == 12 and longer.path[-1] < longer.path[0]
    # a = counts / steps; the reported loss is the evaluator's at the final a
    assert math.isclose(float(ev.evaluate(longer.gates().float())), longer.loss, rel_tol=1e-5)


def test_choose_prefers_fewer_channels_then_lower_loss():
    a3 = torch.tensor([0.5, 0.5, 0.0])
    a2 = torch.tensor([1.0, 0.0, 0.0])
    for tol in (None, 1.0):  # both meet the criterion
        assert choose([Selection("local", a3, 0.1, 3), Selection("global", a2, 0.5, 3)], tol).method == "global"
        assert choose([Selection("local", a2, 0.2, 3), Selection("global", a2, 0.1, 3)], tol).method == "global"
        assert choose([Selection("local", a2, 0.1, 3), Selection("global", a2, 0.1, 3)], tol).method == "local"


def test_choose_takes_only_the_methods_that_meet_tol():
    a3 = torch.tensor([0.5, 0.5, 0.0])
    a2 = torch.tensor([1.0, 0.0, 0.0])
    # the narrower one missed tol: the wider one that met it wins
    assert choose([Selection("local", a3, 0.01, 3), Selection("global", a2, 0.5, 3)], 0.02).method == "local"
    # neither met it: the lower discrepancy, whatever the width
    assert choose([Selection("local", a3, 0.1, 3), Selection("global", a2, 0.5, 3)], 0.02).method == "local"
    assert choose([Selection("local", a3, 0.6, 3), Selection("global", a2, 0.5, 3)], 0.02).method == "global"


def test_surgery_keeps_the_function():
    model = _small_cnn()
    x = torch.randn(8, 2, 6, 6)
    before = model(x)
    graph = UnitGraph(model, x[:2])
    for unit in graph.units:
        graph.prune(unit, torch.arange(unit.channels), torch.ones(unit.channels))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    gates = torch.tensor([0.0, 2.0, 0.0, 0.5, 1.5, 0.0, 0.0, 4.0])
    unit = graph.units[0]
    with graph.gated(unit, gates):
        gated = model(x)
    keep = torch.nonzero(gates).flatten()
    graph.prune(unit, keep, gates[keep])
    assert model[0].out_channels == 4 and model[3].in_channels == 4
    torch.testing.assert_close(model(x), gated, rtol=1e-5, atol=1e-6)


def test_prune_model_plan_round_trip(tmp_path):
    model = _small_cnn()
    fresh = copy.deepcopy(model)
    x = torch.randn(24, 2, 6, 6)
    # a plan replays plain removal and the gate folds (a refit needs the calibration data)
    results = prune_model(model, x, method="hybrid", width_ratio=0.5, fold="none", progress=False)
    assert [r.width for r in results] == [len(r.kept) for r in results]
    assert all(1 <= r.width <= math.ceil(0.5 * r.channels) for r in results)
    save_plan(make_plan(results, model="small"), tmp_path / "plan.json")
    plan = load_plan(tmp_path / "plan.json")
    apply_plan(fresh, plan, x[:2], bn_batches=[x])  # prune_model re-estimates BN on the Gram batches by default
    torch.testing.assert_close(fresh(x), model(x))
    (tmp_path / "bad.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="'path'"):
        load_plan(tmp_path / "bad.json")


def test_tol_bounds_the_discrepancy_each_unit_adds():
    model = _small_cnn()
    x = torch.randn(32, 2, 6, 6)
    for method in ("local", "global", "hybrid"):
        m = copy.deepcopy(model)
        results = prune_model(m, x, method=method, tol=0.02, progress=False)
        assert all(r.loss <= 0.02 for r in results), method
        assert sum(r.width for r in results) < sum(r.channels for r in results), method


def test_gfs_scores_true_labels():
    model = _small_cnn()
    x = torch.randn(20, 2, 6, 6)
    labels = model(x).argmax(-1)
    results = prune_model(model, x, method="gfs", width_ratio=0.5, labels=labels, progress=False)
    assert all(r.method == "gfs" for r in results)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(method="magic", tol=0.1), "method"),
    (dict(method="local"), "tol"),
    (dict(method="local", tol=-1.0), "tol"),
    (dict(method="local", width_ratio=1.5), "width_ratio"),
    (dict(method="gfs", tol=0.1), "labels"),
])
def test_prune_model_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        prune_model(_small_cnn(), torch.randn(4, 2, 6, 6), progress=False, **kwargs)


def test_unit_graph_errors_name_the_problem():
    model = _small_cnn()
    graph = UnitGraph(model, torch.randn(2, 2, 6, 6))
    unit = graph.units[0]
    with pytest.raises(ValueError, match="'keep'"):
        graph.prune(unit, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="'keep'"):
        graph.prune(unit, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="'scales'"):
        graph.prune(unit, torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match="no prunable unit"):
        graph.unit("nope")
    with pytest.raises(ValueError, match="'model'"):
        UnitGraph("not a model", torch.randn(1))


@pytest.mark.parametrize("name", ["mlp", "cnn", "vgg11", "vgg19", "resnet20", "resnet32", "resnet56", "resnet18",
                                  "resnet34", "resnet50", "mobilenet_v2", "vit_tiny"])
def test_every_zoo_model_prunes_end_to_end(name):
    from greedyprune.models import build_model
    torch.manual_seed(5)
    small = name in ("mlp", "cnn")
    channels, size = (1, 8) if small else (3, 16)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    x = torch.randn(4, channels, size, size)
    params_before = sum(p.numel() for p in model.parameters())
    results = prune_model(model, x, method="hybrid" if name == "mlp" else "local", width_ratio=0.5, progress=False)
    assert results and all(1 <= r.width <= math.ceil(r.channels / 2) for r in results)
    assert model(x).shape == (4, 7)
    assert sum(p.numel() for p in model.parameters()) < params_before


def test_pipeline_writes_report_plan_and_model(tmp_path, monkeypatch):
    from greedyprune.greedy import PruneConfig
    from greedyprune.greedy.pipeline import RunSpec, run_pruning
    from greedyprune.greedy.report import format_report
    from greedyprune.models import load_model
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    report = run_pruning(PruneConfig(method="hybrid", tol=0.05),
                         RunSpec(model="mlp", data="digits", out=tmp_path / "out", calib_samples=128, gram_samples=256,
                                 train_epochs=3, progress=False))
    for name in ("report.json", "report.png", "plan.json", "pruned.pt", "pruned.pt2"):
        assert (tmp_path / "out" / name).is_file()
    assert report["before"]["accuracy"] > 0.85
    assert report["after_prune"]["params"] < report["before"]["params"]
    assert report["after_prune"]["flops"] < report["before"]["flops"]
    assert [u["unit"] for u in report["units"]] == ["fc1->fc2", "fc2->fc3"]
    pruned, _ = load_model(tmp_path / "out" / "pruned.pt")
    assert sum(p.numel() for p in pruned.parameters()) == report["after_prune"]["params"]
    assert "after prune" in format_report(report)


def test_layer_curves_cli_writes_both_curves_per_unit(tmp_path, monkeypatch):
    """Figure 2 of seed 000 on the zoo cnn: every unit pruned alone, local and global imitation on
    the same held-out quantity; both fall from 1 to 8 neurons on every unit."""
    from greedyprune.cli import main
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "curves"
    argv = ["layer-curves", "--model", "cnn", "--widths", "1", "8", "--calib-samples", "64", "--train-epochs", "2",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "layer_curves.json").read_text())
    assert (out / "layer_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert results["discrepancy"] == "kl" and results["global_candidates"] == "exact"
    assert [c["unit"] for c in results["units"]] == ["block1.conv->block2.conv", "block2.conv->block3.conv",
                                                     "block3.conv->block4.conv", "block4.conv->fc"]
    for curve in results["units"]:
        assert curve["widths"] == [1, 8] and curve["global_steps"] >= 8
        assert curve["local"][1] < curve["local"][0] and curve["global"][1] < curve["global"][0]
    assert main(argv) == 2  # a finished run is not overwritten
    assert main(argv[:-3] + ["--widths", "0", "--out", str(tmp_path / "other")]) == 2


def test_grams_pass_reads_the_targets_and_the_previous_units_exported_discrepancy():
    """Local imitation to a width (fold none, BN re-estimated): every unit's Gram pass runs on to
    the logits, which are both its targets and the logits the previous unit's export is measured
    by, so neither the first unit's target forward nor the exported-discrepancy forward of any
    unit but the last is run; same plan, same exported discrepancies as with the targets recorded
    apart (gram_batches given)."""
    x = torch.randn(24, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    runs = {}
    for fused in (True, False):
        model = _small_cnn()
        calls = []
        model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))  # every pass begun
        results = prune_model(model, [x[:12], x[12:]], method="local", width_ratio=0.5, progress=False,
                              gram_batches=None if fused else [x[:12], x[12:]])
        runs[fused] = (results, len(calls))
    (fused, fused_calls), (apart, apart_calls) = runs[True], runs[False]
    assert len(fused) >= 2
    assert [r.kept for r in fused] == [r.kept for r in apart]
    assert [r.exported_loss for r in fused] == pytest.approx([r.exported_loss for r in apart], rel=1e-6)
    assert [r.loss for r in fused] == [r.exported_loss for r in fused]
    assert all(r.exported_loss > 0 for r in fused)
    # per batch: the first unit's target forward, and each but the last unit's discrepancy forward
    assert fused_calls == apart_calls - 2 * len(fused)


def test_a_model_without_units_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(ValueError, match="no prunable unit"):
        prune_model(model, torch.randn(4, 3, 2, 2), width_ratio=0.5, progress=False)


def test_rate_experiment_local_imitation_error_falls_faster_than_training(tmp_path):
    from greedyprune.greedy.rate_demo import run_rate_demo
    r = run_rate_demo(tmp_path, widths=(4, 48), samples=600, eval_samples=200, train_steps=600, progress=False)
    assert (tmp_path / "rate.json").is_file() and (tmp_path / "rate.png").is_file()
    local_drop = r["local"][0] / r["local"][1]
    scratch_drop = r["scratch"][0] / r["scratch"][1]
    assert local_drop > scratch_drop, r


@pytest.mark.parametrize("kind", ["linear_after_flatten", "conv3x3_stride2_pad1", "conv1x1"])
@pytest.mark.parametrize("cache_contributions", [True, False])
def test_fixed_step_moves_use_the_consumer_linearity_exactly(kind, cache_contributions, monkeypatch):
    from greedyprune.greedy import suffix
    if not cache_contributions:
        monkeypatch.setattr(suffix, "_CONTRIBUTION_CACHE_BYTES", 0)
    torch.manual_seed(6)
    n = 7
    make, flatten = CONSUMERS[kind]
    model = _net(make(n), n, flatten).double().eval()
    x = torch.randn(9, 3, 5, 5, dtype=torch.float64)
    model(x)
    graph = UnitGraph(model, x[:2])
    unit = [u for u in graph.units if u.producer == "0"][0]
    ev = SuffixEvaluator(graph, unit, x, kind="kl", max_rows=20)
    a = torch.rand(n, dtype=torch.float64)
    a /= a.sum()
    candidates = torch.tensor([6, 0, 3, 3, 5])
    gamma = 0.25
    gates = ((1 - gamma) * a + gamma * torch.eye(n, dtype=torch.float64)[candidates]) * n
    torch.testing.assert_close(ev.evaluate_steps(a, gamma, candidates), ev.evaluate(gates), rtol=1e-9, atol=1e-12)


def test_a_scalar_add_is_not_a_residual():
    class ScalarAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(6, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            x = torch.relu(self.conv1(x)) + 1.0
            return self.fc(self.conv2(x).mean((2, 3)))

    graph = UnitGraph(ScalarAdd().eval(), torch.randn(2, 2, 6, 6))
    assert [u.name for u in graph.units] == ["conv1->conv2", "conv2->fc"]


class _NoisyMiniBatches:
    """A per-step evaluator whose mini-batch losses always look good (0.01) while the loss over all
    calibration images is 0.3 / (kept channels): tol 0.1 is truly met at 3 channels."""

    channels, device, per_step = 6, torch.device("cpu"), True

    def advance(self):
        pass

    def evaluate_steps(self, a, gamma, candidates):
        unkept = (a[candidates] == 0).double()
        return 0.01 - 0.005 * unkept - 1e-4 * candidates.double()  # the best: the highest unkept index

    def evaluate(self, gates):
        return torch.tensor([0.3 / int((gates.reshape(-1) > 0).sum())], dtype=torch.float64)


def test_per_step_tol_is_met_over_all_calibration_images():
    """A step's loss on one mini-batch meeting tol does not end the path; the loss over all
    calibration images must meet it too."""
    sel = global_imitation(_NoisyMiniBatches(), max_neurons=6, tol=0.1, exact_until=6)
    assert sel.stop == "tol" and sel.width == 3 and sel.loss == pytest.approx(0.1)


class _GeneratedBatches:
    """A sequence of calibration batches made when asked for (as a dataset on disk would load
    them); counts the loads and the batches alive at once."""

    def __init__(self, batches: int, size: int):
        self.batches, self.size, self.loads = batches, size, 0

    def __len__(self):
        return self.batches

    def __getitem__(self, i):
        if not 0 <= i < self.batches:
            raise IndexError(i)
        self.loads += 1
        return torch.randn(self.size, 3, 8, 8, generator=torch.Generator().manual_seed(i))


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()


@pytest.mark.parametrize("method, step_batch", [("local", None), ("hybrid", 16)])
def test_a_sequence_of_batches_is_read_on_demand_and_prunes_as_the_list(method, step_batch):
    """Calibration given as a sequence is loaded batch by batch whenever needed (never held whole)
    and gives the same channels as the same batches in a list."""
    lazy = _GeneratedBatches(batches=4, size=32)
    eager = [lazy[i] for i in range(4)]
    lazy.loads = 0
    options = dict(method=method, width_ratio=0.5, step_batch=step_batch, exact_until=4, taylor_top=2, progress=False)
    from_lazy = prune_model(_bn_cnn(), lazy, **options)
    from_list = prune_model(_bn_cnn(), eager, **options)
    assert [r.kept for r in from_lazy] == [r.kept for r in from_list]
    assert lazy.loads > len(lazy)  # read again for every unit, not once and kept


def test_ce_gap_is_the_rise_of_the_true_label_cross_entropy():
    from greedyprune.greedy.outputs import discrepancy

    generator = torch.Generator().manual_seed(0)
    target, logits = torch.randn(6, 4, generator=generator), torch.randn(3, 6, 4, generator=generator)
    labels = torch.randint(0, 4, (6,), generator=generator)
    expected = torch.stack([F.cross_entropy(row, labels) for row in logits]) - F.cross_entropy(target, labels)
    torch.testing.assert_close(discrepancy(logits, target, "ce-gap", labels), expected)
    assert float(discrepancy(target[None], target, "ce-gap", labels)[0]) == 0.0
    with pytest.raises(ValueError, match="needs argument 'labels'"):
        discrepancy(logits, target, "ce-gap")


def test_prune_model_with_a_ce_gap_tolerance_meets_it():
    model, x = _bn_cnn(), torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
    results = prune_model(model, x, labels=labels, method="local", tol=0.05, discrepancy="ce-gap", progress=False)
    assert all(r.loss <= 0.05 or r.stop.startswith("unpruned") for r in results)
    with pytest.raises(ValueError, match="'labels'"):
        prune_model(_bn_cnn(), x, method="local", tol=0.05, discrepancy="ce-gap", progress=False)


def test_target_flops_bisects_the_tolerance_and_meets_the_budget():
    """--target-flops's default (the paper's way): bisection on the per-unit tolerance; the pruned
    model keeps at most the asked fraction of the FLOPs."""
    from dataclasses import replace

    from greedyprune.greedy import PruneConfig
    from greedyprune.greedy.budget import tol_for_flops
    from greedyprune.harness.measure import count_flops

    model, x = _bn_cnn(), torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    config = PruneConfig(method="local", tol=1.0)
    tol = tol_for_flops(model, x, 0.5, config, iterations=6)
    assert 1e-4 <= tol <= 10.0
    pruned = copy.deepcopy(model)
    prune_model(pruned, x, replace(config, tol=tol), progress=False)
    assert count_flops(pruned, x[:1]) <= 0.5 * count_flops(model, x[:1])
    with pytest.raises(ValueError, match="'target_flops'"):
        tol_for_flops(model, x, 1.5, config)


def test_a_network_budget_is_split_evenly_over_the_units():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    split = prune_model(_bn_cnn(), x, method="local", network_budget=0.1, progress=False)
    per_unit = prune_model(_bn_cnn(), x, method="local", tol=0.05, progress=False)  # _bn_cnn has 2 units
    assert len(split) == 2 and [r.kept for r in split] == [r.kept for r in per_unit]
    with pytest.raises(ValueError, match="'network_budget'"):
        prune_model(_bn_cnn(), x, method="local", network_budget=0.1, tol=0.05, progress=False)
