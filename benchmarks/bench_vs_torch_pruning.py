"""greedyprune against what users pick instead: Torch-Pruning's importances, one-shot and after the
same fine-tuning, at equal per-unit widths and at equal FLOPs.

For each model, width and seed, greedyprune's criteria (local / global / hybrid imitation, the
refit criterion, magnitude) prune a copy with `prune_model`, each exported plainly (BN statistics
re-estimated after every unit, the default before the refit) and with `reconstruct` (the
consumer refit by least squares); Torch-Pruning's MetaPruner removes the same number of
channels from the same groups with L1 / L2 magnitude, Taylor and random importance, and its
models have their BN statistics re-estimated on the same calibration images. At equal FLOPs
greedyprune's defaults (PruneConfig's, and FINETUNE_DEFAULTS, what a run that fine-tunes takes)
reach the target by bisection on the per-unit tolerance (adaptive widths) and the width-only rows
by one uniform width; Torch-Pruning ranks all groups together
(`global_pruning=True`) with its pruning ratio bisected to the same FLOPs.

Columns: parameters, FLOPs, test accuracy right after pruning, the test KL divergence from the
unpruned network, and the test accuracy after 1 and after 3 epochs of the same fine-tuning
(training.finetune: SGD, momentum 0.9, weight decay 5e-5, cosine decay from lr 0.01, the ViT's from
0.001 (--finetune-lr), same seed and batches; the 1-epoch figure is read inside the 3-epoch run; no label smoothing by default, as seed
000's recipe: --label-smoothing sets it).
The seed draws the calibration images, the fine-tuning order and the random importance. Every
row is kept in --cache (a re-run measures only what is missing).

    python benchmarks/bench_vs_torch_pruning.py --model cnn --widths 0.5 0.25 0.125 0.0625 --flops 0.5 0.25
    python benchmarks/bench_vs_torch_pruning.py --model resnet20 --rows "local + reconstruct" tp-l1 --seeds 0

Without --data, the models other than cnn run on the bundled digits upsampled to 32x32.
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
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch.utils.data import TensorDataset

from greedyprune.files import write_json
from greedyprune.greedy import FINETUNE_DEFAULTS, PruneConfig, prune_model
from greedyprune.greedy.budget import tol_for_flops, width_ratio_for_flops
from greedyprune.greedy.outputs import discrepancy
from greedyprune.greedy.commands import groups_argument
from greedyprune.greedy.surgery import UNIT_KINDS, UnitGraph
from greedyprune.harness.data import load_dataset, make_loader
from greedyprune.harness.measure import count_flops, count_params
from greedyprune.harness.model_source import pretrained, resolve_model
from greedyprune.harness.training import evaluate, finetune, recalibrate_batchnorm, train
from greedyprune.models import build_model
from harness import Benchmark

MODELS = ("cnn", "vgg11", "resnet20", "resnet56", "vit_tiny")
EXPORTS = ("none", "reconstruct")
GREEDY_METHODS = ("local", "global", "hybrid", "refit", "magnitude")
# Rows that take one question apart each (the one-shot diagnosis, see the README).
DIAGNOSIS = {
    "local + gates (consumer fold)": dict(method="local", fold="consumer"),
    "local + none, BN re-estimated once at the end": dict(method="local", fold="none", recalibrate_bn=False),
    "local + reconstruct (refit target current)": dict(method="local", fold="reconstruct", refit_target="current"),
}
TP_IMPORTANCES = {
    "tp-l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "tp-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "tp-taylor": lambda: tp.importance.GroupTaylorImportance(),
    "tp-random": lambda: tp.importance.RandomImportance(),
}


# The dense models' learning rate where 0.05 fails: the ViT diverges; VGG-11 ends at 0.653 (its
# loss spikes to 7 in the first epoch) against 0.994 at 0.01 (15 epochs, seed 0).
TRAIN_LR = {"vgg11": 0.01, "vit_tiny": 0.01}
# The fine-tuning learning rate where training.finetune's 0.01 undoes the dense training: the ViT,
# trained at 0.01 itself, loses accuracy in every row at 0.01.
FINETUNE_LR = {"vit_tiny": 0.001}


def greedy_rows(methods, exports) -> dict[str, dict]:
    rows = {f"{m} + {e}": dict(method=m, fold=e) for m in methods for e in exports}
    return {**rows, **DIAGNOSIS}


def digits_upsampled(split: str, size: int = 32) -> TensorDataset:
    x, y = load_dataset("digits", split).tensors
    return TensorDataset(F.interpolate(x, size=size, mode="bilinear", align_corners=False), y)


def setup(model_name: str, data: str | None, progress: bool):
    """(trained model, train set, test set) for a model: the zoo model trained 15 epochs (cached)."""
    if model_name == "cnn" or data is not None:
        source = data or "digits"
        return (resolve_model(model_name, source, without_weights="train", epochs=15, progress=progress).eval(),
                load_dataset(source, "train"), load_dataset(source, "test"))
    train_set, test_set = digits_upsampled("train"), digits_upsampled("test")

    def build():
        torch.manual_seed(0)
        return build_model(model_name, num_classes=10, in_channels=1, image_size=32)

    lr = TRAIN_LR.get(model_name, 0.05)

    def fit(model):
        train(model, make_loader(train_set, 64, shuffle=True, seed=0), epochs=15, lr=lr, progress=progress,
              desc=f"train {model_name}")

    return pretrained(f"{model_name}-digits32-e15-lr{lr:g}-s0", build, fit).eval(), train_set, test_set


def calibration(train_set, seed: int, samples: int):
    """One shuffled batch of `samples` images and their labels (the demo's data path)."""
    return next(iter(make_loader(train_set, samples, shuffle=True, seed=seed + 1)))


def test_kl(model, dense_logits: torch.Tensor, test_x: torch.Tensor) -> float:
    """Mean KL(dense || pruned) over the test images."""
    with torch.no_grad():
        return float(discrepancy(model.eval()(test_x).unsqueeze(0), dense_logits, "kl")[0])


def measure(model, loaders: dict, dense_logits, train_set, seed: int, epochs: int, lr: float, label_smoothing: float,
            progress: bool) -> dict:
    """The row's columns; fine-tuning runs on a copy."""
    test_x = loaders["test_x"]
    row = {"params": count_params(model), "flops": count_flops(model, test_x[:1]),
           "pruned": evaluate(model, loaders["test"])["accuracy"], "kl": test_kl(model, dense_logits, test_x)}
    tuned = copy.deepcopy(model)
    train_loader = make_loader(train_set, 64, shuffle=True, seed=seed + 3)
    after_first = {}

    def first_epoch(net, step):
        if step == len(train_loader) - 1:
            after_first["accuracy"] = evaluate(net, loaders["test"])["accuracy"]

    finetune(tuned, train_loader, epochs=epochs, lr=lr, label_smoothing=label_smoothing, progress=progress,
             after_step=first_epoch)
    row["epoch1"] = after_first["accuracy"]
    row[f"epoch{epochs}"] = evaluate(tuned, loaders["test"])["accuracy"]
    return row


def prune_greedy(net, options: dict, calib_x, calib_y, groups: tuple[str, ...], *, width=None, flops=None,
                 flops_search="epsilon"):
    """A pruned copy (units of the kinds in `groups`); at a FLOP target the tolerance (epsilon) or the
    uniform width is bisected first."""
    config = PruneConfig(**{"width_ratio": width, "groups": groups, **options})
    if flops is not None and flops_search == "epsilon":
        config = replace(config, tol=tol_for_flops(net, calib_x, flops, config, labels=calib_y))
    elif flops is not None:
        config = replace(config, width_ratio=width_ratio_for_flops(net, calib_x[:1], flops, config=config))
    model = copy.deepcopy(net)
    prune_model(model, calib_x, config, labels=calib_y, progress=False)
    if not config.recalibrate_bn:
        recalibrate_batchnorm(model, calib_x.split(64))
    return model


def tp_prune(net, importance: str, calib_x, calib_y, seed: int, groups: tuple[str, ...], *,
             widths: dict[str, int] | None = None, ratio: float | None = None):
    """MetaPruner on the producers of the units of the kinds in `groups`: one ratio per producer
    (`widths`: channels, or heads for a heads unit's qkv), or all of them ranked together at `ratio`
    (global_pruning); every other layer ignored; BN re-estimated after. Heads go through
    Torch-Pruning's num_heads / prune_num_heads (whole heads, head_dim kept)."""
    model = copy.deepcopy(net).eval()
    torch.manual_seed(seed)
    units = [u for u in UnitGraph(model, calib_x[:2]).units if u.kind in groups]
    names = widths or {u.producer: None for u in units}
    producers = {model.get_submodule(name): n for name, n in names.items()}
    heads = {model.get_submodule(u.producer): u for u in units if u.kind == "heads"}
    # a residual stream's other producers are in its group (pruned with it), not ignored
    tied = {model.get_submodule(name) for u in units for name in u.co_producers}
    ignored = [m for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m not in producers and m not in tied]
    # groups left out of the ratios are not pruned (MetaPruner's default ratio is 0.5)
    options = dict(importance=TP_IMPORTANCES[importance](), ignored_layers=ignored, pruning_ratio=0.0)
    if heads:
        options.update(num_heads={m: u.channels for m, u in heads.items()}, prune_num_heads=True, prune_head_dims=False)
    if widths is not None:
        options["pruning_ratio_dict"] = {m: 1 - n / (heads[m].channels if m in heads else _out(m))
                                         for m, n in producers.items()}
        options["head_pruning_ratio_dict"] = {m: options["pruning_ratio_dict"][m] for m in heads}
    else:
        options.update(global_pruning=True, pruning_ratio=ratio, head_pruning_ratio=ratio)
    pruner = tp.pruner.MetaPruner(model, calib_x[:2], **options)
    if importance == "tp-taylor":
        model.zero_grad()
        F.cross_entropy(model(calib_x), calib_y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for m, unit in heads.items():  # Torch-Pruning leaves the head count to the user
        model.get_submodule(unit.heads.attention).num_heads = pruner.num_heads[m]
    kept = {m: pruner.num_heads[m] if m in heads else _out(m) for m in producers}
    if widths is not None and any(kept[m] != n for m, n in producers.items()):
        raise RuntimeError("Torch-Pruning did not keep the asked widths")
    recalibrate_batchnorm(model, calib_x.split(64))
    return model


def tp_global_at_flops(net, importance: str, calib_x, calib_y, seed: int, groups: tuple[str, ...], target: float,
                       iterations: int = 10):
    """Torch-Pruning's global ranking with its pruning ratio bisected to keep <= target x the FLOPs."""
    full = count_flops(net, calib_x[:1])
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        model = tp_prune(net, importance, calib_x, calib_y, seed, groups, ratio=mid)
        if count_flops(model, calib_x[:1]) <= target * full:
            best, hi = model, mid
        else:
            lo = mid
    return best if best is not None else tp_prune(net, importance, calib_x, calib_y, seed, groups, ratio=hi)


def _out(m) -> int:
    return m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features


def run(args) -> dict:
    progress = not args.no_progress
    net, train_set, test_set = setup(args.model, args.data, progress)
    test_x, test_y = next(iter(make_loader(test_set, len(test_set), shuffle=False)))
    loaders = {"test": make_loader(test_set, 256, shuffle=False), "test_x": test_x}
    with torch.no_grad():
        dense_logits = net(test_x)
    dense = {"params": count_params(net), "flops": count_flops(net, test_x[:1]),
             "accuracy": evaluate(net, loaders["test"])["accuracy"]}
    finetune_lr = args.finetune_lr or FINETUNE_LR.get(args.model, 0.01)
    cache_path = Path(args.cache) / (f"{args.model}-c{args.calib}-e{args.epochs}-lr{finetune_lr:g}-"
                                     f"ls{args.label_smoothing:g}-{'+'.join(args.groups)}.json")
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    greedy = greedy_rows(args.methods, args.exports)
    chosen = args.rows or list(greedy) + list(TP_IMPORTANCES)
    rows: dict[str, dict[str, list[dict]]] = {}

    def record(setting: str, name: str, seed: int, make) -> None:
        key = f"{setting}|{name}|{seed}"
        if key not in cache:
            start = time.perf_counter()
            model = make()
            seconds = time.perf_counter() - start
            cache[key] = {**measure(model, loaders, dense_logits, train_set, seed, args.epochs, finetune_lr,
                                    args.label_smoothing, progress),
                          "seconds": seconds}
            write_json(cache_path, cache)
        rows.setdefault(setting, {}).setdefault(name, []).append(cache[key])
        print(setting, seed, name, cache[key], flush=True)

    for seed in args.seeds:
        calib_x, calib_y = calibration(train_set, seed, args.calib)
        units = [u for u in UnitGraph(copy.deepcopy(net), calib_x[:2]).units if u.kind in args.groups]
        for width in args.widths:
            setting = f"width {width}"
            widths = {u.producer: max(1, math.ceil(width * u.channels)) for u in units}
            for name in chosen:
                if name in greedy:
                    record(setting, name, seed, lambda: prune_greedy(net, greedy[name], calib_x, calib_y, args.groups, width=width))
                elif name in TP_IMPORTANCES:
                    record(setting, name, seed, lambda: tp_prune(net, name, calib_x, calib_y, seed, args.groups, widths=widths))
        for target in args.flops:
            setting = f"flops {target}"
            record(setting, "greedyprune default (tolerance bisected)", seed,
                   lambda: prune_greedy(net, {}, calib_x, calib_y, args.groups, flops=target))
            if args.flops_finetune_default:
                record(setting, "greedyprune fine-tuning default (tolerance bisected)", seed,
                       lambda: prune_greedy(net, FINETUNE_DEFAULTS, calib_x, calib_y, args.groups, flops=target))
            for name in args.flops_rows:
                record(setting, f"{name} (uniform width)", seed,
                       lambda: prune_greedy(net, greedy[name], calib_x, calib_y, args.groups, flops=target,
                                            flops_search="width"))
            for importance in args.flops_tp:
                record(setting, f"{importance} global", seed,
                       lambda: tp_global_at_flops(net, importance, calib_x, calib_y, seed, args.groups, target))
    return {"model": args.model, "data": args.data or ("digits" if args.model == "cnn" else "digits upsampled to 32"),
            "calib": args.calib, "finetune_epochs": args.epochs, "finetune_lr": finetune_lr,
            "label_smoothing": args.label_smoothing,
            "seeds": args.seeds, "groups": list(args.groups), "dense": dense, "rows": rows,
            "date": time.strftime("%Y-%m-%d"), "load": os.getloadavg(),
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def table(result: dict) -> str:
    epochs = result["finetune_epochs"]

    def stats(runs, key):
        values = [r[key] for r in runs]
        return statistics.fmean(values), (max(values) - min(values)) / 2

    def cell(runs, key, digits=3, best=None):
        mean, spread = stats(runs, key)
        text = f"{mean:.{digits}f} ± {spread:.{digits}f}"
        return f"**{text}**" if best is not None and mean == best else text

    d = result["dense"]
    lines = [f"#### {result['model']} on {result['data']}: dense {d['params']:,} params, {d['flops'] / 1e6:.2f} MFLOPs, "
             f"accuracy {d['accuracy']:.3f}",
             "",
             f"Mean ± half the range over seeds {result['seeds']}; {result['calib']} calibration images; units of "
             f"kinds {', '.join(result.get('groups', ['inner', 'residual']))} pruned; fine-tuning "
             f"{epochs} epochs (training.finetune, lr {result['finetune_lr']:g}, label smoothing "
             f"{result['label_smoothing']:g}); measured "
             f"{result['date']}, load {result['load'][0]:.1f}, "
             f"{result['threads']} threads. Bold: the best mean of the column.",
             ""]
    for setting, rows in result["rows"].items():
        tuned = list(dict.fromkeys(("epoch1", f"epoch{epochs}")))  # one column when fine-tuning is 1 epoch
        keys = ("pruned", *tuned)
        best = {k: max(stats(runs, k)[0] for runs in rows.values()) for k in keys}
        best_kl = min(stats(runs, "kl")[0] for runs in rows.values())
        heads = "".join(f" acc. {k[5:]} epoch{'s' if k != 'epoch1' else ''} |" for k in tuned)
        lines += [f"{setting.capitalize()}{' per unit' if setting.startswith('width') else ' of the dense model'}:", "",
                  f"| method + export | params | MFLOPs | acc. one-shot | test KL |{heads} prune s |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(tuned) + "---:|"]
        for name, runs in rows.items():
            kl_mean = stats(runs, "kl")[0]
            kl = f"{kl_mean:.3f}" if kl_mean != best_kl else f"**{kl_mean:.3f}**"
            cells = "".join(f" {cell(runs, k, best=best[k])} |" for k in tuned)
            lines.append(f"| {name} | {runs[0]['params']:,} | {runs[0]['flops'] / 1e6:.2f} | "
                         f"{cell(runs, 'pruned', best=best['pruned'])} | {kl} |{cells} "
                         f"{statistics.fmean(r['seconds'] for r in runs):.1f} |")
        lines.append("")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=MODELS)
    parser.add_argument("--data", default=None, help="a CIFAR-10 folder; default: the bundled digits")
    parser.add_argument("--widths", type=float, nargs="*", default=[0.5, 0.25, 0.125, 0.0625])
    parser.add_argument("--flops", type=float, nargs="*", default=[0.5, 0.25], help="equal-FLOPs targets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(GREEDY_METHODS), choices=GREEDY_METHODS)
    parser.add_argument("--exports", nargs="+", default=list(EXPORTS), choices=EXPORTS)
    parser.add_argument("--rows", nargs="*", default=None,
                        help="only these rows at each width (names as in the table; default: every greedy row, the "
                             "diagnosis rows and every Torch-Pruning importance)")
    parser.add_argument("--flops-rows", nargs="*", default=["local + reconstruct", "refit + reconstruct"],
                        help="width-only rows also run at equal FLOPs (one uniform width)")
    parser.add_argument("--flops-tp", nargs="*", default=["tp-l1", "tp-taylor"], choices=list(TP_IMPORTANCES))
    parser.add_argument("--no-flops-finetune-default", dest="flops_finetune_default", action="store_false",
                        help="at equal FLOPs, leave out the fine-tuning default (FINETUNE_DEFAULTS: hybrid + none)")
    parser.add_argument("--groups", type=groups_argument, default=UNIT_KINDS,
                        help=f"comma-separated kinds of unit pruned, by both sides (default {','.join(UNIT_KINDS)})")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="of the fine-tuning (default 0.01, training.finetune's; the ViT: 0.001)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="of the fine-tuning (seed 000: none)")
    parser.add_argument("--cache", default="runs/bench-vs-tp")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser


# The harness's rows, one benchmark per model (each is stored when it ends), cut to fit a 2-core CPU:
# the digits CNN runs everything on 3 seeds; the larger models one seed and the rows that tell the
# one-shot question apart (hybrid's tolerance bisection at equal FLOPs takes hours on VGG-11 there).
_LARGE = ["--seeds", "0", "--widths", "0.25", "0.125", "--flops", "--rows", "local + none", "local + reconstruct",
          "refit + reconstruct", "magnitude + reconstruct", "tp-l1", "tp-taylor", "tp-random"]
HARNESS_ARGS = {"cnn": ["--model", "cnn"],
                "vgg11": ["--model", "vgg11", "--seeds", "0", "--widths", "0.25", "0.125", "--flops", "0.5",
                          "--no-flops-finetune-default", "--methods", "local", "refit", "magnitude"],
                "resnet20": ["--model", "resnet20", *_LARGE],
                "resnet56": ["--model", "resnet56", *_LARGE],
                # every group of the ViT is cut (embedding width too), so 0.25 already keeps ~1/10 of it
                "vit_tiny": ["--model", "vit_tiny", *_LARGE, "--widths", "0.5", "0.25"],
                # the embedding width alone: how the norms' statistics are treated (docs/DESIGN.md, embed)
                "vit_tiny_embed": ["--model", "vit_tiny", "--groups", "embed", "--seeds", "0", "--widths", "0.5",
                                   "--flops", "--epochs", "1", "--rows", "local + none", "local + reconstruct",
                                   "refit + reconstruct", "magnitude + reconstruct", "tp-l1"]}
QUICK_ARGS = ["--widths", "0.5", "--flops", "--seeds", "0", "--rows", "local + reconstruct", "tp-l1", "--calib", "64",
              "--epochs", "1", "--cache", "runs/bench-vs-tp-quick"]


def benchmark(model: str) -> Benchmark:
    def rows(quick: bool) -> dict:
        return run(parser().parse_args(HARNESS_ARGS[model] + ["--no-progress"] + (QUICK_ARGS if quick else [])))

    return Benchmark(
        name=f"vs_torch_pruning_{model}",
        title=f"Against Torch-Pruning ({model}): one-shot and after the same fine-tuning",
        about="greedyprune's criteria, each exported plainly (BN statistics re-estimated after every unit) and with "
              "`reconstruct` (the consumer refit by least squares), against Torch-Pruning's MetaPruner with L1 / L2 "
              "magnitude, Taylor and random importance (BN re-estimated on the same calibration images), at equal "
              "per-unit widths and at equal FLOPs (greedyprune's tolerance bisection or one uniform width against "
              "Torch-Pruning's global ranking). Every model is fine-tuned the same way (training.finetune, same seed "
              "and batches). `python benchmarks/bench_vs_torch_pruning.py --help` runs any subset.",
        extra=rows,
        notes=lambda section: table(section["extra"]["result"]).splitlines() if "extra" in section else [],
    )


BENCHMARKS = [benchmark(model) for model in HARNESS_ARGS]


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(int(os.environ.get("GREEDYPRUNE_THREADS", torch.get_num_threads())))
    result = run(args)
    print(table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
