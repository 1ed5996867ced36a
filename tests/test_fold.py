"""Where the gates go after surgery (surgery.FOLDS), widths as asked, BN re-estimation,
select_channels, and greedy imitation as a Torch-Pruning importance (issue: pruned models
that fine-tune best)."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from greedyprune.greedy import apply_plan, global_imitation, local_imitation, prune_model, select_channels
from greedyprune.greedy.evaluator import SuffixEvaluator
from greedyprune.greedy.tp_importance import GreedyImportance
from greedyprune.models import build_model
from greedyprune.greedy.surgery import FOLDS, UnitGraph
from greedyprune.harness.training import recalibrate_batchnorm


def _cnn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(12, 5))
    for bn in (model[1], model[5]):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _prune_all(model, x, fold):
    graph = UnitGraph(model, x[:2])
    gen = torch.Generator().manual_seed(1)
    used = []
    for unit in graph.units:
        keep = torch.arange(0, unit.channels, 2)
        used.append(graph.prune(unit, keep, torch.rand(keep.numel(), generator=gen) * 3 + 0.1, fold=fold))
    return used


@pytest.mark.parametrize("name, size, channels", [("cnn", 8, 1), ("mlp", 8, 1), ("vgg11", 32, 3),
                                                   ("resnet20", 16, 3), ("mobilenet_v2", 32, 3)])
def test_every_fold_but_none_keeps_the_gated_function(name, size, channels):
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, image_size=size).eval()
    x = torch.randn(4, channels, size, size)
    outputs = {}
    for fold in FOLDS:
        m = copy.deepcopy(model)
        _prune_all(m, x, fold)
        outputs[fold] = m(x)
    scale = outputs["consumer"].abs().max()
    for fold in ("producer", "split"):
        torch.testing.assert_close(outputs[fold] / scale, outputs["consumer"] / scale, rtol=0, atol=2e-6)
    assert (outputs["none"] - outputs["consumer"]).abs().max() > 1e-3 * scale


def test_producer_fold_scales_the_last_affine_layer_and_falls_back_where_not_homogeneous():
    model = build_model("mobilenet_v2", image_size=32).eval()
    graph = UnitGraph(model, torch.randn(2, 3, 32, 32))
    by_name = {u.name: u for u in graph.units}
    # conv -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project: ReLU6 is not homogeneous
    blocked = by_name["features.2.conv.0.0->features.2.conv.2"]
    assert blocked.fold_target is None and "Hardtanh" in blocked.fold_blocker
    assert graph.fold_used(blocked, "producer") == "consumer"
    # project conv -> BN -> next expand conv: the BN takes the scale
    plain = by_name["features.1.conv.1->features.2.conv.0.0"]
    assert plain.fold_target == "features.1.conv.2"
    bn = graph.module(plain.fold_target)
    consumer_weight = graph.module(plain.consumer).weight.detach().clone()
    weight, bias = bn.weight.detach().clone(), bn.bias.detach().clone()
    keep = torch.arange(plain.channels)
    scales = torch.linspace(0.5, 2.0, plain.channels)
    assert graph.prune(plain, keep, scales, fold="producer") == "producer"
    torch.testing.assert_close(bn.weight.detach(), weight * scales)
    torch.testing.assert_close(bn.bias.detach(), bias * scales)
    torch.testing.assert_close(graph.module(plain.consumer).weight.detach(), consumer_weight)


def test_fold_arguments_are_checked():
    model = _cnn()
    graph = UnitGraph(model, torch.randn(2, 2, 8, 8))
    unit = graph.units[0]
    with pytest.raises(ValueError, match="'fold'"):
        graph.prune(unit, torch.arange(4), torch.ones(4), fold="middle")
    with pytest.raises(ValueError, match="'scales'"):
        graph.prune(unit, torch.arange(2), torch.tensor([1.0, -1.0]), fold="producer")
    with pytest.raises(ValueError, match="'fold'"):
        prune_model(model, torch.randn(4, 2, 8, 8), width_ratio=0.5, fold="middle", progress=False)


@pytest.mark.parametrize("fold", FOLDS)
def test_prune_model_folds_as_asked_and_none_equals_plain_removal(fold):
    model = _cnn()
    x = torch.randn(16, 2, 8, 8)
    pruned = copy.deepcopy(model)
    results = prune_model(pruned, x, method="local", width_ratio=0.5, fold=fold, recalibrate_bn=False,
                          progress=False)
    plan = {"format": 1, "meta": {}, "units": [r.plan_entry() for r in results]}
    replayed = apply_plan(copy.deepcopy(model), plan, x[:2], fold=fold)
    torch.testing.assert_close(pruned(x), replayed(x), rtol=1e-5, atol=1e-6)
    if fold == "none":  # the same channels kept, their weights untouched (up to s * (1/s) rounding)
        plain = copy.deepcopy(model)
        graph = UnitGraph(plain, x[:2])
        for unit, r in zip(graph.units, results):
            graph.prune(unit, torch.tensor(r.kept))
        torch.testing.assert_close(pruned(x), plain(x), rtol=1e-6, atol=1e-7)
    assert all(r.fold == fold for r in results)


def test_width_ratio_alone_gives_exactly_the_asked_width_and_says_when_it_filled():
    torch.manual_seed(0)
    model = _cnn()
    x = torch.randn(16, 2, 8, 8)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[1]
    evaluator = SuffixEvaluator(graph, unit, x)
    # a cap of 1 free step cannot reach 6 channels: the rest is filled with new channels
    capped = global_imitation(evaluator, max_neurons=6, max_steps=1)
    assert capped.width == 1 and capped.stop == "step cap"
    filled = global_imitation(evaluator, max_neurons=6, max_steps=1, fill=True)
    assert filled.width == 6 and filled.filled == 5 and filled.stop == "step cap, filled"
    for method in ("local", "global", "hybrid"):
        results = prune_model(copy.deepcopy(model), x, method=method, width_ratio=0.4, progress=False)
        assert [r.width for r in results] == [r.asked for r in results] == [math.ceil(0.4 * 8), math.ceil(0.4 * 12)]
        assert all(r.stop for r in results)


def test_local_fill_completes_a_path_that_stops_improving():
    # duplicated columns: two distinct contributions, so the exact path needs only 2 neurons
    base = torch.randn(64, 2, dtype=torch.float64)
    X = base[:, [0, 1, 0, 1, 0, 1]]
    G = X.T @ X / 64
    short = local_imitation(G, max_neurons=5)
    assert short.width < 5 and short.stop == "no improvement"
    full = local_imitation(G, max_neurons=5, fill=True)
    assert full.width == 5 and full.filled == 5 - short.width and full.stop == "no improvement, filled"
    assert math.isclose(float(full.a.sum()), 1.0, rel_tol=1e-12) and bool((full.a >= 0).all())


def test_recalibrate_batchnorm_equals_the_batch_statistics_and_restores_modes():
    model = _cnn()
    model.train()
    model[1].momentum = 0.3
    x = torch.randn(32, 2, 8, 8)
    assert recalibrate_batchnorm(model, x.split(8)) == 2
    assert model.training and model[1].momentum == 0.3
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean((0, 2, 3)))
    # cumulative average of per-batch unbiased variances
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in h.split(8)]).mean(0)
    torch.testing.assert_close(model[1].running_var, var)
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="'batches'"):
        recalibrate_batchnorm(model, [])
    torch.testing.assert_close(model[1].running_mean, before)  # a failed re-estimation changes nothing


def test_recalibrate_bn_in_the_loop_leaves_the_model_with_re_estimated_statistics():
    model = _cnn()
    x = torch.randn(32, 2, 8, 8)
    pruned = copy.deepcopy(model)
    results = prune_model(pruned, x, method="local", width_ratio=0.5, fold="none", recalibrate_bn=True,
                          gram_batches=x.split(16), progress=False)
    expected = apply_plan(copy.deepcopy(model), {"units": [r.plan_entry() for r in results]}, x[:2], fold="none")
    recalibrate_batchnorm(expected, x.split(16))
    torch.testing.assert_close(pruned(x), expected(x), rtol=1e-5, atol=1e-5)


def test_select_channels_leaves_the_model_untouched_and_matches_prune_model():
    model = _cnn()
    x = torch.randn(16, 2, 8, 8)
    state = copy.deepcopy(model.state_dict())
    plan = select_channels(model, x, method="local", width_ratio=0.5, progress=False)
    assert all(e["exported_discrepancy"] >= 0 for e in plan["units"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    results = prune_model(copy.deepcopy(model), x, method="local", width_ratio=0.5, progress=False)
    assert [e["keep"] for e in plan["units"]] == [r.kept for r in results]
    assert all(sorted(e["order"]) == e["keep"] for e in plan["units"])


def test_greedy_importance_drives_metapruner_to_the_plan_channels():
    model = _cnn()
    x = torch.randn(16, 2, 8, 8)
    plan = select_channels(model, x, method="local", width_ratio=0.5, progress=False)
    importance = GreedyImportance(model, plan)
    pruner = tp.pruner.MetaPruner(model, x[:2], importance=importance, pruning_ratio=0.5,
                                  ignored_layers=[model[9]])
    expected = copy.deepcopy(model)
    apply_plan(expected, plan, x[:2], fold="none")
    pruner.step()
    assert model[0].out_channels == 4 and model[4].out_channels == 6
    torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)
    # a pruner that keeps fewer drops the plan's least important channels first
    smaller = _cnn()
    tp.pruner.MetaPruner(smaller, x[:2], importance=GreedyImportance(smaller, plan), pruning_ratio=0.75,
                         ignored_layers=[smaller[9]]).step()
    top = sorted(plan["units"][0]["order"][:2])
    torch.testing.assert_close(smaller[0].weight, _cnn()[0].weight[top])


def test_greedy_importance_re_plans_at_each_iterative_step_and_ranks_globally():
    model = _cnn()
    x = torch.randn(16, 2, 8, 8)
    importance = GreedyImportance.from_model(model, x, method="local", width_ratio=0.5, progress=False)
    pruner = tp.pruner.BasePruner(model, x[:2], importance=importance, pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model[9]])
    pruner.step()
    assert (model[0].out_channels, model[4].out_channels) == (6, 9)
    pruner.step()  # scored by a plan of the model as the first step left it
    assert (model[0].out_channels, model[4].out_channels) == (4, 6)
    assert [e["channels"] for e in importance._entries.values()] == [6, 9]
    assert model(x).shape == (16, 5)
    fixed = _cnn()
    plan = select_channels(fixed, x, method="local", width_ratio=0.5, progress=False)
    stepped = tp.pruner.BasePruner(fixed, x[:2], importance=GreedyImportance(fixed, plan), pruning_ratio=0.5,
                                   iterative_steps=2, ignored_layers=[fixed[9]])
    stepped.step()
    with pytest.raises(ValueError, match="build the importance with GreedyImportance.from_model to re-plan"):
        stepped.step()
    ranked = _cnn()
    tp.pruner.BasePruner(ranked, x[:2], importance=GreedyImportance.from_model(ranked, x, method="local",
                                                                               width_ratio=0.5, progress=False),
                         pruning_ratio=0.5, global_pruning=True, ignored_layers=[ranked[9]]).step()
    assert ranked[0].out_channels + ranked[4].out_channels == 10 and ranked(x).shape == (16, 5)
