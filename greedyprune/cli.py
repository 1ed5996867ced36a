"""Command line: `greedyprune demo | prune | rate-demo | finetune | eval | search | sap | pqi` (each with --help).

Every failure a user can cause or meet (bad arguments, unreadable or untrusted files, a full or
read-only disk, Ctrl-C, a missing optional package) ends with one line on stderr and exit code 2;
--debug shows the traceback instead. Under torchrun (`torchrun --nproc_per_node N -m greedyprune.cli
...`) every process runs the command on its share of the data; rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from . import distributed
from .host_memory import keep_freed_memory
from .greedy import commands as greedy_commands
from .harness import commands as harness_commands
from .popup import commands as popup_commands
from .sparsity import commands as sparsity_commands


_OWN_PREFIX = re.compile(r"^greedyprune(\.\w+)*: ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greedyprune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (greedy_commands, harness_commands, popup_commands, sparsity_commands):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if distributed.init_from_env() and not distributed.is_main():
            args.no_progress = True  # one progress bar and one report: rank 0's
            sys.stdout = open(os.devnull, "w")
        code = int(args.func(args) or 0)
        distributed.finish()
        return code
    except KeyboardInterrupt as stop:
        if args.debug:
            raise
        detail = str(stop) or "what finished is kept; resume with --resume where the command offers it"
        print(f"greedyprune {args.command}: stopped ({detail})", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, FloatingPointError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"greedyprune {args.command}: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        distributed.finish(wait=False)


def _one_line(err: BaseException) -> str:
    """The error as one line: OSErrors name the file, others keep their first line."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot write or read {err.filename!s}: {err.strerror or type(err).__name__}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = _OWN_PREFIX.sub("", text)  # the line already starts with "greedyprune <command>:"
    return text if isinstance(err, (ValueError, ImportError)) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
