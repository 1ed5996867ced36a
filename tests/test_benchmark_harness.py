"""The benchmark harness (benchmarks/harness.py): targets read the way they are required, and a
loaded measurement keeps both columns."""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness import Case, Target, measure_case  # noqa: E402

DATE = "2026-12-01T10:00:00+00:00"


def timing(ms: float, load=(1.9, 2.0)) -> dict:
    return {"median_ms": ms, "min_ms": ms, "calls": 1, "date": DATE, "load": list(load)}


def test_time_ratio_reads_as_required():
    record = {"providers": {"greedyprune": {"quiet": timing(2.4)}, "torch_sum": {"quiet": timing(1.0, (2.0, 2.3))}}}
    target = Target("pq_norms_2p", "greedyprune", "torch_sum", "a sum", at_most=1.5)
    assert target.judge(record) == ("greedyprune: 2.4x a sum, target <= 1.5x: MISSED", "2026-12-01, load 1.9-2.3")
    record["providers"]["greedyprune"]["quiet"] = timing(1.502)  # a third digit where two would show the bound
    assert target.judge(record)[0] == "greedyprune: 1.502x a sum, target <= 1.5x: MISSED"


def test_speedup_reads_as_required():
    record = {"providers": {"greedyprune": {"quiet": timing(1.0)}, "torch_loop": {"quiet": timing(31.0)}}}
    target = Target("greedy_local", "greedyprune", "torch_loop", "the torch loop", faster=30)
    assert target.judge(record)[0] == "greedyprune: 31x faster than the torch loop, target >= 30x: met"


def test_under_load_target_reads_the_loaded_column():
    target = Target("greedy_local", "greedyprune", "greedyprune", "its quiet median", at_most=2, under_load=True)
    record = {"providers": {"greedyprune": {"quiet": timing(2.0)}}}
    assert target.judge(record) == (
        "greedyprune under load: target <= 2x its quiet median: not measured (run.py --loaded)", "")
    record["providers"]["greedyprune"]["loaded"] = timing(24.0, (2.9, 3.1))
    assert target.judge(record) == ("greedyprune under load: 12x its quiet median, target <= 2x: MISSED",
                                    "2026-12-01, load 1.9-3.1")


def test_loaded_case_keeps_quiet_and_loaded_columns():
    def check(inputs, out):
        assert torch.equal(out["twice"], 2 * out["sum"])
        return {"checked": True}

    case = Case(name="sum", title="a sum", subject="sum",
                make_inputs=lambda quick: SimpleNamespace(x=torch.ones(1000), sizes="1,000 ones"),
                providers={"sum": lambda i: i.x.sum(), "twice": lambda i: 2 * i.x.sum()},
                check=check, calls={"twice": 3}, final_facts=lambda i: {"numel": i.x.numel()})
    record = measure_case(case, quick=True, loaded=True)
    assert record["facts"] == {"checked": True, "numel": 1000}
    assert record["sizes"] == "1,000 ones" and record["subject"] == "sum"
    for name, columns in record["providers"].items():
        assert set(columns) == {"quiet", "loaded"}, name
        assert all(t["median_ms"] > 0 and len(t["load"]) == 2 for t in columns.values())
    assert record["providers"]["twice"]["quiet"]["calls"] == record["providers"]["twice"]["loaded"]["calls"] == 3
