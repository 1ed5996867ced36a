"""Widths that serve hardware: PruneConfig.round_to / --round-to keeps a multiple of N channels in
every inner and residual unit (widths and tolerances' widths rounded up), never rounds heads, and
refuses a unit narrower than N in one line."""
import pytest
import torch

from greedyprune.checks import ArgumentError
from greedyprune.greedy import PruneConfig, prune_model
from greedyprune.greedy.budget import uniform_cut
from greedyprune.greedy.surgery import UnitGraph
from test_heads import images as vit_images
from test_heads import tiny_vit
from test_residual_units import _images, _net


def test_widths_round_up_to_a_multiple_or_the_whole_unit():
    config = PruneConfig(width_ratio=0.3, round_to=4)
    assert [config.max_neurons(n) for n in (8, 16, 5, 13, 64, 3)] == [4, 8, 4, 4, 20, 3]
    assert config.max_neurons(10, "heads") == 3  # heads are whole already
    for bad in (0, 1.5, -2):
        with pytest.raises(ArgumentError, match="'round_to'"):
            PruneConfig(round_to=bad)


@pytest.mark.parametrize("method", ["local", "refit", "magnitude"])
def test_every_unit_keeps_a_multiple_at_a_width(method):
    model, x = _net(), _images()
    results = prune_model(model, x, method=method, width_ratio=0.3, round_to=4, progress=False)
    # units of 6 (stream), 4, 5 and 8 (stream) channels: 0.3 x N rounded up to 4, at most N
    assert {r.unit: r.width for r in results} == {"stem->a+2": 4, "a->b": 4, "c->d": 4, "d->fc": 4}
    assert model.stem.out_channels == 4 and model(x).shape == (24, 3)


def test_a_tolerance_width_is_rounded_up_along_the_criterion():
    model, x = _net(), _images()
    plain = prune_model(_net(), x, method="local", tol=0.05, progress=False)
    rounded = prune_model(model, x, method="local", tol=0.05, round_to=4, progress=False)
    assert any(p.width % 4 and p.width < p.channels for p in plain)  # something to round
    for p, r in zip(plain, rounded):
        assert r.width == min(r.channels, -(-p.width // 4) * 4)
        if r.width != p.width:
            assert f"{p.width} rounded up to {r.width}" in r.stop


def test_heads_are_not_rounded():
    model, x = tiny_vit(), vit_images()
    results = prune_model(model, x, method="local", width_ratio=0.4, round_to=8, progress=False)
    assert [r.width for r in results] == [8, 2, 16, 2, 16]  # width of 12: 5 -> 8; heads of 3; MLP of 24: 10 -> 16


def test_round_to_above_a_unit_width_is_refused_in_one_line(capsys, tmp_path):
    with pytest.raises(ArgumentError, match=r"'round_to'.*\(8\) is larger than unit stem->a\+2 \(6 channels\) and 2 more"):
        prune_model(_net(), _images(), method="local", width_ratio=0.5, round_to=8, progress=False)
    from greedyprune.cli import main
    assert main(["prune", "--model", "cnn", "--data", "digits", "--width", "0.5", "--round-to", "4096",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # after the digits CNN's training bars
    assert "Traceback" not in err and "'round_to' (4096) is larger than unit" in err.strip().splitlines()[-1]


def test_uniform_cut_honours_round_to():
    model, x = _net(), _images()
    cut = uniform_cut(model, x[:2], 0.3, PruneConfig(round_to=4, groups=("inner",)))
    graph = UnitGraph(cut, x[:2])
    assert cut.a.out_channels == 4 and cut.c.out_channels == 4 and cut.stem.out_channels == 6
    assert len(graph.units) == 4
