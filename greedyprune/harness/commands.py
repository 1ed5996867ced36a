"""The `greedyprune finetune` and `greedyprune eval` subcommands: what follows pruning in the
greedy-imitation authors' workflow (docs/DESIGN.md, seed 000: SGD momentum 0.9, weight decay
5e-5, cosine decay from lr 0.01, 0.001 for ResNet-34)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import distributed
from ..checks import check_device, check_int
from ..files import prepare_output_dir, write_json
from ..models import save_model
from .data import load_dataset, make_loader
from .measure import model_stats
from .model_source import check_model_source, resolve_model
from .training import PRECISIONS, finetune

REPORT_NAME = "report.json"
MODEL_NAME = "finetuned.pt"


def register(subparsers) -> None:
    ft = subparsers.add_parser(
        "finetune", help="fine-tune a saved (e.g. pruned) model with the greedy paper's recipe",
        description="SGD (momentum, weight decay), cosine decay per step, label smoothing; writes finetuned.pt "
                    "(load_model) and report.json (before / after, loss per epoch) to --out.")
    _model_arguments(ft)
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--lr", type=float, default=0.01, help="initial learning rate (the paper: 0.01; 0.001 for ResNet-34)")
    ft.add_argument("--momentum", type=float, default=0.9)
    ft.add_argument("--weight-decay", type=float, default=5e-5)
    ft.add_argument("--label-smoothing", type=float, default=0.1)
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--seed", type=int, default=0, help="data-order seed")
    ft.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ft.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="bf16: forward and loss under bfloat16 autocast (float32 weights); auto: bf16 on CUDA")
    ft.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="NHWC layout for convs while training (auto: on CUDA)")
    ft.add_argument("--out", default="greedyprune-out/finetune")
    ft.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    ft.add_argument("--no-progress", action="store_true")
    ft.set_defaults(func=_finetune_command)

    ev = subparsers.add_parser(
        "eval", help="test accuracy, parameters, FLOPs and CPU latency of a saved model",
        description="Evaluates on --data's test split; --json writes the numbers.")
    _model_arguments(ev)
    ev.add_argument("--json", help="write the numbers as JSON here")
    ev.set_defaults(func=_eval_command)


def _model_arguments(p) -> None:
    p.add_argument("model", help="a save_model file (e.g. prune's pruned.pt), or a model name with --weights")
    p.add_argument("--weights", help="with a model name: a state dict or a checkpoint holding one")
    p.add_argument("--data", default="digits", help="'digits' (bundled), a CIFAR-10 folder or an ImageFolder root")


def _load(args) -> torch.nn.Module:
    """The model the arguments name (checked before any work): nothing is trained here."""
    check_model_source(args.model, args.weights, without_weights="refuse", source_flag="model")
    return resolve_model(args.model, args.data, without_weights="refuse", weights=args.weights)


def _finetune_command(args: argparse.Namespace) -> int:
    device = check_device("--device", args.device)
    check_int("--epochs", args.epochs, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    distributed.per_rank(args.batch_size, "--batch-size")  # a global batch under torchrun
    model = _load(args)
    out = prepare_output_dir(args.out, finished=REPORT_NAME, overwrite=args.overwrite)
    train_set, test_set = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    test_loader = make_loader(test_set, 256, shuffle=False)
    example = next(iter(test_loader))[0][:1]
    before = model_stats(model, test_loader, example)
    losses = finetune(model, make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed), epochs=args.epochs,
                      lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, device=device, progress=not args.no_progress,
                      precision=args.precision,
                      channels_last=None if args.channels_last == "auto" else args.channels_last == "on")
    model.cpu()
    after = model_stats(model, test_loader, example)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    save_model(model, out / MODEL_NAME, source="greedyprune finetune", config=config)
    write_json(out / REPORT_NAME, {"config": config, "before": before, "after": after, "epoch_losses": losses})
    print(f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} after {args.epochs} epochs; "
          f"wrote {out / MODEL_NAME}, {out / REPORT_NAME}")
    return 0


def _eval_command(args: argparse.Namespace) -> int:
    model = _load(args)
    test_loader = make_loader(load_dataset(args.data, "test"), 256, shuffle=False)
    stats = model_stats(model, test_loader, next(iter(test_loader))[0][:1])
    print(f"test accuracy {stats['accuracy']:.4f} (loss {stats['test_loss']:.4f}), {stats['params']:,} parameters, "
          f"{stats['flops'] / 1e6:.2f} MFLOPs, CPU latency {stats['latency_ms_batch1']:.2f} ms at batch 1, "
          f"{stats['latency_ms_batch64']:.2f} ms at batch 64 (medians; {stats['latency_threads']} threads, load "
          f"{stats['latency_load'][0]:.1f}-{stats['latency_load'][1]:.1f})")
    if args.json:
        write_json(Path(args.json), {"model": args.model, "data": args.data, **stats})
        print(f"wrote {args.json}")
    return 0
