"""Hyperparameter sweeps on Optuna: each trial is a normal run directory, the study lives in a database.

    space = parse_space(["lr=loguniform:1e-4:1e-2", "dropout=uniform:0:0.5", "hidden=choice:128,256,512"], "mlp")
    sweep = Sweep(base=TrainConfig(model="mlp", epochs=5), space=space, folder="runs/sweep-mlp", trials=20)
    run_sweep(sweep, jobs=2)          # 2 worker processes on this machine share the study (SQLite by default)
    finish(sweep)                     # leaderboard.md/.html, best.json, plots, the best trial scored on test once

The objective is the best epoch's validation accuracy, never test. A parameter name is a TrainConfig
field (lr, batch_size, weight_decay, ...) or one of the model's builder parameters (digitlab.registry),
so every registered model and training option can be searched. The study is stored in
FOLDER/study.db unless a storage URL is given (any database Optuna supports: other machines join with
the same --study and --storage). Trials stop early through MedianPruner when pruning is on: a Keras
callback reports each epoch's val_accuracy, and a pruned trial's run is marked "pruned". A trial that
fails (ConfigError, TrainingError: a diverged loss, ...) is recorded with its reason and the sweep goes
on. Ctrl-C marks the running trials failed as "interrupted"; the same command again resumes the study
and runs the trials still owed (interrupted ones are run again, not counted).
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import math
import multiprocessing
import os
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import optuna

from digitlab import data as data_mod
from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.config import TrainConfig, apply_overrides, field_types, validate
from digitlab.errors import ConfigError, DigitlabError
from digitlab.registry import check_params, model_params
from digitlab.runs import CONFIG, STATE, Run, RunState, config_to_json

KINDS = ("uniform", "loguniform", "int", "logint", "choice")
NOT_SEARCHABLE = {"model", "model_params", "dataset", "seed", "val", "train_size"}  # fixed for a whole study
STUDY_DB = "study.db"
INTERRUPTED = "interrupted"  # the user attr "error" of a trial cut short by Ctrl-C: run again on resume


@dataclass(frozen=True)
class Param:
    name: str  # a TrainConfig field or a builder parameter of the model
    kind: str  # uniform | loguniform | int | logint | choice
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    target: str = "config"  # "config" (TrainConfig field) | "model" (model_params)

    def suggest(self, trial: optuna.Trial):
        if self.kind == "choice":  # Optuna stores choices as JSON-able scalars; lists go in as JSON text
            raw = trial.suggest_categorical(self.name, [_storable(c) for c in self.choices])
            return json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else raw
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.kind == "logint")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")


def _storable(value):
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Sweep:
    base: TrainConfig  # the model's recipe plus fixed overrides; each trial changes the searched fields
    space: list[Param]
    folder: Path  # trials/<trial-NNNN>/ run directories, study.db, leaderboard, plots
    trials: int = 20  # the study's budget: completed + pruned + failed trials (interrupted ones don't count)
    study: str = ""  # the study's name (default: the folder's name)
    storage: str = ""  # a database URL (default: sqlite:///FOLDER/study.db)
    prune: bool = True  # MedianPruner on per-epoch val_accuracy
    sampler_seed: int = 0
    data_dir: str | None = None

    @property
    def study_name(self) -> str:
        return self.study or self.folder.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / STUDY_DB).resolve()}"


# ---------------------------------------------------------------- the search space

def parse_space(items: list[str], model: str) -> list[Param]:
    """NAME=KIND:ARGS strings (uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH,
    choice:A,B,C) checked against the model's settings; ConfigError says what is wrong."""
    params = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ConfigError(f"search parameter {item!r} should read NAME=KIND:ARGS, e.g. lr=loguniform:1e-4:1e-2")
        params.append(parse_param(name.strip(), spec.strip(), model))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"search parameter {next(n for n in names if names.count(n) > 1)!r} is given twice")
    if not params:
        raise ConfigError("the search space is empty: give --param NAME=KIND:ARGS (or a --space TOML file)")
    return params


def load_space_file(path: str | Path, model: str) -> tuple[list[Param], dict]:
    """A TOML file: [params] NAME = "KIND:ARGS" lines, and optional [fixed] settings for every trial."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the search space {path}: {exc}") from None
    unknown = set(doc) - {"params", "fixed"}
    if unknown:
        raise ConfigError(f"{path} has the table {sorted(unknown)[0]!r}; it takes [params] and [fixed]")
    params = doc.get("params", {})
    bad = [k for k, v in params.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{path}: [params] {bad[0]} should be a string like \"loguniform:1e-4:1e-2\"")
    return parse_space([f"{k}={v}" for k, v in params.items()], model), dict(doc.get("fixed", {}))


def parse_param(name: str, spec: str, model: str) -> Param:
    config_fields = field_types(TrainConfig)
    builder = model_params(model)
    if name in NOT_SEARCHABLE:
        raise ConfigError(f"{name} is fixed for a whole sweep and cannot be searched (set it with its own flag)")
    if name in config_fields:
        target, kind_of = "config", config_fields[name]
    elif name in builder:
        target, kind_of = "model", type(builder[name])
    else:
        searchable = sorted(set(config_fields) - NOT_SEARCHABLE) + sorted(builder)
        raise ConfigError(f"unknown search parameter {name!r} for model {model!r}; searchable: {', '.join(searchable)}")
    kind, _, args = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"search parameter {name}: unknown kind {kind!r}; use one of {', '.join(KINDS)} "
                          f"(e.g. {name}=uniform:0:0.5 or {name}=choice:a,b)")
    if kind == "choice":
        values = [_parse_choice(v.strip()) for v in args.split(",") if v.strip()] if args else []
        if len(values) < 2:
            raise ConfigError(f"search parameter {name}: choice needs at least two values, e.g. {name}=choice:1,2")
        if target == "config":  # each value must parse as the field's type
            values = [getattr(apply_overrides(TrainConfig(), {name: v}), name) for v in values]
        return Param(name, kind, choices=tuple(values), target=target)
    if kind_of in (str, bool, dict):
        raise ConfigError(f"search parameter {name} is not a number: search it with {name}=choice:A,B")
    bounds = args.split(":")
    try:
        low, high = (float(b) for b in bounds)
    except ValueError:
        raise ConfigError(f"search parameter {name}: {kind} needs two numbers, LOW:HIGH, got {args!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"search parameter {name}: {kind} needs finite LOW < HIGH, got {low:g}:{high:g}")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"search parameter {name}: {kind} needs LOW > 0, got {low:g}")
    if kind in ("int", "logint") and (low != int(low) or high != int(high)):
        raise ConfigError(f"search parameter {name}: {kind} needs whole numbers, got {args!r}")
    if kind in ("uniform", "loguniform") and kind_of is int:
        raise ConfigError(f"search parameter {name} takes whole numbers: use {name}=int:LOW:HIGH")
    return Param(name, kind, low, high, target=target)


def _parse_choice(raw: str):
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def trial_config(base: TrainConfig, values: dict, space: list[Param]) -> TrainConfig:
    """The base config with a trial's values put where they belong (config field or model parameter)."""
    by_name = {p.name: p for p in space}
    config = {k: v for k, v in values.items() if by_name[k].target == "config"}
    builder = {k: v for k, v in values.items() if by_name[k].target == "model"}
    cfg = apply_overrides(base, config)
    if builder:
        cfg = dataclasses.replace(cfg, model_params={**cfg.model_params, **builder})
    return cfg


def check_space(base: TrainConfig, space: list[Param]) -> None:
    """Up front: the corners of the space (all lows, all highs, each choice) make valid configs."""
    for pick in ("low", "high"):
        values = {p.name: (p.choices[0 if pick == "low" else -1] if p.kind == "choice" else
                           (int(getattr(p, pick)) if p.kind in ("int", "logint") else getattr(p, pick)))
                  for p in space}
        cfg = trial_config(base, values, space)
        try:
            validate(cfg)
            check_params(cfg.model, cfg.model_params)
        except ConfigError as exc:
            raise ConfigError(f"the search space gives an invalid setting at its {pick} end: {exc}") from None


# ---------------------------------------------------------------- the study

def open_study(sweep: Sweep) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, the plots
    sweep.folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(
        sweep.storage_url, heartbeat_interval=30, grace_period=120,  # a killed worker's trial is failed, then redone
        engine_kwargs={"connect_args": {"timeout": 60}} if sweep.storage_url.startswith("sqlite") else None)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if sweep.prune
              else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=sweep.study_name, storage=storage, direction="maximize",
                               load_if_exists=True, pruner=pruner,
                               sampler=optuna.samplers.TPESampler(seed=sweep.sampler_seed))


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up the budget: finished, pruned, or failed for a reason of its own."""
    state = optuna.trial.TrialState
    if trial.state in (state.COMPLETE, state.PRUNED):
        return True
    return trial.state == state.FAIL and trial.user_attrs.get("error", INTERRUPTED) != INTERRUPTED


def check_same_study(sweep: Sweep) -> None:
    """A study keeps the settings and space it was started with: joining it with others is a ConfigError."""
    study = open_study(sweep)
    mine = {"base": config_to_json(sweep.base), "space": [dataclasses.asdict(p) for p in sweep.space]}
    mine = json.loads(json.dumps(mine))  # tuples as lists, as the database gives them back
    if "base" not in study.user_attrs:
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return
    for key, value in mine.items():
        if study.user_attrs.get(key) != value:
            raise ConfigError(f"the study {sweep.study_name!r} in {sweep.storage_url} was started with another "
                              f"{'search space' if key == 'space' else 'base configuration'}; rerun it with the "
                              "same settings to resume it, or start a new study (--study NAME or another --out)")


def remaining(sweep: Sweep) -> int:
    return max(0, sweep.trials - sum(counted(t) for t in open_study(sweep).get_trials(deepcopy=False)))


class PruningCallback(keras.callbacks.Callback):
    """Report each epoch's val_accuracy to the trial; raise optuna.TrialPruned when the pruner says so.

    digitlab.training runs one fit per epoch, so `epoch` here is the run's epoch (0-based)."""

    epoch_level = True  # only on_epoch_end: the scan engine can run it (digitlab.engines.needs_batches)

    def __init__(self, trial: optuna.Trial, monitor: str = "val_accuracy"):
        super().__init__()
        self.trial, self.monitor = trial, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}: {self.monitor} {float(value):.4f}")


def objective(sweep: Sweep, dataset: data_mod.Dataset):
    from digitlab.training import train

    def run_trial(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial) for p in sweep.space}
        path = sweep.folder / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(path.relative_to(sweep.folder)))
        start = time.perf_counter()
        try:
            cfg = trial_config(sweep.base, values, sweep.space)
            run = train(cfg, run_dir=path, dataset=dataset, verbose=0, callbacks=[PruningCallback(trial)])
        except optuna.TrialPruned as exc:
            _mark(path, "pruned", str(exc))
            trial.set_user_attr("error", str(exc))
            raise
        except DigitlabError as exc:  # a diverged loss, a bad combination: recorded, and the sweep goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            if (path / CONFIG).exists():
                _mark(path, "failed", str(exc))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", INTERRUPTED)
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        vals = [r.val_accuracy for r in run.history if r.val_accuracy is not None]
        if not vals:
            raise ConfigError("the sweep's objective is validation accuracy: hold images out (val > 0, not test)")
        return max(vals)

    return run_trial


def _mark(path: Path, status: str, why: str) -> None:
    run = Run(path)
    state = run.state if (path / STATE).exists() else RunState()
    run.write_state(dataclasses.replace(state, status=status, error=why))


def work(sweep: Sweep, n: int, worker: int = 0) -> None:
    """Run `n` trials of the study in this process (what each --jobs worker does)."""
    study = open_study(dataclasses.replace(sweep, sampler_seed=sweep.sampler_seed + worker))
    dataset = data_mod.load_dataset(sweep.base.dataset, data_dir=sweep.data_dir)
    study.optimize(objective(sweep, dataset), n_trials=n, catch=(DigitlabError,), gc_after_trial=True)


def _worker(sweep: Sweep, n: int, worker: int) -> None:
    # The backend: KERAS_BACKEND, inherited from the parent (run_sweep sets it). Ctrl-C: the trial is
    # recorded as interrupted, and the parent reports it.
    with contextlib.suppress(KeyboardInterrupt):
        work(sweep, n, worker)


def run_sweep(sweep: Sweep, jobs: int = 1, timeout: float | None = None) -> int:
    """Run the trials the study still owes, split over `jobs` processes; returns how many were started.

    KeyboardInterrupt stops the workers (their running trials are recorded as interrupted) and is re-raised."""
    if sweep.base.val in ("0", "test"):
        raise ConfigError(f"a sweep chooses by validation accuracy, never test: set val to a number of held-out "
                          f"images (e.g. 5000), not {sweep.base.val!r}")
    check_space(sweep.base, sweep.space)
    check_same_study(sweep)
    todo = remaining(sweep)
    if todo == 0:
        return 0
    if jobs <= 1:
        work(sweep, todo)
        return todo
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: JAX and TF don't survive fork
    shares = [todo // jobs + (i < todo % jobs) for i in range(jobs)]
    os.environ["KERAS_BACKEND"] = keras.backend.backend()  # the workers use the parent's backend
    procs = [ctx.Process(target=_worker, args=(sweep, n, i))
             for i, n in enumerate(shares) if n]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
    except KeyboardInterrupt:
        for p in procs:  # Ctrl-C reached them too (same process group); give them time to record it
            p.join(30)
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise DigitlabError(f"{len(failed)} sweep worker(s) ended with exit code {failed[0]}; the study keeps their "
                            "finished trials: run the same command again to go on")
    return todo


# ---------------------------------------------------------------- the results

@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # best validation accuracy
    params: dict
    run: str | None  # relative to the sweep folder
    seconds: float | None
    error: str | None


@dataclass
class SweepResult:
    rows: list[TrialRow]  # best first, then the rest in trial order
    best: TrialRow | None
    best_config: TrainConfig | None
    test_accuracy: float | None  # the best trial on test, scored once
    files: list[str] = field(default_factory=list)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    rows = [TrialRow(t.number, t.state.name, t.value, dict(t.params), t.user_attrs.get("run"),
                     t.user_attrs.get("seconds"), t.user_attrs.get("error")) for t in study.get_trials(deepcopy=False)]
    done = sorted((r for r in rows if r.value is not None), key=lambda r: -r.value)
    return done + [r for r in rows if r.value is None]


def finish(sweep: Sweep, evaluate_best: bool = True) -> SweepResult:
    """Leaderboard (Markdown, HTML), best.json, plots; the best trial scored on test once (kept in its run)."""
    study = open_study(sweep)
    rows = trial_rows(study)
    best = next((r for r in rows if r.state == "COMPLETE"), None)
    result = SweepResult(rows, best, None, None)
    if best is not None:
        run = Run(sweep.folder / best.run)
        result.best_config = run.config
        if evaluate_best:
            if run.metrics is None:  # scored once: a rerun of a finished sweep reads the figure back
                from digitlab.evaluation import evaluate_run
                evaluate_run(run, dataset=data_mod.load_dataset(run.config.dataset, data_dir=sweep.data_dir),
                             with_diagnostics=False)
            result.test_accuracy = run.metrics.test_accuracy
        write_json_atomic(sweep.folder / "best.json", {"trial": best.number, "val_accuracy": best.value,
                                                       "test_accuracy": result.test_accuracy, "params": best.params,
                                                       "run": best.run, "config": config_to_json(run.config)})
        result.files.append("best.json")
    write_text_atomic(sweep.folder / "leaderboard.md", leaderboard_markdown(rows, sweep, result))
    write_text_atomic(sweep.folder / "leaderboard.html", leaderboard_html(rows, sweep, result))
    result.files += ["leaderboard.md", "leaderboard.html"]
    result.files += _plots(study, sweep.folder)
    return result


def _plots(study: optuna.Study, folder: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("history.png", ovm.plot_optimization_history, 1)]
    if len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:  # importances need variation
        plots.append(("importances.png", ovm.plot_param_importances, 2))
    for name, plot, needed in plots:
        if len(complete) < needed:
            continue
        try:
            ax = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances when a parameter never varied
            continue
        ax.figure.tight_layout()
        ax.figure.savefig(folder / name, dpi=110)
        plt.close(ax.figure)
        made.append(name)
    return made


def _fmt(row: TrialRow) -> list[str]:
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.params.items())
    return [str(row.number), row.state.lower(), "-" if row.value is None else f"{100 * row.value:.2f}%", params,
            "-" if row.seconds is None else f"{row.seconds:.0f}s", row.run or "-", row.error or ""]


HEADER = ["trial", "state", "best val acc", "params", "time", "run", "note"]


def _summary(sweep: Sweep, result: SweepResult) -> str:
    if result.best is None:
        return "No trial has completed yet."
    test = "" if result.test_accuracy is None else f"; on test (once, at the end): {100 * result.test_accuracy:.2f}%"
    return f"Best: trial {result.best.number}, validation accuracy {100 * result.best.value:.2f}%{test}."


def leaderboard_markdown(rows: list[TrialRow], sweep: Sweep, result: SweepResult) -> str:
    lines = [f"# Sweep {sweep.study_name}: {sweep.base.model}", "", _summary(sweep, result), "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _fmt(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def leaderboard_html(rows: list[TrialRow], sweep: Sweep, result: SweepResult) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _fmt(r)) + "</tr>\n" for r in rows)
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    title = html.escape(f"Sweep {sweep.study_name}: {sweep.base.model}")
    return (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
            f"<h1>{title}</h1><p>{html.escape(_summary(sweep, result))}</p>"
            f"<table><tr>{head}</tr>\n{cells}</table>"
            + "".join(f'<p><img src="{n}" alt="{n}"></p>' for n in ("history.png", "importances.png")
                      if (sweep.folder / n).exists()))
