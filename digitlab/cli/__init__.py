"""The `digitlab` command line: one subcommand module per stage; only this package prints.

    digitlab data                               # where MNIST came from, its checksum, class counts
    digitlab train --model seed-ann --val test  # the tutorial's network, into runs/<stamp>-seed-ann-s0
    digitlab evaluate runs/...                  # rewrite metrics, plots and report.html
    digitlab predict runs/... my_digit.png      # read real images
"""
from __future__ import annotations

import argparse
import importlib
import sys

from digitlab import __version__
from digitlab.backend import quiet_tensorflow_logs

# Each module defines add_parser(subparsers); its parser sets `func` to a function(args) -> exit code.
# Modules are imported here but import keras only inside their commands, so the backend can still be chosen.
COMMAND_MODULES = ["digitlab.cli.train", "digitlab.cli.predict", "digitlab.cli.serve", "digitlab.cli.compare", "digitlab.cli.ensemble"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitlab", description="Handwritten-digit recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `digitlab data | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return 141


def fail(message: str, code: int = 2) -> int:
    """Print an error for the user and return the exit code to use."""
    print(f"digitlab: error: {message}", file=sys.stderr)
    return code
