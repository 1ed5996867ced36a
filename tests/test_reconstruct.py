"""The reconstruct export (refit.py, moments.py, exporters.Reconstruct) and the refit criterion
(refit_selection.py) against explicit least squares on stored activations."""
import copy
import itertools
import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from greedyprune.checks import ArgumentError
from greedyprune.greedy import apply_plan, make_plan, prune_model
from greedyprune.greedy.moments import stream_moments
from greedyprune.greedy.refit import expectations, refit_consumer
from greedyprune.greedy.refit_selection import forward_selection_by_refit
from greedyprune.greedy.surgery import UnitGraph


def _net(consumer_bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=consumer_bias), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).double().eval()
    return model


def _images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _explicit_rows(model: nn.Module, x: torch.Tensor, reference: nn.Module | None = None):
    """im2col of the consumer's input [rows, C] and the output to match [rows, out] (the reference's)."""
    consumer = model[3]
    with torch.no_grad():
        hidden = model[:3](x)
        target = (reference or model)[:4](x)
    cols = F.unfold(hidden, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 6 * 9)
    return cols, target.permute(0, 2, 3, 1).reshape(-1, consumer.out_channels)


def _ridge(X: torch.Tensor, Y: torch.Tensor, lam: float, intercept: bool):
    """The ridge regression itself, on the rows (lambda on E-scale, as the refit's)."""
    if intercept:
        mx, my = X.mean(0), Y.mean(0)
        Xc, Yc = X - mx, Y - my
        W = torch.linalg.solve(Xc.T @ Xc / len(X) + lam * torch.eye(X.shape[1], dtype=X.dtype), Xc.T @ Yc / len(X)).T
        return W, my - W @ mx
    return torch.linalg.solve(X.T @ X / len(X) + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y / len(X)).T, None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("against_reference", [False, True])
def test_refit_is_the_ridge_regression_on_the_rows(bias, against_reference):
    model, x = _net(bias), _images()
    reference = None
    if against_reference:  # an "unpruned network" whose earlier layer differs
        reference = copy.deepcopy(model)
        with torch.no_grad():
            reference[0].weight.mul_(1.1)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    (moments,), _ = stream_moments(graph, unit, x.split(5), reference=reference)
    X, Y = _explicit_rows(model, x, reference)
    consumer = model[3]
    columns = torch.tensor([c * 9 + j for c in (0, 2, 3) for j in range(9)])
    fit = refit_consumer(moments, consumer.weight.reshape(5, -1), consumer.bias, columns, damping=0.01, unit=unit.name)
    W, b = _ridge(X[:, columns], Y, fit.damping, intercept=bias)
    torch.testing.assert_close(fit.weight, W, rtol=1e-8, atol=1e-10)
    if bias:
        torch.testing.assert_close(fit.bias, b, rtol=1e-8, atol=1e-10)
    predicted = X[:, columns] @ fit.weight.T + (0 if fit.bias is None else fit.bias)
    assert fit.error == pytest.approx(float((Y - predicted).square().sum() / Y.square().sum()), rel=1e-7)
    removed = X[:, columns] @ consumer.weight.detach().reshape(5, -1)[:, columns].T + (
        0 if bias is False else consumer.bias.detach())
    assert fit.removal_error == pytest.approx(float((Y - removed).square().sum() / Y.square().sum()), rel=1e-7)
    assert fit.error < fit.removal_error


def test_duplicated_channels_are_reconstructed_exactly():
    """Channels 3-5 copy channels 0-2: the refit criterion keeps one of each pair, and refitting
    the consumer gives back the network's function (up to the damping), while removing the same
    channels plainly does not."""
    model = _net()
    with torch.no_grad():
        for module in (model[0], model[1]):
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(module, name, None)
                if t is not None and t.dim() >= 1 and t.shape[0] == 6:
                    t[3:] = t[:3]
    x = _images(32)
    expected = model(x)
    outputs = {}
    for fold in ("reconstruct", "none"):
        pruned = copy.deepcopy(model)
        results = prune_model(pruned, x, method="refit", width_ratio=0.5, fold=fold, recalibrate_bn=False,
                              refit_damping=1e-9, refit_target="current", units=["0->3"], progress=False)
        assert results[0].fold == fold
        outputs[fold] = pruned(x)
        if fold == "reconstruct":
            kept = set(results[0].kept)
            assert len(kept) == 3 and {c % 3 for c in kept} == {0, 1, 2}  # one of each pair
            assert results[0].refit_error < 1e-8 < results[0].removal_error
    torch.testing.assert_close(outputs["reconstruct"], expected, rtol=1e-5, atol=1e-6)
    assert (outputs["none"] - expected).abs().max() > 1e-2


def test_an_indefinite_system_is_solved_on_its_eigenvalues():
    """Rounding can leave a centred system indefinite by more than the damping covers: the refit
    then clips its eigenvalues and still gives finite weights, with no warning."""
    model, x = _net(), _images()
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    (moments,), _ = stream_moments(graph, unit, [x])
    columns = torch.arange(18)
    weight, bias = model[3].weight.reshape(5, -1), model[3].bias
    broken = copy.deepcopy(moments)
    broken.xtx[:18, :18] -= 50 * moments.rows * torch.eye(18, dtype=torch.float64)  # far below the damping
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = refit_consumer(broken, weight, bias, columns, damping=0.01, unit=unit.name)
    assert fit is not None and bool(torch.isfinite(fit.weight).all()) and bool(torch.isfinite(fit.bias).all())


def test_an_unsolvable_refit_warns_names_the_unit_and_removes_plainly():
    model, x = _net(), _images()
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    (moments,), _ = stream_moments(graph, unit, [x])
    moments.xtx[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="unit 0->3"):
        fit = refit_consumer(moments, model[3].weight.reshape(5, -1), model[3].bias, torch.arange(9), damping=0.01,
                             unit=unit.name)
    assert fit is None


def test_dead_channels_are_refit_without_nan():
    """A kept channel that is always zero makes the system singular: the damping keeps it solvable."""
    model, x = _net(), _images()
    with torch.no_grad():
        model[1].weight[2] = 0.0
        model[1].bias[2] = -1.0  # ReLU keeps it at 0
    results = prune_model(model, x, method="local", width_ratio=1.0, fold="reconstruct", progress=False,
                          units=["0->3"])
    assert results[0].fold == "reconstruct"
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_refit_selection_follows_the_refit_error():
    """Each step's residual is the refit's error on the channels picked so far, and the first pick
    is the single channel whose refit is best."""
    model, x = _net(), _images(24)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    (moments,), _ = stream_moments(graph, unit, [x])
    weight, bias = model[3].weight.reshape(5, -1), model[3].bias

    def refit_error(channels):
        columns = torch.tensor([c * 9 + j for c in sorted(channels) for j in range(9)])
        return refit_consumer(moments, weight, bias, columns, damping=1e-10, unit=unit.name).error

    t = expectations(moments, weight.double(), bias.double())
    order, residuals = forward_selection_by_refit(t, 6, 9, 4, centred=True, damping=1e-10)
    assert len(set(order)) == 4
    for steps in range(1, 5):
        assert residuals[steps - 1] == pytest.approx(refit_error(order[:steps]), rel=1e-5, abs=1e-9)
    assert order[0] == min(range(6), key=lambda c: refit_error([c]))
    best_pair = min(itertools.combinations(range(6), 2), key=refit_error)
    assert refit_error(order[:2]) <= refit_error(best_pair) * 1.5  # greedy, not exhaustive: close to the best


def test_method_refit_prunes_to_a_width_or_to_a_tolerance():
    model, x = _net(), _images()
    results = prune_model(model, x, method="refit", width_ratio=0.5, fold="reconstruct", progress=False)
    assert [r.width for r in results] == [3, 3] and all(r.method == "refit" for r in results)
    assert all(r.refit_error is not None and r.refit_error < r.removal_error for r in results)
    # with a tolerance: the fewest channels whose refit unit meets it, measured as the export measures it
    tol = 0.01
    results = prune_model(_net(), x, method="refit", tol=tol, fold="reconstruct", refit_target="current",
                          progress=False)
    assert all(r.stop == "tol" and r.loss <= tol for r in results)
    # the export is the refit measured, then BN statistics are re-estimated (this net's are not the data's)
    assert all(r.exported_loss <= 2 * tol for r in results)
    assert any(r.width < r.channels for r in results)


def test_a_plan_cannot_replay_a_refit():
    model, x = _net(), _images()
    plan = make_plan(prune_model(copy.deepcopy(model), x, method="local", width_ratio=0.5, fold="reconstruct",
                                 progress=False))
    with pytest.raises(ArgumentError, match="'fold'.*calibration data"):
        apply_plan(model, plan, x[:2], fold="reconstruct")


def test_cli_export_reconstruct_reports_the_refit(tmp_path, monkeypatch, capsys):
    from greedyprune.cli import main
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["prune", "--model", "cnn", "--method", "local", "--width", "0.25", "--export", "reconstruct",
                 "--calib-samples", "64", "--gram-samples", "128", "--train-epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(u["fold"] == "reconstruct" and 0 <= u["refit_error"] < u["removal_error"] for u in report["units"])
    assert report["config"]["fold"] == "reconstruct" and report["config"]["refit_target"] == "original"
    text = capsys.readouterr().out
    assert "refit" in text and "exported" in text
    # the old flag is an alias
    assert main(["prune", "--model", "cnn", "--method", "local", "--width", "0.25", "--fold", "reconstruct",
                 "--calib-samples", "64", "--gram-samples", "128", "--train-epochs", "1", "--out",
                 str(tmp_path / "alias"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "alias" / "report.json").read_text())["config"]["fold"] == "reconstruct"


def test_magnitude_keeps_the_channels_torch_pruning_l1_keeps():
    import torch_pruning as tp

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                          nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()
    x = torch.randn(8, 3, 6, 6)
    for index, unit in ((0, "0->3"), (3, "3->8")):  # one unit at a time: Torch-Pruning scores its groups in its own order
        result, = prune_model(copy.deepcopy(model), x, method="magnitude", width_ratio=0.5, fold="none", units=[unit],
                              progress=False)
        reference = copy.deepcopy(model)
        layer = reference[index]
        biases = layer.bias.detach().clone()  # distinct per channel: they tell which channels stayed
        tp.pruner.MetaPruner(reference, x[:2], importance=tp.importance.GroupMagnitudeImportance(p=1),
                             pruning_ratio_dict={layer: 0.5},
                             ignored_layers=[m for m in reference if isinstance(m, (nn.Conv2d, nn.Linear))
                                             and m is not layer]).step()
        assert sorted(int(torch.nonzero(biases == value)[0]) for value in layer.bias.detach()) == result.kept
