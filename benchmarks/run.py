"""Run the benchmarks of the harness (harness.py), store their results, regenerate RESULTS.md.

    python benchmarks/run.py                      # every benchmark, full sizes -> benchmarks/results.json
    python benchmarks/run.py ops pqi_report       # only these benchmarks
    python benchmarks/run.py ops --case greedy_local   # only this case (its record replaces the stored one)
    python benchmarks/run.py --loaded ...         # also time beside a busy process (the "loaded" column)
    python benchmarks/run.py --write-results ...  # ... then regenerate benchmarks/RESULTS.md from results.json
    python benchmarks/run.py --render-only        # regenerate RESULTS.md only, measuring nothing
    python benchmarks/run.py --quick ...          # small sizes, seconds: results_quick.json, never RESULTS.md

A run replaces the stored section of every benchmark it runs (with --case: those cases' records).
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from greedyprune.files import write_json
from harness import Benchmark, measure_case, measure_extra
from render import results_markdown, section_lines

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
QUICK_RESULTS_JSON = HERE / "results_quick.json"
RESULTS_MD = HERE / "RESULTS.md"
# Each module defines BENCHMARK (or a list, BENCHMARKS); RESULTS.md lists them in this order.
BENCHMARK_MODULES = ["cases", "bench_global_imitation", "bench_greedy_demo", "bench_imagenet_scale", "bench_channel_groups",
                     "bench_h100_projection",
                     "bench_popup_search", "bench_pqi_report", "bench_vs_torch_pruning", "bench_paper_claims", "gpu_bench"]


def benchmarks() -> dict[str, Benchmark]:
    modules = [importlib.import_module(name) for name in BENCHMARK_MODULES]
    found = [b for m in modules for b in getattr(m, "BENCHMARKS", None) or [m.BENCHMARK]]
    return {b.name: b for b in found}


def run(benchmark: Benchmark, case_names: set[str] | None, quick: bool, loaded: bool) -> dict:
    """The benchmark's section: a record per case run, and the extra results when it has them."""
    section = {"cases": {}}
    chosen = [case for case in benchmark.cases if case_names is None or case.name in case_names]
    progress = tqdm(chosen, desc=benchmark.name, unit="case", disable=not chosen)
    for case in progress:
        progress.set_postfix_str(case.name)
        section["cases"][case.name] = measure_case(case, quick, loaded)
    if benchmark.extra and case_names is None:
        section["extra"] = measure_extra(benchmark, quick)
    return section


def main() -> None:
    known = benchmarks()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(known)}")
    parser.add_argument("--case", action="append", help="run only this case of the named benchmarks (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds; results_quick.json")
    parser.add_argument("--loaded", action="store_true", help="also time every provider beside a busy process")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--write-results", action="store_true", help="regenerate benchmarks/RESULTS.md afterwards")
    parser.add_argument("--render-only", action="store_true", help="regenerate RESULTS.md without measuring")
    args = parser.parse_args()
    if args.quick and (args.write_results or args.render_only):
        parser.error("RESULTS.md holds full sizes only: no --quick with --write-results or --render-only")
    if unknown := set(args.names) - set(known):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in args.names or known]
    if args.case:
        cases = {case.name for b in chosen for case in b.cases}
        if unknown := set(args.case) - cases:
            parser.error(f"no case {sorted(unknown)} in {[b.name for b in chosen]}; cases: {sorted(cases)}")
        chosen = [b for b in chosen if any(case.name in args.case for case in b.cases)]
    if args.threads:
        torch.set_num_threads(args.threads)

    path = QUICK_RESULTS_JSON if args.quick else RESULTS_JSON
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.render_only:
        for benchmark in chosen:
            if benchmark.unavailable:
                print(f"{benchmark.name}: skipped, {benchmark.unavailable}")
                continue
            section = run(benchmark, set(args.case) if args.case else None, args.quick, args.loaded)
            if args.case and benchmark.name in results:
                results[benchmark.name]["cases"].update(section["cases"])
            else:
                results[benchmark.name] = section
            # Targets are set at full size; quick sizes fit in cache and say nothing about them.
            print("\n".join(section_lines(benchmark, results[benchmark.name], targets=not args.quick)))
            write_json(path, results)
            print(f"wrote {path}")
    if args.write_results or args.render_only:
        RESULTS_MD.write_text(results_markdown(list(known.values()), results))
        print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
