"""`digitlab evaluate RUN`: score a run on its test set, fit its trust model (calibration and the thresholds of
its verdicts, docs/trust.md) and (re)write metrics, trust.json, plots and report.html.

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
    from digitlab.runs import lock_run, open_run, remove_run_temporaries
    the_run = open_run(args.run)
    with lock_run(the_run.path):  # not while a training process writes the run
        remove_run_temporaries(the_run.path)  # what a process killed mid-save left behind
        evaluate_run(the_run)
    print_summary(the_run)
    _print_trust(the_run)
    return 0


def _print_trust(run) -> None:
    t = run.metrics.trust
    if t is None:
        return
    ood = "; ".join(f"{o.name}: AUROC {o.auroc:.3f}, {o.rejected:.1%} rejected" for o in t.ood)
    fitted = "" if t.fitted_on == "validation" else " (fitted on training images: no clean split, see the report)"
    right = "" if t.selective_accuracy is None else f", {t.selective_accuracy:.2%} of those right"
    print(f"trust:         ECE {t.ece_before:.2%} -> {t.ece_after:.2%} (T = {t.temperature:.3f}){fitted}; "
          f"{t.coverage:.2%} of test digits answered{right}")
    if ood:
        print(f"               {ood}")
