"""SAP driver (greedyprune.sparsity.sap): pruning counts and selection, masks through rewind and
training, baselines, early stop, checkpoint/resume, the `sap` command and the quick demo."""
import argparse
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from greedyprune.models import load_weights_into
from greedyprune.sparsity import commands, sap
from greedyprune.sparsity.demo import run_demo
from greedyprune.sparsity.pqi import pqi_report
from greedyprune.sparsity.weights import prunable_weights
from greedyprune.sparsity.sap import (MaskedTraining, SAPConfig, apply_masks, full_masks, prune_counts,
                                      prune_smallest, rewind, run_sap)
from greedyprune.harness.training import train


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def tiny_data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=gen)
    return TensorDataset(x, (x.sum(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long())


TRAIN, TEST = tiny_data(48, 1), tiny_data(24, 2)
FAST = dict(epochs=2, batch_size=16, lr=0.05)


def random_masks(model, keep, seed):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=gen) < keep for name, w in prunable_weights(model).items()}


def rows_of(masks):
    return [row for m in masks.values() for row in m.reshape(m.shape[0], -1)]


# ------------------------------------------------------------ counts and selection


@pytest.mark.parametrize("scope", ["neuron", "layer", "global"])
@pytest.mark.parametrize("p, q, eta, gamma, beta", [(0.5, 1.0, 0.0, 1.0, 0.9), (1.0, 2.0, 0.0, 1.0, 0.9),
                                                     (0.5, 1.0, 0.5, 4.0, 0.3), (0.2, 1.5, 2.0, 10.0, 0.75)])
def test_sap_counts_follow_the_bound_and_never_exceed_beta(scope, p, q, eta, gamma, beta):
    model = tiny_model()
    masks = random_masks(model, 0.7, seed=3)
    report = pqi_report(model, [(p, q)], masks=masks, scopes=[scope])
    config = SAPConfig(scope=scope, p=p, q=q, eta=eta, gamma=gamma, beta=beta)
    counts = prune_counts(report, config)
    d = report.stats(scope).counts
    for c, d_l, pqi in zip(counts.tolist(), d.tolist(), report.pqi(scope, p, q).tolist()):
        r = d_l * (1 + eta) ** (-q / (q - p)) * (1 - pqi) ** (q * p / (q - p))
        assert c == math.floor(d_l * min(max(gamma * (1 - r / d_l), 0.0), beta))
        assert c <= beta * d_l
    assert int(counts.sum()) > 0


@pytest.mark.parametrize("scope", ["neuron", "layer", "global"])
def test_prune_smallest_drops_the_smallest_kept_magnitudes_of_each_segment(scope):
    model = tiny_model()
    weights = prunable_weights(model)
    masks = random_masks(model, 0.8, seed=4)
    counts = prune_counts(pqi_report(model, masks=masks, scopes=[scope]), SAPConfig(method="lottery", scope=scope))
    new = prune_smallest(weights, masks, counts, scope)
    dropped = {n: masks[n] & ~new[n] for n in masks}
    assert all(not bool((new[n] & ~masks[n]).any()) for n in masks)  # nothing revived
    assert sum(int(x.sum()) for x in dropped.values()) == int(counts.sum())
    if scope == "global":
        groups = [(torch.cat([weights[n][dropped[n]] for n in masks]), torch.cat([weights[n][new[n]] for n in masks]))]
    elif scope == "layer":
        groups = [(weights[n][dropped[n]], weights[n][new[n]]) for n in masks]
    else:
        groups = [(weights[n][i][dropped[n][i]], weights[n][i][new[n][i]]) for n in masks
                  for i in range(weights[n].shape[0])]
    for gone, kept in groups:
        if gone.numel() and kept.numel():
            assert float(gone.abs().max()) <= float(kept.abs().min())


def test_with_keep_last_weight_no_neuron_loses_its_last_weight():
    model = tiny_model()
    with torch.no_grad():
        model.fc.weight[2] *= 1e-6  # globally the smallest row: magnitude pruning would empty it
        model.out.weight[1] *= 1e-6
    weights = prunable_weights(model)
    masks = full_masks(model)
    config = SAPConfig(scope="global", gamma=50.0, beta=0.9)
    counts = prune_counts(pqi_report(model, scopes=["global"]), config)
    assert int(counts[0]) == math.floor(0.9 * sum(w.numel() for w in weights.values()))
    new = prune_smallest(weights, masks, counts, "global", keep_last_weight=True)
    assert all(int(row.sum()) >= 1 for row in rows_of(new))
    for name, row in (("fc.weight", 2), ("out.weight", 1)):
        kept = new[name][row]
        assert int(kept.sum()) == 1
        assert int(weights[name][row].abs().argmax()) == int(kept.nonzero()[0])
    # the neuron scope with beta = 1 and a huge gamma would also empty rows
    counts = prune_counts(pqi_report(model, scopes=["neuron"]), SAPConfig(scope="neuron", gamma=1e6, beta=1.0))
    new = prune_smallest(weights, masks, counts, "neuron", keep_last_weight=True)
    assert all(int(row.sum()) >= 1 for row in rows_of(new))


# ------------------------------------------------------------ masks, rewind, training


def test_masks_survive_training_with_momentum_and_weight_decay():
    model = tiny_model()
    masks = random_masks(model, 0.5, seed=5)
    apply_masks(model, masks)
    before = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    loader = torch.utils.data.DataLoader(TRAIN, batch_size=16, shuffle=True)
    with MaskedTraining(model, masks) as masked:
        train(model, loader, epochs=3, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True,
              after_step=masked.after_step, progress=False)
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            assert bool((params[name][~mask] == 0).all())
            assert bool((params[name].grad[~mask] == 0).all())  # the last step's gradient
            assert not torch.equal(params[name][mask], before[name][mask])  # kept weights did train
            assert bool((params[name].grad[mask] != 0).any())
    # hooks are gone after the block: gradients of pruned entries are no longer masked
    model.zero_grad()
    nn.functional.cross_entropy(model(TRAIN.tensors[0]), TRAIN.tensors[1]).backward()
    assert bool((model.fc.weight.grad[~masks["fc.weight"]] != 0).any())


def test_rewind_restores_the_initial_model_with_masks():
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    masks = random_masks(model, 0.5, seed=6)
    train(model, torch.utils.data.DataLoader(TRAIN, batch_size=16), epochs=1, lr=0.1, progress=False)
    assert not torch.equal(model.bn.running_mean, initial["bn.running_mean"])
    rewind(model, initial, masks)
    state = model.state_dict()
    for key, value in initial.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(state[key], expected), key


# ------------------------------------------------------------ the driver


def test_sap_run_history_masks_and_files(tmp_path):
    config = SAPConfig(iterations=3, gamma=2.0, beta=0.5, **FAST)
    result = run_sap(tiny_model(), TRAIN, TEST, config, out_dir=tmp_path, progress=False)
    history = result.history
    assert [e["iteration"] for e in history] == [0, 1, 2, 3]  # t = 0..T
    assert history[0]["remaining_percent"] == 100.0
    for before, after in zip(history, history[1:]):
        assert after["remaining"] == before["remaining"] - before["pruned"]
        assert 0 < before["pruned"] <= config.beta * before["remaining"]
    for entry in history:
        assert 0 <= entry["accuracy"] <= 1 and 0 < entry["pqi"] < 1 and 0 < entry["gini"] < 1
        assert set(entry["layers"]) == {"conv.weight", "fc.weight", "out.weight"}
    # the returned model is the last retrained one: zeros exactly where its masks prune
    for name, w in prunable_weights(result.model).items():
        assert bool((w[~result.masks[name]] == 0).all())
    assert sum(int(m.sum()) for m in result.masks.values()) == history[-1]["remaining"]
    assert sum(int(m.sum()) for m in result.next_masks.values()) == history[-1]["remaining"] - history[-1]["pruned"]
    assert (tmp_path / "results.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["history"][-1]["accuracy"] == history[-1]["accuracy"] and saved["config"]["gamma"] == 2.0
    # TinyNet is not a build_model architecture: its file holds weights and masks, no arch
    loaded = load_weights_into(tiny_model(seed=1), tmp_path / "model.pt")
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert all(torch.equal(meta["masks"][n], result.masks[n]) for n in result.masks)
    assert torch.equal(loaded.fc.weight, result.model.fc.weight)


def test_lottery_prunes_a_fixed_ratio_and_one_shot_trains_once(monkeypatch):
    calls = []

    def counting_train(*args, **kw):
        calls.append(kw["desc"])
        return train(*args, **kw)

    monkeypatch.setattr(sap, "train", counting_train)
    lottery = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(method="lottery", iterations=3, **FAST), progress=False)
    assert len(calls) == 4
    for entry in lottery.history:
        assert entry["pruned"] == math.floor(0.2 * entry["remaining"])

    calls.clear()
    one_shot = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(method="one-shot", iterations=3, **FAST), progress=False)
    assert len(calls) == 1
    assert [e["remaining"] for e in one_shot.history] == [e["remaining"] for e in lottery.history]
    trained_once = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(method="one-shot", iterations=1, **FAST),
                           progress=False).model  # w_0
    for name, w in prunable_weights(one_shot.model).items():
        mask = one_shot.masks[name]
        assert torch.equal(w[mask], prunable_weights(trained_once)[name][mask])
        assert bool((w[~mask] == 0).all())


def test_stop_when_pqi_rises(monkeypatch):
    """A stand-in for training sets the kept weights to: normal (round 0), equal magnitudes (round 1:
    PQI falls to 0), one large weight (round 2: PQI rises) -> the run stops after round 2 without pruning."""
    rounds = []

    def scripted_train(model, loader, *, after_step, **kw):
        gen = torch.Generator().manual_seed(len(rounds))
        with torch.no_grad():
            for w in prunable_weights(model).values():
                w.copy_(torch.randn(w.shape, generator=gen) if not rounds else torch.ones_like(w))
            if len(rounds) == 2:
                model.fc.weight[0, 0] = 100.0
        after_step(model, 0)
        rounds.append(len(rounds))
        return [0.0]

    monkeypatch.setattr(sap, "train", scripted_train)
    config = SAPConfig(iterations=5, stop_on_rising_pqi=True, **FAST)
    result = run_sap(tiny_model(), TRAIN, TEST, config, progress=False)
    pqi = [e["pqi_pq"] for e in result.history]
    assert len(result.history) == 3 and pqi[1] < pqi[0] and pqi[2] > pqi[1]
    assert result.stopped == "pqi_rising" and result.history[-1]["pruned"] == 0 and result.history[-1]["stopped"]
    assert all(torch.equal(result.masks[n], result.next_masks[n]) for n in result.masks)

    rounds.clear()
    unstopped = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(iterations=5, **FAST), progress=False)
    assert len(unstopped.history) == 6 and unstopped.stopped is None


def strip_timing(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


@pytest.mark.parametrize("method", ["sap", "one-shot"])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, method):
    config = SAPConfig(method=method, scope="neuron", iterations=4, gamma=1.5, **FAST)
    whole = run_sap(tiny_model(), TRAIN, TEST, config, out_dir=tmp_path / "whole", progress=False)

    evaluations = []
    real_evaluate = sap.evaluate

    def failing_evaluate(*args, **kw):  # dies in the middle of iteration 2
        evaluations.append(1)
        if len(evaluations) == 5:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kw)

    monkeypatch.setattr(sap, "evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        run_sap(tiny_model(), TRAIN, TEST, config, out_dir=tmp_path / "cut", progress=False)
    monkeypatch.setattr(sap, "evaluate", real_evaluate)
    checkpoint = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert checkpoint["next_iteration"] == 2

    resumed = run_sap(tiny_model(seed=123), TRAIN, TEST, config, out_dir=tmp_path / "cut", resume=True,
                      progress=False)
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for name in whole.masks:
        assert torch.equal(resumed.masks[name], whole.masks[name])
        assert torch.equal(resumed.next_masks[name], whole.next_masks[name])


def test_resume_extends_a_finished_run_and_refuses_other_settings(tmp_path):
    short = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(iterations=2, **FAST), out_dir=tmp_path, progress=False)
    longer = run_sap(tiny_model(), TRAIN, TEST, SAPConfig(iterations=3, **FAST), out_dir=tmp_path, resume=True,
                     progress=False)
    assert strip_timing(longer.history[:3]) == strip_timing(short.history) and len(longer.history) == 4
    with pytest.raises(ValueError, match="'resume'.*gamma"):
        run_sap(tiny_model(), TRAIN, TEST, SAPConfig(iterations=3, gamma=2.0, **FAST), out_dir=tmp_path,
                resume=True, progress=False)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(method="random"), "method"), (dict(scope="row"), "scope"), (dict(p=1.0, q=1.0), "p"),
    (dict(p=0.0), "p"), (dict(beta=1.5), "beta"), (dict(gamma=-1.0), "gamma"), (dict(eta=float("nan")), "eta"),
    (dict(ratio=1.0), "ratio"), (dict(iterations=0), "iterations"), (dict(epochs=1.5), "epochs"),
    (dict(lr=0.0), "lr"), (dict(momentum=0.0), "nesterov"), (dict(seed=-1), "seed"),
])
def test_bad_settings_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"'{argument}'"):
        SAPConfig(**kwargs)


def test_bad_driver_input_names_the_argument():
    with pytest.raises(ValueError, match="'model'"):
        run_sap(nn.BatchNorm1d(3), TRAIN, TEST, SAPConfig())
    with pytest.raises(ValueError, match="'config'"):
        run_sap(tiny_model(), TRAIN, TEST, {"method": "sap"})
    with pytest.raises(ValueError, match="'resume'"):
        run_sap(tiny_model(), TRAIN, TEST, SAPConfig(), resume=True)


# ------------------------------------------------------------ command line and demo


def run_command(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_sap_command_runs_resumes_and_feeds_the_pqi_command(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sap", "--model", "mlp", "--data", "digits", "--baseline", "lottery", "--scope", "layer", "--epochs", "1",
            "--iterations", "2", "--out", str(out), "--no-progress"]
    assert run_command(argv) == 0
    assert run_command(argv[:-4] + ["3", "--out", str(out), "--resume", "--no-progress"]) == 0
    history = json.loads((out / "results.json").read_text())["history"]
    assert len(history) == 4 and "Lottery Ticket (0.2)" in capsys.readouterr().out
    report = tmp_path / "pqi.json"
    assert run_command(["pqi", str(out / "model.pt"), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["masks_from_file"] and data["global"]["kept"] == history[-1]["remaining"]
    assert data["global"]["pqi"]["0.5,1"] == pytest.approx(history[-1]["pqi"], rel=1e-9)


def test_quick_demo_writes_its_table_json_and_figures(tmp_path):
    summary = run_demo(tmp_path, quick=True, progress=False)
    for name in ("demo.json", "demo.txt", "mlp.png", "cnn.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(summary["runs"]) == {"mlp", "cnn"}
    labels = {"SAP (p=0.5, q=1)", "SAP (p=1, q=2)", "One Shot (0.2)", "Lottery Ticket (0.2)"}
    for arch, runs in summary["runs"].items():
        assert set(runs) == labels
        for history in runs.values():
            assert len(history) == summary["settings"][arch]["iterations"] + 1
            assert history[-1]["remaining_percent"] < 100
            assert all(0.1 < e["accuracy"] <= 1 for e in history)  # above chance (10 classes)
    assert json.loads((tmp_path / "demo.json").read_text())["table"] == summary["table"]


@pytest.mark.parametrize("argv, epochs, iterations, printed", [
    ([], 10, 10, "recipe: fast (10 epochs x T = 10 pruning iterations, 11 rounds, batch 250, lr 0.1)"),
    (["--recipe", "paper"], 200, 30, "recipe: paper, Table 3 for mlp (200 epochs x T = 30 pruning iterations, 31 "
                                     "rounds, batch 250, lr 0.1)"),
    (["--recipe", "paper", "--model", "cnn"], 200, 30, "recipe: paper, Table 3 for cnn (200 epochs x T = 30"),
    (["--recipe", "paper", "--model", "resnet18"], 200, 15, "recipe: paper, Table 3 for resnet18 (200 epochs x T = 15"),
    (["--recipe", "paper", "--epochs", "2"], 2, 30, "recipe: paper, Table 3 for mlp (2 epochs x T = 30 pruning "
                                                    "iterations, 31 rounds, batch 250, lr 0.1; --epochs given)"),
    (["--recipe", "paper", "--model", "resnet20", "--iterations", "4"], 200, 4,
     "recipe: paper (200 epochs x T = 4 pruning iterations, 5 rounds, batch 250, lr 0.1; --iterations given)"),
])
def test_sap_recipe_sets_the_papers_budget_and_says_which_ran(tmp_path, capsys, monkeypatch, argv, epochs, iterations,
                                                              printed):
    """--recipe paper is Table 3 of the PQI paper (E = 200; T = 30 for the MLP and CNN, 15 for
    ResNet-18); explicit flags win, and the command prints which recipe ran."""
    from greedyprune import cli

    seen = {}

    def fake_run_sap(model, train_set, test_set, config, **kw):
        seen["config"] = config
        raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(commands, "run_sap", fake_run_sap)
    assert cli.main(["sap", "--out", str(tmp_path / "out"), "--no-progress", *argv]) == 2
    assert (seen["config"].epochs, seen["config"].iterations) == (epochs, iterations)
    assert printed in capsys.readouterr().out
