"""Channels that reach a reader through a concat or a split: such a group is listed with its
reason (the gates of a unit cover the reader's whole input), the rest of the model prunes."""
import torch
import torch.nn as nn

from greedyprune.greedy import prune_model
from greedyprune.greedy.surgery import UnitGraph


class Concat(nn.Module):
    """Two branches concatenated on the channels, read by one conv (Inception, DenseNet)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 5)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


class Split(nn.Module):
    """One conv's channels split between two convs, concatenated again for the head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b, self.c = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.d, self.fc = nn.Conv2d(12, 7, 1), nn.Linear(7, 5)

    def forward(self, x):
        left, right = torch.relu(self.a(x)).split(4, 1)
        h = torch.cat([torch.relu(self.b(left)), torch.relu(self.c(right))], 1)
        return self.fc(torch.relu(self.d(h)).mean((2, 3)))


def _images():
    return torch.randn(6, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_a_concat_read_by_one_conv_is_left_whole_with_the_columns_named():
    torch.manual_seed(0)
    model = Concat().double().eval()
    graph = UnitGraph(model, _images()[:2])
    assert [u.name for u in graph.units] == ["c->fc"]
    reasons = {tuple(g.producers): g.reason for g in graph.skipped}
    assert reasons[("a",)] == "c reads these channels at 4 of its 8 input columns (0..3: a concat or split)"
    assert reasons[("b",)] == "c reads these channels at 4 of its 8 input columns (4..7: a concat or split)"
    results = prune_model(model, _images(), method="local", width_ratio=0.5, progress=False)
    assert [(r.unit, r.width) for r in results] == [("c->fc", 3)]
    assert model.c.in_channels == 8 and model(_images()).shape == (6, 5)


def test_a_split_and_its_concat_are_left_whole_and_the_rest_prunes():
    torch.manual_seed(0)
    model = Split().double().eval()
    graph = UnitGraph(model, _images()[:2])
    assert [u.name for u in graph.units] == ["d->fc"]
    assert {tuple(g.producers) for g in graph.skipped} == {("a",), ("b",), ("c",), ("fc",)}
    assert "concat or split" in next(g.reason for g in graph.skipped if g.producers == ["b"])
    prune_model(model, _images(), method="global", width_ratio=0.5, progress=False)
    assert model.d.out_channels == 4 and model(_images()).shape == (6, 5)
