"""The `greedyprune finetune` and `greedyprune eval` subcommands: what follows pruning in the
greedy-imitation authors' workflow (`--recipe paper`: seed 000's fine-tuning, training.PAPER_FINETUNE)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from .. import distributed
from ..checks import arg_error, check_device, check_int
from ..files import prepare_output_dir, write_json
from ..models import save_model
from .data import (INTERPOLATIONS, ImageTransform, check_global_batch, default_workers, load_dataset, make_loader,
                   source_kind)
from .measure import model_stats
from .model_source import check_model_source, published_transform, published_weights_file, resolve_model
from .training import (CHANNELS_LAST_CHOICES, FINETUNE_RECIPES, PAPER_FINETUNE_LR, PRECISIONS, QUICK_FINETUNE,
                       RECIPE_SETTINGS, finetune, finetune_recipe)

REPORT_NAME = "report.json"
MODEL_NAME = "finetuned.pt"
CHECKPOINT_NAME = "checkpoint.pt"  # finetune's, after every epoch


def register(subparsers) -> None:
    ft = subparsers.add_parser(
        "finetune", help="fine-tune a saved (e.g. pruned) model (--recipe paper: the greedy paper's recipe)",
        description="SGD (momentum, weight decay), cosine decay per step; writes finetuned.pt (load_model) and "
                    "report.json (the recipe, before / after, loss per epoch) to --out.")
    _model_arguments(ft)
    quick = QUICK_FINETUNE
    ft.add_argument("--recipe", choices=FINETUNE_RECIPES, default="quick",
                    help=f"quick (default): {quick['epochs']} epochs, batch {quick['batch_size']}, lr {quick['lr']:g}, "
                         f"momentum {quick['momentum']:g}, weight decay {quick['weight_decay']:g}, label smoothing "
                         f"{quick['label_smoothing']:g} (not the paper's); paper: seed 000's, SGD momentum 0.9, weight "
                         "decay 5e-5, cosine, 150 epochs, batch 256, no label smoothing, lr per model ("
                         + ", ".join(f"{m} {lr:g}" for m, lr in PAPER_FINETUNE_LR.items())
                         + "; other models need --lr). The flags below override the recipe")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--lr", type=float, help="initial learning rate")
    ft.add_argument("--momentum", type=float)
    ft.add_argument("--weight-decay", type=float)
    ft.add_argument("--label-smoothing", type=float)
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--seed", type=int, default=0, help="data-order seed")
    ft.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ft.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="bf16: forward and loss under bfloat16 autocast (float32 weights); auto: bf16 on CUDA")
    ft.add_argument("--channels-last", choices=tuple(CHANNELS_LAST_CHOICES), default="auto",
                    help="NHWC layout for convs while training (auto: on CUDA)")
    ft.add_argument("--out", default="greedyprune-out/finetune")
    ft.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    ft.add_argument("--resume", action="store_true",
                    help=f"continue from --out/{CHECKPOINT_NAME} (written after every epoch) where it exists; the "
                         "run ends as the uninterrupted one would")
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=_finetune_command)

    ev = subparsers.add_parser(
        "eval", help="test accuracy, parameters, FLOPs / MACs and latency of a saved model",
        description="Evaluates on --data's test split, on --device (the latency too); --json writes the numbers.")
    _model_arguments(ev)
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--json", help="write the numbers as JSON here")
    ev.set_defaults(func=_eval_command)


def _model_arguments(p) -> None:
    p.add_argument("model", help="a save_model file (e.g. prune's pruned.pt), or a model name with --weights or "
                                 "--pretrained")
    p.add_argument("--weights", help="with a model name: a state dict or a checkpoint holding one")
    add_pretrained_argument(p)
    p.add_argument("--data", default="digits", help="'digits' (bundled), a CIFAR-10 folder or an ImageFolder root")
    add_loading_arguments(p)


def add_loading_arguments(p) -> None:
    """--workers and the ImageFolder preprocessing flags (image_transform reads them)."""
    p.add_argument("--workers", type=int, help="data-loading worker processes (default: up to 8 for ImageFolder "
                                               "data, 0 for digits and CIFAR-10, which are held in memory)")
    images = p.add_argument_group("ImageFolder preprocessing (default: the --pretrained weights' own, else "
                                  "resize 256, crop 224, bilinear, ImageNet mean / std)")
    images.add_argument("--image-size", type=int, help="the centre crop's side (the random crop's when training); "
                                                       "without --resize the resize keeps its ratio to the crop")
    images.add_argument("--resize", type=int, help="the shorter side before the centre crop")
    images.add_argument("--interpolation", choices=INTERPOLATIONS)
    images.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean, e.g. 0.5 0.5 0.5")
    images.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel standard deviation")


def add_pretrained_argument(p) -> None:
    p.add_argument("--pretrained", action="store_true",
                   help="with torchvision:<name> / timm:<name>: load the published weights from the local torch hub "
                        "(torchvision) or Hugging Face (timm) cache, never the network; a missing file is one line "
                        "naming where to put it")


def weights_argument(args) -> str | Path | None:
    """The weights file the flags name: --weights, or with --pretrained the published weights' cached file."""
    return published_weights_file(args.model, args.weights) if args.pretrained else args.weights


def _load(args) -> torch.nn.Module:
    """The model the arguments name (checked before any work): nothing is trained here."""
    weights = weights_argument(args)
    check_model_source(args.model, weights, without_weights="refuse", source_flag="model")
    return resolve_model(args.model, args.data, without_weights="refuse", weights=weights)


TRANSFORM_FLAGS = {"image_size": "crop", "resize": "resize", "interpolation": "interpolation", "mean": "mean",
                   "std": "std"}


def image_transform(args) -> ImageTransform | None:
    """The ImageFolder preprocessing the flags ask for (over the --pretrained weights' own); None
    for data of another kind, which is used as stored (the flags are refused there)."""
    given = {flag: getattr(args, flag) for flag in TRANSFORM_FLAGS if getattr(args, flag) is not None}
    if source_kind(args.data) != "imagefolder":
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise arg_error(flag, f"applies to ImageFolder data only; {args.data!r} is used as stored")
        return None
    base = (published_transform(args.model) if args.pretrained else None) or ImageTransform()
    fields = {TRANSFORM_FLAGS[flag]: tuple(value) if isinstance(value, list) else value for flag, value in given.items()}
    if "crop" in fields and "resize" not in fields:  # the resize keeps its ratio to the crop (256 / 224)
        fields["resize"] = round(fields["crop"] * base.resize / base.crop)
    return replace(base, **fields)  # ImageTransform checks each value, naming it as the flag does


def _architecture(model: torch.nn.Module, source: str) -> str:
    """The architecture name a recipe goes by: the one build_model recorded (a saved model's), else
    the name the user gave."""
    return (getattr(model, "greedyprune_arch", None) or {}).get("name") or str(source)


def _apply_recipe(args: argparse.Namespace, arch: str) -> dict:
    """Fill the settings not given on the command line from `--recipe` for `arch`; returns what
    report.json records of the recipe (name, architecture, settings, the flags given)."""
    settings = finetune_recipe(args.recipe, arch)
    if settings["lr"] is None and args.lr is None:
        raise arg_error("--recipe", f"paper gives a learning rate for {', '.join(PAPER_FINETUNE_LR)} only, not "
                                    f"{arch!r}: pass --lr")
    given = [name for name in RECIPE_SETTINGS if getattr(args, name) is not None]
    for name in RECIPE_SETTINGS:
        if getattr(args, name) is None:
            setattr(args, name, settings[name])
    return {"name": args.recipe, "arch": arch, "settings": {name: getattr(args, name) for name in RECIPE_SETTINGS},
            "given": ["--" + name.replace("_", "-") for name in given]}


def _describe(recipe: dict) -> str:
    s = recipe["settings"]
    given = f"; {', '.join(recipe['given'])} given" if recipe["given"] else ""
    return (f"{recipe['name']} for {recipe['arch']} ({s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']:g}, "
            f"momentum {s['momentum']:g}, weight decay {s['weight_decay']:g}, label smoothing "
            f"{s['label_smoothing']:g}, cosine decay{given})")


def workers(args) -> int:
    """--workers, checked, or the data's default (data.default_workers)."""
    if args.workers is None:
        return default_workers(args.data)
    return check_int("--workers", args.workers, minimum=0)


def _finetune_command(args: argparse.Namespace) -> int:
    device = check_device("--device", args.device)
    transform, loaders = image_transform(args), workers(args)
    model = _load(args)
    recipe = _apply_recipe(args, _architecture(model, args.model))
    check_int("--epochs", args.epochs, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    train_set = load_dataset(args.data, "train", transform=transform)
    check_global_batch("--batch-size", args.batch_size, len(train_set))  # a global batch under torchrun
    distributed.check_same_inputs(model, train_set)
    out = prepare_output_dir(args.out, finished=REPORT_NAME, resume=args.resume, overwrite=args.overwrite)
    print(f"recipe: {_describe(recipe)}")
    test_loader = make_loader(load_dataset(args.data, "test", transform=transform), 256, shuffle=False,
                              num_workers=loaders)
    example = next(iter(test_loader))[0][:1]
    before = model_stats(model, test_loader, example)
    losses = finetune(model, make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed, num_workers=loaders),
                      epochs=args.epochs,
                      lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, device=device, progress=not args.no_progress,
                      precision=args.precision,
                      channels_last=CHANNELS_LAST_CHOICES[args.channels_last],
                      checkpoint=out / CHECKPOINT_NAME, resume=args.resume)
    model.cpu()
    after = model_stats(model, test_loader, example)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    save_model(model, out / MODEL_NAME, source="greedyprune finetune", config=config)
    write_json(out / REPORT_NAME, {"config": config, "recipe": recipe, "before": before, "after": after,
                                   "epoch_losses": losses})
    print(f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} after {args.epochs} epochs; "
          f"wrote {out / MODEL_NAME}, {out / REPORT_NAME}")
    return 0


def _eval_command(args: argparse.Namespace) -> int:
    device = check_device("--device", args.device)
    transform, loaders = image_transform(args), workers(args)
    model = _load(args).to(device)
    test_loader = make_loader(load_dataset(args.data, "test", transform=transform), 256, shuffle=False,
                              num_workers=loaders)
    stats = model_stats(model, test_loader, next(iter(test_loader))[0][:1])
    print(f"test accuracy {stats['accuracy']:.4f} (loss {stats['test_loss']:.4f}), {stats['params']:,} parameters, "
          f"{stats['flops'] / 1e6:.2f} MFLOPs ({stats['macs'] / 1e6:.2f} MMACs), latency on {stats['latency_device']} "
          f"{stats['latency_ms_batch1']:.2f} ms at batch 1, "
          f"{stats['latency_ms_batch64']:.2f} ms at batch 64 (medians; {stats['latency_threads']} threads, load "
          f"{stats['latency_load'][0]:.1f}-{stats['latency_load'][1]:.1f})")
    if args.json:
        write_json(Path(args.json), {"model": args.model, "data": args.data, **stats})
        print(f"wrote {args.json}")
    return 0
