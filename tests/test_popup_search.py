"""SR-popup search: initialisation, schedules, the loop against the swap oracle, exact resume,
reports, the CLI and the digits demo (greedyprune.popup)."""
import argparse
import json
import math
import shutil
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from greedyprune import reference
from greedyprune.harness.data import load_dataset
from greedyprune.models import build_model, load_model, save_model
from greedyprune.popup import (SearchConfig, initialize, layer_keep_counts, magnitude_keep, overlap, search,
                               swap_rate, wrap)
from greedyprune.popup.commands import register
from greedyprune.popup.demo import run_demo
from greedyprune.popup.report import sparsity_report, write_search_report
from greedyprune.popup.search import checkpoint_path, reestimate_batchnorm


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: steadier timings on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    return Subset(train, range(200)), Subset(test, range(100))


def test_swap_rate_schedules():
    assert swap_rate("paper", 5, 10) == 0.5 ** 4
    assert swap_rate("inverse", 5, 10) == 0.5 ** 4
    assert swap_rate("paper", 1, 4) == 0.75 ** 4 and swap_rate("inverse", 1, 4) == 0.25 ** 4
    assert swap_rate("paper", 10, 10) == 0.0 and swap_rate("inverse", 10, 10) == 1.0
    assert all(swap_rate("constant", t, 7) == 1.0 for t in range(1, 8))
    rates = [swap_rate("paper", t, 50) for t in range(1, 51)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # acts: strictly decreasing (not 1 throughout)
    with pytest.raises(ValueError, match="'schedule'"):
        swap_rate("cosine", 1, 10)
    with pytest.raises(ValueError, match="'step'"):
        swap_rate("paper", 0, 10)
    with pytest.raises(ValueError, match="'step'"):
        swap_rate("paper", 11, 10)


def test_initialize_global_threshold_and_uniform():
    masked = wrap(tiny_cnn())
    magnitudes = torch.cat([layer.weight.detach().abs().reshape(-1) for layer in masked.layers])
    n = magnitudes.numel()
    counts = initialize(masked, 0.9)
    k = round(0.1 * n)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.topk(magnitudes, k).indices] = True
    assert torch.equal(masked.keep, expected)  # one global threshold: the k largest |w| overall
    assert counts.sum() == k and torch.equal(masked.keep_counts(), counts)
    assert len(set(c / s for c, s in zip(counts.tolist(), (masked.offsets[1:] - masked.offsets[:-1]).tolist()))) > 1
    assert torch.equal(masked.scores.detach(), torch.where(expected, 1.0, 0.99))

    uniform = initialize(masked, 0.75, method="uniform", eta=0.5)
    sizes = (masked.offsets[1:] - masked.offsets[:-1]).tolist()
    assert uniform.tolist() == [round(0.25 * s) for s in sizes]
    for (b, e), c in zip(zip(masked.offsets[:-1].tolist(), masked.offsets[1:].tolist()), uniform.tolist()):
        top = torch.topk(magnitudes[b:e], c).indices + b
        assert bool(masked.keep[top].all()) and int(masked.keep[b:e].sum()) == c
    assert set(masked.scores.detach().unique().tolist()) == {0.5, 1.0}
    assert torch.equal(magnitude_keep(masked, uniform), masked.keep)

    for kwargs, argument in (({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"),
                             ({"sparsity": 0.5, "eta": 1.0}, "eta"), ({"sparsity": 0.5, "method": "layer"}, "method")):
        with pytest.raises(ValueError, match=f"'{argument}'"):
            initialize(masked, **kwargs)


def test_overlap_is_eq_7():
    a = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert overlap(a, a) == 1.0
    assert overlap(a, b) == pytest.approx(0.8)  # 1 - |a - b|_1 / k = 1 - 2/10
    with pytest.raises(ValueError, match="'keep_b'"):
        overlap(a, b[:5])


def test_search_config_rejects_bad_values():
    for field, value in (("sparsity", 1.5), ("schedule", "linear"), ("epochs", 0), ("batch_size", 0),
                         ("lr", 0.0), ("momentum", 1.0), ("weight_decay", -1.0), ("init", "random"),
                         ("eta", 2.0), ("seed", -1)):
        with pytest.raises(ValueError, match=f"'{field}'"):
            SearchConfig(**{field: value})


def test_search_rejects_bad_arguments_and_stops_on_a_non_finite_loss(digits, tmp_path):
    train, test = digits
    config = SearchConfig(epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="'masked'"):
        search(tiny_cnn(), train, test, config)
    with pytest.raises(ValueError, match="'config'"):
        search(wrap(tiny_cnn()), train, test, {"epochs": 1})
    with pytest.raises(ValueError, match="'resume'"):
        search(wrap(tiny_cnn()), train, test, config, resume=True)
    with pytest.raises(ValueError, match="'train_set'"):
        search(wrap(tiny_cnn()), Subset(train, []), test, config)
    broken = tiny_cnn()
    with torch.no_grad():
        broken[0].weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="'model' layer '0.weight' holds 72 non-finite"):
        wrap(broken)
    masked = wrap(tiny_cnn())
    with torch.no_grad():
        masked.model[0].weight.fill_(float("inf"))  # the largest magnitudes: kept by the init
    with pytest.raises(FloatingPointError, match="step 1 "):
        search(masked, train, test, config, progress=False)


@pytest.mark.parametrize("schedule, scope", [("paper", "global"), ("constant", "global"), ("inverse", "global"),
                                             ("paper", "layer")])
def test_every_step_is_one_oracle_swap_with_constant_keep_counts(digits, schedule, scope):
    """Global scope (the default): one swap over all wrapped weights, the total kept is constant and
    the per-layer counts move; layer scope: every layer's count is frozen."""
    train, test = digits
    masked = wrap(tiny_cnn())
    # BN in train mode: with this untrained net's initial statistics kept, 14 steps move the scores
    # too little for any swap, and the swaps are what is checked here
    config = SearchConfig(sparsity=0.9, schedule=schedule, epochs=2, batch_size=32, seed=3, scope=scope, bn="update")
    total = 2 * math.ceil(len(train) / 32)
    counts = layer_keep_counts(masked, 0.9)
    offsets = masked.offsets if scope == "layer" else torch.tensor([0, int(masked.offsets[-1])])
    previous = [magnitude_keep(masked, counts)]
    swapped = []

    def check(info):
        rate = swap_rate(schedule, info.step, total)
        assert info.rate == rate
        expected, q = reference.popup_swap(masked.scores.detach(), offsets, previous[-1], rate)
        assert torch.equal(masked.keep, expected)
        assert torch.equal(info.swaps, q)
        assert int(masked.keep.sum()) == int(counts.sum())
        if scope == "layer":
            assert torch.equal(masked.keep_counts(), counts)
        previous.append(masked.keep.clone())
        swapped.append(int(q.sum()))

    history = search(masked, train, test, config, progress=False, on_step=check)
    assert len(swapped) == total and sum(swapped) > 0  # the swaps are not vacuous
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["overlap"] == overlap(masked.keep, magnitude_keep(masked, counts)) < 1.0
    if scope == "global" and schedule == "constant":
        assert not torch.equal(masked.keep_counts(), counts)  # weights moved between layers
    if schedule == "paper":
        assert swapped[-1] == 0  # rate (1 - T/T)^4 = 0 at the last step


def _state(masked):
    return {k: v.clone() for k, v in masked.state_dict().items()}


@pytest.mark.parametrize("stop", ["ctrl-c mid-epoch", "ctrl-c at an epoch's last step", "crash mid-epoch"])
def test_resume_reproduces_an_uninterrupted_run(digits, tmp_path, stop):
    train, test = digits
    config = SearchConfig(sparsity=0.8, schedule="paper", epochs=3, batch_size=32, seed=1)
    steps_per_epoch = math.ceil(len(train) / 32)
    full = wrap(tiny_cnn())
    full_history = search(full, train, test, config, out_dir=tmp_path / "full", progress=False)
    full_optimizer = torch.load(checkpoint_path(tmp_path / "full"), weights_only=True)["optimizer"]

    stop_step = {"ctrl-c mid-epoch": steps_per_epoch + 3, "ctrl-c at an epoch's last step": steps_per_epoch,
                 "crash mid-epoch": 2 * steps_per_epoch + 2}[stop]

    def interrupt(info):
        if info.step == stop_step:
            if stop.startswith("ctrl-c"):
                signal.raise_signal(signal.SIGINT)
            else:
                raise RuntimeError("power cut")

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt if stop.startswith("ctrl-c") else RuntimeError):
        search(wrap(tiny_cnn()), train, test, config, out_dir=out, progress=False, on_step=interrupt)
    saved = torch.load(checkpoint_path(out), weights_only=True)  # tensors and plain data only
    assert saved["step"] == (stop_step if stop.startswith("ctrl-c") else 2 * steps_per_epoch)

    resumed = wrap(tiny_cnn())  # a fresh process would start from the same pre-trained model
    with pytest.raises(ValueError, match=r"'resume'.*other settings: epochs=3 \(now 4\)"):
        search(resumed, train, test, SearchConfig(sparsity=0.8, epochs=4, batch_size=32, seed=1), out_dir=out,
               resume=True, progress=False)
    history = search(resumed, train, test, config, out_dir=out, resume=True, progress=False)
    assert history == full_history
    expected = _state(full)
    for key, value in _state(resumed).items():  # scores, keep, BN running statistics
        assert torch.equal(value, expected[key]), key
    optimizer = torch.load(checkpoint_path(out), weights_only=True)["optimizer"]
    assert torch.equal(optimizer["state"][0]["momentum_buffer"], full_optimizer["state"][0]["momentum_buffer"])


def test_sparsity_report_and_search_report_files(digits, tmp_path):
    train, test = digits
    masked = wrap(tiny_cnn())
    config = SearchConfig(sparsity=0.9, epochs=1, batch_size=64)
    history = search(masked, train, test, config, progress=False)
    report = sparsity_report(masked)
    counts = masked.keep_counts().tolist()
    assert [layer["kept"] for layer in report["layers"]] == counts
    assert [layer["name"] for layer in report["layers"]] == masked.layer_names
    assert report["global"]["kept"] == sum(counts) and report["global"]["weights"] == masked.keep.numel()
    assert report["global"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert report["global"]["covers"].startswith(f"the weights of {len(masked.layer_names)} Conv2d/Linear layers")
    assert "left dense" not in report["global"]["covers"]
    assert "left dense: " + wrap(tiny_cnn(), exclude_classifier=True).unmasked[0] in sparsity_report(
        wrap(tiny_cnn(), exclude_classifier=True))["global"]["covers"]
    json_path, png_path = write_search_report(tmp_path, masked, history, config)
    saved = json.loads(json_path.read_text())
    assert saved["history"] == history and saved["sparsity"] == report and saved["config"]["schedule"] == "paper"
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="greedyprune")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_search_resume_and_export(tmp_path):
    torch.manual_seed(0)
    save_model(build_model("mlp", num_classes=10, in_channels=1, image_size=8), tmp_path / "mlp.pt")
    out = tmp_path / "run"
    argv = ["search", "--pretrained", str(tmp_path / "mlp.pt"), "--data", "digits", "--epochs", "1",
            "--batch-size", "256", "--schedule", "constant", "--out", str(out), "--export", str(tmp_path / "pruned.pt"),
            "--no-progress"]
    args = _parse(argv)
    assert args.func(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["schedule"] == "constant" and report["layer_names"] == ["fc1", "fc2", "fc3"]
    assert (out / "curves.png").is_file() and (out / "checkpoint.pt").is_file()
    pruned, meta = load_model(tmp_path / "pruned.pt")
    zeros = sum(int((pruned.get_submodule(n).weight == 0).sum()) for n in ("fc1", "fc2", "fc3"))
    assert zeros >= report["sparsity"]["global"]["weights"] - report["sparsity"]["global"]["kept"]
    assert meta["test_accuracy"] == report["history"][-1]["test_accuracy"]
    args = _parse(argv + ["--resume", "--prune-masks"])  # a finished run resumes to the same result
    assert args.func(args) == 0
    assert json.loads((out / "report.json").read_text())["history"] == report["history"]
    with_masks, _ = load_model(tmp_path / "pruned.pt")
    for name in ("fc1", "fc2", "fc3"):
        layer, plain = with_masks.get_submodule(name), pruned.get_submodule(name)
        assert torch.equal(layer.weight_mask.bool(), plain.weight != 0) and torch.equal(layer.weight, plain.weight)
    args = _parse(argv + ["--sparsity", "1.2"])
    with pytest.raises(ValueError, match="'sparsity'"):
        args.func(args)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out, quick=True, cache_dir=out / "cache")
    yield result
    shutil.rmtree(out)


def test_demo_quick_writes_the_table_json_and_png(quick_demo):
    methods = [r["method"] for r in quick_demo["rows"]]
    assert methods == ["dense (pre-trained)", "magnitude, no training", "magnitude + BN statistics re-estimated",
                       "constant rate, magnitude scores (the paper's 'w/o S')",
                       "edge-popup (random scores, per-layer top-k, constant rate)", "SR-popup (paper rate)",
                       "SR-popup (paper rate) + BN statistics re-estimated",
                       "paper rate, random scores (the paper's 'w/o M')",
                       "SR-popup (paper rate), BN in train mode (bn='update')",
                       "edge-popup, BN in train mode (bn='update')"]
    assert all(m in quick_demo["table"] for m in methods)
    assert json.loads(quick_demo["json"].read_text())["rows"] == quick_demo["rows"]
    assert quick_demo["png"].read_bytes()[:4] == b"\x89PNG"


def test_sr_popup_beats_magnitude_pruning_without_training_at_90_percent(quick_demo):
    rows = {r["method"]: r for r in quick_demo["rows"]}
    magnitude, sr_popup = rows["magnitude, no training"], rows["SR-popup (paper rate)"]
    assert magnitude["sparsity"] == sr_popup["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert sr_popup["test_accuracy"] > magnitude["test_accuracy"] + 0.2  # with BN statistics kept: the masks alone
    # with BN in train mode the masks matter beyond fresh BatchNorm statistics too
    updated = rows["SR-popup (paper rate), BN in train mode (bn='update')"]
    assert updated["test_accuracy"] > rows["magnitude + BN statistics re-estimated"]["test_accuracy"]
    assert sr_popup["overlap"] < 1.0 and updated["overlap"] < 1.0


@pytest.mark.parametrize("bn, changes", [("keep", False), ("update", True)])
def test_bn_keep_leaves_the_pretrained_statistics_and_update_changes_them(digits, bn, changes):
    """bn="keep" (the default, the paper's "no weight is modified"): the search normalises with the
    pre-trained statistics and leaves them as they were; "update" (the authors' code) moves them.
    Re-estimation changes them after."""
    train, test = digits
    masked = wrap(tiny_cnn())
    norms = [m for m in masked.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    search(masked, train, test, SearchConfig(epochs=1, batch_size=64, sparsity=0.5, bn=bn), progress=False)
    same = all(torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
               for m, (mean, var) in zip(norms, before))
    assert same != changes
    assert reestimate_batchnorm(masked, train, batch_size=64) == 2
    assert not torch.equal(norms[0].running_mean, before[0][0])


def test_search_defaults_follow_the_paper():
    config = SearchConfig()
    assert (config.batch_size, config.bn, config.lr, config.momentum, config.eta, config.scope) == (
        256, "keep", 0.1, 0.9, 0.99, "global")
    with pytest.raises(ValueError, match="'scope'"):
        SearchConfig(scope="neuron")
    with pytest.raises(ValueError, match="'bn'"):
        SearchConfig(bn="freeze")


def test_demo_reports_sr_popup_with_bn_reestimated_and_updated(quick_demo):
    rows = {r["method"]: r for r in quick_demo["rows"]}
    for label in ("SR-popup (paper rate) + BN statistics re-estimated",
                  "SR-popup (paper rate), BN in train mode (bn='update')"):
        assert rows[label]["sparsity"] == pytest.approx(0.9, abs=1e-4)
        assert 0.0 < rows[label]["test_accuracy"] <= 1.0
    # the re-estimation row re-uses the searched masks: same overlap with the magnitude mask
    reestimated = rows["SR-popup (paper rate) + BN statistics re-estimated"]
    assert reestimated["overlap"] == rows["SR-popup (paper rate)"]["overlap"]


def test_random_score_init_is_edge_popups_top_k_of_random_scores():
    masked = wrap(tiny_cnn())
    counts = initialize(masked, 0.8, method="uniform", scores="random", seed=3)
    sizes = (masked.offsets[1:] - masked.offsets[:-1]).double()
    assert torch.equal(counts, torch.round(0.2 * sizes).to(torch.int64))
    scores = masked.scores.detach()
    assert 0 <= float(scores.min()) and float(scores.max()) < 1 and scores.unique().numel() > 100
    for layer in range(len(counts)):  # per layer, the kept entries are the highest scores
        begin, end = int(masked.offsets[layer]), int(masked.offsets[layer + 1])
        kept, segment = masked.keep[begin:end], scores[begin:end]
        assert int(kept.sum()) == int(counts[layer])
        assert float(segment[kept].min()) >= float(segment[~kept].max())
    again = wrap(tiny_cnn())
    initialize(again, 0.8, method="uniform", scores="random", seed=3)
    assert torch.equal(again.keep, masked.keep)  # drawn from the seed
    with pytest.raises(ValueError, match="'scores'"):
        SearchConfig(scores="zeros")
