"""`digitlab compare`: the tutorial's table of algorithms, measured on the same data.

    digitlab compare --quick          # every model on 10,000 images: ~100 s on the project's shared 2-core machine
    digitlab compare                  # all 60,000: ~14 min there (bench/compare_full.md has the table)
    digitlab compare --models logreg,knn,seed-ann --out runs/cmp
    digitlab compare --max-train svm=20000 --set xgboost.n_estimators=100
    digitlab compare --retrain                                # ignore the saved models, train again
    digitlab compare --out copied/compare --trust-folder      # load models a folder you copied in holds
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from digitlab import classic, registry
from digitlab import comparison as cmp
from digitlab.cli import typed
from digitlab.data import SPECS

HEARTBEAT_S = 30.0  # seconds between "still training" lines while a classic model fits
DATASETS = tuple(SPECS)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train classic models and networks on the same data; write a leaderboard")
    p.add_argument("--models", type=model_list, default=cmp.DEFAULT_MODELS, metavar="NAME[,NAME...]",
                   help=f"comma-separated: {', '.join(classic.CLASSIC)}, kmeans (= {','.join(cmp.ALIASES['kmeans'])}), "
                        f"kmeans-N, classic (all classic), or a registered network: "
                        f"{', '.join(registry.model_names())} (default: {','.join(cmp.DEFAULT_MODELS)})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help=f"train every model on a {cmp.QUICK_TRAIN_SIZE:,}-image subset")
    size.add_argument("--train-size", type=at_least_one("--train-size", "image"), metavar="N",
                      help="train every model on a stratified subset of N images")
    p.add_argument("--max-train", action="append", type=compare_type(cmp.parse_max_train), metavar="MODEL=N",
                   help="cap one model's training images, e.g. svm=20000 (repeatable or comma-separated)")
    p.add_argument("--test-size", type=at_least_one("--test-size", "image"), metavar="N",
                   help="score on a stratified subset of N test images (smoke runs only)")
    p.add_argument("--set", action="append", type=compare_type(cmp.parse_settings), metavar="MODEL.SETTING=VALUE",
                   dest="settings", help="override a classic model's hyperparameter, e.g. xgboost.n_estimators=100")
    p.add_argument("--epochs", type=at_least_one("--epochs", "epoch"), metavar="N",
                   help="epochs for the networks (default: each network's own)")
    p.add_argument("--dataset", default="mnist", choices=DATASETS,
                   help="which dataset (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with the dataset files (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--seed", type=typed(int, "--seed"), default=0, help="random seed (default 0)")
    p.add_argument("--out", default="runs/compare",
                   help="output folder, one subfolder per model (default: runs/compare)")
    p.add_argument("--retrain", action="store_true", help="train again even where a saved model matches")
    p.add_argument("--trust-folder", action="store_true",
                   help="also re-use saved models in --out that digitlab on this machine did not write (a folder "
                        "you copied in yourself). Their .joblib files are pickles: loading one runs any code it "
                        "holds, so only for folders you trust. Once loaded they count as this machine's")
    p.add_argument("--quiet", action="store_true", help="no per-model progress")
    p.set_defaults(func=cmd_compare, family=family)


# ---------------------------------------------------------------- argument types

def model_list(text: str) -> tuple[str, ...]:
    """"logreg, knn,," -> ("logreg", "knn"); the names are checked with everything else (check_config)."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def at_least_one(flag: str, unit: str):
    """An argparse type= for a count that must be 1 or more: "--epochs must be at least 1 epoch, got 0"."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number of {unit}s, got {raw!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1 {unit}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def compare_type(parse):
    """An argparse type= from one of digitlab.comparison's parsers: its CompareError becomes the usage error."""
    def wrapped(raw: str):
        try:
            return parse(raw)
        except cmp.CompareError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


def config_from_args(args) -> cmp.CompareConfig:
    max_train: dict[str, int] = {}
    for caps in args.max_train or []:
        max_train.update(caps)
    params: dict[str, dict] = {}
    for settings in args.settings or []:
        for name, values in settings.items():
            params.setdefault(name, {}).update(values)
    return cmp.CompareConfig(
        models=args.models, dataset=args.dataset,
        train_size=cmp.QUICK_TRAIN_SIZE if args.quick else (args.train_size or 0),
        test_size=args.test_size or 0, max_train=max_train, params=params, neural_epochs=args.epochs or 0,
        seed=args.seed, retrain=args.retrain, trust_folder=args.trust_folder)


def family(args) -> str | None:
    """The family of the networks compared, for the Keras backend (read once per process, so one choice
    for every network in the table): theirs if they share one, else the default."""
    families = {registry.model_family(m) for m in cmp.expand_models(args.models)} - {None}
    return families.pop() if len(families) == 1 else None


# ---------------------------------------------------------------- the command

def cmd_compare(args) -> int:
    # OpenMP threads that wait by spinning crawl when the cores are shared: XGBoost's 2 threads took
    # 41 s instead of 7 s for 20 rounds on 10,000 images under a load of 3 on this project's 2 cores.
    # OpenMP reads this once, when scikit-learn first loads it, hence here, before any import of it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cfg = config_from_args(args)
    printer = ProgressPrinter(quiet=args.quiet)
    try:  # a bad setting, a tampered model or missing data: a DigitlabError, reported by digitlab.cli.main
        board = cmp.run_comparison(cfg, args.out, progress=printer, verbose=0 if args.quiet else 1,
                                   data_dir=args.data_dir)
    except KeyboardInterrupt:
        print("\ninterrupted: the models finished so far are saved; run the same command to pick up from there",
              file=sys.stderr)
        return 130
    finally:
        printer.stop()

    print()
    print(cmp.leaderboard_markdown(board))
    print(f"leaderboard: {args.out}/leaderboard.html (also .md, .csv, .json, .png); "
          f"total {board.total_seconds:.0f} s")
    return 0


class ProgressPrinter:
    """Prints comparison events; while a classic model fits or predicts, a line every HEARTBEAT_S."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._timer: threading.Timer | None = None
        self._generation = 0  # a beat from a stage that has ended must not print or reschedule
        self._last_round_print = 0.0

    def __call__(self, event: str, **info) -> None:
        if event == "plan":
            self._plan(info)
        elif event == "model-start":
            plan = info["plan"]
            self._say(f"[{info['index']}/{info['total']}] {plan.name}: {plan.description}")
        elif event == "stage":
            self._stage(info)
        elif event == "round":
            now = time.monotonic()
            if info["done"] == info["total"] or now - self._last_round_print >= HEARTBEAT_S / 3:
                self._last_round_print = now
                self._say(f"    {info['model']}: boosting round {info['done']}/{info['total']} "
                          f"({self._elapsed():.0f} s)")
        elif event == "model-end":
            self.stop()
            r: cmp.Row = info["row"]
            self._say(f"    {r.model}: {r.test_accuracy:.2%} test accuracy (95% CI {r.ci95_low:.2%}–"
                      f"{r.ci95_high:.2%}); train {r.train_seconds:.1f} s{' (recorded)' if r.reused else ''}, "
                      f"predict {r.predict_seconds_per_10k:.2f} s/10k, {cmp.human_size(r.size_bytes)}")

    def _plan(self, info) -> None:
        plans = info["plans"]
        sizes = sorted({p.train_images for p in plans}, reverse=True)
        capped = ", ".join(f"{p.name}: {p.train_images:,}" for p in plans if p.train_images != sizes[0])
        self._say(f"comparing {len(plans)} models: {sizes[0]:,} training images"
                  f"{f' ({capped})' if capped else ''}, {info['test_images']:,} test images -> {info['out_dir']}")
        reused = [p.name for p in plans if p.reuse]
        if reused:
            self._say(f"re-using saved models (SHA-256 checked): {', '.join(reused)}; --retrain to train them again")
        adopted = [p.name for p in plans if p.adopt]
        if adopted:
            self._say(f"trusting saved models this machine did not write (--trust-folder): {', '.join(adopted)}; "
                      f"their manifests are signed as this machine's once they load")
        foreign = [p.name for p in plans if p.foreign]
        if foreign:
            self._say(f"not re-using saved models this machine did not write: {', '.join(foreign)}. Their "
                      f"manifests are not signed by digitlab here (a folder copied in, or saved by a digitlab "
                      f"before signing), so they are trained again and their files are never loaded. If you "
                      f"copied this folder in yourself and trust it, pass --trust-folder to load them instead")

    def _stage(self, info) -> None:
        self.stop()
        stage, model = info["stage"], info["model"]
        self._stage_start = time.monotonic()
        if stage == "load":
            self._say(f"    {model}: loading the saved model {info['path']}")
            return
        what = (f"training on {info['images']:,} images" if stage == "train"
                else f"predicting {info['images']:,} test images")
        self._say(f"    {model}: {what}")
        self._what = f"{model}: still {what.split(' ')[0]}"
        self._schedule()

    def _schedule(self) -> None:
        if self.quiet:
            return
        self._timer = threading.Timer(HEARTBEAT_S, self._beat, args=(self._generation,))
        self._timer.daemon = True
        self._timer.start()

    def _beat(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._say(f"    {self._what}, {self._elapsed():.0f} s so far")
        self._schedule()

    def _elapsed(self) -> float:
        return time.monotonic() - getattr(self, "_stage_start", time.monotonic())

    def stop(self) -> None:
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
