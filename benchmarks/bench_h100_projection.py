"""A projection, not a measurement: ResNet-50 hybrid pruning of every unit with 1,024 calibration
images on one H100, from the run's FLOPs and this CPU's candidate-evaluation efficiency.

The FLOPs: greedy/cost.py counts the image forwards of each unit's phases (the Gram pass and BN
re-estimation over 1,024 Gram images, the discrepancy probes, global imitation's exact candidates
and Taylor steps on step_batch images, candidates weighted by their suffix's FLOP share), times
the FLOPs of one 224x224 image forward (torch.utils.flop_counter). The rate: the H100's dense BF16
and TF32 peaks (989 and 495 TFLOP/s, SXM) scaled by the FLOP rate of candidate evaluation relative
to plain inference that this CPU measures (bench_imagenet_scale.candidate_throughput, K x B gated
candidates through ResNet-50's first unit). Plain inference is assumed to run at the peak, so the
times are lower bounds. The moonshot is <= 10 minutes; settings that would meet it are projected
too, and their quality cost is measured on the CPU (digits cnn, one-shot).
"""
from __future__ import annotations

import copy

import torch

from bench_imagenet_scale import candidate_throughput
from bench_vs_torch_pruning import test_kl
from greedyprune.greedy import PruneConfig, prune_model
from greedyprune.greedy.pipeline import RunSpec
from greedyprune.greedy.cost import PHASES, suffix_shares, unit_cost
from greedyprune.greedy.surgery import UnitGraph
from greedyprune.harness.data import load_dataset
from greedyprune.harness.measure import count_flops
from greedyprune.harness.model_source import resolve_model
from greedyprune.models import build_model
from harness import Benchmark

PEAKS = {"bf16": 989e12, "tf32": 495e12}  # H100 SXM dense tensor-core FLOP/s
CALIB_IMAGES = GRAM_IMAGES = 1024
MOONSHOT_S = 600
WIDTH = 0.5
# (label, config changes): the paper's rule, then smaller exact phases and step batches
SETTINGS = [("paper: exact until 25, step batch 64", {}),
            ("exact until 10", {"exact_until": 10}),
            ("exact until 5", {"exact_until": 5}),
            ("exact until 5, step batch 32", {"exact_until": 5, "step_batch": 32}),
            ("exact until 0 (Taylor only)", {"exact_until": 0})]
QUALITY_CALIB = 256


def projection(model, example, settings, candidate_ratio: float) -> list[dict]:
    graph = UnitGraph(copy.deepcopy(model), example.repeat(2, 1, 1, 1))
    shares = suffix_shares(model, example, graph.units)
    per_image = count_flops(model, example)
    rows = []
    for label, change in settings:
        config = PruneConfig(method="hybrid", width_ratio=WIDTH, **change)
        costs = [unit_cost(config, u, calib_images=CALIB_IMAGES, gram_images=GRAM_IMAGES, suffix_share=shares[u.name])
                 for u in graph.units if u.kind in config.groups]
        phases = {p: sum(c.forwards[p] for c in costs) * per_image for p in PHASES}
        candidates = phases["exact"] + phases["taylor"]
        rows.append({"setting": label, "units": len(costs), "flops": phases,
                     "seconds": {name: (sum(phases.values()) - candidates) / peak + candidates / (peak * candidate_ratio)
                                 for name, peak in PEAKS.items()}})
    return rows


def quality(settings, quick: bool) -> list[dict]:
    """One-shot test accuracy and KL of the digits cnn pruned by hybrid at WIDTH under each setting."""
    dense = resolve_model("cnn", "digits", without_weights="train", epochs=RunSpec().train_epochs, progress=False).eval()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    calib = torch.stack([train[i][0] for i in range(QUALITY_CALIB)])
    test_x = torch.stack([test[i][0] for i in range(len(test))])
    test_y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    with torch.no_grad():
        dense_logits = dense(test_x)
    rows = []
    for label, change in settings[:2] if quick else settings:
        model = copy.deepcopy(dense)
        prune_model(model, calib, method="hybrid", width_ratio=WIDTH, fold="none", progress=False, **change)
        with torch.no_grad():
            accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
        rows.append({"setting": label, "accuracy": accuracy, "test_kl": test_kl(model, dense_logits, test_x)})
    return rows


def measure(quick: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000, image_size=224).eval()
    example = torch.randn(1, 3, 224, 224)
    k, b = (2, 8) if quick else (4, 16)
    throughput = candidate_throughput(model, torch.device("cpu"), k, b)
    return {"candidate_ratio": throughput["flop_rate_ratio"], "throughput": throughput,
            "flops_per_image": count_flops(model, example), "width": WIDTH,
            "projection": projection(model, example, SETTINGS, throughput["flop_rate_ratio"]),
            "quality": quality(SETTINGS, quick)}


def notes(section: dict) -> list[str]:
    if "extra" not in section:
        return []
    r = section["extra"]["result"]
    t = r["throughput"]
    lines = [f"**A projection** (no H100 ran it). ResNet-50 (random weights, 224x224, "
             f"{r['flops_per_image'] / 1e9:.2f} GFLOPs per image forward), `--method hybrid --width {r['width']}` over "
             f"every unit, {CALIB_IMAGES:,} calibration and Gram images. Candidate evaluation on this CPU ran at "
             f"{r['candidate_ratio']:.2f}x the FLOP rate of plain inference ({t['k']} x {t['b']} candidates through "
             f"{t['unit']}); the H100 times assume plain inference at the dense peak, so they are lower bounds.", "",
             "| setting | units | TFLOPs: Gram + BN + probes | TFLOPs: exact candidates | TFLOPs: Taylor | "
             "H100 BF16 (989 TFLOP/s) | H100 TF32 (495 TFLOP/s) | <= 10 min in BF16 if inference reaches |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["projection"]:
        f, s = row["flops"], row["seconds"]
        lines.append(f"| {row['setting']} | {row['units']} | {(f['gram'] + f['bn'] + f['measure']) / 1e12:,.1f} | "
                     f"{f['exact'] / 1e12:,.1f} | {f['taylor'] / 1e12:,.1f} | {s['bf16'] / 60:,.1f} min | "
                     f"{s['tf32'] / 60:,.1f} min | {100 * s['bf16'] / MOONSHOT_S:.0f}% of the peak |")
    lines += ["", f"Quality cost of those settings, measured on this CPU: the digits cnn, `hybrid --width {r['width']}`, "
                  f"{QUALITY_CALIB} calibration images, one-shot (plain removal, BN re-estimated); one run, model "
                  "seed 0, so differences of a few thousandths are within the noise of a single seed.", "",
              "| setting | test accuracy one-shot | test KL from dense |", "|---|---:|---:|"]
    lines += [f"| {q['setting']} | {q['accuracy']:.3f} | {q['test_kl']:.4f} |" for q in r["quality"]]
    return lines


BENCHMARK = Benchmark(
    name="h100_projection",
    title="Projection: ResNet-50 hybrid on one H100 (1,024 calibration images)",
    about="How long the paper's hybrid rule would take on one H100, projected from the run's FLOPs (greedy/cost.py) "
          "and the candidate-evaluation efficiency this CPU measures, with the settings that would meet the "
          "10-minute moonshot and their one-shot quality cost measured on the digits cnn. "
          "`python benchmarks/run.py h100_projection`.",
    extra=measure,
    notes=notes,
)
