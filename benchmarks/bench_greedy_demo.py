"""The "greedy_demo" benchmark: where the time of `greedyprune demo` (the README's main job) goes,
unit by unit. The pipeline times its own parts (report.json); this benchmark runs it and
renders that report: an `extra`-only driver benchmark (harness.py says how those plug in).

Quick: local imitation only, 64 calibration samples, Grams over 256 samples, no fine-tuning.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from greedyprune import cli
from harness import Benchmark

QUICK_ARGS = ["--method", "local", "--calib-samples", "64", "--gram-samples", "256", "--finetune-epochs", "0"]


def demo_report(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        if cli.main(["demo", "--out", out, "--no-progress"] + (QUICK_ARGS if quick else [])) != 0:
            raise RuntimeError("greedyprune demo failed")
        report = json.loads((Path(out) / "report.json").read_text())
    report["demo_seconds"] = time.perf_counter() - start
    return report


def notes(section: dict) -> list[str]:
    if "extra" not in section:
        return []
    r = section["extra"]["result"]
    rows = []
    for u in r["units"]:
        t, widths = u["seconds"], u["candidates"]
        rows.append(f"| {u['unit']} | {u['channels']} -> {u['kept']} "
                    f"| {' / '.join(str(widths[m]['width']) for m in ('local', 'global') if m in widths)} "
                    f"| {u['method']} | {t['gram']:.2f} | {t['select']:.2f} | {t['evaluate']:.1f} | {t['taylor']:.1f} "
                    f"| {t.get('export', 0.0):.1f} "
                    f"| {t['total']:.1f} |")
    b, a = r["before"], r["after_prune"]
    tuned = f" ({r['after_finetune']['accuracy']:.4f} after fine-tuning)" if "after_finetune" in r else ""
    return [
        f"`greedyprune demo`: the PQI paper's CNN trained on the digits (cached), method {r['method']}, "
        f"tol {r['config']['tol']} ({r['config']['discrepancy']}) per unit, {r['calib_samples']} calibration samples. "
        f"Pruning took {r['prune_seconds']:.1f} s; the whole demo {r['demo_seconds']:.0f} s.",
        "",
        "| unit | channels | local / global width | chosen | Gram s | greedy_local s | candidate evaluation s "
        "| Taylor s | BN re-estimation + exported discrepancy s | total s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Result: {b['params']:,} -> {a['params']:,} parameters, {b['flops'] / 1e6:.2f} -> {a['flops'] / 1e6:.2f} "
        f"MFLOPs, test accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}{tuned}, CPU latency batch 1 "
        f"{b['latency_ms_batch1']:.2f} -> {a['latency_ms_batch1']:.2f} ms, batch 64 {b['latency_ms_batch64']:.2f} -> "
        f"{a['latency_ms_batch64']:.2f} ms.",
    ]


BENCHMARK = Benchmark(
    name="greedy_demo",
    title="Greedy pruning, time per unit (`greedyprune demo`)",
    about="The README's main job, end to end: Algorithm 2 (local and global imitation, the narrower wins) on "
          "every unit; per unit the time of the Gram, the greedy_local path, the candidate evaluation of global "
          "imitation and its Taylor screening, as the pipeline reports them.",
    extra=demo_report,
    notes=notes,
)
