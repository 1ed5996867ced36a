"""The command line: every subcommand is registered; `prune` runs end to end; bad input is one
clear line and exit code 2."""
import pytest
import torch

from greedyprune.cli import build_parser, main


def test_every_subcommand_is_registered():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "prune", "rate-demo", "finetune", "eval", "search", "sap", "pqi"} <= set(commands)


def test_prune_writes_its_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["prune", "--model", "mlp", "--method", "local", "--width", "0.5", "--calib-samples", "64",
                 "--gram-samples", "128", "--train-epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    assert {"report.json", "report.png", "plan.json", "pruned.pt"} <= {p.name for p in out.iterdir()}
    assert "after prune" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    code = main(["prune", "--model", "no-such-model", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "'--model'" in capsys.readouterr().err


def test_unknown_subcommand_exits():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_os_errors_and_bad_devices_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # the output folder would have to be inside a file
    code = main(["rate-demo", "--widths", "1", "2", "--train-steps", "5", "--out", str(blocker / "out"),
                 "--no-progress"])
    captured = capsys.readouterr().err
    assert code == 2 and captured.count("\n") == 1 and "Traceback" not in captured
    for command in ("search", "sap"):
        code = main([command, "--device", "tpu", "--out", str(tmp_path / command), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "'--device'" in err and err.count("\n") == 1
        assert not (tmp_path / command).exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="'--model'"):
        main(["--debug", "prune", "--model", "no-such-model", "--out", str(tmp_path / "o"), "--no-progress"])


def test_arguments_and_the_output_folder_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    code = main(["prune", "--model", "mlp", "--width", "1.5", "--out", str(tmp_path / "a"), "--no-progress"])
    assert code == 2 and "'width_ratio'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "a").exists()  # nothing trained, no folder left
    code = main(["prune", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["rate-demo", "--train-steps", "-5", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "'train_steps'" in capsys.readouterr().err
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "report.json").write_text("{}")
    code = main(["prune", "--model", "mlp", "--width", "0.5", "--out", str(finished), "--no-progress"])
    assert code == 2 and "holds a finished run" in capsys.readouterr().err
    assert (finished / "report.json").read_text() == "{}"


def _checkpoint_with_prefixes(arch: str, path, seed: int = 7):
    """A DDP-style checkpoint ({"state_dict": {"module.<key>": ...}}) of a seeded zoo model for digits."""
    import torch

    from greedyprune.harness.model_source import resolve_model
    model = resolve_model(arch, "digits", without_weights="init", seed=seed)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model


def test_weights_replace_the_training(tmp_path, monkeypatch):
    import json

    from greedyprune.harness import model_source
    from greedyprune.harness.data import load_dataset, make_loader
    from greedyprune.harness.training import evaluate

    monkeypatch.setattr(model_source, "pretrained", lambda *a, **k: pytest.fail("trained although --weights given"))
    model = _checkpoint_with_prefixes("mlp", tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    assert main(["prune", "--model", "mlp", "--weights", str(tmp_path / "ckpt.pt"), "--method", "local", "--width",
                 "0.5", "--calib-samples", "32", "--gram-samples", "64", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    expected = evaluate(model, make_loader(load_dataset("digits", "test"), 256, shuffle=False))["accuracy"]
    assert report["before"]["accuracy"] == expected


@pytest.mark.parametrize("command", [
    ["prune", "--model", "mlp"],
    ["search", "--model", "mlp", "--epochs", "1"],
    ["sap", "--model", "mlp", "--iterations", "1", "--epochs", "1"],
])
def test_weights_of_another_model_or_missing_are_one_line(command, tmp_path, capsys):
    _checkpoint_with_prefixes("cnn", tmp_path / "cnn.pt")
    out = tmp_path / "out"
    assert main(command + ["--weights", str(tmp_path / "none.pt"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'--weights'" in err and "none.pt" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # checked before the output folder is made
    assert main(command + ["--weights", str(tmp_path / "cnn.pt"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'weights'" in err and "does not fit" in err and "missing" in err and len(err.strip().splitlines()) == 1


def test_finetune_and_eval_a_pruned_model(tmp_path, monkeypatch, capsys):
    import json

    import torch

    from greedyprune.models import load_model
    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    pruned = tmp_path / "prune"
    assert main(["prune", "--model", "mlp", "--method", "local", "--width", "0.25", "--calib-samples", "32",
                 "--gram-samples", "64", "--train-epochs", "1", "--out", str(pruned), "--no-progress"]) == 0
    out = tmp_path / "ft"
    assert main(["finetune", str(pruned / "pruned.pt"), "--epochs", "2", "--lr", "0.05", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["epoch_losses"]) == 2 and report["before"]["params"] == report["after"]["params"]
    assert report["config"]["lr"] == 0.05 and report["config"]["weight_decay"] == 5e-5
    tuned, _ = load_model(out / "finetuned.pt")
    assert sum(p.numel() for p in tuned.parameters()) == report["after"]["params"]
    capsys.readouterr()
    assert main(["eval", str(out / "finetuned.pt"), "--device", "cpu", "--workers", "-1"]) == 2
    assert "'--workers' must be >= 0" in capsys.readouterr().err
    assert main(["eval", str(out / "finetuned.pt"), "--device", "cpu", "--json", str(tmp_path / "eval.json"),
                 "--workers", "1"]) == 0  # a worker process loads the batches
    measured = json.loads((tmp_path / "eval.json").read_text())
    assert measured["accuracy"] == report["after"]["accuracy"]
    assert measured["macs"] * 2 == measured["flops"] and measured["latency_device"] == "CPU"
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and f"({measured['macs'] / 1e6:.2f} MMACs), latency on CPU" in printed
    # --resume continues from the checkpoint of the last epoch: here every epoch is done
    assert (out / "checkpoint.pt").is_file()
    assert main(["finetune", str(pruned / "pruned.pt"), "--epochs", "2", "--lr", "0.05", "--out", str(out),
                 "--no-progress", "--resume"]) == 0
    again, _ = load_model(out / "finetuned.pt")
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values()))
    assert json.loads((out / "report.json").read_text())["epoch_losses"] == report["epoch_losses"]
    assert main(["finetune", str(pruned / "pruned.pt"), "--epochs", "2", "--lr", "0.06", "--out", str(out),
                 "--no-progress", "--resume"]) == 2
    assert "lr=0.05 (now 0.06)" in capsys.readouterr().err
    # a finished run is refused; a name without --weights is one line
    assert main(["finetune", str(pruned / "pruned.pt"), "--out", str(out), "--no-progress"]) == 2
    assert main(["eval", "mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--overwrite" in err[0] and "--weights" in err[1] and len(err) == 2


def test_non_finite_weights_name_the_layer(tmp_path, capsys):
    import torch

    from greedyprune.harness.model_source import resolve_model
    model = resolve_model("mlp", "digits", without_weights="init")
    state = model.state_dict()
    name = [k for k in state if k.endswith("weight") and state[k].dim() > 1][1]
    state[name][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    for command in (["prune", "--model", "mlp", "--width", "0.5"], ["search", "--model", "mlp"], ["sap", "--model", "mlp"]):
        code = main(command + ["--weights", str(tmp_path / "nan.pt"), "--out", str(tmp_path / command[0]),
                               "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and repr(name) in err and "non-finite" in err, (command, err)
    assert main(["pqi", str(tmp_path / "nan.pt"), "--arch", "mlp", "--in-channels", "1", "--image-size", "8"]) == 2
    assert repr(name) in capsys.readouterr().err


def test_pretrain_epochs_is_named(tmp_path, capsys):
    assert main(["search", "--pretrain-epochs", "0", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "'--pretrain-epochs'" in capsys.readouterr().err


def test_cuda_backend_without_cuda_warns():
    import torch

    from greedyprune import ops
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    try:
        with pytest.warns(RuntimeWarning, match="no CUDA device"):
            ops.set_backend("cuda")
    finally:
        ops.set_backend("auto")


def test_step_batch_and_memory_budget_reach_the_config(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("GREEDYPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["prune", "--model", "mlp", "--method", "global", "--width", "0.5", "--calib-samples", "32",
                 "--gram-samples", "64", "--train-epochs", "1", "--step-batch", "0", "--max-batch-memory", "64",
                 "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["step_batch"] is None and config["memory_budget"] == 64 * 2 ** 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_eval_on_a_device_that_is_not_here_is_one_line(capsys):
    assert main(["eval", "mlp", "--weights", "unused.pt", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == ("greedyprune eval: argument '--device' asks for 'cuda', but CUDA is "
                                               "not available here")
