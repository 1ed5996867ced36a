"""Every file greedyprune writes gets the permission bits open() would give, not mkstemp's 0600."""
import os
import stat

import pytest
import torch

from greedyprune.files import torch_save_atomically, write_json


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_get_the_mode_open_gives(tmp_path, umask_022):
    write_json(tmp_path / "report.json", {"run": 1})
    torch_save_atomically({"w": torch.ones(2)}, tmp_path / "model.pt")
    with open(tmp_path / "plain.txt", "w"):  # what open() gives under this umask
        pass
    for name in ("report.json", "model.pt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    os.chmod(tmp_path / "report.json", 0o640)  # a replaced file keeps its mode, as open() keeps it
    write_json(tmp_path / "report.json", {"run": 2})
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o640


def test_a_file_the_cli_writes_is_readable_by_others(tmp_path, umask_022):
    from greedyprune.cli import main

    torch.save({"layer.weight": torch.randn(4, 3)}, tmp_path / "state.pt")
    assert main(["pqi", str(tmp_path / "state.pt"), "--json", str(tmp_path / "pqi.json")]) == 0
    assert stat.S_IMODE((tmp_path / "pqi.json").stat().st_mode) == 0o644
