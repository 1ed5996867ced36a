"""The one benchmark harness: cases of named providers timed in the same run after a check
that they agree, targets stated the way they are required, results in benchmarks/results.json.

Case       one piece of work at one size: named providers (greedyprune and the baselines
           doing the same work), the `subject` every provider's time is divided by, the
           inputs (full or quick sizes), a check that the providers agree.
Target     a required time ratio of two providers of a case ("<= 1.5x a sum", ">= 30x
           faster than the torch loop"), judged from the stored results.
Benchmark  a named set of cases and targets (and/or untimed results, `extra`); its results
           are one section of results.json and of RESULTS.md (render.py).

How a case is measured (measure_case):
 1. inputs = make_inputs(quick); every provider is called once and timed; `check` gets the
    outputs, raises if the providers disagree, and may return facts (a JSON-able dict) that
    the benchmark's notes print.
 2. Providers named in `calls` are timed that many times, in interleaved rounds so that a
    change of load hits them alike, after `warmup` untimed calls; a provider timed once keeps
    its first call. The others: torch.utils.benchmark's blocked_autorange (which also
    synchronises CUDA).
 3. With loaded=True, step 2 runs again beside a busy process (one thread of torch matmuls,
    busy_neighbour) and is stored as the "loaded" column next to the "quiet" one.
 Each timing keeps its date and the 1-minute load average read before and after it.

Adding a benchmark: a module in benchmarks/ defines
    BENCHMARK = Benchmark(name, title, about, cases=[Case(...)], targets=[Target(...)])
and is listed in run.py's BENCHMARK_MODULES (a module with several defines BENCHMARKS = [...]); `python benchmarks/run.py NAME [--quick]` runs
it, `--write-results` regenerates RESULTS.md. Per-op timing with pytest-benchmark: the
test_bench_*.py files parametrize over cases.provider_names(group) (the "ops" cases) and
time each provider through conftest's `bench` fixture.

A driver benchmark whose results are not provider timings (accuracies after pruning, a
per-unit time report) plugs in with `extra` and `notes`, e.g. for bench_vs_torch_pruning.py:
    BENCHMARK = Benchmark(
        name="vs_torch_pruning", title="Against Torch-Pruning", about="...",
        extra=lambda quick: run(parser().parse_args(QUICK_ARGS if quick else [])),
        notes=lambda section: table(section["extra"]["result"]).splitlines())
`extra` runs once per run (not with --case) and returns a JSON-able dict, stored with its
date, machine and load; `notes` turns the stored section into markdown lines (its
section["extra"]["result"], and section["cases"] when the benchmark also has timed cases).
bench_greedy_demo.py is such a benchmark.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.utils.benchmark as torch_benchmark

from greedyprune import ops

MIN_RUN_TIME_S = {False: 2.0, True: 0.2}  # blocked_autorange time per provider, keyed by quick


@dataclass(frozen=True)
class Case:
    name: str  # unique over all benchmarks
    title: str  # what is compared, one line
    subject: str  # the provider the others' times are divided by
    make_inputs: Callable[[bool], Any]  # quick -> inputs, with a `sizes` text
    providers: dict[str, Callable[[Any], Any]]
    check: Callable[[Any, dict[str, Any]], dict | None]  # (inputs, first outputs) -> facts; raises on disagreement
    calls: dict[str, int] = field(default_factory=dict)  # timed this many times, not by autorange
    warmup: int = 0  # untimed calls before the counted ones (after the first call)
    group: str | None = None  # pytest-benchmark group (test_bench_*.py)
    final_facts: Callable[[Any], dict] | None = None  # facts read from the inputs after the timing


@dataclass(frozen=True)
class Target:
    """time(provider) <= at_most x time(reference), or time(reference) >= faster x time(provider);
    under_load: the provider's time from the loaded column (the reference's stays quiet)."""

    case: str
    provider: str
    reference: str
    reference_label: str  # the reference as the requirement names it: "a sum", "the torch loop"
    at_most: float | None = None
    faster: float | None = None
    under_load: bool = False

    def __post_init__(self):
        if (self.at_most is None) == (self.faster is None):
            raise ValueError(f"Target {self.case}/{self.provider}: give one of at_most and faster")

    def judge(self, record: dict | None) -> tuple[str, str]:
        """(the result as the requirement states it, e.g. "greedyprune: 2.4x a sum, target <= 1.5x:
        MISSED"; the date and load it was measured at)."""
        who = f"{self.provider} under load" if self.under_load else self.provider
        providers = record["providers"] if record else {}
        timing = providers.get(self.provider, {}).get("loaded" if self.under_load else "quiet")
        reference = providers.get(self.reference, {}).get("quiet")
        if timing is None or reference is None:
            required = (f"<= {self.at_most:g}x {self.reference_label}" if self.at_most is not None
                        else f">= {self.faster:g}x faster than {self.reference_label}")
            return f"{who}: target {required}: not measured" + (" (run.py --loaded)" if self.under_load else ""), ""
        ratio = timing["median_ms"] / reference["median_ms"]
        if self.at_most is not None:
            met = ratio <= self.at_most
            text = f"{_beside(ratio, self.at_most)}x {self.reference_label}, target <= {self.at_most:g}x"
        else:
            met = 1 / ratio >= self.faster
            text = f"{_beside(1 / ratio, self.faster)}x faster than {self.reference_label}, target >= {self.faster:g}x"
        verdict = f"{who}: {text}: {'met' if met else 'MISSED'}"
        return verdict, when_text(timing["date"], timing["load"] + reference["load"])


def _beside(value: float, bound: float) -> str:
    """ratio_text, with a third digit where two would print the bound itself ("1.50x, target <= 1.5x")."""
    text = ratio_text(value)
    return f"{value:.4g}" if float(text) == bound and value != bound else text


@dataclass(frozen=True)
class Benchmark:
    name: str  # key in results.json, section of RESULTS.md, argument of run.py
    title: str
    about: str  # markdown: what is compared with which baselines
    cases: list[Case] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    extra: Callable[[bool], dict] | None = None  # quick -> untimed results
    notes: Callable[[dict], list[str]] | None = None  # section -> markdown lines under the tables
    unavailable: str | None = None  # why it cannot run on this machine (e.g. no CUDA device)


def ratio_text(ratio: float) -> str:
    return f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"


def quiet_medians(record: dict) -> dict[str, float]:
    """provider -> its quiet median in ms, from a stored case record (what notes compute with)."""
    return {name: p["quiet"]["median_ms"] for name, p in record["providers"].items()}


def when_text(date: str, loads: list[float]) -> str:
    """"2026-12-01, load 1.9-2.3": the day and the range of the load averages read."""
    low, high = f"{min(loads):.1f}", f"{max(loads):.1f}"
    return f"{date[:10]}, load {low if low == high else f'{low}-{high}'}"


# ------------------------------------------------------------------ measuring


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def load_average() -> float:
    return os.getloadavg()[0]


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    host = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "greedyprune_backend": "cpu" if ops.HAS_C else "reference"}
    if torch.cuda.is_available():
        host["gpu"] = torch.cuda.get_device_name()
    return host


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timing(seconds: list[float], load_before: float, date: str) -> dict:
    return {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds), "calls": len(seconds),
            "date": date, "load": [load_before, load_average()]}


def _autorange(fn: Callable[[], Any], min_run_time: float) -> dict:
    date, load = now(), load_average()
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    timing = _timing(m.times, load, date)
    timing["calls"] = len(m.times) * m.number_per_run  # m.times are per-call means of blocks
    return timing


def _rounds(fns: dict[str, Callable[[], Any]], calls: dict[str, int], warmup: int) -> dict[str, dict]:
    """calls[name] timed calls of each fn, spread evenly over interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _synchronize()
    date, load = now(), load_average()
    rounds = min(calls.values())
    seconds = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls[name] * (r + 1) // rounds - calls[name] * r // rounds):
                start = time.perf_counter()
                fn()
                _synchronize()
                seconds[name].append(time.perf_counter() - start)
    return {name: _timing(s, load, date) for name, s in seconds.items()}


def first_calls(case: Case, inputs) -> tuple[dict[str, Any], dict[str, dict]]:
    """Every provider's output and the timing of that first call."""
    outputs, timings = {}, {}
    for name, fn in case.providers.items():
        date, load = now(), load_average()
        start = time.perf_counter()
        outputs[name] = fn(inputs)
        _synchronize()
        timings[name] = _timing([time.perf_counter() - start], load, date)
    return outputs, timings


def timed_calls(case: Case, inputs, quick: bool, first: dict[str, dict] | None = None) -> dict[str, dict]:
    """Each provider's timing (first: timings of the first calls, kept for providers timed once)."""
    bound = {name: functools.partial(fn, inputs) for name, fn in case.providers.items()}
    timings = {name: _autorange(fn, MIN_RUN_TIME_S[quick]) for name, fn in bound.items() if name not in case.calls}
    for name in [name for name, n in case.calls.items() if n == 1]:
        timings[name] = first[name] if first else _rounds({name: bound[name]}, {name: 1}, 0)[name]
    repeated = {name: n for name, n in case.calls.items() if n > 1}
    if repeated:
        timings.update(_rounds({name: bound[name] for name in repeated}, repeated, case.warmup))
    return {name: timings[name] for name in case.providers}


BUSY_LOOP = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
print("ready", flush=True)
while True:
    a @ a
"""


@contextlib.contextmanager
def busy_neighbour():
    """Another process doing single-thread torch work for as long as the block runs."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the busy process did not start")
        yield
    finally:
        process.kill()
        process.wait()


def measure_case(case: Case, quick: bool, loaded: bool) -> dict:
    """The case's record for results.json (see the module docstring for the steps)."""
    date, load = now(), load_average()
    inputs = case.make_inputs(quick)
    outputs, first = first_calls(case, inputs)
    facts = case.check(inputs, outputs) or {}
    del outputs
    providers = {name: {"quiet": t} for name, t in timed_calls(case, inputs, quick, first).items()}
    if loaded:
        with busy_neighbour():
            for name, t in timed_calls(case, inputs, quick).items():
                providers[name]["loaded"] = t
    if case.final_facts:
        facts |= case.final_facts(inputs)
    return {"sizes": inputs.sizes, "subject": case.subject, "quick": quick, "date": date, "machine": machine(),
            "load": [load, load_average()], "facts": facts, "providers": providers}


def measure_extra(benchmark: Benchmark, quick: bool) -> dict:
    date, load = now(), load_average()
    result = benchmark.extra(quick)
    return {"quick": quick, "date": date, "machine": machine(), "load": [load, load_average()], "result": result}


_checked: dict[tuple[str, bool], Any] = {}


def checked_inputs(case: Case, quick: bool = False):
    """The case's inputs after one untimed run of the check (cached per process): pytest-benchmark's entry."""
    key = (case.name, quick)
    if key not in _checked:
        inputs = case.make_inputs(quick)
        case.check(inputs, first_calls(case, inputs)[0])
        _checked[key] = inputs
    return _checked[key]
