"""`digitlab ensemble RUN RUN ...`: average the members' probabilities into a new run, evaluated like any run.

    digitlab ensemble runs/*-bestcnn-seeds3-s0/s*            # the three seeds of a --seeds group
    digitlab ensemble runs/a runs/b --tta --out runs/committee  # plus test-time augmentation (1-pixel shifts)
    digitlab predict runs/committee digit.png                 # the result is a run like any other
"""
from __future__ import annotations

from pathlib import Path

from digitlab.runs import Run, is_seed_group, seed_group_members


def add_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="average several runs' probabilities into a new, evaluated run")
    p.add_argument("runs", nargs="+", metavar="RUN", help="member run directories (or a --seeds group folder)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also average over the image shifted 1 pixel up/down/left/right")
    p.add_argument("--out", help="the ensemble's run directory (default: RUNS_ROOT/<time>-ensemble<N>-<tag>); "
                                 "it must be empty or new")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out name a folder holding a digitlab run: its files are replaced, any others kept")
    p.add_argument("--runs-root", default="runs", help="where a new ensemble directory goes (default: runs)")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="skip the ONNX export at the end (one graph averaging the members, checked against Keras)")
    p.set_defaults(func=cmd_ensemble, family=_family)


def expand(paths: list[str]) -> list[Path]:
    """A --seeds group folder stands for its member runs."""
    out = []
    for p in map(Path, paths):
        out += seed_group_members(p) if is_seed_group(p) else [p]
    return out


def _family(args) -> str:
    from digitlab.cli import run_family
    families = {run_family(p) or "conv" for p in expand(args.runs)}
    return "conv" if "conv" in families else "dense"


def cmd_ensemble(args) -> int:
    from digitlab.cli.summary import print_summary
    from digitlab.ensemble import make_ensemble, open_members
    from digitlab.environment import keras_backend
    members = open_members(expand(args.runs))
    print(f"ensemble of {len(members)} runs{' with test-time augmentation' if args.tta else ''} "
          f"(backend: {keras_backend()})", flush=True)
    run: Run = make_ensemble([m.path for m in members], out=args.out, runs_root=args.runs_root, tta=args.tta,
                             overwrite=args.overwrite)
    print(f"\n{'member':<60} {'test acc':>9}")
    for m in members:
        acc = f"{m.metrics.test_accuracy:>9.4f}" if m.metrics else f"{'n/a':>9}"
        print(f"{str(m.path):<60} {acc}")
    print_summary(run)
    if args.export:
        from digitlab.cli.export import export_after
        export_after([run])
    return 0
