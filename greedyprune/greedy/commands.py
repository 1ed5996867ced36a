"""The `greedyprune prune`, `greedyprune demo`, `greedyprune rate-demo` and `greedyprune layer-curves`
subcommands."""
from __future__ import annotations

import argparse

from ..files import prepare_output_dir
from .budget import FLOPS_SEARCHES
from .config import DEFAULT_TOL, FINETUNE_DEFAULTS, PruneConfig
from .criteria import METHODS
from .exporters import EXPORTERS, REFIT_TARGETS
from .layer_curves import DEFAULT_WIDTHS, FIGURE_NAME, RESULTS_NAME, run_layer_curves
from .outputs import DISCREPANCIES
from .precision import PRECISIONS
from ..harness.commands import add_loading_arguments, add_pretrained_argument, image_transform, weights_argument, workers
from ..harness.training import CHANNELS_LAST_CHOICES, FINETUNE_RECIPES
from .pipeline import DEMO_RUN, FINETUNE_FLAGS, RunSpec
from .surgery import UNIT_KINDS


def register(subparsers) -> None:
    """Add the greedy-imitation subcommands to an argparse subparsers object."""
    prune = subparsers.add_parser(
        "prune", help="structured pruning with greedy local / global imitation (Algorithm 2)",
        description="Prune every unit (hidden channels read by one linear layer) from input to output; writes "
                    "pruned.pt, plan.json, report.json and report.png to --out.")
    _pruning_arguments(prune, defaults=RunSpec())
    prune.set_defaults(func=_prune_command)

    demo = subparsers.add_parser(
        "demo", help="the main job: train (cached) the PQI paper's CNN on the bundled digits and prune it",
        description=f"Same as `prune` with the defaults ({DEMO_RUN.model} on {DEMO_RUN.data}, "
                    f"{FINETUNE_DEFAULTS['method']} with export {FINETUNE_DEFAULTS['fold']} as it fine-tunes, "
                    f"tol {DEFAULT_TOL} nats per unit, {DEMO_RUN.calib_samples} calibration samples, "
                    f"{DEMO_RUN.finetune_epochs} fine-tuning epochs).")
    _pruning_arguments(demo, defaults=DEMO_RUN)
    demo.set_defaults(func=_prune_command)

    rate = subparsers.add_parser(
        "rate-demo", help="the paper's Figure 1: pruning error vs width, local / global imitation vs training",
        description="Writes rate.json and rate.png (log scale) to --out.")
    rate.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    rate.add_argument("--train-steps", type=int, default=3000)
    _experiment_arguments(rate, default_out="greedyprune-out/rate")
    rate.set_defaults(func=_rate_command)

    curves = subparsers.add_parser(
        "layer-curves", help="the paper's Figure 2: each unit pruned alone, held-out discrepancy vs neurons kept, "
                             "local vs global imitation",
        description="Writes layer_curves.json and layer_curves.png (one panel per unit) to --out.")
    curves.add_argument("--model", default="vgg11", help="zoo name or a save_model file (default: vgg11, the paper's)")
    curves.add_argument("--data", default="digits", help="'digits' or a folder load_dataset understands")
    curves.add_argument("--weights", help="pre-trained weights for --model (else it is trained on --data and cached)")
    curves.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    curves.add_argument("--calib-samples", type=int, default=128, help="the batch both methods choose on (128)")
    curves.add_argument("--discrepancy", choices=("kl", "mse"), default="kl")
    curves.add_argument("--taylor", action="store_true",
                        help="global imitation scores the Taylor top 5 instead of every candidate (the paper: exact)")
    curves.add_argument("--train-epochs", type=int, default=15)
    _experiment_arguments(curves, default_out="greedyprune-out/layer-curves")
    curves.set_defaults(func=_layer_curves_command)


def _experiment_arguments(p, *, default_out: str) -> None:
    """What every paper-figure command takes: its seed, where it writes, and how it reports."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=default_out)
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--no-progress", action="store_true")


def _pruning_arguments(p, *, defaults: RunSpec) -> None:
    """The flags of prune and demo: a RunSpec's fields (defaults from `defaults`) and a PruneConfig's."""
    config = PruneConfig
    p.add_argument("--model", default=defaults.model,
                   help="a zoo name (trained on --data and cached) or a save_model file")
    p.add_argument("--weights", default=defaults.weights,
                   help="weights for the --model name instead of training it: a state dict (torchvision / timm "
                        "layout, .safetensors too) or a checkpoint holding one; 'module.' prefixes are stripped")
    add_pretrained_argument(p)
    p.add_argument("--data", default=defaults.data,
                   help="'digits' (bundled), a CIFAR-10 python-pickle folder, or an ImageFolder root (torchvision)")
    add_loading_arguments(p)
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"how channels are chosen (default: {config.method}; with --finetune-epochs > 0: "
                        f"{FINETUNE_DEFAULTS['method']})")
    stop = p.add_argument_group("stopping rule")
    stop.add_argument("--max-discrepancy", "--tol", dest="tol", type=float, default=config.tol,
                      help="network discrepancy each unit may add, measured against the network as pruned so far "
                           f"(seed 000's epsilon; not the op's local tol); {DEFAULT_TOL} without --width, "
                           "--network-budget or --target-flops")
    stop.add_argument("--width", type=float, default=config.width_ratio,
                      help="keep at most this fraction of each unit's channels")
    stop.add_argument("--network-budget", type=float, default=config.network_budget,
                      help="instead of --max-discrepancy: the discrepancy the whole network may gain, split evenly "
                           "over the units")
    stop.add_argument("--target-flops", type=float, default=defaults.target_flops,
                      help="fraction of the FLOPs to keep, by bisection on --max-discrepancy (per-unit widths, the "
                           "paper's way) or, with --flops-search width, on one uniform --width")
    stop.add_argument("--flops-search", choices=FLOPS_SEARCHES, default=defaults.flops_search,
                      help=f"what --target-flops bisects (default {defaults.flops_search}; each step prunes a copy)")
    p.add_argument("--discrepancy", choices=[d for d in DISCREPANCIES if d != "ce"], default=config.discrepancy,
                   help="kl or mse of the logits, or ce-gap: the rise of the cross-entropy on true labels (the "
                        "training-loss gap the paper's epsilon bounds)")
    p.add_argument("--export", "--fold", dest="fold", choices=tuple(EXPORTERS), default=None,
                   help="how each unit is exported: 'reconstruct' refits the consumer's weights to the kept channels "
                        "by least squares (best without fine-tuning); 'none' removes the others plainly (best after "
                        "fine-tuning); 'consumer'/'producer'/'split' fold the gates and keep the gated network's "
                        f"function (default: {config.fold}; with --finetune-epochs > 0: {FINETUNE_DEFAULTS['fold']}; "
                        "--fold: the same)")
    p.add_argument("--groups", type=groups_argument, default=config.groups, metavar="KINDS",
                   help="comma-separated kinds of channel group to prune: inner (a layer's hidden channels), "
                        "residual (a residual stream: stage widths, every layer that makes or reads it), "
                        "heads (an attention module's whole heads; key/value groups under grouped-query attention), "
                        "embed (a transformer's embedding width, read through LayerNorms/RMSNorms); "
                        f"default {','.join(config.groups)}")
    p.add_argument("--precision", choices=PRECISIONS, default=config.precision,
                   help="the dtype of the criteria's forwards (bf16 / fp16: autocast over global imitation's "
                        "candidates and Taylor passes, tolerance probes; for GPUs). The Gram pass, the export and BN "
                        "re-estimation stay float32 (default fp32)")
    p.add_argument("--channels-last", choices=tuple(CHANNELS_LAST_CHOICES), default="auto",
                   help="on: every pruning forward with the convolutions in NHWC layout, as GPUs' tensor cores "
                        "want them; auto (default): on for a convnet on a CUDA device. The written model is "
                        "contiguous")
    p.add_argument("--round-to", type=int, default=config.round_to, metavar="N",
                   help="keep a multiple of N channels in every inner, residual and embed unit (or all of them), e.g. 8 "
                        "for tensor cores; widths round up; heads are whole already (default 1)")
    p.add_argument("--refit-target", choices=REFIT_TARGETS, default=config.refit_target,
                   help="reconstruct: match the unpruned network's consumer output ('original': also corrects "
                        "earlier units) or the output just before the unit ('current')")
    p.add_argument("--refit-damping", type=float, default=config.refit_damping,
                   help="reconstruct: ridge damping, a fraction of the mean diagonal of the refit's system")
    p.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                   help="keep the original BatchNorm statistics (default: re-estimate them on the calibration "
                        "images after each unit)")
    p.add_argument("--calib-samples", type=int, default=defaults.calib_samples,
                   help="samples the discrepancy is measured on")
    p.add_argument("--gram-samples", type=int, default=defaults.gram_samples, help="samples streamed into each Gram")
    p.add_argument("--positions", type=int, default=config.positions_per_image,
                   help="subsample this many positions per image for Grams")
    p.add_argument("--exact-until", type=int, default=config.exact_until,
                   help="global imitation: exact candidates while nnz <= this")
    p.add_argument("--taylor-top", type=int, default=config.taylor_top,
                   help="global imitation: candidates re-checked after Taylor")
    p.add_argument("--step-batch", type=int, default=config.step_batch,
                   help="global imitation: a fresh mini-batch of this many calibration samples per step "
                        "(Algorithm 1 line 4); 0: every step on all of them")
    p.add_argument("--max-batch-memory", type=float, default=None, metavar="MIB",
                   help="MiB for candidate batches and cached prefixes (default: a quarter of the free memory)")
    p.add_argument("--device", default=defaults.device,
                   help="where the model runs (default: cuda when available, else cpu; under torchrun with CUDA: "
                        "each process on its own GPU)")
    p.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    p.add_argument("--finetune-recipe", choices=FINETUNE_RECIPES, default=defaults.finetune_recipe,
                   help="the fine-tuning's settings: quick (batch 64, lr 0.01, label smoothing 0.1: not the "
                        "paper's) or paper (seed 000: batch 256, no label smoothing, lr per model; "
                        "--finetune-epochs 150 for its length); the flags below override it")
    for flag, kind in (("--lr", float), ("--batch-size", int), ("--momentum", float), ("--weight-decay", float),
                       ("--label-smoothing", float)):
        p.add_argument(flag, type=kind, default=None, help="of the fine-tuning (default: the recipe's)")
    p.add_argument("--train-epochs", type=int, default=defaults.train_epochs,
                   help="epochs when a zoo model must be trained first")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=str(defaults.out))
    p.add_argument("--onnx", action="store_true",
                   help="also write pruned.onnx (torch.onnx's dynamo exporter, dynamic batch; ONNX Runtime, "
                        "TensorRT); needs the onnx extra: pip install 'greedyprune[onnx]'")
    p.add_argument("--overwrite", action="store_true", default=defaults.overwrite,
                   help="replace a finished run in --out" + (" (the demo always does)" if defaults.overwrite else ""))
    p.add_argument("--resume", action="store_true",
                   help="continue a run that stopped, from --out's prune-checkpoint.pt (written after every unit) "
                        "and finetune-checkpoint.pt (every epoch): it ends as the uninterrupted run would; other "
                        "arguments are refused, named")
    p.add_argument("--no-progress", action="store_true")


def finetune_flags(args) -> dict:
    """The fine-tuning settings given on the command line (the recipe gives the others)."""
    return {name: getattr(args, name) for name in FINETUNE_FLAGS if getattr(args, name) is not None}


def groups_argument(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in UNIT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(UNIT_KINDS)}")
    return kinds


def prune_config(args) -> PruneConfig:
    """The PruneConfig the prune / demo flags ask for; method and export, where not named, are
    PruneConfig's defaults, or FINETUNE_DEFAULTS for a run that fine-tunes."""
    defaults = FINETUNE_DEFAULTS if args.finetune_epochs > 0 else {"method": PruneConfig.method,
                                                                      "fold": PruneConfig.fold}
    return PruneConfig(method=args.method or defaults["method"], tol=args.tol, width_ratio=args.width,
                       network_budget=args.network_budget, discrepancy=args.discrepancy,
                       positions_per_image=args.positions, exact_until=args.exact_until, taylor_top=args.taylor_top,
                       step_batch=args.step_batch or None,
                       memory_budget=None if args.max_batch_memory is None else int(args.max_batch_memory * 2**20),
                       fold=args.fold or defaults["fold"], recalibrate_bn=args.recalibrate_bn,
                       refit_target=args.refit_target, refit_damping=args.refit_damping, groups=args.groups,
                       round_to=args.round_to, precision=args.precision,
                       channels_last=CHANNELS_LAST_CHOICES[args.channels_last])


def _prune_command(args) -> int:
    from .pipeline import run_pruning
    from .report import format_report

    config = prune_config(args)
    run = RunSpec(model=args.model, data=args.data, weights=weights_argument(args), out=args.out, device=args.device,
                  seed=args.seed, calib_samples=args.calib_samples, gram_samples=args.gram_samples,
                  target_flops=args.target_flops, flops_search=args.flops_search,
                  finetune_epochs=args.finetune_epochs, finetune_recipe=args.finetune_recipe,
                  finetune_settings=finetune_flags(args), train_epochs=args.train_epochs, overwrite=args.overwrite,
                  resume=args.resume, transform=image_transform(args), workers=workers(args), onnx=args.onnx,
                  progress=not args.no_progress)
    report = run_pruning(config, run)
    print(format_report(report))
    onnx = " and pruned.onnx (onnxruntime.InferenceSession(path))" if args.onnx else ""
    print(f"\nwrote {args.out}/report.json, report.png, plan.json, pruned.pt (load_model), "
          f"pruned.pt2 (torch.export.load(path).module()){onnx}")
    return 0


def _rate_command(args) -> int:
    from .rate_demo import run_rate_demo

    prepare_output_dir(args.out, finished="rate.json", overwrite=args.overwrite)
    results = run_rate_demo(args.out, widths=args.widths, train_steps=args.train_steps, seed=args.seed,
                            progress=not args.no_progress)
    print(f"{'n':>4}  {'local':>10}  {'global':>10}  {'scratch':>10}")
    for i, n in enumerate(results["widths"]):
        print(f"{n:>4}  {results['local'][i]:>10.3e}  {results['global'][i]:>10.3e}  {results['scratch'][i]:>10.3e}")
    print(f"\nwrote {args.out}/rate.json and rate.png")
    return 0


def _layer_curves_command(args) -> int:
    prepare_output_dir(args.out, finished=RESULTS_NAME, overwrite=args.overwrite)
    results = run_layer_curves(args.out, model=args.model, data=args.data, weights=args.weights, widths=args.widths,
                               calib_samples=args.calib_samples, discrepancy=args.discrepancy, taylor=args.taylor,
                               train_epochs=args.train_epochs, seed=args.seed, progress=not args.no_progress)
    print(f"held-out {results['discrepancy']} of the network with one unit pruned (local / global imitation):")
    for curve in results["units"]:
        cells = "  ".join(f"n={n}: {lo:.3g}/{gl:.3g}" for n, lo, gl in zip(curve["widths"], curve["local"],
                                                                              curve["global"]))
        print(f"{curve['unit']:>32}  {cells}")
    print(f"\nwrote {args.out}/{RESULTS_NAME} and {FIGURE_NAME}")
    return 0
