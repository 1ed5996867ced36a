"""greedyprune against what users pick instead: Torch-Pruning's importances, at equal per-unit widths.

For each model, width and seed: greedy local / global / hybrid choose the channels of every unit
(`select_channels`, gates exported with each --fold), and Torch-Pruning's MetaPruner removes the
same number of channels from the same groups with L1 / L2 magnitude, Taylor and random importance.
Every pruned model is measured right after pruning, after BN statistics are re-estimated on the
calibration images, and after the same fine-tuning (training.finetune, same seed and batches).
The seed draws the calibration images, the fine-tuning order and the random importance.

    python benchmarks/bench_vs_torch_pruning.py --model cnn --widths 0.25 0.5 --seeds 0 1 2
    python benchmarks/bench_vs_torch_pruning.py --model resnet20 [--data /data/cifar-10-batches-py]

Without --data, resnet20 runs on the bundled digits upsampled to 32x32. Plans are cached in
--cache (re-runs only fine-tune). In the harness (`python benchmarks/run.py vs_torch_pruning
--write-results`) both rows run with the defaults below and their tables go to RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch.utils.data import TensorDataset

from greedyprune.harness.data import load_dataset, make_loader
from greedyprune.files import write_json
from greedyprune.greedy import apply_plan, select_channels
from greedyprune.harness.measure import count_flops, count_params
from greedyprune.models import build_model
from greedyprune.greedy.surgery import FOLDS, UnitGraph
from greedyprune.harness.model_source import pretrained, resolve_model
from greedyprune.harness.training import evaluate, finetune, recalibrate_batchnorm, train
from harness import Benchmark

# How units are chosen one after another. "default": PruneConfig's defaults (after each unit its
# gates are dropped and BN statistics re-estimated; exported plainly). "gated": each unit sees the
# earlier ones with their gates folded and the original BN statistics; exported with each --fold.
SEQUENCES = {"default": {}, "gated": {"fold": "consumer", "recalibrate_bn": False}}

TP_IMPORTANCES = {
    "tp-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "tp-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "tp-taylor": lambda: tp.importance.GroupTaylorImportance(),
    "tp-random": lambda: tp.importance.RandomImportance(),
}


def digits_upsampled(split: str, size: int = 32) -> TensorDataset:
    x, y = load_dataset("digits", split).tensors
    return TensorDataset(F.interpolate(x, size=size, mode="bilinear", align_corners=False), y)


def setup(model_name: str, data: str | None, progress: bool):
    """(trained model, train set, test set) for a benchmark row."""
    if model_name == "cnn" or data is not None:
        source = data or "digits"
        return (resolve_model(model_name, source, without_weights="train", epochs=15, progress=progress).eval(),
                load_dataset(source, "train"), load_dataset(source, "test"))
    train_set, test_set = digits_upsampled("train"), digits_upsampled("test")

    def build():
        torch.manual_seed(0)
        return build_model(model_name, num_classes=10, in_channels=1, image_size=32)

    def fit(model):
        train(model, make_loader(train_set, 64, shuffle=True, seed=0), epochs=15, lr=0.05, progress=progress,
              desc=f"train {model_name}")

    return pretrained(f"{model_name}-digits32-e15-lr0.05-s0", build, fit).eval(), train_set, test_set


def calibration(train_set, seed: int, samples: int):
    """The demo's data path: one shuffled batch of `samples` images (and their labels)."""
    return next(iter(make_loader(train_set, samples, shuffle=True, seed=seed + 1)))


def measure(model, test_loader, calib_x, train_set, seed: int, epochs: int, progress: bool) -> dict:
    example = calib_x[:1]
    row = {"params": count_params(model), "flops": count_flops(model, example),
           "pruned": evaluate(model, test_loader)["accuracy"]}
    recal = copy.deepcopy(model)
    recalibrate_batchnorm(recal, calib_x.split(64))
    row["bn"] = evaluate(recal, test_loader)["accuracy"]
    tuned = copy.deepcopy(model)
    finetune(tuned, make_loader(train_set, 64, shuffle=True, seed=seed + 3), epochs=epochs, progress=progress)
    row["finetuned"] = evaluate(tuned, test_loader)["accuracy"]
    return row


def tp_prune(model, importance: str, widths: dict[str, int], calib_x, calib_y, seed: int):
    """MetaPruner with one pruning ratio per unit producer (every other layer ignored)."""
    model = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    producers = {model.get_submodule(name): n for name, n in widths.items()}
    ignored = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m not in producers]
    ratios = {m: 1 - n / (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
              for m, n in producers.items()}
    pruner = tp.pruner.MetaPruner(model, calib_x[:2], importance=TP_IMPORTANCES[importance](),
                                  pruning_ratio_dict=ratios, ignored_layers=ignored)
    if importance == "tp-taylor":
        model.zero_grad()
        F.cross_entropy(model(calib_x), calib_y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for m, n in producers.items():
        got = m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
        if got != n:
            raise RuntimeError(f"Torch-Pruning left {got} channels where {n} were asked")
    return model


def run(args) -> dict:
    progress = not args.no_progress
    net, train_set, test_set = setup(args.model, args.data, progress)
    test_loader = make_loader(test_set, 256, shuffle=False)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, list[dict]]] = {}
    dense = None
    for width in args.widths:
        for seed in args.seeds:
            calib_x, calib_y = calibration(train_set, seed, args.calib)
            if dense is None:
                dense = {"params": count_params(net), "flops": count_flops(net, calib_x[:1]),
                         "accuracy": evaluate(net, test_loader)["accuracy"]}
            graph = UnitGraph(copy.deepcopy(net), calib_x[:2])
            widths = {u.producer: max(1, math.ceil(width * u.channels)) for u in graph.units}
            for method in args.methods:
                for sequence in args.sequences:
                    options = SEQUENCES[sequence]
                    source = args.data and Path(args.data).name or "digits"
                    path = cache / (f"{args.model}-{source}-{method}-{sequence}-w{width}-s{seed}-c{args.calib}"
                                    f"-b{args.step_batch}.json")
                    if path.is_file():
                        plan = json.loads(path.read_text())
                    else:
                        start = time.perf_counter()
                        plan = select_channels(net, calib_x, method=method, width_ratio=width, labels=calib_y,
                                               step_batch=args.step_batch, progress=progress, **options)
                        plan["meta"]["seconds"] = time.perf_counter() - start
                        write_json(path, plan)
                    got = {e["unit"].split("->")[0]: len(e["keep"]) for e in plan["units"]}
                    if got != widths:
                        raise RuntimeError(f"{method} widths {got} differ from the asked {widths}")
                    for fold in (args.folds if sequence == "gated" else ["none"]):
                        # as prune_model exports it: the default re-estimates BN on the calibration images
                        bn = calib_x.split(args.step_batch or len(calib_x)) if sequence == "default" else None
                        model = apply_plan(copy.deepcopy(net), plan, calib_x[:2], fold=fold, bn_batches=bn)
                        row = measure(model, test_loader, calib_x, train_set, seed, args.epochs, progress)
                        name = f"greedy-{method} ({sequence}, fold {fold})"
                        rows.setdefault(f"{width}", {}).setdefault(name, []).append(row)
                        print(width, seed, name, row, flush=True)
            for importance in args.tp:
                model = tp_prune(net, importance, widths, calib_x, calib_y, seed)
                row = measure(model, test_loader, calib_x, train_set, seed, args.epochs, progress)
                rows.setdefault(f"{width}", {}).setdefault(importance, []).append(row)
                print(width, seed, importance, row, flush=True)
    return {"model": args.model, "data": args.data or ("digits" if args.model == "cnn" else "digits upsampled to 32"),
            "calib": args.calib, "finetune_epochs": args.epochs, "seeds": args.seeds, "dense": dense, "rows": rows,
            "date": time.strftime("%Y-%m-%d"), "load": os.getloadavg(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def table(result: dict) -> str:
    def cell(values, digits=3):
        mean = statistics.fmean(values)
        spread = (max(values) - min(values)) / 2
        return f"{mean:.{digits}f} ± {spread:.{digits}f}"

    d = result["dense"]
    lines = [f"#### {result['model']} on {result['data']}: dense {d['params']:,} params, {d['flops'] / 1e6:.2f} MFLOPs, "
             f"accuracy {d['accuracy']:.3f}",
             "",
             f"Mean ± half the range over seeds {result['seeds']}; fine-tuning {result['finetune_epochs']} epochs "
             f"(training.finetune); {result['calib']} calibration images; measured {result['date']}, load "
             f"{result['load'][0]:.1f}, {result['threads']} threads.",
             ""]
    for width, rows in result["rows"].items():
        lines += [f"Width {float(width):.0%} per unit:", "",
                  "| method | params | MFLOPs | acc. pruned | acc. BN re-estimated | acc. fine-tuned |",
                  "|---|---:|---:|---:|---:|---:|"]
        best = max(statistics.fmean(r["finetuned"] for r in runs) for runs in rows.values())
        for name, runs in rows.items():
            ft = cell([r["finetuned"] for r in runs])
            if statistics.fmean(r["finetuned"] for r in runs) == best:
                ft = f"**{ft}**"
            lines.append(f"| {name} | {runs[0]['params']:,} | {runs[0]['flops'] / 1e6:.2f} | "
                         f"{cell([r['pruned'] for r in runs])} | {cell([r['bn'] for r in runs])} | {ft} |")
        lines.append("")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet20"])
    parser.add_argument("--data", default=None, help="a CIFAR-10 folder (resnet20); default: bundled digits")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["local", "global", "hybrid"])
    parser.add_argument("--folds", nargs="+", default=list(FOLDS), choices=FOLDS)
    parser.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    parser.add_argument("--tp", nargs="*", default=list(TP_IMPORTANCES), choices=list(TP_IMPORTANCES))
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--step-batch", type=int, default=64, help="PruneConfig.step_batch (0: one fixed batch)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache", default="runs/bench-vs-tp")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse(argv=None):
    args = parser().parse_args(argv)
    args.step_batch = args.step_batch or None
    return args


# The harness's rows (one benchmark per model, so each is stored when it ends): the default
# sequence, i.e. what prune_model hands the user. ResNet-20 is cut to fit a CPU session (one global
# imitation plan of its 9 units took 601 s and one fine-tuned row about 4 min on the 2-core CPU,
# 2026-12-01): local imitation against L1 and random at 50% width; the script's defaults run all.
HARNESS_ARGS = {"cnn": ["--model", "cnn", "--sequences", "default"],
                "resnet20": ["--model", "resnet20", "--sequences", "default", "--methods", "local", "--widths", "0.5",
                             "--tp", "tp-l1", "tp-random"]}
QUICK_ARGS = ["--widths", "0.5", "--seeds", "0", "--methods", "local", "--tp", "tp-l1", "--calib", "64",
              "--epochs", "1", "--cache", "runs/bench-vs-tp-quick"]


def benchmark(model: str) -> Benchmark:
    def rows(quick: bool) -> dict:
        return run(parse(HARNESS_ARGS[model] + ["--no-progress"] + (QUICK_ARGS if quick else [])))

    return Benchmark(
        name=f"vs_torch_pruning_{model}",
        title=f"Against Torch-Pruning ({model}): accuracy before and after the same fine-tuning",
        about="greedyprune's default output (`select_channels` with PruneConfig's defaults, exported as "
              "`prune_model` does: channels removed plainly, BN statistics re-estimated on the calibration images) "
              "against Torch-Pruning's MetaPruner with L1 / L2 magnitude, Taylor and random importance on the same "
              "units at the same per-unit widths. Every model is fine-tuned the same way (training.finetune, same "
              "seed and batches). `python benchmarks/bench_vs_torch_pruning.py --help` runs the variants (folds, "
              "gated sequence).",
        extra=rows,
        notes=lambda section: table(section["extra"]["result"]).splitlines() if "extra" in section else [],
    )


BENCHMARKS = [benchmark(model) for model in HARNESS_ARGS]


def main() -> None:
    args = parse()
    torch.set_num_threads(int(os.environ.get("GREEDYPRUNE_THREADS", torch.get_num_threads())))
    result = run(args)
    print(table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
