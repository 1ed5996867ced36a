"""Command line: `greedyprune demo | prune | rate-demo | search | sap | pqi` (each with --help)."""
from __future__ import annotations

import argparse
import sys

from .greedy import commands as greedy_commands
from .popup import commands as popup_commands
from .sparsity import commands as sparsity_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greedyprune", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (greedy_commands, popup_commands, sparsity_commands):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"greedyprune {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
