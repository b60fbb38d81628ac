"""`digitlab ensemble RUN RUN ...`: average the members' probabilities into a new run, evaluated like any run.

    digitlab ensemble runs/*-bestcnn-seeds3-s0/s*            # the three seeds of a --seeds group
    digitlab ensemble runs/a runs/b --tta --out runs/committee  # plus test-time augmentation (1-pixel shifts)
    digitlab predict runs/committee digit.png                 # the result is a run like any other
"""
from __future__ import annotations

from pathlib import Path

from digitlab.backend import choose_backend
from digitlab.cli import fail


def add_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="average several runs' probabilities into a new, evaluated run")
    p.add_argument("runs", nargs="+", metavar="RUN", help="member run directories (or a --seeds group folder)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also average over the image shifted 1 pixel up/down/left/right")
    p.add_argument("--out", help="the ensemble's run directory (default: RUNS_ROOT/<time>-ensemble<N>-<tag>)")
    p.add_argument("--runs-root", default="runs", help="where a new ensemble directory goes (default: runs)")
    p.set_defaults(func=cmd_ensemble)


def expand(paths: list[str]) -> list[Path]:
    """A --seeds group folder stands for its member runs."""
    from digitlab.training import SEEDS_FILE
    from digitlab.runs import read_json
    out = []
    for p in map(Path, paths):
        meta = read_json(p / SEEDS_FILE)
        out += [p / f"s{seed}" for seed in meta["seeds"]] if meta else [p]
    return out


def cmd_ensemble(args) -> int:
    from digitlab.runs import RunError
    paths = expand(args.runs)
    try:
        from digitlab.ensemble import member_family, open_members
        members = open_members(paths)
    except RunError as exc:
        return fail(str(exc))
    families = {member_family(m) for m in members}
    backend = choose_backend("conv" if "conv" in families else "dense")
    from digitlab.ensemble import make_ensemble
    print(f"ensemble of {len(members)} runs{' with test-time augmentation' if args.tta else ''} "
          f"(backend: {backend})", flush=True)
    try:
        run = make_ensemble([m.path for m in members], out=args.out, runs_root=args.runs_root, tta=args.tta)
    except RunError as exc:
        return fail(str(exc))
    print(f"\n{'member':<60} {'test acc':>9}")
    for m in members:
        acc = (m.metrics or {}).get("test_accuracy")
        print(f"{str(m.path):<60} {acc:>9.4f}" if acc is not None else f"{str(m.path):<60} {'n/a':>9}")
    from digitlab.cli.train import print_summary
    print_summary(run.path, run.metrics, run.state)
    return 0
