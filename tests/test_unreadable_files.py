"""A file greedyprune cannot read (text, a truncated torch file, a zip that is not a torch file, an
empty file) is one line naming the argument and exit 2 on every command that takes a path."""
import zipfile

import pytest
import torch

from greedyprune.checks import ArgumentError
from greedyprune.cli import main
from greedyprune.files import read_torch_file
from greedyprune.harness.model_source import resolve_model


def _text(path):
    path.write_text("notes on the run\nlr 0.01, 3 epochs\n")


def _truncated(path):
    torch.save(resolve_model("mlp", "digits", without_weights="init").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")


def _empty(path):
    path.write_bytes(b"")


# each kind of unreadable file, and what the line must say about it
BAD_FILES = {"text": (_text, "is not a PyTorch file"),
             "truncated": (_truncated, "is a truncated PyTorch file"),
             "foreign zip": (_foreign_zip, "is a zip archive but not a PyTorch file"),
             "empty": (_empty, "is empty")}

# command -> (arguments with BAD / GOOD / OUT placeholders, the argument the line names, the bad file's place)
COMMANDS = {
    "prune --weights": (["prune", "--model", "mlp", "--width", "0.5", "--weights", "BAD", "--out", "OUT",
                         "--no-progress"], "'--weights'", "bad.pt"),
    "finetune": (["finetune", "BAD", "--epochs", "1", "--out", "OUT", "--no-progress"], "'model'", "bad.pt"),
    "finetune --weights": (["finetune", "mlp", "--weights", "BAD", "--epochs", "1", "--out", "OUT", "--no-progress"],
                           "'--weights'", "bad.pt"),
    "eval": (["eval", "BAD"], "'model'", "bad.pt"),
    "pqi": (["pqi", "BAD"], "'model'", "bad.pt"),
    "search --pretrained": (["search", "--pretrained", "BAD", "--epochs", "1", "--out", "OUT", "--no-progress"],
                            "'--pretrained'", "bad.pt"),
    "search --resume": (["search", "--model", "mlp", "--weights", "GOOD", "--epochs", "1", "--resume", "--out", "OUT",
                         "--no-progress"], "'resume'", "out/checkpoint.pt"),
    "sap --resume": (["sap", "--model", "mlp", "--iterations", "1", "--epochs", "1", "--resume", "--out", "OUT",
                      "--no-progress"], "'resume'", "out/checkpoint.pt"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_file_is_one_line_naming_the_argument(command, kind, tmp_path, capsys):
    arguments, named, place = COMMANDS[command]
    make, says = BAD_FILES[kind]
    bad = tmp_path / place
    bad.parent.mkdir(exist_ok=True)
    make(bad)
    good = tmp_path / "good.pt"
    torch.save(resolve_model("mlp", "digits", without_weights="init").state_dict(), good)
    substitutes = {"BAD": str(bad), "GOOD": str(good), "OUT": str(tmp_path / "out")}
    assert main([substitutes.get(a, a) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert named in err and str(bad) in err and says in err, err
    assert "could run code" not in err


def test_a_pickle_carrying_code_is_still_refused_as_such(tmp_path):
    class Payload:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    for legacy in (False, True):
        path = tmp_path / f"evil-{legacy}.pt"
        torch.save({"payload": Payload()}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ArgumentError, match="'weights'.*could run code: it names .*system"):
            read_torch_file(path, argument="weights")


def test_both_torch_formats_read_and_a_truncated_legacy_file_is_one_error(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"epoch": 3}}
    for legacy in (False, True):
        path = tmp_path / f"state-{legacy}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        loaded = read_torch_file(path, argument="weights", mmap=True)
        assert torch.equal(loaded["w"], state["w"]) and loaded["meta"] == {"epoch": 3}
    data = (tmp_path / "state-True.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 20])
    with pytest.raises(ArgumentError, match="'weights'.*truncated or damaged PyTorch file"):
        read_torch_file(tmp_path / "cut.pt", argument="weights")


@pytest.mark.parametrize("make", [_text, _truncated, _foreign_zip, _empty])
def test_the_python_loaders_refuse_an_unreadable_file_in_one_error(make, tmp_path):
    from greedyprune.models import build_model
    from greedyprune.models.io import load_model, load_weights_into, read_state_dict
    path = tmp_path / "weights.pt"
    make(path)
    for load in (load_model, read_state_dict, lambda p: load_weights_into(build_model("mlp"), p)):
        with pytest.raises(ArgumentError, match="'path'.*weights.pt"):
            load(path)
