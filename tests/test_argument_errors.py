"""Every driver's bad argument raises greedyprune.checks.ArgumentError (a ValueError and a
TypeError) whose message names the argument: one representative call per module."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from greedyprune import files, greedy, popup, sparsity
from greedyprune.checks import ArgumentError
from greedyprune.cli import main
from greedyprune.greedy.pipeline import RunSpec
from greedyprune.harness import data, model_source, training
from greedyprune.models import build_model
from greedyprune.popup.report import plot_curves, sparsity_report
from greedyprune.sparsity.report import plot_runs


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def _batches():
    return [(torch.randn(2, 4), torch.tensor([0, 1]))]


@pytest.mark.parametrize("call, name", [
    (lambda tmp: training.train(_linear(), _batches(), epochs=0, lr=0.1), "epochs"),
    (lambda tmp: training.train(_linear(), _batches(), epochs=1, lr=0.1, params=[]), "params"),
    (lambda tmp: training.train(_linear().requires_grad_(False), _batches(), epochs=1, lr=0.1), "model"),
    (lambda tmp: training.evaluate(_linear(), []), "loader"),
    (lambda tmp: training.recalibrate_batchnorm(nn.BatchNorm1d(4), []), "batches"),
    (lambda tmp: data.make_loader(TensorDataset(torch.randn(4, 2)), 0, shuffle=False), "batch_size"),
    (lambda tmp: data.make_loader(TensorDataset(torch.randn(0, 2)), 1, shuffle=False), "dataset"),
    (lambda tmp: data.load_dataset("digits", "holdout"), "split"),
    (lambda tmp: data.load_dataset(str(tmp / "no-such-folder"), "train"), "source"),
    (lambda tmp: model_source.check_model_source(str(tmp / "missing.pt"), without_weights="train"), "--model"),
    (lambda tmp: model_source.check_model_source("mlp", tmp / "none.pt", without_weights="init"), "--weights"),
    (lambda tmp: model_source.check_model_source("mlp", without_weights="refuse", source_flag="model"), "model"),
    (lambda tmp: model_source.resolve_model("mlp", "digits", without_weights="train"), "epochs"),
    (lambda tmp: model_source.pretrained("../escape", _linear, lambda model: None, cache_dir=tmp), "name_key"),
    (lambda tmp: build_model("no-such-model"), "name"),
    (lambda tmp: build_model("vit_tiny", image_size=30), "image_size"),
    (lambda tmp: popup.SearchConfig(sparsity=1.5), "sparsity"),
    (lambda tmp: popup.wrap(nn.ReLU()), "model"),
    (lambda tmp: popup.wrap(_linear(), include=["no-such-layer"]), "include"),
    (lambda tmp: popup.export(_linear()), "masked"),
    (lambda tmp: sparsity_report(_linear()), "masked"),
    (lambda tmp: plot_curves({}, tmp / "curves.png"), "runs"),
    (lambda tmp: sparsity.SAPConfig(p=2.0, q=1.0), "p"),
    (lambda tmp: plot_runs({}, tmp / "runs.png"), "runs"),
    (lambda tmp: files.prepare_output_dir(tmp / "file.txt", finished="report.json"), "--out"),
    (lambda tmp: main(["--debug", "pqi", "model.pt", "--grid", "--p", "0.5"]), "--grid"),
    (lambda tmp: main(["--debug", "pqi", "model.pt", "--p", "0.5", "0.7", "--q", "1.0"]), "--q"),
    (lambda tmp: greedy.PruneConfig(method="magic", tol=0.1), "method"),
    (lambda tmp: greedy.PruneConfig(fold="nowhere", tol=0.1), "fold"),
    (lambda tmp: greedy.prune_model(_linear(), torch.randn(2, 4), method="local", progress=False), "tol"),
    (lambda tmp: greedy.prune_model(_linear(), torch.randn(2, 4), method="gfs", tol=0.1, progress=False), "labels"),
    (lambda tmp: greedy.load_plan(tmp / "file.txt"), "path"),
    (lambda tmp: greedy.discrepancy(torch.zeros(1, 2, 3), torch.zeros(2, 3), "ce"), "labels"),
    (lambda tmp: RunSpec(flops_search="depth"), "flops_search"),
])
def test_bad_argument_raises_argument_error_naming_it(call, name, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(ArgumentError, match=f"'{name}'"):
        call(tmp_path)
