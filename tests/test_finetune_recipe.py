"""`greedyprune finetune --recipe paper` is seed 000's fine-tuning (SGD momentum 0.9, weight decay
5e-5, cosine decay, 150 epochs, batch 256, no label smoothing; lr 0.001 for ResNet-34, 0.01 for
MobileNets), per model; the recipe that ran is printed and recorded in report.json."""
import json

import pytest
import torch

from greedyprune.cli import main
from greedyprune.harness import commands
from greedyprune.harness.model_source import resolve_model
from greedyprune.harness.training import finetune_recipe

PAPER = dict(epochs=150, batch_size=256, momentum=0.9, weight_decay=5e-5, label_smoothing=0.0)


@pytest.mark.parametrize("arch, lr", [("resnet34", 0.001), ("mobilenet_v2", 0.01),
                                      ("torchvision:mobilenet_v3_large", 0.01), ("mlp", None)])
def test_the_paper_recipe_per_model(arch, lr):
    assert finetune_recipe("paper", arch) == dict(PAPER, lr=lr)


def test_the_quick_recipe_says_it_is_not_the_papers():
    quick = finetune_recipe("quick", "resnet34")
    assert quick["label_smoothing"] == 0.1 and quick["epochs"] == 3 and quick["batch_size"] == 64


def _weights(arch, path):
    torch.save(resolve_model(arch, "digits", without_weights="init").state_dict(), path)
    return str(path)


def test_the_paper_recipe_reaches_the_training_exactly(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_finetune(model, loader, **kw):
        seen.update(kw, batch_size=loader.batch_sampler.batch_size)  # the global batch
        raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(commands, "finetune", fake_finetune)
    monkeypatch.setattr(commands, "model_stats", lambda *a, **k: {})  # MobileNetV2's latency runs take long
    weights = _weights("mobilenet_v2", tmp_path / "mnv2.pt")
    assert main(["finetune", "mobilenet_v2", "--weights", weights, "--recipe", "paper", "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    assert seen["batch_size"] == 256 and seen["epochs"] == 150 and seen["lr"] == 0.01
    assert (seen["momentum"], seen["weight_decay"], seen["label_smoothing"]) == (0.9, 5e-5, 0.0)
    assert ("recipe: paper for mobilenet_v2 (150 epochs, batch 256, lr 0.01, momentum 0.9, weight decay 5e-05, "
            "label smoothing 0, cosine decay)") in capsys.readouterr().out


def test_a_model_the_paper_gives_no_lr_for_is_refused_without_lr(tmp_path, capsys):
    weights = _weights("mlp", tmp_path / "mlp.pt")
    assert main(["finetune", "mlp", "--weights", weights, "--recipe", "paper", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'--recipe'" in err and "--lr" in err and "resnet34" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_report_json_records_the_recipe_and_the_flags_given(tmp_path, capsys):
    weights = _weights("mlp", tmp_path / "mlp.pt")
    out = tmp_path / "out"
    assert main(["finetune", "mlp", "--weights", weights, "--recipe", "paper", "--lr", "0.05", "--epochs", "1",
                 "--batch-size", "128", "--out", str(out), "--no-progress"]) == 0
    recipe = json.loads((out / "report.json").read_text())["recipe"]
    assert recipe == {"name": "paper", "arch": "mlp", "given": ["--epochs", "--batch-size", "--lr"],
                      "settings": dict(PAPER, epochs=1, batch_size=128, lr=0.05)}
    assert "recipe: paper for mlp (1 epochs, batch 128, lr 0.05" in capsys.readouterr().out


def test_prune_fine_tunes_with_the_recipe_and_the_flags_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    base = ["prune", "--model", "cnn", "--data", "digits", "--width", "0.5", "--calib-samples", "64",
            "--gram-samples", "64", "--train-epochs", "1", "--finetune-epochs", "1", "--finetune-recipe", "paper",
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "no-lr")]) == 2
    assert "argument 'lr' is needed: the paper recipe gives a learning rate for resnet34" in capsys.readouterr().err
    assert main(base + ["--lr", "0.02", "--batch-size", "32", "--out", str(tmp_path / "run")]) == 0
    assert ("(fine-tuning recipe: paper, epochs 1, batch size 32, lr 0.02, momentum 0.9, weight decay 5e-05, "
            "label smoothing 0, cosine decay; given: batch_size, lr)") in capsys.readouterr().out
    recipe = json.loads((tmp_path / "run" / "report.json").read_text())["after_finetune"]["recipe"]
    assert recipe == {"name": "paper", "given": ["batch_size", "lr"],
                      "settings": {"epochs": 1, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-5,
                                   "label_smoothing": 0.0}}
