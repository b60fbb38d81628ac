"""The `digitlab` command line: one module per command; only this package prints.

    digitlab data                               # where MNIST came from, its checksum, class counts
    digitlab train --model seed-ann --val test  # the tutorial's network, into runs/<stamp>-seed-ann-s0
    digitlab evaluate runs/...                  # rewrite metrics, plots and report.html
    digitlab predict runs/... my_digit.png      # read real images

Each command module defines add_parser(subparsers), whose parser sets `func(args) -> exit code` and,
for commands that run a network, `family(args) -> "dense" | "conv" | None`. main() chooses the Keras
backend from that family once, here, before anything imports Keras; that is why the command modules
import the training stack inside their `func`, and only there.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from digitlab import __version__
from digitlab.backend import cache_compiled_programs, choose_backend, quiet_tensorflow_logs
from digitlab.errors import DigitlabError

COMMAND_MODULES = ["data", "models", "train", "evaluate", "predict", "serve", "compare", "ensemble", "export",
                   "feedback", "finetune", "runs", "sweep"]
# What `pip install digitlab` leaves out and `digitlab[train]` brings: a command that needs it says so.
TRAINING_STACK = {"keras", "tensorflow", "jax", "jaxlib", "sklearn", "xgboost", "matplotlib", "tf2onnx", "onnx"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitlab", description="Handwritten-digit recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"digitlab.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow_logs()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or --help): keep main() returning codes
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "family", None):
            choose_backend(args.family(args))
            from digitlab.data import default_cache_dir
            cache_compiled_programs(default_cache_dir() / "jax")
        return int(args.func(args) or 0)
    except DigitlabError as exc:  # the user's to fix: a message, no traceback; anything else is a bug
        return fail(str(exc), exc.exit_code)
    except ModuleNotFoundError as exc:  # an inference-only install asked to train, evaluate, export...
        if (exc.name or "").split(".")[0] not in TRAINING_STACK:
            raise
        from digitlab.predictor import TRAIN_EXTRA
        return fail(f"this command needs the training stack, which this installation lacks ({exc.name} is not "
                    f"installed): {TRAIN_EXTRA}", 1)
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


def typed(kind: type, name: str):
    """An argparse type= that names the setting in its error ("epochs must be of type int, got 'ten'"),
    and refuses NaN and infinity for numbers."""
    import math

    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be of type {kind.__name__}, got {raw!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {raw!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def run_family(path) -> str | None:
    """The model family of the run at `path`, to choose the backend; None when it can't be read (the
    command then reports why, with the run's own error)."""
    from digitlab.runs import Run
    try:
        return Run(path).family
    except DigitlabError:
        return None
