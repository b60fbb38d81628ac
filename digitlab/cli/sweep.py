"""`digitlab sweep`: a hyperparameter search on Optuna; every trial is a run directory.

    digitlab sweep --model mlp --param lr=loguniform:1e-4:1e-2 --param dropout=uniform:0:0.5 \\
                   --param hidden=choice:128,256,512 --trials 20 --jobs 2 --set epochs=5
    digitlab sweep --model mlp --space space.toml --out runs/sweep-mlp      # [params] and [fixed] tables
    digitlab sweep --model mlp ... --study mlp-lr --storage postgresql://host/db   # join from another machine

Rerunning the same command resumes the study (after Ctrl-C too). The objective is validation
accuracy; the best trial is scored on test once, at the end.
"""
from __future__ import annotations

import sys
from pathlib import Path

from digitlab.cli import typed
from digitlab.config import TrainConfig, apply_overrides, validate
from digitlab.errors import ConfigError
from digitlab.registry import get_model_info, model_family


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters with Optuna (trials are run directories)",
                       description="Search a model's settings on Optuna, maximising validation accuracy.")
    p.add_argument("--model", default="mlp", help="registered model name (default: mlp)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=KIND:ARGS",
                   help="a searched setting (TrainConfig field or builder parameter): uniform:LOW:HIGH, "
                        "loguniform:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH, choice:A,B,C; repeatable")
    p.add_argument("--space", metavar="TOML", help="the search space as a file: [params] NAME = \"KIND:ARGS\", "
                                                   "and [fixed] settings for every trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed training setting for every trial (a TrainConfig field: epochs=5, train_size=10000)")
    p.add_argument("--trials", type=typed(int, "trials"), default=20, help="the study's trial budget (default 20)")
    p.add_argument("--jobs", type=typed(int, "jobs"), default=1, help="worker processes on this machine")
    p.add_argument("--out", help="the sweep folder: trials/, study.db, leaderboard (default: runs/sweep-MODEL)")
    p.add_argument("--study", help="the study's name (default: the --out folder's name)")
    p.add_argument("--storage", help="an Optuna database URL to share the study (default: sqlite in --out)")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="run every trial to its last epoch")
    p.add_argument("--seed", type=typed(int, "seed"), default=0, help="the sampler's seed (and the trials')")
    p.add_argument("--data-dir", help="folder with the dataset files (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--no-test", dest="test", action="store_false", help="do not score the best trial on test")
    p.set_defaults(func=run, family=lambda args: model_family(args.model))


def base_config(model: str, fixed: dict, seed: int) -> TrainConfig:
    """The model's recipe, then the fixed settings; model_params in JSON when given."""
    spec = get_model_info(model)
    cfg = apply_overrides(TrainConfig(model=model, seed=seed), spec.defaults)
    if "model" in fixed:
        raise ConfigError("set the model with --model, not as a fixed setting")
    return validate(apply_overrides(cfg, fixed))


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def run(args) -> int:
    from digitlab.sweep import Sweep, finish, load_space_file, parse_space, run_sweep
    if args.trials < 1 or args.jobs < 1:
        raise ConfigError(f"--trials and --jobs must be at least 1, got {args.trials} and {args.jobs}")
    fixed = {}
    space = []
    if args.space:
        space, fixed = load_space_file(args.space, args.model)
    if args.param:
        space += parse_space(args.param, args.model)
    if not space:
        raise ConfigError("nothing to search: give --param NAME=KIND:ARGS (repeatable) or --space FILE")
    fixed.update(parse_sets(args.set))
    base = base_config(args.model, fixed, args.seed)
    folder = Path(args.out or f"runs/sweep-{args.model}")
    sweep = Sweep(base=base, space=space, folder=folder, trials=args.trials, study=args.study or "",
                  storage=args.storage or "", prune=args.prune, sampler_seed=args.seed, data_dir=args.data_dir)
    print(f"sweep {sweep.study_name}: {args.model}, {len(space)} parameters, {args.trials} trials, "
          f"{args.jobs} worker(s); study in {sweep.storage_url}", flush=True)
    try:
        started = run_sweep(sweep, jobs=args.jobs)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept in the study; run the same command again to resume",
              file=sys.stderr)
        return 130
    if started == 0:
        print("the study already has its trials; writing the results again")
    result = finish(sweep, evaluate_best=args.test)
    for row in result.rows[:5]:
        val = "-" if row.value is None else f"{100 * row.value:.2f}%"
        print(f"  trial {row.number:>3}  {row.state.lower():<8} {val:>7}  {row.params}")
    if result.best is not None:
        test = "" if result.test_accuracy is None else f", test {100 * result.test_accuracy:.2f}%"
        print(f"best: trial {result.best.number} (val {100 * result.best.value:.2f}%{test}) in "
              f"{folder / result.best.run}")
    print(f"wrote {', '.join(str(folder / f) for f in result.files)}")
    return 0
