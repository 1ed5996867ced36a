"""Files are written whole or not at all, and an output folder is checked before any work."""
import errno
import os

import pytest

from greedyprune.checks import ArgumentError
from greedyprune.files import prepare_output_dir, replace_atomically, write_json


def _disk_full_after(n: int):
    def write(f):
        f.write(b"x" * n)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"run": 1})
    before = path.read_bytes()
    with pytest.raises(OSError, match="No space"):
        replace_atomically(path, _disk_full_after(4096))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        replace_atomically(tmp_path / "model.pt", _disk_full_after(10))
    assert os.listdir(tmp_path) == []


def test_output_folder_checks(tmp_path):
    out = prepare_output_dir(tmp_path / "new" / "run", finished="report.json")
    assert out.is_dir() and os.listdir(out) == []  # the write probe leaves nothing
    (out / "report.json").write_text("{}")
    with pytest.raises(ArgumentError, match="finished run.*--resume.*--overwrite"):
        prepare_output_dir(out, finished="report.json")
    assert prepare_output_dir(out, finished="report.json", overwrite=True) == out
    assert prepare_output_dir(out, finished="report.json", resume=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArgumentError, match="'--out'.*not a folder"):
        prepare_output_dir(tmp_path / "file", finished="report.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ArgumentError, match="not a writable folder"):
            prepare_output_dir(ro, finished="report.json")
    finally:
        ro.chmod(0o700)


def test_checkpoint_random_states_round_trip_in_one_process_and_from_older_files(tmp_path):
    import random

    import torch

    from greedyprune.harness.checkpoint import (load_checkpoint, restore_rng_states, rng_state, rng_states,
                                                save_checkpoint)
    torch.manual_seed(5)
    random.seed(5)
    save_checkpoint({"format": 1, "rng": rng_states(), "single": rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(2), random.random())
    state = load_checkpoint(tmp_path / "c.pt", kind="test", file_format=1)
    assert len(state["rng"]["ranks"]) == 1
    for saved in (state["rng"], state["single"]):  # this format, and one process's states as older files hold
        torch.manual_seed(0)
        random.seed(0)
        restore_rng_states(saved)
        drawn = (torch.rand(2), random.random())
        assert torch.equal(drawn[0], expected[0]) and drawn[1] == expected[1]
