"""torchrun with 2 gloo processes on CPU: every driver decides the same on every process, and the
statistics summed over the processes' shards equal the single-process ones over all the images."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from greedyprune.harness.model_source import resolve_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    model = resolve_model("cnn", "digits", without_weights="train", epochs=2, progress=False, cache_dir=folder)
    torch.save(model.state_dict(), folder / "cnn.pt")
    return folder / "cnn.pt"


@pytest.fixture(scope="module")
def ranks(weights, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    run = torchrun(str(ROOT / "tests" / "distributed_worker.py"), str(weights), str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def single(weights) -> dict:
    """The same quantities in this one process over all the calibration images."""
    model = resolve_model("cnn", "digits", without_weights="refuse", weights=weights).eval()
    x, y = worker.calibration(0, 1)
    return {**worker.first_unit_statistics(model, x, y), "plan": worker.plan(model, x, y)}


def test_two_processes_ran(ranks):
    assert [r["world"] for r in ranks] == [2, 2]


@pytest.mark.parametrize("key", ["gram", "taylor", "discrepancy", "refit_moments", "popup_keep", "popup_scores"])
def test_every_process_holds_the_same(ranks, key):
    assert torch.equal(ranks[0][key], ranks[1][key])


def test_plan_and_sap_masks_are_the_same_on_every_process(ranks):
    assert ranks[0]["plan"] == ranks[1]["plan"]
    masks = [r["sap_masks"] for r in ranks]
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])
    assert 0 < sum(int(m.sum()) for m in masks[0].values()) < sum(m.numel() for m in masks[0].values())


def test_sap_resumes_from_rank_0s_checkpoint_on_every_process(ranks):
    assert [r["resumed_iterations"] for r in ranks] == [3, 3]  # t = 0..2
    masks = [r["resumed_masks"] for r in ranks]
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])


def test_checkpoints_restore_each_process_its_own_random_states(ranks):
    for r in ranks:
        assert torch.equal(r["rng_restored"], r["rng_expected"])
    assert not torch.equal(ranks[0]["rng_expected"], ranks[1]["rng_expected"])  # the streams differ


def test_popup_search_swapped_weights(ranks):
    keep = ranks[0]["popup_keep"]
    assert 0 < int(keep.sum()) < keep.numel()


@pytest.mark.parametrize("key", ["gram", "taylor", "discrepancy", "refit_moments"])
def test_statistics_over_shards_equal_single_process(ranks, single, key):
    # the same images, summed in another order: equal up to float32 rounding (relative to the largest entry)
    expected = single[key]
    torch.testing.assert_close(ranks[0][key], expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_the_plan_equals_single_process(ranks, single):
    # BatchNorm statistics are re-estimated from sums over the processes, so later units match too
    ours, theirs = ranks[0]["plan"]["units"], single["plan"]["units"]
    assert [(u["keep"], u["method"]) for u in ours] == [(u["keep"], u["method"]) for u in theirs]


def test_the_readme_torchrun_command_gives_the_single_process_answer(weights, tmp_path):
    from greedyprune.cli import main
    command = ["prune", "--model", "cnn", "--data", "digits", "--method", "local", "--width", "0.5",
               "--weights", str(weights), "--no-progress"]
    run = torchrun("-m", "greedyprune.cli", *command, "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert main(command + ["--out", str(tmp_path / "one")]) == 0
    plans = [json.loads((tmp_path / name / "plan.json").read_text())["units"] for name in ("one", "two")]
    assert [u["keep"] for u in plans[1]] == [u["keep"] for u in plans[0]]
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two")]
    for one, two in zip(*(r["units"] for r in reports)):  # float32 forwards over other batch splits
        assert math.isclose(one["discrepancy"], two["discrepancy"], rel_tol=5e-3, abs_tol=1e-7)
    assert math.isclose(reports[0]["after_prune"]["test_loss"], reports[1]["after_prune"]["test_loss"], rel_tol=1e-3)


def test_prune_command_under_torchrun_writes_once(weights, tmp_path):
    out = tmp_path / "prune"
    run = torchrun("-m", "greedyprune.cli", "prune", "--model", "cnn", "--weights", str(weights), "--method", "local",
                   "--width", "0.5", "--calib-samples", "64", "--gram-samples", "128", "--finetune-epochs", "1",
                   "--no-progress", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["calib_samples"] == 64
    assert [(u["channels"], u["kept"]) for u in report["units"]] == [(64, 32), (128, 64), (256, 128), (512, 256)]
    assert report["after_finetune"]["accuracy"] > 0.5
    assert run.stdout.count("wrote ") == 1  # rank 0 prints, rank 1 does not
    assert not list(out.glob(".*.tmp"))


def test_world_size_that_does_not_divide_the_calibration_set_is_one_line(weights, tmp_path):
    out = tmp_path / "prune"
    run = torchrun("-m", "greedyprune.cli", "prune", "--model", "cnn", "--weights", str(weights), "--method", "local",
                   "--width", "0.5", "--calib-samples", "63", "--no-progress", "--out", str(out))
    assert run.returncode != 0
    line = ("greedyprune prune: argument 'calib_samples' (63) must be divisible by the number of processes (2) "
            "so each process takes an equal share")
    assert run.stderr.count(line) == 2  # one line from each process, no traceback from greedyprune
    assert str(ROOT / "greedyprune") not in run.stderr  # torchrun reports the failed processes; no frame of ours
    assert not (out / "report.json").exists()


def test_processes_holding_different_models_are_refused_naming_the_process(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "import sys, torch\n"
        "from greedyprune import distributed\n"
        "distributed.init_from_env()\n"
        "torch.manual_seed(distributed.rank())  # a different model on each process\n"
        "model = torch.nn.Linear(3, 2)\n"
        "try:\n"
        "    distributed.check_same('model', distributed.fingerprint(model))\n"
        "except ValueError as err:\n"
        "    print(f'rank {distributed.rank()}: {err}')\n"
        "distributed.check_same('data', 100)  # equal: no error\n"
        "distributed.finish()\n")
    run = torchrun(str(script))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0: greedyprune: argument 'model' differs between processes: process 1 has (8, " in run.stdout
    assert "(every process must load the same)" in run.stdout
