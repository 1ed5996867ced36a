"""prune_model checkpoints after every unit; a run killed after unit k and resumed in a reseeded
process ends bit for bit as the uninterrupted one (plan, exported discrepancies, weights), for the
criteria that draw random numbers too (global imitation's mini-batches, subsampled positions). The
CLI's `prune --resume` continues a stopped run to the same files; other settings are refused."""
import json

import pytest
import torch

import greedyprune.greedy.layerwise as layerwise
from greedyprune.checks import ArgumentError
from greedyprune.cli import main
from greedyprune.greedy import prune_model
from greedyprune.models import build_model, load_model


def _model():
    torch.manual_seed(0)
    return build_model("cnn", num_classes=10, in_channels=1, image_size=8).eval()


def _images():
    return torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _stop_at_unit(monkeypatch, number: int, error=RuntimeError):
    """The run stops as unit `number` (from 1) starts."""
    run, calls = layerwise._UnitSteps.run, []

    def stopping(self, unit, *, last):
        calls.append(unit.name)
        if len(calls) == number:
            raise error("killed")
        return run(self, unit, last=last)

    monkeypatch.setattr(layerwise._UnitSteps, "run", stopping)
    return lambda: monkeypatch.setattr(layerwise._UnitSteps, "run", run)


@pytest.mark.parametrize("method,options", [("local", {"fold": "none"}), ("refit", {}),
                                            ("global", {"step_batch": 16, "positions_per_image": 4})])
def test_a_killed_run_resumed_ends_as_the_uninterrupted_one(method, options, tmp_path, monkeypatch):
    whole = _model()
    expected = prune_model(whole, _images(), method=method, width_ratio=0.5, progress=False, **options)
    checkpoint = tmp_path / "prune-checkpoint.pt"
    undo = _stop_at_unit(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        prune_model(_model(), _images(), method=method, width_ratio=0.5, progress=False, checkpoint=checkpoint,
                    **options)
    undo()
    torch.manual_seed(99)  # a new process: its random numbers are the checkpoint's once restored
    resumed = _model()
    results = prune_model(resumed, _images(), method=method, width_ratio=0.5, progress=False, checkpoint=checkpoint,
                          resume=True, **options)
    assert [r.plan_entry() for r in results] == [r.plan_entry() for r in expected]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_resume_with_other_settings_or_model_is_refused_naming_them(tmp_path, monkeypatch):
    checkpoint = tmp_path / "prune-checkpoint.pt"
    undo = _stop_at_unit(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        prune_model(_model(), _images(), method="local", width_ratio=0.5, progress=False, checkpoint=checkpoint)
    undo()
    with pytest.raises(ArgumentError, match=r"argument 'resume'.*width_ratio=0\.5 \(now 0\.25\)"):
        prune_model(_model(), _images(), method="local", width_ratio=0.25, progress=False, checkpoint=checkpoint,
                    resume=True)
    other = _model()
    with torch.no_grad():
        other.classifier.weight.add_(1.0) if hasattr(other, "classifier") else next(other.parameters()).add_(1.0)
    with pytest.raises(ArgumentError, match=r"argument 'resume'.*model="):
        prune_model(other, _images(), method="local", width_ratio=0.5, progress=False, checkpoint=checkpoint,
                    resume=True)
    with pytest.raises(ArgumentError, match="argument 'resume'.*needs 'checkpoint'"):
        prune_model(_model(), _images(), method="local", width_ratio=0.5, progress=False, resume=True)


def test_prune_resume_on_the_command_line_writes_the_uninterrupted_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    command = ["prune", "--model", "mlp", "--method", "local", "--width", "0.5", "--calib-samples", "32",
               "--gram-samples", "64", "--train-epochs", "1", "--finetune-epochs", "1", "--no-progress"]
    assert main(command + ["--out", str(tmp_path / "whole")]) == 0
    undo = _stop_at_unit(monkeypatch, 2, KeyboardInterrupt)
    assert main(command + ["--out", str(tmp_path / "run")]) == 2
    assert "stopped (killed)" in capsys.readouterr().err
    undo()
    assert main(command + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    plans = [json.loads((tmp_path / d / "plan.json").read_text()) for d in ("whole", "run")]
    assert plans[0] == plans[1]
    models = [load_model(tmp_path / d / "pruned.pt")[0] for d in ("whole", "run")]
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "run")]
    assert reports[0]["after_finetune"]["accuracy"] == reports[1]["after_finetune"]["accuracy"]
