"""torchrun with 1, 2 and 3 gloo processes on CPU: every driver decides the same on every process
and the same as one process (plans, masks, counts exactly; discrepancies, losses, scores, BN
statistics and weights to float32 rounding: RTOL), training batches and datasets cut into unequal
shares included; a calibration share the world size does not divide, or a last training batch with
fewer samples than processes, is one line naming the argument."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from greedyprune.harness.model_source import resolve_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ROOT = Path(__file__).resolve().parent.parent
WORLDS = (1, 2, 3)
# The same images summed in another order and split into other batches: float32 rounding, relative
# to the largest entry of a tensor (measured: at most 1.3e-5, an exported discrepancy with 2 processes).
RTOL = 1e-4


def torchrun(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    model = resolve_model("cnn", "digits", without_weights="train", epochs=2, progress=False, cache_dir=folder)
    torch.save(model.state_dict(), folder / "cnn.pt")
    return folder / "cnn.pt"


@pytest.fixture(scope="module")
def runs(weights, tmp_path_factory) -> dict[int, list[dict]]:
    """World size -> every process's results of tests/distributed_worker.py (one launch each)."""
    results = {}
    for world in WORLDS:
        out = tmp_path_factory.mktemp(f"world{world}")
        run = torchrun(str(ROOT / "tests" / "distributed_worker.py"), str(weights), str(out), processes=world)
        assert run.returncode == 0, run.stderr[-3000:]
        results[world] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return results


OWN_STREAMS = ("rng_expected", "rng_restored")  # each process's own random draws


def exact(value):
    """`value` without its floating-point numbers (plans, masks, counts, methods, stop reasons)."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items() if k != "seconds" and k not in OWN_STREAMS}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if torch.is_tensor(value):
        return None if value.is_floating_point() else value.tolist()
    return None if isinstance(value, float) else value


def assert_floats_agree(ours, theirs, where: str = "") -> None:
    """Every float (and float tensor) in `ours` within RTOL of `theirs`."""
    if isinstance(theirs, dict):
        for key in theirs:
            if key != "seconds" and key not in OWN_STREAMS:
                assert_floats_agree(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, (list, tuple)):
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_floats_agree(a, b, f"{where}[{i}]")
    elif torch.is_tensor(theirs) and theirs.is_floating_point():
        scale = float(theirs.abs().max()) if theirs.numel() else 0.0
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{where}: {m}")
    elif isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=RTOL, abs_tol=1e-12), f"{where}: {ours} vs {theirs}"


def test_every_world_size_ran(runs):
    assert {world: [r["world"] for r in ranks] for world, ranks in runs.items()} == {1: [1], 2: [2, 2], 3: [3, 3, 3]}


@pytest.mark.parametrize("world", [2, 3])
def test_every_process_holds_the_same_bits(runs, world):
    def bits(value):
        if isinstance(value, dict):
            return {k: bits(v) for k, v in value.items() if k != "seconds" and k not in OWN_STREAMS}
        if isinstance(value, (list, tuple)):
            return [bits(v) for v in value]
        return value.tolist() if torch.is_tensor(value) else value

    for rank in runs[world][1:]:
        assert bits(rank) == bits(runs[world][0])


DRIVERS = ["gram", "taylor", "discrepancy", "refit_moments", "prune", "popup", "sap", "finetune", "resumed_masks"]


@pytest.mark.parametrize("key", DRIVERS)
@pytest.mark.parametrize("world", [2, 3])
def test_plans_masks_and_counts_equal_one_process(runs, world, key):
    assert exact(runs[world][0][key]) == exact(runs[1][0][key])


@pytest.mark.parametrize("key", DRIVERS)
@pytest.mark.parametrize("world", [2, 3])
def test_statistics_agree_with_one_process(runs, world, key):
    # discrepancies, losses, gates, Grams, popup scores, BN statistics (re-estimated and trained) and weights
    assert_floats_agree(runs[world][0][key], runs[1][0][key], key)


def test_the_runs_prune_and_train_something(runs):
    one = runs[1][0]
    assert {name: [m for _, m in run["units"]] for name, run in one["prune"].items()} == {
        "local": ["local", "local"], "global": ["global", "global"], "hybrid": ["local", "global"], "gfs": ["gfs"],
        "global_minibatch": ["global", "global"]}  # hybrid takes each method once: both paths are compared
    keep = one["popup"]["update"]["keep"]
    assert 0 < int(keep.sum()) < keep.numel()
    assert all(one["popup"][bn]["history"][-1]["swaps"] > 0 for bn in ("keep", "update"))
    masks = one["sap"]["masks"]
    assert 0 < sum(int(m.sum()) for m in masks.values()) < sum(m.numel() for m in masks.values())
    # train-mode BN moved the running statistics away from the trained model's
    assert not torch.equal(one["finetune"]["bn"]["block1.bn.running_var"], one["bn_before"]["block1.bn.running_var"])


def test_a_last_batch_with_fewer_samples_than_processes_is_one_line_naming_the_batch(runs):
    for world in (2, 3):
        line = (f"greedyprune: argument 'batch_size' (119) leaves the dataset's 239 samples a last batch of 1, fewer "
                f"than the {world} processes, so a process would read none; choose a batch size that leaves none or "
                f"at least {world}")
        assert runs[world][0]["refusals"] == {"search": line, "sap": line, "finetune": line}


def test_sap_resumes_from_rank_0s_checkpoint_on_every_process(runs):
    assert [r["resumed_iterations"] for world in (2, 3) for r in runs[world]] == [3] * 5  # t = 0..2


@pytest.mark.parametrize("world", [2, 3])
def test_checkpoints_restore_each_process_its_own_random_states(runs, world):
    for r in runs[world]:
        assert torch.equal(r["rng_restored"], r["rng_expected"])
    assert not torch.equal(runs[world][0]["rng_expected"], runs[world][1]["rng_expected"])  # the streams differ


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
    # float32 forwards over other batch splits: a KL of near-equal distributions carries the absolute
    # rounding of its log-probabilities (measured: 2.3e-7 on a KL of 1.2e-3)
    for one, two in zip(*(r["units"] for r in reports)):
        assert math.isclose(one["discrepancy"], two["discrepancy"], rel_tol=RTOL, abs_tol=1e-6)
    assert math.isclose(reports[0]["after_prune"]["test_loss"], reports[1]["after_prune"]["test_loss"], rel_tol=RTOL)


def test_the_finetune_command_on_three_processes_gives_one_process_losses(weights, tmp_path):
    from greedyprune.cli import main
    # digits' 1437 training images in batches of 100: 3 divides neither, the last batch holds 37
    command = ["finetune", "cnn", "--weights", str(weights), "--data", "digits", "--epochs", "1", "--batch-size",
               "100", "--no-progress"]
    run = torchrun("-m", "greedyprune.cli", *command, "--out", str(tmp_path / "three"), processes=3)
    assert run.returncode == 0, run.stderr[-3000:]
    assert main(command + ["--out", str(tmp_path / "one")]) == 0
    one, three = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "three"))
    assert math.isclose(three["epoch_losses"][0], one["epoch_losses"][0], rel_tol=RTOL)
    assert math.isclose(three["after"]["test_loss"], one["after"]["test_loss"], rel_tol=RTOL)
    refused = torchrun("-m", "greedyprune.cli", *command[:-3], "--batch-size", "718", "--no-progress", "--out",
                       str(tmp_path / "refused"))  # 1437 = 2 x 718 + 1: one process would read nothing
    assert refused.returncode != 0 and not (tmp_path / "refused").exists()
    assert refused.stderr.count("greedyprune finetune: argument '--batch-size' (718) leaves the dataset's 1437 "
                                "samples a last batch of 1, fewer than the 2 processes") == 2


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


def test_three_processes_and_256_calibration_images_are_one_line(weights, tmp_path):
    out = tmp_path / "prune"
    run = torchrun("-m", "greedyprune.cli", "prune", "--model", "cnn", "--weights", str(weights), "--method", "local",
                   "--width", "0.5", "--calib-samples", "256", "--no-progress", "--out", str(out), processes=3)
    assert run.returncode != 0
    line = ("greedyprune prune: argument 'calib_samples' (256) must be divisible by the number of processes (3) "
            "so each process takes an equal share")
    assert run.stderr.count(line) == 3  # one line from each process, no traceback from greedyprune
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
        "torch.manual_seed(0)\n"
        "same = torch.nn.Linear(3, 2)\n"
        "distributed.check_same_inputs(same, range(10))\n"
        "try:  # what finetune, search and sap check: another dataset on process 1\n"
        "    distributed.check_same_inputs(same, range(10 + distributed.rank()))\n"
        "except ValueError as err:\n"
        "    print(f'rank {distributed.rank()}: {err}')\n"
        "distributed.finish()\n")
    run = torchrun(str(script))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0: greedyprune: argument 'model' differs between processes: process 1 has (8, " in run.stdout
    assert "(every process must load the same)" in run.stdout
    assert ("rank 0: greedyprune: argument 'data' differs between processes: process 1 has 11, process 0 has 10 "
            "(every process must load the same)") in run.stdout
