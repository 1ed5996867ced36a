"""Time every provider of every case in cases.py and compare greedyprune with its baselines.

    python benchmarks/run.py                   # full sizes (several minutes), writes benchmarks/results.json
    python benchmarks/run.py --write-results   # ... and rewrites benchmarks/RESULTS.md
    python benchmarks/run.py --quick           # small sizes, seconds (demo); never touches RESULTS.md

Times are medians over blocks of torch.utils.benchmark.Timer.blocked_autorange, at
torch's default thread count; providers of `Case.single_run` are timed with one call.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.benchmark as torch_benchmark
from tqdm import tqdm

import cases
from greedyprune import ops

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
# Sections from here on are written by the driver benchmarks (bench_*.py) and kept on rewrite.
DRIVERS_MARKER = "\n## Drivers\n"


def _driver_sections() -> str:
    old = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    return old[old.index(DRIVERS_MARKER):] if DRIVERS_MARKER in old else ""
MIN_RUN_TIME_S = {False: 2.0, True: 0.2}  # per provider; keyed by quick


@dataclass(frozen=True)
class Target:
    case: str
    fast: str  # the provider that must be faster
    slow: str
    min_speedup: float  # time(slow) / time(fast) must reach this

    def describe(self) -> str:
        if self.min_speedup >= 1:
            return f"{self.case}: {self.fast} >= {self.min_speedup:g}x faster than {self.slow}"
        return f"{self.case}: time({self.fast}) <= {1 / self.min_speedup:g} x time({self.slow})"


TARGETS = [
    Target("greedy_local", "greedyprune", "torch_loop", 30),
    Target("popup_swap", "greedyprune", "torch_kthvalue", 3),
    Target("popup_swap", "greedyprune", "authors", 30),
    Target("pq_norms_2p", "greedyprune_2p", "torch_sum", 0.5),
    Target("pq_norms_grid", "greedyprune_grid", "torch_grid_once_per_power", 10),
    Target("pq_norms_grid", "greedyprune_grid", "authors_grid", 100),
    Target("taylor_scores", "greedyprune", "torch_sum_act_grad", 0.5),
]


def seconds_per_call(fn, single_run: bool, min_run_time: float) -> tuple[list[float], int]:
    """Per-call times of the measured blocks, and the number of calls timed."""
    if single_run:
        start = time.perf_counter()
        fn()
        return [time.perf_counter() - start], 1
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return measurement.times, len(measurement.times) * measurement.number_per_run


def measure(case_names: list[str], quick: bool) -> list[dict]:
    rows = []
    progress = tqdm(case_names, desc="cases", unit="case")
    for name in progress:
        case = cases.CASES[name]
        progress.set_postfix_str(f"{name}: building and checking inputs")
        inputs = cases.prepared_inputs(name, quick)
        case_rows = []
        for provider, fn in case.providers.items():
            progress.set_postfix_str(f"{name}: {provider}")
            times, calls = seconds_per_call(functools.partial(fn, inputs), provider in case.single_run,
                                            MIN_RUN_TIME_S[quick])
            case_rows.append({"op": case.op, "case": name, "provider": provider,
                              "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                              "max_ms": 1e3 * max(times), "calls": calls})
        subject_ms = next(r["median_ms"] for r in case_rows if r["provider"] == case.subject)
        for row in case_rows:
            row["ratio"] = row["median_ms"] / subject_ms
        rows += case_rows
    return rows


def evaluate_targets(rows: list[dict]) -> list[dict]:
    median = {(r["case"], r["provider"]): r["median_ms"] for r in rows}
    out = []
    for target in TARGETS:
        if (target.case, target.fast) not in median:
            continue
        speedup = median[target.case, target.slow] / median[target.case, target.fast]
        out.append({"target": target.describe(), "speedup": speedup, "required": target.min_speedup,
                    "met": speedup >= target.min_speedup})
    return out


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "greedyprune_backend": "cpu" if ops.HAS_C else "reference",
            # Other work on the machine skews timings (a 2-thread op waits for its second thread).
            "load_average_at_start": os.getloadavg()[0]}


def results_table(rows: list[dict]) -> list[str]:
    lines = ["| op | case | provider | median ms | min ms | x greedyprune time | calls timed |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['case']} | {r['provider']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} "
              f"| {r['ratio']:.2f} | {r['calls']} |" for r in rows]
    return lines


def targets_table(targets: list[dict]) -> list[str]:
    lines = ["| target | measured | required | |", "|---|---:|---:|---|"]
    lines += [f"| {t['target']} | {t['speedup']:.2f}x | {t['required']:g}x | {'met' if t['met'] else 'NOT MET'} |"
              for t in targets]
    return lines


def results_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# greedyprune CPU benchmarks",
        "",
        f"Written by `python benchmarks/run.py --write-results` (run started {report['date']});",
        "rerun it rather than edit this file.",
        "Every greedyprune op is timed against plain-PyTorch baselines doing the same work, in the same run;",
        "the baselines are checked against greedyprune's result before timing (`benchmarks/cases.py`).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores available",
        f"- torch {m['torch']}, {m['threads']} threads; greedyprune backend: {m['greedyprune_backend']}",
        f"- 1-minute load average at the start and end of the run: {m['load_average_at_start']:.2f}, "
        f"{m['load_average_at_end']:.2f} (other work on the machine slows the timings)",
        "",
        "## Sizes",
        "",
        *[f"- {name}: {sizes}" for name, sizes in report["sizes"].items()],
        "",
        "## Results",
        "",
        "Median time per call (blocked_autorange, at least "
        f"{MIN_RUN_TIME_S[False]:g} s per provider; single-run providers: one call). "
        "`x greedyprune time` = provider time / the case's greedyprune time (> 1: greedyprune is faster).",
        "",
        *results_table(report["results"]),
        "",
        "## Targets",
        "",
        *targets_table(report["targets"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few layers, N = 256): seconds")
    parser.add_argument("--case", action="append", choices=list(cases.CASES), help="run only this case (repeatable)")
    parser.add_argument("--out", type=Path,
                        help="JSON output (default: benchmarks/results.json, or results_quick.json with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--write-results", action="store_true",
                        help="rewrite benchmarks/RESULTS.md (full run of every case only)")
    args = parser.parse_args()
    if args.write_results and (args.quick or args.case):
        parser.error("--write-results needs the full sizes and every case (no --quick, no --case)")

    if args.threads:
        torch.set_num_threads(args.threads)
    case_names = args.case or list(cases.CASES)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    host = machine()
    rows = measure(case_names, args.quick)
    host["load_average_at_end"] = os.getloadavg()[0]
    report = {
        "date": started,
        "quick": args.quick,
        "machine": host,
        "sizes": {name: cases.prepared_inputs(name, args.quick).sizes for name in case_names},
        "results": rows,
        # The targets are defined at full size; quick sizes fit in cache and say nothing about them.
        "targets": [] if args.quick else evaluate_targets(rows),
    }
    verdict = (["Quick sizes: the targets are judged at full size (python benchmarks/run.py; benchmarks/RESULTS.md)."]
               if args.quick else targets_table(report["targets"]))
    print("\n".join(results_table(rows) + [""] + verdict))
    out = args.out or HERE / ("results_quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    if args.write_results:
        RESULTS_MD.write_text(results_markdown(report) + _driver_sections())
        print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
