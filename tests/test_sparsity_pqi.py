"""Model-level PQ Index report (greedyprune.sparsity.pqi) and the `pqi` command: every scope and
pair against a float64 oracle written from the paper's definition, masks, Gini index, output, errors.
(Op-level PQI properties are in test_pq_norms.py.)"""
import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from greedyprune.models import build_model, save_model
from greedyprune.sparsity import commands
from greedyprune.sparsity.pqi import (PAPER_P, PAPER_Q, format_grid, format_table, gini_index, grid_pairs, pqi_report,
                                      prunable_weights)

PAIRS = [(0.5, 1.0), (1.0, 2.0), (0.1, 1.5)]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(20, 7)
        self.head = nn.Linear(7, 3, bias=False)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))))


def oracle_pqi(v: torch.Tensor, p: float, q: float) -> float:
    """Definition 1 of the paper, in float64 on the kept entries."""
    v = v.double().abs()
    d = v.numel()
    if d == 0 or float(v.max()) == 0:
        return math.nan
    norm_p = float((v ** p).sum()) ** (1 / p)
    norm_q = float((v ** q).sum()) ** (1 / q)
    return 1 - d ** (1 / q - 1 / p) * norm_p / norm_q


def oracle_gini(v: torch.Tensor) -> float:
    """Hurley & Rickard's Gini index: 1 - 2 sum_k (c_k / ||c||_1) (N - k + 1/2) / N, c ascending."""
    c = np.sort(np.abs(v.double().numpy()))
    n = c.size
    if n == 0 or c.sum() == 0:
        return math.nan
    k = np.arange(1, n + 1)
    return float(1 - 2 * np.sum(c / c.sum() * (n - k + 0.5) / n))


def random_masks(model, keep=0.6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=gen) < keep for name, w in prunable_weights(model).items()}


def segments(model, masks, scope):
    """Kept entries of every segment of `scope`, in the report's order."""
    weights = prunable_weights(model)
    kept = {name: (w, masks[name]) for name, w in weights.items()}
    if scope == "global":
        return [torch.cat([w[m] for w, m in kept.values()])]
    if scope == "layer":
        return [w[m] for w, m in kept.values()]
    return [w[i][m[i]] for w, m in kept.values() for i in range(w.shape[0])]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyNet()


def assert_close_nan(actual: torch.Tensor, expected: list[float], tol: float):
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("scope", ["neuron", "layer", "global"])
def test_every_scope_and_pair_matches_the_definition_on_kept_entries(model, scope):
    masks = random_masks(model)
    masks["fc.weight"][3] = False  # an empty neuron: NaN, never a number
    with torch.no_grad():
        model.head.weight[1] = 0  # an all-zero neuron: NaN
    report = pqi_report(model, PAIRS, masks=masks, scopes=[scope])
    segs = segments(model, masks, scope)
    stats = report.stats(scope)
    assert stats.counts.tolist() == [s.numel() for s in segs]
    for j, (p, q) in enumerate(PAIRS):
        assert_close_nan(stats.pqi[:, j], [oracle_pqi(s, p, q) for s in segs], 1e-6)
    assert_close_nan(stats.gini, [oracle_gini(s) for s in segs], 1e-9)
    if scope == "neuron":
        rows = report.neuron_slices()
        assert math.isnan(stats.pqi[rows["fc.weight"], 0][3]) and math.isnan(stats.pqi[rows["head.weight"], 0][1])


def test_a_fully_pruned_layer_is_nan_and_leaves_the_other_scopes_exact(model):
    masks = random_masks(model)
    masks["fc.weight"][:] = False
    report = pqi_report(model, PAIRS, masks=masks)
    layer = report.stats("layer")
    assert int(layer.counts[1]) == 0 and bool(torch.isnan(layer.pqi[1]).all()) and math.isnan(layer.gini[1])
    for scope in ("layer", "global"):
        segs = segments(model, masks, scope)
        for j, (p, q) in enumerate(PAIRS):
            assert_close_nan(report.stats(scope).pqi[:, j], [oracle_pqi(s, p, q) for s in segs], 1e-6)


def test_pruned_entries_do_not_count_whatever_their_values(model):
    masks = random_masks(model, keep=0.5)
    before = pqi_report(model, PAIRS, masks=masks)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name in masks:
                w[~masks[name]] = 1e6
    after = pqi_report(model, PAIRS, masks=masks)
    for scope in before.scopes:
        torch.testing.assert_close(after.stats(scope).pqi, before.stats(scope).pqi, equal_nan=True)
        torch.testing.assert_close(after.stats(scope).gini, before.stats(scope).gini, equal_nan=True)


def test_without_masks_zeros_count_as_kept_entries(model):
    with torch.no_grad():
        model.fc.weight[:, ::2] = 0
    report = pqi_report(model, [(0.5, 1.0)], scopes=["layer"])
    w = model.fc.weight.detach().flatten()
    assert float(report.pqi("layer")[1]) == pytest.approx(oracle_pqi(w, 0.5, 1.0), rel=1e-6)
    assert int(report.stats("layer").counts[1]) == w.numel()


def test_the_paper_grid_in_one_report_matches_the_definition(model):
    pairs = grid_pairs()
    assert len(pairs) == 109 and all(p < q for p, q in pairs)
    assert set(pairs) == {(p, q) for p in PAPER_P for q in PAPER_Q if p < q}
    masks = random_masks(model)
    grid = pqi_report(model, pairs, masks=masks, gini=False)
    for scope in ("neuron", "layer", "global"):
        segs = segments(model, masks, scope)
        assert grid.stats(scope).pqi.shape == (len(segs), 109)
        for p, q in [(0.1, 1.0), (0.5, 1.0), (1.0, 2.0), (0.3, 1.7), (1.0, 1.1)]:
            assert_close_nan(grid.pqi(scope, p, q), [oracle_pqi(s, p, q) for s in segs], 1e-5)


def test_state_dict_measures_the_same_weights_as_the_module(model):
    state = model.state_dict()  # holds BN buffers too: 1-D, not measured
    assert list(prunable_weights(state)) == ["conv.weight", "fc.weight", "head.weight"]
    a, b = pqi_report(model, PAIRS), pqi_report(state, PAIRS)
    for scope in a.scopes:
        torch.testing.assert_close(a.stats(scope).pqi, b.stats(scope).pqi)


def test_gini_index_extremes():
    assert gini_index(torch.full((50,), -3.0)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(50)
    one_hot[7] = 2.0
    assert gini_index(one_hot) == pytest.approx(1 - 1 / 50, abs=1e-12)
    assert math.isnan(gini_index(torch.zeros(5)))
    w = torch.randn(200)
    mask = torch.rand(200) < 0.3
    assert gini_index(w, mask) == pytest.approx(oracle_gini(w[mask]), abs=1e-12)


def test_table_grid_and_json_show_the_computed_values(model):
    masks = random_masks(model)
    report = pqi_report(model, grid_pairs(), masks=masks)
    table = format_table(report, pairs=[(0.5, 1.0), (1.0, 2.0)])
    for name in ("conv.weight", "fc.weight", "head.weight"):
        assert table.count(name) == 2  # layer and neuron sections
    assert f"{float(report.pqi('global', 1.0, 2.0)[0]):.4f}" in table
    assert f"{float(report.stats('layer').gini[1]):.4f}" in table
    grid = format_grid(report).splitlines()
    assert len(grid) == 2 + 1 + len(PAPER_P)  # title, header, rule, one row per p
    assert grid[-1].split()[1] == "-"  # p = q = 1 is not a pair
    assert grid[-1].split()[-1] == f"{float(report.pqi('global', 1.0, 2.0)[0]):.4f}"

    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["global"]["kept"] == sum(int(m.sum()) for m in masks.values())
    assert data["global"]["pqi"]["0.5,1"] == pytest.approx(float(report.pqi("global")[0]))
    fc = data["layers"][1]
    assert fc["name"] == "fc.weight" and fc["shape"] == [7, 20]
    neuron = report.pqi("neuron", 1.0, 2.0)[report.neuron_slices()["fc.weight"]]
    assert fc["neurons"]["pqi"]["1,2"]["max"] == pytest.approx(float(neuron.max()))
    every = report.to_dict(neurons=True)["layers"][1]["neurons"]
    assert every["pqi_each"]["1,2"] == pytest.approx(neuron.tolist())


@pytest.mark.parametrize("call, argument", [
    (lambda m: pqi_report(m, [(1.0, 1.0)]), "pairs"),
    (lambda m: pqi_report(m, [(0.0, 1.0)]), "pairs"),
    (lambda m: pqi_report(m, [0.5]), "pairs"),
    (lambda m: pqi_report(m, [(0.5, 1.0)], scopes=["row"]), "scopes"),
    (lambda m: pqi_report(m, [(0.5, 1.0)], scopes="global"), "scopes"),
    (lambda m: pqi_report(m, masks={"fc.weight": torch.ones(3, 3, dtype=torch.bool)}), "masks"),
    (lambda m: pqi_report(m, masks={"fc.bias": torch.ones(7, dtype=torch.bool)}), "masks"),
    (lambda m: pqi_report(m, masks={"fc.weight": torch.ones(7, 20)}), "masks"),
    (lambda m: pqi_report(nn.Linear(3, 1).bias), "weights"),
    (lambda m: pqi_report(nn.BatchNorm1d(4)), "weights"),
    (lambda m: pqi_report(m).pqi("global", 1.0, 2.0), "p/q"),
    (lambda m: pqi_report(m, scopes=["layer"]).pqi("global"), "scope"),
    (lambda m: gini_index(torch.ones(3), torch.ones(3)), "mask"),
])
def test_bad_input_names_the_argument(model, call, argument):
    with pytest.raises(ValueError, match=f"'{argument}'"):
        call(model)


def run_pqi_command(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_pqi_command_reads_saved_masks_and_writes_json(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    masks = random_masks(model)
    path = tmp_path / "model.pt"
    save_model(model, path, masks=masks)
    out = tmp_path / "pqi.json"
    assert run_pqi_command(["pqi", str(path), "--p", "0.5", "1", "--q", "1", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scope: global" in printed and "PQI(1,2)" in printed
    data = json.loads(out.read_text())
    expected = pqi_report(model, [(0.5, 1.0), (1.0, 2.0)], masks=masks)
    assert data["masks_from_file"] is True
    assert data["global"]["pqi"]["1,2"] == pytest.approx(float(expected.pqi("global", 1.0, 2.0)[0]), rel=1e-12)
    assert data["global"]["kept"] == sum(int(m.sum()) for m in masks.values())


def test_pqi_command_state_dict_with_arch_and_grid(tmp_path, capsys):
    torch.manual_seed(0)
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "state.pt"
    torch.save(mlp.state_dict(), path)
    out = tmp_path / "grid.json"
    argv = ["pqi", str(path), "--arch", "mlp", "--in-channels", "1", "--image-size", "8", "--grid", "--scope",
            "global", "--json", str(out)]
    assert run_pqi_command(argv) == 0
    assert "q=2" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(data["pairs"]) == 109 and "layers" not in data
    expected = pqi_report(mlp, [(0.1, 2.0)]).pqi("global", 0.1, 2.0)
    assert data["global"]["pqi"]["0.1,2"] == pytest.approx(float(expected[0]))
    with pytest.raises(ValueError, match="does not fit CNN: missing: block1.conv.weight"):
        run_pqi_command(["pqi", str(path), "--arch", "cnn", "--in-channels", "1", "--image-size", "8"])
    with pytest.raises(ValueError, match="missing.pt' does not exist"):
        run_pqi_command(["pqi", str(tmp_path / "missing.pt")])
    with pytest.raises(ValueError, match="'--q'"):
        run_pqi_command(["pqi", str(path), "--p", "0.5", "0.6", "--q", "1"])


def test_pqi_command_applies_torch_prune_masks(tmp_path, capsys):
    from torch.nn.utils import prune
    torch.manual_seed(0)
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    prune.l1_unstructured(mlp.fc1, "weight", amount=0.9)
    path = tmp_path / "masked.pt"
    torch.save(mlp.state_dict(), path)
    out = tmp_path / "pqi.json"
    assert run_pqi_command(["pqi", str(path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    names = [layer["name"] for layer in data["layers"]]
    assert "fc1.weight" in names and not any(n.endswith("_mask") or n.endswith("_orig") for n in names)
    assert data["masks_from_file"] is True
    assert data["global"]["kept"] == sum(p.numel() for n, p in mlp.named_parameters() if p.dim() > 1 and "fc1" not in n) \
        + int(mlp.fc1.weight_mask.sum())


@pytest.mark.parametrize("p, q", [(2.0, 3.0), (0.2, 0.5), (1.5, 2.0)])
def test_pairs_outside_the_theorem_warn(model, p, q):
    from greedyprune.sparsity.pqi import PQIRangeWarning
    from greedyprune.sparsity.sap import SAPConfig

    with pytest.warns(PQIRangeWarning, match=f"p = {p:g}, q = {q:g} is outside 0 < p <= 1 <= q"):
        pqi_report(model, pairs=[(p, q)], scopes=("global",), gini=False)
    with pytest.warns(PQIRangeWarning):
        SAPConfig(p=p, q=q)


def test_the_papers_pairs_and_grid_do_not_warn(model):
    import warnings

    from greedyprune.sparsity.sap import SAPConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pqi_report(model, pairs=[(0.5, 1.0), (1.0, 2.0), *grid_pairs()], scopes=("global",), gini=False)
        SAPConfig(p=0.5, q=1.0)
        SAPConfig(p=1.0, q=2.0)
