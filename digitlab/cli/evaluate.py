"""`digitlab evaluate RUN`: score a run on its test set and (re)write metrics, plots and report.html.

    digitlab evaluate runs/20261126-071500-seed-ann-s0
"""
from __future__ import annotations

from digitlab.cli import run_family


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run on the test set and write its report")
    p.add_argument("run", help="a run directory")
    p.set_defaults(func=run, family=lambda args: run_family(args.run))


def run(args) -> int:
    from digitlab.cli.summary import print_summary
    from digitlab.evaluation import evaluate_run
    from digitlab.runs import open_run
    the_run = open_run(args.run)
    evaluate_run(the_run)
    print_summary(the_run)
    return 0
