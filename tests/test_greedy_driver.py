"""The greedy driver's seams: criteria and exporters from their registries, each unit's exported
discrepancy in its own result, run_pruning's PruneConfig / RunSpec and the command line's
defaults taken from them."""
import pytest
import torch
import torch.nn as nn

from greedyprune.checks import ArgumentError
from greedyprune.cli import build_parser
from greedyprune.greedy import CRITERIA, DEFAULT_TOL, FINETUNE_DEFAULTS, PruneConfig, Selection, prune_model
from greedyprune.greedy.criterion import Criterion
from greedyprune.greedy.pipeline import DEMO_RUN, RunSpec, fit_budget, run_pruning


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()


def _images(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2))


class _LargestColumns(Criterion):
    """A criterion that needs neither a Gram nor the network discrepancy: the channels whose
    consumer columns have the largest norms, equal gates."""

    name = "largest-columns"

    def needs_evaluator(self, config) -> bool:
        return False

    def select(self, context) -> Selection:
        w = context.graph.module(context.unit.consumer).weight.detach()
        norms = w.transpose(0, 1).reshape(context.unit.channels, -1).norm(dim=1)
        kept = torch.sort(torch.sort(-norms, stable=True).indices[:context.max_neurons]).values
        a = torch.zeros(context.unit.channels, dtype=torch.float64)
        a[kept] = 1.0 / kept.numel()
        return Selection(self.name, a, None, 1, stop="width")


def test_a_new_criterion_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(CRITERIA, _LargestColumns.name, _LargestColumns())
    model, x = _bn_cnn(), _images()
    first_consumer = model[3].weight.detach().clone()
    results = prune_model(model, x, method=_LargestColumns.name, width_ratio=0.5, progress=False)
    assert [r.method for r in results] == [_LargestColumns.name] * 2
    norms = first_consumer.transpose(0, 1).reshape(8, -1).norm(dim=1)
    assert results[0].kept == sorted(torch.sort(-norms, stable=True).indices[:4].tolist())
    # it chose without the network discrepancy, so the export measured it (plain removal, BN re-estimated)
    assert all(r.loss == r.exported_loss and r.exported_loss > 0 for r in results)


def test_plain_removal_leaves_the_kept_weights_as_they_were():
    """fold "none" removes channels and folds nothing: the consumer's kept input columns are the
    original ones, bit for bit."""
    model = _bn_cnn()
    consumer = model[3].weight.detach().clone()
    results = prune_model(model, _images(), method="local", width_ratio=0.5, fold="none", recalibrate_bn=False,
                          progress=False)
    # the first unit's consumer is the second unit's producer: its rows are pruned too
    assert torch.equal(model[3].weight.detach(), consumer[results[1].kept][:, results[0].kept])
    assert all(r.fold == "none" and r.exported_loss is None for r in results)  # not measured without BN re-estimation


@pytest.mark.parametrize("fold", ["consumer", "none"])
def test_every_result_carries_its_own_exported_discrepancy(fold):
    """With BN re-estimated each unit's export is measured against the model before that unit;
    folding the gates without it keeps the gated function, so the exported discrepancy is the chosen one."""
    x = _images()
    measured = prune_model(_bn_cnn(), x, method="hybrid", tol=0.05, exact_until=4, taylor_top=2, fold=fold,
                           progress=False)
    assert all(r.exported_loss is not None and r.exported_loss >= 0 for r in measured)
    assert all(set(r.candidates) == {"local", "global"} for r in measured)
    if fold == "consumer":
        kept = prune_model(_bn_cnn(), x, method="hybrid", tol=0.05, exact_until=4, taylor_top=2, fold=fold,
                           recalibrate_bn=False, progress=False)
        assert [r.exported_loss for r in kept] == [r.loss for r in kept]


def test_run_pruning_checks_the_budget_against_the_stopping_rule_before_any_work(tmp_path):
    for config, search in ((PruneConfig(method="local", tol=0.1), "epsilon"),
                           (PruneConfig(method="local", width_ratio=0.5), "width")):
        with pytest.raises(ArgumentError, match="'target_flops'"):
            run_pruning(config, RunSpec(target_flops=0.5, flops_search=search, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArgumentError, match="'run'"):
        run_pruning(PruneConfig(method="local", tol=0.1), {"model": "cnn"})
    with pytest.raises(ArgumentError, match="'calib_samples'"):
        RunSpec(calib_samples=0)


def test_the_runs_default_stopping_rule_is_default_tol():
    assert fit_budget(PruneConfig(method="local"), RunSpec(), None).tol == DEFAULT_TOL
    assert fit_budget(PruneConfig(method="local", width_ratio=0.5), RunSpec(), None).tol is None
    with pytest.raises(ArgumentError, match="'tol'"):  # prune_model itself wants a rule
        prune_model(_bn_cnn(), _images(), method="local", progress=False)


@pytest.mark.parametrize("command, run", [("prune", RunSpec()), ("demo", DEMO_RUN)])
def test_command_line_defaults_are_the_config_and_run_spec_defaults(command, run):
    args = build_parser().parse_args([command])
    config = PruneConfig()  # its stopping rule is left out; the defaults of every other field
    assert (args.tol, args.width, args.network_budget, args.discrepancy, args.positions, args.exact_until,
            args.taylor_top, args.step_batch, args.recalibrate_bn, args.refit_target, args.refit_damping) == (
        config.tol, config.width_ratio, config.network_budget, config.discrepancy, config.positions_per_image,
        config.exact_until, config.taylor_top, config.step_batch, config.recalibrate_bn, config.refit_target,
        config.refit_damping)
    assert (args.method, args.fold) == (None, None)  # chosen by whether the run fine-tunes (next test)
    assert (args.model, args.data, args.weights, args.out, args.device, args.seed, args.calib_samples,
            args.gram_samples, args.target_flops, args.flops_search, args.finetune_epochs, args.train_epochs,
            args.overwrite) == (run.model, run.data, run.weights, str(run.out), run.device, run.seed,
                                run.calib_samples, run.gram_samples, run.target_flops, run.flops_search,
                                run.finetune_epochs, run.train_epochs, run.overwrite)


@pytest.mark.parametrize("finetune_epochs, expected", [(0, (PruneConfig.method, PruneConfig.fold)),
                                                        (2, (FINETUNE_DEFAULTS["method"], FINETUNE_DEFAULTS["fold"]))])
def test_a_run_that_fine_tunes_prunes_with_the_fine_tuning_defaults(finetune_epochs, expected):
    from greedyprune.greedy.commands import prune_config
    parse = build_parser().parse_args
    config = prune_config(parse(["prune", "--finetune-epochs", str(finetune_epochs)]))
    assert (config.method, config.fold) == expected
    named = prune_config(parse(["prune", "--finetune-epochs", str(finetune_epochs), "--method", "local", "--export",
                                "consumer"]))
    assert (named.method, named.fold) == ("local", "consumer")  # what is named wins
