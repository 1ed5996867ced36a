"""The verdicts of benchmarks/bench_paper_claims.py on synthetic numbers: Figure 1 needs local
imitation below training from scratch at every n (and falling faster); Figure 2 is judged by the
log-log slope near the input and by the loss at the largest width near the output."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_paper_claims import curves_verdict, loglog_slope, rate_verdict  # noqa: E402

WIDTHS = [1, 2, 4, 8, 16]


def test_scratch_below_local_at_every_n_is_not_the_papers_point_even_when_local_falls_faster():
    local = [2.0 / n ** 2 for n in WIDTHS]  # falls 256x
    scratch = [0.1 / n for n in WIDTHS]  # falls 16x, lower at every n
    verdict = rate_verdict(WIDTHS, local, scratch)
    assert verdict["falls_faster"] and not verdict["holds"] and verdict["below_scratch_at"] == []
    assert "training from scratch is lower than local imitation at every n" in verdict["text"]
    assert "not shown" in verdict["text"]


def test_local_below_scratch_at_every_n_and_falling_faster_holds():
    verdict = rate_verdict(WIDTHS, [0.05 / n ** 2 for n in WIDTHS], [0.1 / n for n in WIDTHS])
    assert verdict["holds"] and verdict["below_scratch_at"] == WIDTHS


def test_below_scratch_at_some_n_only_names_them():
    verdict = rate_verdict(WIDTHS, [0.5 / n ** 2 for n in WIDTHS], [0.1 / n for n in WIDTHS])
    assert not verdict["holds"] and verdict["below_scratch_at"] == [8, 16]
    assert "only at n = 8, 16" in verdict["text"]


def test_loglog_slope_reads_the_power_law():
    assert loglog_slope(WIDTHS, [3.0 * n ** -1.5 for n in WIDTHS]) == pytest.approx(-1.5)
    assert math.isfinite(loglog_slope(WIDTHS, [1.0, 0.5, 0.0, 0.0, 0.0]))


def _unit(local, global_):
    return {"widths": WIDTHS, "local": local, "global": global_}


def test_curves_judge_slope_near_the_input_and_the_widest_loss_near_the_output():
    # near the input: local higher at n = 1 (a geometric mean would call global better) but steeper
    steep_local = _unit([10.0 / n ** 2 for n in WIDTHS], [2.0 / n for n in WIDTHS])
    # near the output: local falls faster too, yet global is lower at the largest width
    lower_global = _unit([10.0 / n ** 1.2 for n in WIDTHS], [1.0 / n ** 1.1 for n in WIDTHS])
    verdict = curves_verdict([steep_local, steep_local, lower_global, lower_global])
    assert verdict["local_faster_near_input"] == [True, True]
    assert verdict["global_lower_near_output"] == [True, True] and verdict["holds"]
    flat_local = _unit([1.0 / n ** 0.5 for n in WIDTHS], [2.0 / n for n in WIDTHS])
    assert not curves_verdict([flat_local, flat_local, lower_global, lower_global])["holds"]
    assert not curves_verdict([steep_local, steep_local, steep_local, steep_local])["holds"]
