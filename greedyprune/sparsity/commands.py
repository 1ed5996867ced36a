"""The `greedyprune sap` and `greedyprune pqi` subcommands (`register` adds them to the central CLI)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import distributed
from ..checks import arg_error, check_device
from ..harness.data import check_global_batch, load_dataset
from ..files import prepare_output_dir, read_torch_file, write_json
from ..models import load_weights
from ..harness.model_source import check_model_source, resolve_model
from .pqi import PAPER_PAIR, format_grid, format_table, grid_pairs, pqi_report
from .report import results_table
from .sap import METHODS, MODEL_FILE, SAPConfig, run_sap
from .weights import SCOPES


def register(subparsers) -> None:
    """Add the `sap` and `pqi` subcommands to an argparse subparsers object."""
    sap = subparsers.add_parser(
        "sap", help="Sparsity-informed Adaptive Pruning (or the one-shot / lottery-ticket baselines)",
        description="Iterative prune -> rewind -> retrain with the pruning count from the PQI bound (PQI paper, "
                    "Algorithm 1). Writes results.json, results.png, model.pt and a checkpoint per iteration to --out.")
    sap.add_argument("--model", default="mlp",
                     help="build_model name (default mlp; the paper's: mlp, cnn) or a save_model file")
    sap.add_argument("--data", default="digits", help="'digits' or a path load_dataset understands")
    sap.add_argument("--method", "--baseline", dest="method", choices=METHODS, default="sap",
                     help="sap (default), one-shot or lottery (fixed ratio)")
    sap.add_argument("--scope", choices=SCOPES, default="global")
    defaults = SAPConfig()
    for flag, kind, text in (("--p", float, "PQI's p (0 < p <= 1 <= q, p < q, as the paper proves; others warn)"),
                             ("--q", float, "PQI's q"),
                             ("--eta", float, "the bound's eta_r"), ("--gamma", float, "scale of the pruning fraction"),
                             ("--beta", float, "largest fraction of a scope pruned per iteration"),
                             ("--ratio", float, "baselines' fraction pruned per iteration"),
                             ("--epochs", int, "training epochs per iteration"),
                             ("--iterations", int, "T, the paper's pruning iterations: t = 0..T, so T + 1 "
                                                   "rewind-train-prune rounds"),
                             ("--lr", float, "SGD learning rate (cosine decay)"),
                             ("--batch-size", int, "training batch size"), ("--seed", int, "initialisation seed")):
        dest = flag[2:].replace("-", "_")
        default = getattr(defaults, dest)
        if dest in RECIPE_FIELDS:  # the recipe decides unless given
            sap.add_argument(flag, type=kind, default=None, help=f"{text} (default: the recipe's; fast: {default})")
        else:
            sap.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    sap.add_argument("--recipe", choices=("fast", "paper"), default="fast",
                     help="fast: 10 epochs, T = 10; paper: the PQI paper's Table 3, E = 200 epochs and T per model "
                          f"({', '.join(f'{m} {t}' for m, t in PAPER_ITERATIONS.items())}; other models need "
                          "--iterations)")
    sap.add_argument("--weights", default=None,
                     help="initial weights for --model (what SAP rewinds to) instead of --seed's initialisation: a "
                          "state dict (torchvision / timm layout) or a checkpoint holding one")
    sap.add_argument("--stop-on-rising-pqi", action="store_true",
                     help="stop once the retrained model's global PQI_{p,q} rises (the paper's suggested extension)")
    sap.add_argument("--keep-last-weight", action="store_true",
                     help="never take a neuron's last weight (keeps its largest); not in the paper or its code")
    sap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="where the model trains and is evaluated (default: cuda when available)")
    sap.add_argument("--out", required=True, help="output folder")
    sap.add_argument("--resume", action="store_true", help="continue from --out's checkpoint.pt if there is one")
    sap.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a finished run")
    sap.add_argument("--no-progress", action="store_true", help="no progress bars")
    sap.set_defaults(func=sap_command)

    pqi = subparsers.add_parser(
        "pqi", help="PQ Index (and Gini index) table of a saved model",
        description="PQ Index per neuron, layer and globally of every weight with dim > 1 (masks saved with the "
                    "model are respected).")
    pqi.add_argument("model", help="a file written by save_model, a state_dict file or a checkpoint holding one "
                     "(torch.nn.utils.prune masks are applied)")
    pqi.add_argument("--arch", help="with a state_dict file: build_model name to load it into (checks the file)")
    pqi.add_argument("--num-classes", type=int, default=10, help="for --arch (default 10)")
    pqi.add_argument("--in-channels", type=int, default=3, help="for --arch (default 3)")
    pqi.add_argument("--image-size", type=int, default=32, help="for --arch (default 32)")
    pqi.add_argument("--scope", choices=(*SCOPES, "all"), default="all")
    pqi.add_argument("--p", type=float, nargs="+", help=f"p of each pair (default {PAPER_PAIR[0]})")
    pqi.add_argument("--q", type=float, nargs="+", help=f"q of each pair, as many as --p (default {PAPER_PAIR[1]})")
    pqi.add_argument("--grid", action="store_true", help="the paper's grid: p in 0.1..1.0, q in 1.0..2.0 (p < q)")
    pqi.add_argument("--no-gini", action="store_true", help="skip the Gini index (it sorts every segment)")
    pqi.add_argument("--json", help="write the report as JSON here")
    pqi.add_argument("--neurons", action="store_true", help="every neuron's values in the JSON (not just summaries)")
    pqi.set_defaults(func=pqi_command)


RECIPE_FIELDS = ("epochs", "iterations")
# seed 003, sec. 4.1 and Table 3: E = 200 for every model; T = 30 for Linear, MLP and CNN, 15 for
# ResNet-18 (the rest of Table 3 -- batch 250, SGD lr 0.1, momentum 0.9, weight decay 5e-4,
# Nesterov, cosine -- are SAPConfig's defaults). The paper gives no T for other models.
PAPER_EPOCHS = 200
PAPER_ITERATIONS = {"mlp": 30, "cnn": 30, "resnet18": 15}


def recipe_settings(recipe: str, model: str) -> dict:
    """Epochs and iterations of a recipe: "fast" (SAPConfig's defaults) or "paper" (Table 3 for
    `model`; iterations None for a model the paper did not run)."""
    if recipe == "paper":
        return dict(epochs=PAPER_EPOCHS, iterations=PAPER_ITERATIONS.get(str(model)))
    return {name: getattr(SAPConfig(), name) for name in RECIPE_FIELDS}


def sap_command(args: argparse.Namespace) -> int:
    recipe = recipe_settings(args.recipe, args.model)
    if recipe["iterations"] is None and args.iterations is None:
        raise arg_error("--recipe", f"paper gives T for {', '.join(PAPER_ITERATIONS)} only, not {args.model!r}: pass "
                                    "--iterations")
    for name in RECIPE_FIELDS:
        if getattr(args, name) is None:
            setattr(args, name, recipe[name])
    config = SAPConfig(method=args.method, scope=args.scope, p=args.p, q=args.q, eta=args.eta, gamma=args.gamma,
                       beta=args.beta, ratio=args.ratio, iterations=args.iterations, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, stop_on_rising_pqi=args.stop_on_rising_pqi,
                       keep_last_weight=args.keep_last_weight)
    device = check_device("--device", args.device)
    explicit = [f"--{n}" for n in RECIPE_FIELDS if getattr(args, n) != recipe[n]]
    source = f", Table 3 for {args.model}" if args.recipe == "paper" and recipe["iterations"] is not None else ""
    ran = (f"{args.recipe}{source} ({config.epochs} epochs x T = {config.iterations} pruning iterations, "
           f"{config.iterations + 1} rounds, batch {config.batch_size}, lr {config.lr:g}"
           f"{'; ' + ', '.join(explicit) + ' given' if explicit else ''})")
    print(f"recipe: {ran}")
    check_model_source(args.model, args.weights, without_weights="init")
    train_set, test_set = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    check_global_batch("--batch-size", config.batch_size, len(train_set))  # a global batch under torchrun
    prepare_output_dir(args.out, finished=MODEL_FILE, resume=args.resume, overwrite=args.overwrite)
    # without --weights, --seed's initialisation: what SAP rewinds to
    model = resolve_model(args.model, args.data, without_weights="init", weights=args.weights,
                          seed=config.seed).to(device)
    distributed.check_same_inputs(model, train_set)
    result = run_sap(model, train_set, test_set, config,
                     out_dir=args.out, resume=args.resume, progress=not args.no_progress, recipe=ran)
    print(results_table({config.label: result.history}), end="")
    if result.stopped:
        print(f"stopped early: {result.stopped}")
    print(f"wrote {Path(args.out) / 'results.json'}, results.png, model.pt, checkpoint.pt")
    return 0


def _pairs(args: argparse.Namespace) -> list[tuple[float, float]]:
    if args.grid:
        if args.p or args.q:
            raise arg_error("--grid", "cannot be combined with '--p'/'--q'")
        return grid_pairs()
    ps, qs = args.p or [PAPER_PAIR[0]], args.q or [PAPER_PAIR[1]]
    if len(ps) != len(qs):
        raise arg_error("--q", f"needs as many values as '--p' ({len(ps)}), got {len(qs)}")
    return list(zip(ps, qs))


def pqi_command(args: argparse.Namespace) -> int:
    pairs = _pairs(args)
    scopes = SCOPES if args.scope == "all" else (args.scope,)
    read_torch_file(args.model, argument="model", mmap=True)  # one line naming the argument for any other file
    weights, masks = load_weights(args.model, args.arch, num_classes=args.num_classes,
                                  in_channels=args.in_channels, image_size=args.image_size)
    report = pqi_report(weights, pairs, masks=masks, scopes=scopes, gini=not args.no_gini)
    shown = [PAPER_PAIR] if args.grid else None
    print(format_table(report, pairs=shown), end="")
    if args.grid and "global" in scopes:
        print()
        print(format_grid(report, "global"), end="")
    if args.json:
        write_json(args.json, {"model": str(args.model), "masks_from_file": masks is not None,
                               **report.to_dict(neurons=args.neurons)})
        print(f"wrote {args.json}")
    return 0
