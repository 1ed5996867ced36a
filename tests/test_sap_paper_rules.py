"""SAP as seed 003's Algorithm 1 has it: pruning iterations t = 0..T (T + 1 training rounds), no
"last weight" rule unless asked (neither the paper nor the authors' code has one), and the
command's paper recipe chosen per model, printed and recorded."""
import json

import pytest

from greedyprune.cli import main
from greedyprune.harness.data import load_dataset
from greedyprune.harness.model_source import resolve_model
from greedyprune.sparsity import commands, sap
from greedyprune.sparsity.sap import SAPConfig, run_sap
from greedyprune.sparsity.weights import prunable_weights

T = 29  # the horizon: 0.8^29 = 0.15% remaining


def _without_training(model, loader, *, after_step, **kw):
    """Stands in for training: the rewound initial weights, masks applied (magnitudes stay random)."""
    after_step(model, 0)
    return [0.0]


def _mlp_lottery(monkeypatch, **settings):
    monkeypatch.setattr(sap, "train", _without_training)
    config = SAPConfig(method="lottery", scope="global", iterations=T, epochs=1, **settings)
    model = resolve_model("mlp", "digits", without_weights="init")
    return run_sap(model, load_dataset("digits", "train"), load_dataset("digits", "test"), config, progress=False)


def test_the_lottery_baseline_follows_0_8_to_the_t_without_a_floor(monkeypatch):
    history = _mlp_lottery(monkeypatch).history
    assert [e["iteration"] for e in history] == list(range(T + 1))  # t = 0..T
    for before, after in zip(history, history[1:]):  # every round drops floor(0.2 d) weights, to the end
        assert after["remaining"] == before["remaining"] - before["remaining"] // 5
    assert history[-1]["remaining_percent"] == pytest.approx(100 * 0.8 ** T, rel=0.1)
    assert history[-1]["remaining_percent"] < 0.25  # the last-weight rule floored it at about 3.1%


def test_keep_last_weight_is_the_option_that_floors_it(monkeypatch):
    mlp = resolve_model("mlp", "digits", without_weights="init")
    rows = sum(w.shape[0] for w in prunable_weights(mlp).values())
    history = _mlp_lottery(monkeypatch, keep_last_weight=True).history
    assert history[-1]["remaining"] >= rows  # every neuron keeps a weight
    assert any(after["remaining"] > before["remaining"] - before["remaining"] // 5
               for before, after in zip(history, history[1:]))


def test_keep_last_weight_must_be_a_bool():
    with pytest.raises(ValueError, match="'keep_last_weight'"):
        SAPConfig(keep_last_weight="yes")


@pytest.fixture
def seen_config(monkeypatch):
    seen = {}

    def fake_run_sap(model, train_set, test_set, config, **kw):
        seen.update(config=config, **kw)
        raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(commands, "run_sap", fake_run_sap)
    return seen


def test_the_flag_reaches_the_config_and_is_off_by_default(tmp_path, seen_config):
    assert main(["sap", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert seen_config["config"].keep_last_weight is False
    assert main(["sap", "--keep-last-weight", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert seen_config["config"].keep_last_weight is True


def test_the_paper_recipe_refuses_a_model_the_paper_gives_no_t_for(tmp_path, capsys, seen_config):
    assert main(["sap", "--recipe", "paper", "--model", "resnet20", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'--recipe'" in err and "mlp, cnn, resnet18" in err and "--iterations" in err
    assert len(err.strip().splitlines()) == 1 and "config" not in seen_config


def test_results_json_records_the_recipe_that_ran(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sap", "--model", "mlp", "--epochs", "1", "--iterations", "1", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    summary = json.loads((out / "results.json").read_text())
    assert printed == f"recipe: {summary['recipe']}"
    assert summary["recipe"].startswith("fast (1 epochs x T = 1 pruning iterations, 2 rounds")
    assert len(summary["history"]) == 2


def test_a_checkpoint_of_the_old_format_is_one_line_naming_resume(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": 1, "config": {}}, out / "checkpoint.pt")  # what iterations meant before: T rounds
    assert main(["sap", "--model", "mlp", "--epochs", "1", "--iterations", "1", "--resume", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'resume'" in err and "format 1" in err and "format 2" in err and len(err.strip().splitlines()) == 1
