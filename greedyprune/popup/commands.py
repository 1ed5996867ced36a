"""`greedyprune search`: SR-popup lottery-jackpot search from the command line."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from .. import distributed
from ..checks import arg_error, check_device, check_file, check_int
from ..harness.data import check_global_batch, load_dataset, make_loader
from ..files import prepare_output_dir
from ..models import save_model
from ..harness.model_source import check_model_source, resolve_model
from ..harness.training import evaluate
from .demo import run_demo
from .masked import export, wrap
from .report import REPORT_NAME, covers, write_search_report
from .search import (BN_MODES, INIT_METHODS, SCHEDULES, SCOPES, SCORE_INITS, SearchConfig, reestimate_batchnorm,
                     search)

PRETRAIN_LR = 0.05


def register(subparsers) -> None:
    """Add the `search` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "search", help="SR-popup lottery-jackpot search (masks over frozen pre-trained weights)",
        description="Search a sparse mask over a pre-trained model's Conv2d/Linear weights (all of them, the "
                    "classifier included, ranked together as in the paper) with SR-popup; writes a checkpoint every epoch, report.json and curves.png under --out.")
    parser.add_argument("--model", default="cnn", help="model zoo name when --pretrained is not given (default: cnn)")
    parser.add_argument("--data", default="digits", help="'digits' or a folder load_dataset understands")
    parser.add_argument("--pretrained", type=Path,
                        help="a save_model file; without it (or --weights) the model is pre-trained on --data and cached")
    parser.add_argument("--weights", type=Path,
                        help="pre-trained weights for --model: a state dict (torchvision / timm layout) or a "
                             "checkpoint holding one; 'module.' prefixes are stripped")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="epochs of that pre-training (default: 20)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of masked weights removed (0.9)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="paper",
                        help="swap rate: paper (1-t/T)^4, constant 1 (edge-popup), inverse (t/T)^4")
    parser.add_argument("--epochs", type=int, default=10, help="search epochs (default: 10)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate of the scores (0.1)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay on the scores (5e-4)")
    parser.add_argument("--batch-size", type=int, default=256, help="(the paper's: 256)")
    parser.add_argument("--bn", choices=BN_MODES, default=SearchConfig.bn,
                        help="BatchNorm during the search: keep (default: the pre-trained statistics, untouched, as "
                             "the paper's 'no weight is modified') or update (train mode, as the authors' code: BN "
                             "then adapts to the mask, part of the gain)")
    parser.add_argument("--reestimate-bn", action="store_true",
                        help="after the search, also re-estimate BN statistics on the training set and report the "
                             "test accuracy both ways (--export then carries the re-estimated ones)")
    parser.add_argument("--init", choices=INIT_METHODS, default="global",
                        help="initial per-layer keep counts: one global magnitude threshold or uniform")
    parser.add_argument("--scope", choices=SCOPES, default="global",
                        help="what each swap ranks together: global (default, the paper: all masked weights; the "
                             "per-layer counts move) or layer (each layer's count frozen at its initial value)")
    parser.add_argument("--exclude-classifier", action="store_true",
                        help="leave the last Conv2d/Linear layer dense (the paper masks it too)")
    parser.add_argument("--eta", type=float, default=0.99, help="initial score of pruned weights (0.99)")
    parser.add_argument("--scores", choices=SCORE_INITS, default="magnitude",
                        help="score init: magnitude (SR-popup, eq. 8) or random (edge-popup; with --init uniform and "
                             "--schedule constant it is edge-popup itself)")
    parser.add_argument("--seed", type=int, default=0, help="data-order seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("popup-search"),
                        help="folder for checkpoint.pt, report.json, curves.png (default: popup-search)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if it exists")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a finished run")
    parser.add_argument("--export", type=Path, help="save the pruned plain model (weight * mask baked in) here")
    parser.add_argument("--prune-masks", action="store_true",
                        help="with --export: also attach torch.nn.utils.prune masks (weight_orig, weight_mask)")
    parser.add_argument("--demo", action="store_true",
                        help="instead: the digits comparison (magnitude / edge-popup / the paper's ablations / SR-popup) "
                             "into --out")
    parser.add_argument("--quick", action="store_true", help="with --demo: the short version")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_search_command)


def _check_model_arguments(args) -> None:
    """--pretrained (a save_model file) or --model with --weights or pre-training, before any work."""
    check_int("--pretrain-epochs", args.pretrain_epochs, minimum=1)
    if args.pretrained is not None and args.weights is not None:
        raise arg_error("--weights", "give --pretrained (a save_model file) or --weights (a state dict), not both")
    if args.pretrained is not None:
        check_file("--pretrained", args.pretrained)  # a file, never a model name
    check_model_source(_model_source(args), args.weights, without_weights="train",
                       source_flag="--model" if args.pretrained is None else "--pretrained")


def _model_source(args):
    return args.model if args.pretrained is None else args.pretrained


def _pretrained_model(args) -> torch.nn.Module:
    return resolve_model(_model_source(args), args.data, without_weights="train", weights=args.weights,
                         seed=args.seed, epochs=args.pretrain_epochs, lr=PRETRAIN_LR, batch_size=args.batch_size,
                         device=args.device, progress=not args.no_progress)


def run_search_command(args: argparse.Namespace) -> int:
    """Run one search (or the demo) as the arguments say; returns the exit status."""
    if args.demo:
        run_demo(args.out, quick=args.quick, progress=not args.no_progress)
        return 0
    args.device = check_device("--device", args.device)
    _check_model_arguments(args)
    config = SearchConfig(sparsity=args.sparsity, schedule=args.schedule, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, init=args.init,
                          eta=args.eta, seed=args.seed, bn=args.bn, scores=args.scores, scope=args.scope)
    train_set, test_set = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    check_global_batch("--batch-size", config.batch_size, len(train_set))  # a global batch under torchrun
    prepare_output_dir(args.out, finished=REPORT_NAME, resume=args.resume, overwrite=args.overwrite)
    model = _pretrained_model(args)
    distributed.check_same_inputs(model, train_set)
    masked = wrap(model, exclude_classifier=args.exclude_classifier).to(args.device)
    try:
        history = search(masked, train_set, test_set, config, out_dir=args.out, resume=args.resume,
                         progress=not args.no_progress)
    except KeyboardInterrupt as stop:
        print(f"\n{stop}")
        return 130
    extra = {}
    if args.reestimate_bn:
        reestimate_batchnorm(masked, train_set, batch_size=config.batch_size, seed=config.seed)
        test = evaluate(masked, make_loader(test_set, config.batch_size, shuffle=False))
        extra["bn_reestimated"] = dict(test_accuracy=test["accuracy"], test_loss=test["loss"])
    json_path, png_path = write_search_report(args.out, masked, history, config, **extra)
    first, last = history[0], history[-1]
    print(f"sparsity {config.sparsity:.1%} over {covers(masked)}; ranking scope '{config.scope}'; BatchNorm "
          + ("statistics kept (no weight or statistic modified)" if config.bn == "keep"
             else "in train mode (statistics updated during the search)"))
    print(f"magnitude mask: test accuracy {first['test_accuracy']:.2%}; after {last['epoch']} epochs of "
          f"'{config.schedule}': {last['test_accuracy']:.2%}, overlap with the magnitude mask {last['overlap']:.4f}")
    if extra:
        print(f"with BatchNorm statistics re-estimated on the training set: {extra['bn_reestimated']['test_accuracy']:.2%}")
    print(f"wrote {json_path}, {png_path}")
    if args.export is not None:
        save_model(export(masked, prune_masks=args.prune_masks), args.export, source="greedyprune search",
                   config=asdict(config), test_accuracy=last["test_accuracy"])
        print(f"wrote {args.export}")
    return 0
