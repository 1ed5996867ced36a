"""train / finetune checkpoints after every epoch; a run killed mid-epoch and resumed from the
last checkpoint ends bit for bit where the uninterrupted run ends (weights, losses), random states
and the loader's order and augmentation included."""
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from greedyprune.checks import ArgumentError
from greedyprune.harness.data import make_loader
from greedyprune.harness.training import train


class _Killed(Exception):
    pass


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _loader():
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))
    return make_loader(data, 8, shuffle=True, seed=3)


def _train(model, checkpoint=None, resume=False, kill_at=None):
    def after_step(_model, step):
        if step == kill_at:
            raise _Killed

    return train(model, _loader(), epochs=3, lr=0.1, progress=False, checkpoint=checkpoint, resume=resume,
                 after_step=after_step)


def test_a_killed_run_resumed_ends_as_the_uninterrupted_one(tmp_path):
    whole = _model()
    losses = _train(whole)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Killed):
        _train(_model(), checkpoint, kill_at=7)  # in the second epoch (5 steps each)
    torch.manual_seed(1234)  # a new process draws other numbers until the checkpoint's are restored
    resumed = _model()
    assert _train(resumed, checkpoint, resume=True) == losses
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # the first checkpoint's epoch was the only one done: resuming it again from scratch differs
    assert not torch.equal(_model()[0].weight, resumed[0].weight)


def test_resume_without_a_checkpoint_starts_and_a_finished_one_does_nothing(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    first = _model()
    losses = _train(first, checkpoint, resume=True)
    again = _model()
    assert _train(again, checkpoint, resume=True) == losses  # every epoch done: the saved weights
    assert torch.equal(again[0].weight, first[0].weight)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Killed):
        _train(_model(), checkpoint, kill_at=6)
    with pytest.raises(ArgumentError, match=r"argument 'resume'.*lr=0\.1 \(now 0\.2\)"):
        train(_model(), _loader(), epochs=3, lr=0.2, progress=False, checkpoint=checkpoint, resume=True)
    with pytest.raises(ArgumentError, match="argument 'resume'.*needs 'checkpoint'"):
        train(_model(), _loader(), epochs=3, lr=0.1, progress=False, resume=True)
