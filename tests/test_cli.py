"""The command line: every subcommand is registered; `prune` runs end to end; bad input is one
clear line and exit code 2."""
import pytest

from greedyprune.cli import build_parser, main


def test_every_subcommand_is_registered():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "prune", "rate-demo", "search", "sap", "pqi"} <= set(commands)


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
    assert "'name'" in capsys.readouterr().err


def test_unknown_subcommand_exits():
    with pytest.raises(SystemExit):
        main(["frobnicate"])
