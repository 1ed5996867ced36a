"""The cost estimate counts what a run does: global imitation's exact-phase candidates and
Taylor steps, as the run evaluates them; a suffix's share of the FLOPs; the pipeline's line."""
import json

import torch

from greedyprune.greedy import PruneConfig, prune_model
from greedyprune.greedy.cost import suffix_shares, unit_cost
from greedyprune.greedy.evaluator import SuffixEvaluator
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, in_channels=1, image_size=8).eval()


def test_global_imitation_evaluates_the_candidates_the_estimate_counts(monkeypatch):
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _model()
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    config = PruneConfig(method="global", width_ratio=0.25, exact_until=3, taylor_top=2, step_batch=16)
    cost = unit_cost(config, unit, calib_images=48, gram_images=48)
    evaluated = []  # candidates per step
    evaluate_steps = SuffixEvaluator.evaluate_steps
    monkeypatch.setattr(SuffixEvaluator, "evaluate_steps",
                        lambda self, a, gamma, candidates: evaluated.append(candidates.numel()) or
                        evaluate_steps(self, a, gamma, candidates))
    (result,) = prune_model(model, x, config, units=[unit.name], graph=graph, progress=False)
    steps = result.candidates["global"]["steps"]
    assert steps == cost.width  # every step added a channel here, as the estimate assumes
    exact_steps = config.exact_until + 1
    # the exact phase: every channel at each of its steps; then taylor_top re-checks per step
    assert evaluated[:exact_steps] == [unit.channels] * exact_steps
    assert cost.forwards["exact"] == exact_steps * unit.channels * 16
    assert evaluated[exact_steps:steps] == [config.taylor_top] * (steps - exact_steps)
    assert cost.forwards["taylor"] == (steps - exact_steps) * (3 + config.taylor_top) * 16


def test_a_suffix_share_is_the_flops_from_the_consumer_on():
    model = _model()
    graph = UnitGraph(model, torch.zeros(2, 1, 8, 8))
    shares = suffix_shares(model, torch.zeros(1, 1, 8, 8), graph.units)
    ordered = [shares[u.name] for u in graph.units]
    assert all(0 < s < 1 for s in ordered) and ordered == sorted(ordered, reverse=True)


def test_prune_prints_and_reports_its_estimate(tmp_path, monkeypatch, capsys):
    from greedyprune.cli import main
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["prune", "--model", "mlp", "--method", "local", "--width", "0.5", "--calib-samples", "32",
                 "--gram-samples", "64", "--train-epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    estimate = json.loads((out / "report.json").read_text())["estimate"]
    assert f"at most {estimate['image_forwards']:,.0f} image forwards (gram {estimate['phases']['gram']:,.0f}" in printed
    assert estimate["phases"]["gram"] == 64 * len(json.loads((out / "report.json").read_text())["units"])
    assert estimate["projected_seconds"] > 0 and estimate["device"] == "cpu"
