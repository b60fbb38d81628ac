"""`digitlab train`: train a registered model into a run directory, then evaluate it.

    digitlab train --model seed-ann --val test               # the tutorial, as published
    digitlab train --model mlp --hidden 512,256 --dropout 0.2,0.5 --l2 1e-4 --batchnorm
    digitlab train --model fastcnn --val 0                   # ~99.2% in about 30 s of CPU
    digitlab train --model bestcnn --augment elastic --seeds 3
    digitlab train --model mlp --schedule cosine --warmup-epochs 1 --label-smoothing 0.1
    digitlab train --model convnet --early-stopping 3 --monitor val_accuracy
    digitlab train --resume runs/20261126-071500-bestcnn-s0  # after Ctrl-C or a killed process
    digitlab train --out runs/mine --overwrite                # replace the digitlab run in runs/mine
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from digitlab.augmentation import PRESETS
from digitlab.cli import typed
from digitlab.config import CHOICES, TrainConfig, apply_overrides, validate
from digitlab.data import SPECS
from digitlab.errors import ConfigError, DigitlabError, RunError
from digitlab.registry import check_params, get_model_info, int_list, model_family
from digitlab.runs import CONFIG, Run, is_seed_group, read_seed_group

# (flag, TrainConfig field, type, help) for the flags that set a config field directly; None type = a switch.
GROUPS = {
    "data": [
        ("--seed", "seed", int, "random seed (default 0)"),
        ("--val", "val", str, "validation images held out of training (default 5000), 0 for none, "
                              "or 'test' as in the tutorial"),
        ("--train-size", "train_size", int, "train on a seeded, stratified sample of N images"),
    ],
    "optimisation": [
        ("--epochs", "epochs", int, "passes over the training set"),
        ("--batch-size", "batch_size", int, "images per gradient step"),
        ("--lr", "lr", float, "(peak) learning rate"),
        ("--optimizer", "optimizer", CHOICES["optimizer"], "the optimiser"),
        ("--momentum", "momentum", float, "sgd momentum (default 0.9)"),
        ("--weight-decay", "weight_decay", float, "decoupled weight decay, any optimizer (adamw defaults to 0.004)"),
        ("--label-smoothing", "label_smoothing", float, "e.g. 0.1; 0 = plain cross-entropy"),
        ("--schedule", "schedule", CHOICES["schedule"], "learning-rate schedule"),
        ("--warmup-epochs", "warmup_epochs", float, "linear warm-up, in epochs (fractions allowed)"),
        ("--step-epochs", "step_epochs", int, "step schedule: decay every N epochs"),
        ("--step-gamma", "step_gamma", float, "step schedule: decay factor (default 0.1)"),
        ("--engine", "engine", CHOICES["engine"], "how epochs run: scan = one compiled JAX program per epoch "
                                                  "(same steps as fit, ~2x faster for small networks), fit = Keras' "
                                                  "model.fit as in the tutorial; auto (default) = scan where it can"),
    ],
    "augmentation (training images only; no flips: a mirrored digit is another symbol)": [
        ("--shift", "aug_shift", float, "max random shift, pixels"),
        ("--rotate", "aug_rotate", float, "max random rotation, degrees"),
        ("--zoom", "aug_zoom", float, "max random zoom, fraction (0.1 = 90%% to 110%%)"),
        ("--elastic-alpha", "aug_elastic_alpha", float, "elastic distortion strength, pixels (0 = off)"),
        ("--elastic-sigma", "aug_elastic_sigma", float, "elastic field smoothness, pixels"),
    ],
    "early stopping and checkpoints": [
        ("--early-stopping", "early_stopping", int, "PATIENCE: stop after that many epochs without improvement; "
                                                    "implies --save-best"),
        ("--monitor", "monitor", CHOICES["monitor"], "the figure early stopping and --save-best watch"),
    ],
}
SWITCHES = [  # (flag, field, value, help): flags that set a boolean field
    ("--save-best", "save_best", True, "keep best.keras, the best epoch by --monitor (the tutorial's ModelCheckpoint)"),
    ("--no-restore-best", "restore_best", False, "end with the last epoch's model even when best.keras is kept"),
    ("--jit-compile", "jit_compile", True, "XLA-compile the TensorFlow train step (measure: often slower for "
                                           "convs on CPU)"),
]
TOGGLES = [  # (flag, field, help): --flag / --no-flag
    ("--nesterov", "nesterov", "sgd Nesterov momentum (default on)"),
    ("--mixed-precision", "mixed_precision", "bfloat16 arithmetic with float32 weights (CPUs with AVX512_BF16; "
                                             "measured ~1.1x faster for fastcnn on TensorFlow here, so off "
                                             "by default)"),
]
# (flag, builder parameter, parse, help): only models whose builder takes the parameter accept the flag.
MODEL_FLAGS = [
    ("--hidden", "hidden", lambda v: int_list(v, "hidden"), "mlp hidden sizes, e.g. 512,256"),
    ("--activation", "activation", str, "mlp activation: relu | tanh | sigmoid | gelu"),
    ("--dropout", "dropout", None, "dropout rate, one for all layers or one per hidden layer (0.2,0.5)"),
    ("--input-dropout", "input_dropout", float, "mlp dropout on the input pixels"),
    ("--l1", "l1", float, "L1 weight penalty, e.g. 1e-5"),
    ("--l2", "l2", float, "L2 weight penalty, e.g. 0.01 as in the tutorial's regularizers.l2(0.01)"),
    ("--max-norm", "max_norm", float, "max-norm constraint on each unit's weights, e.g. 3"),
    ("--widths", "widths", lambda v: int_list(v, "widths"), "CNN channel widths per stage, e.g. 16,32,64"),
]
CONFIG_FIELDS = ([f for group in GROUPS.values() for _, f, _, _ in group] + [f for _, f, _, _ in SWITCHES]
                 + [f for _, f, _ in TOGGLES] + ["dataset"])
MODEL_PARAMS = [param for _, param, _, _ in MODEL_FLAGS] + ["batchnorm"]


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a registered model into a run directory",
                       description="Train a model. Settings default to the model's registered recipe "
                                   "(digitlab models); flags override them.")
    p.add_argument("--model", default="seed-ann", help="registered model name (digitlab models lists them)")
    p.add_argument("--dataset", choices=list(SPECS))
    p.add_argument("--data-dir", help="folder with the dataset files (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", help="the run directory to create (default: RUNS_ROOT/<time>-<model>-s<seed>); "
                                 "it must be empty or new")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out name a folder holding a digitlab run: its files are replaced, any others kept")
    p.add_argument("--runs-root", default="runs", help="where new run directories go (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="skip the ONNX export at the end (model.onnx, checked against Keras on the test set, is what "
                        "predict and serve run without TensorFlow or JAX)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (or --seeds group) from its last "
                                                   "completed epoch, with its saved settings")
    p.add_argument("--devices", type=typed(int, "devices"), metavar="N",
                   help="data-parallel training over N devices (JAX backend: weights replicated, each batch split; "
                        "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices)")
    g = p.add_argument_group("several processes (machines) training one model: run the command once per process")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="process 0's address and a free port, the same for every process (JAX backend: the global "
                        "--batch-size is split over every device of every process; only process 0 writes the run)")
    g.add_argument("--num-processes", type=typed(int, "num-processes"), metavar="N", help="processes in the job")
    g.add_argument("--process-id", type=typed(int, "process-id"), metavar="I", help="this process: 0 to N-1")
    g.add_argument("--timeout", type=typed(float, "timeout"), metavar="SECONDS",
                   help="how long a process waits for the others to start, or for a lost one (default 60)")
    p.add_argument("--tensorboard", action="store_true",
                   help="write Keras' TensorBoard logs into the run (RUN/tensorboard; `tensorboard --logdir RUN`)")
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                   help="log params, per-epoch figures, the report and the model to MLflow (default store: "
                        "sqlite:///RUNS_ROOT/mlflow.db, artifacts in RUNS_ROOT/mlruns; or a tracking URI)")
    p.add_argument("--seeds", type=typed(int, "seeds"), metavar="N",
                   help="train N runs with seeds SEED, SEED+1, ... into one group folder (OUT/s<seed>/, seeds.json); "
                        "print mean and std")
    for title, flags in GROUPS.items():
        g = p.add_argument_group(title)
        for flag, dest, kind, text in flags:
            if isinstance(kind, tuple):
                g.add_argument(flag, dest=dest, choices=kind, help=f"{text}: {' | '.join(kind)}")
            else:
                g.add_argument(flag, dest=dest, type=typed(kind, dest), help=text)
        if title.startswith("optimisation"):
            for flag, dest, text in TOGGLES:
                g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        if title.startswith("augmentation"):
            g.add_argument("--augment", choices=list(PRESETS),
                           help="preset: affine = shift 2 px, rotate 10 deg, zoom 10%%; elastic = affine + Simard's "
                                "elastic distortion (alpha 34, sigma 4); the flags below refine it")
        if title.startswith("early"):
            for flag, dest, value, text in SWITCHES:
                g.add_argument(flag, dest=dest, action="store_const", const=value, help=text)

    g = p.add_argument_group("model parameters (models that take them; digitlab models lists each one's)")
    for flag, dest, parse, text in MODEL_FLAGS:
        g.add_argument(flag, dest=dest, type=typed(parse, dest) if parse in (float, str) else str, help=text)
    g.add_argument("--batchnorm", action="store_const", const=True, help="mlp: batch normalisation per layer")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any builder parameter (VALUE as JSON, else text); repeatable")
    p.set_defaults(func=run, family=_family)


def _family(args) -> str | None:
    if not args.resume:
        return model_family(args.model)
    try:
        return Run(args.resume).family if (Path(args.resume) / CONFIG).exists() else \
            model_family(read_seed_group(args.resume).config.model)
    except RunError:
        return None  # run() reports it


def parse_model_params(args) -> dict:
    """The builder parameters given on the command line, as JSON-friendly values for config.json."""
    params = {}
    for _, key, parse, _ in MODEL_FLAGS:
        raw = getattr(args, key, None)
        if raw is None:
            continue
        if key == "dropout":
            try:
                values = [typed(float, "dropout")(v) for v in str(raw).split(",") if v.strip()]
            except argparse.ArgumentTypeError as exc:  # parsed here, after argparse: a ConfigError like the rest
                raise ConfigError(f"--dropout: {exc}") from None
            params[key] = values[0] if len(values) == 1 else values
        else:
            params[key] = parse(raw)
    if args.batchnorm:
        params["batchnorm"] = True
    for item in args.param:
        if "=" not in item:
            raise ConfigError(f"--param needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw, parse_constant=_no_constant(key.strip()))
        except json.JSONDecodeError:
            params[key.strip()] = raw
        if isinstance(params[key.strip()], float) and not math.isfinite(params[key.strip()]):
            raise ConfigError(f"--param {key.strip()} must be a finite number, got {raw!r}")
    return params


def _no_constant(key: str):
    def refuse(name: str):  # json reads NaN, Infinity and -Infinity as floats; no parameter wants them
        raise ConfigError(f"--param {key} must be a finite number, got {name}")
    return refuse


def train_config_from_args(args) -> TrainConfig:
    """TrainConfig defaults < the model's registered recipe < --augment preset < explicit flags."""
    spec = get_model_info(args.model)
    cfg = apply_overrides(TrainConfig(model=args.model), spec.defaults)
    if getattr(args, "augment", None):
        cfg = apply_overrides(cfg, PRESETS[args.augment])
    cfg = apply_overrides(cfg, {k: getattr(args, k, None) for k in CONFIG_FIELDS})
    params = parse_model_params(args)
    if params:
        check_params(cfg.model, params)
        cfg = apply_overrides(cfg, {"model_params": {**cfg.model_params, **params}})
    return validate(cfg)


def given_training_flags(args) -> list[str]:
    """The training flags the user set (for --resume, which takes none)."""
    flags = [f for group in GROUPS.values() for f, dest, _, _ in group if getattr(args, dest) is not None]
    flags += [f for f, dest, _, _ in SWITCHES if getattr(args, dest) is not None]
    flags += [f for f, dest, _ in TOGGLES if getattr(args, dest) is not None]
    flags += [f for f, dest, _, _ in MODEL_FLAGS if getattr(args, dest) is not None]
    flags += ["--batchnorm"] if args.batchnorm else []
    flags += ["--augment"] if args.augment else []
    flags += ["--param"] if args.param else []
    flags += ["--seeds"] if args.seeds is not None else []
    flags += ["--model"] if args.model != "seed-ann" else []
    flags += ["--dataset"] if args.dataset else []
    flags += ["--out"] if args.out else []
    flags += ["--overwrite"] if args.overwrite else []
    return flags


def run(args) -> int:
    if args.devices is not None and args.resume:
        raise ConfigError("--devices applies to new runs; resume the run without it")
    if (args.tensorboard or args.mlflow is not None) and (args.resume or args.seeds is not None):
        raise ConfigError("--tensorboard and --mlflow log one new run: drop them with --resume or --seeds")
    cluster = _cluster(args)
    if args.resume:
        return _resume(args)
    cfg = train_config_from_args(args)
    if cluster:
        cluster.check(cfg.batch_size)  # a bad address or split is said before the data loads
    if args.devices is not None:
        from digitlab.distribute import use_devices
        print(f"data-parallel over {', '.join(use_devices(args.devices, cfg.batch_size))}", flush=True)
    from digitlab.environment import keras_backend
    seeds = f"seeds {cfg.seed}..{cfg.seed + args.seeds - 1}" if args.seeds else f"seed {cfg.seed}"
    print(f"training {cfg.model} on {cfg.dataset} (backend: {keras_backend()}, {seeds})", flush=True)
    verbose = 0 if args.quiet else 1
    from digitlab.data import load_dataset, prepare_split
    ds = load_dataset(cfg.dataset, data_dir=args.data_dir)
    prepare_split(cfg, ds)  # a bad --val or --train-size is reported before any folder is made
    out = Path(args.out) if args.out else None
    if cluster:
        import dataclasses

        from digitlab.distribute import job_digest
        from digitlab.runs import config_to_json
        job = job_digest(config_to_json(cfg), ds.provenance.get("sha256", ""))
        return _train_in_cluster(dataclasses.replace(cluster, job=job), cfg, out, args, verbose)
    if args.seeds is not None:
        from digitlab.seeds import train_seeds
        return _report_group(lambda: train_seeds(cfg, args.seeds, runs_root=args.runs_root, out=out,
                                                 dataset=ds, verbose=verbose),
                             out, claim=lambda: _claim_group(out, cfg, args.seeds, args.overwrite), export=args.export)
    from digitlab.training import train
    callbacks, logger = [], None
    if args.tensorboard or args.mlflow is not None:  # the folder is made now, so the logs know where to go
        from digitlab import tracking
        from digitlab.runs import new_run_dir
        out = out or new_run_dir(args.runs_root, cfg.model, cfg.seed)
        callbacks = tracking.tensorboard_callbacks(out) if args.tensorboard else []
        if args.mlflow is not None:
            logger = tracking.MlflowLogger(cfg, out, uri=args.mlflow or None)
            callbacks.append(logger)
    return _report_run(lambda: train(cfg, runs_root=args.runs_root, run_dir=out, dataset=ds, verbose=verbose,
                                     overwrite=args.overwrite, callbacks=callbacks), ds, out, export=args.export,
                       logger=logger)


def _cluster(args):
    """The multi-process job the flags describe (digitlab.distribute.Cluster), or None."""
    given = [f for f, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                            ("--process-id", args.process_id)) if v is not None]
    if not given:
        if args.timeout is not None:
            raise ConfigError("--timeout applies to multi-process training: give it with --coordinator")
        return None
    if len(given) < 3:
        raise ConfigError("multi-process training needs --coordinator HOST:PORT, --num-processes N and "
                          f"--process-id I together (got only {', '.join(given)})")
    clash = [f for f, on in (("--resume", args.resume), ("--seeds", args.seeds is not None),
                             ("--devices", args.devices is not None), ("--tensorboard", args.tensorboard),
                             ("--mlflow", args.mlflow is not None)) if on]
    if clash:
        raise ConfigError(f"--coordinator trains one new run over every device of every process; drop "
                          f"{', '.join(clash)} (not supported with several processes)")
    from digitlab.distribute import DEFAULT_TIMEOUT, Cluster
    return Cluster(args.coordinator, args.num_processes, args.process_id,
                   DEFAULT_TIMEOUT if args.timeout is None else args.timeout)


def _train_in_cluster(cluster, cfg: TrainConfig, out: Path | None, args, verbose: int) -> int:
    """Every process trains the same model on its part of each global batch; process 0 writes the run.

    The work runs in a child process, watched from here: JAX ends a process whose coordinator died (or
    that it cannot reach mid-job) with a fatal abort, not an exception, and only a parent can turn that
    into an error that says what happened."""
    import multiprocessing
    import signal

    made = False
    if cluster.writes:  # said now: once joined, an error in one process stops all of them
        from digitlab.runs import claim_folder, lock_run, new_run_dir
        made, out = out is None, out or new_run_dir(args.runs_root, cfg.model, cfg.seed)
        with lock_run(out):
            claim_folder(out, args.overwrite)
    member = multiprocessing.get_context("spawn").Process(  # a fresh interpreter: JAX does not survive fork
        target=_cluster_member, args=(cluster, cfg, out, args.runs_root, args.overwrite, args.data_dir, args.export,
                                      verbose), name=f"digitlab-process-{cluster.process_id}")
    member.start()
    while member.exitcode is None:
        try:
            member.join()
        except KeyboardInterrupt:  # the member has the same Ctrl-C: it marks the run interrupted and exits 130
            continue
    if made and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # made above for a job that never started
    if member.exitcode >= 0:
        return member.exitcode
    from digitlab.distribute import ClusterError
    how = ("JAX's distributed runtime ended it (its message is above): another process of the job stopped, or "
           "the coordinator" if member.exitcode == -signal.SIGABRT else
           f"it was killed by signal {-member.exitcode}; if that was not you, look for another process that stopped "
           "or for the coordinator that")
    lost = ClusterError(f"process {cluster.process_id} of the job at {cluster.coordinator} ended during training: "
                        f"{how} could not be reached. Start all {cluster.num_processes} processes again")
    _mark_failed(out if cluster.writes else None, str(lost))
    raise lost


def _cluster_member(cluster, cfg: TrainConfig, out: Path | None, runs_root: str, overwrite: bool, data_dir,
                    export: bool, verbose: int) -> None:
    """One process of the job, in the child _train_in_cluster watches: join, train, leave; then process 0
    evaluates and exports alone. The other processes train in a scratch folder deleted at the end (saving
    a model is a collective step on JAX, so every process saves when process 0 does)."""
    import tempfile

    from digitlab import distribute
    from digitlab.data import load_dataset
    from digitlab.training import train
    try:
        ds = load_dataset(cfg.dataset, data_dir=data_dir)
        devices = distribute.join_cluster(cluster, cfg.batch_size)
        print(f"process {cluster.process_id} of {cluster.num_processes}: data-parallel over {len(devices)} "
              f"devices ({', '.join(devices)})", flush=True)
        if cluster.writes:
            run = train(cfg, runs_root=runs_root, run_dir=out, dataset=ds, verbose=verbose, overwrite=overwrite)
        else:
            with tempfile.TemporaryDirectory(prefix="digitlab-process-") as scratch:
                train(cfg, run_dir=Path(scratch) / "run", dataset=ds, verbose=verbose)
        distribute.leave_cluster()
    except BaseException as exc:  # noqa: BLE001 - every failure ends this process now (see _abandon)
        _abandon(cluster, exc, out if cluster.writes else None)
    if not cluster.writes:
        print(f"process {cluster.process_id}: training done; process 0 writes the run", flush=True)
        return
    try:
        code = _report_run(lambda: run, ds, None, export=export)
    except DigitlabError as exc:  # the job is over: main()'s usual report, from this child
        from digitlab.cli import fail
        code = fail(str(exc), exc.exit_code)
    sys.exit(code)


def _abandon(cluster, exc: BaseException, folder: Path | None) -> None:
    """Report a failure in a multi-process job and end this process at once: JAX's exit hook would wait for
    the other processes at a shutdown barrier, then abort with a crash dump when a lost one never comes.
    `folder`: process 0's run, marked failed when a lost process left it "running"."""
    import os
    import traceback

    from digitlab.cli import fail
    from digitlab.distribute import ClusterError, peer_failed
    if isinstance(exc, KeyboardInterrupt):
        code = _interrupted()
    elif isinstance(exc, DigitlabError):
        code = fail(str(exc), exc.exit_code)
    elif peer_failed(exc):
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        lost = ClusterError(f"process {cluster.process_id} lost the other processes of the job at "
                            f"{cluster.coordinator} ({first[:200]}): one of them stopped or crashed (its own output "
                            f"says why). Start all {cluster.num_processes} processes again")
        code = fail(str(lost), lost.exit_code)
        _mark_failed(folder, str(lost))
    else:  # a bug: its traceback, as main() would let it through
        traceback.print_exception(exc)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mark_failed(folder: Path | None, reason: str) -> None:
    from digitlab.runs import STATE
    if folder is None or not (folder / STATE).exists():
        return
    run = Run(folder)
    state = run.state
    if state.status == "running":
        state.status, state.error = "failed", reason
        run.write_state(state)


def _claim_group(path: Path, cfg: TrainConfig, seeds: int, overwrite: bool) -> None:
    """A --seeds --out folder: new or empty, the same group again (its finished seeds are kept), or --overwrite."""
    from digitlab.runs import claim_folder
    seed_list = [cfg.seed + i for i in range(seeds)]
    same = (is_seed_group(path) and not overwrite
            and (read_seed_group(path).config, read_seed_group(path).seeds) == (cfg, seed_list))
    if not same:
        claim_folder(path, overwrite)


def _resume(args) -> int:
    extra = given_training_flags(args)
    if extra:
        raise ConfigError(f"--resume continues the run with the settings saved in it; drop {', '.join(extra)} "
                          "(to change settings, start a new run)")
    path = Path(args.resume)
    group = is_seed_group(path)
    if not group and not (path / CONFIG).exists():
        raise RunError(f"{path} is not a run directory or --seeds group (no {CONFIG} or seeds.json)")
    if not group:  # said at once, before the data and the training stack load
        from digitlab.runs import check_resumable, lock_run, remove_run_temporaries
        with lock_run(path):
            remove_run_temporaries(path)
            check_resumable(Run(path))
    from digitlab.environment import keras_backend
    model = read_seed_group(path).config.model if group else Run(path).config.model
    print(f"resuming {path} ({model}, backend: {keras_backend()})", flush=True)
    verbose = 0 if args.quiet else 1
    if group:
        from digitlab.seeds import resume_seeds
        return _report_group(lambda: resume_seeds(path, data_dir=args.data_dir, verbose=verbose), path,
                             export=args.export)
    from digitlab.data import load_dataset
    from digitlab.training import resume
    ds = load_dataset(Run(path).config.dataset, data_dir=args.data_dir)
    return _report_run(lambda: resume(path, dataset=ds, verbose=verbose), ds, path, export=args.export)


def _locked(folder: Path | None):
    """Hold `folder` against other processes for the whole command, training and evaluation alike (a
    new folder under --runs-root is locked by training itself)."""
    from digitlab.runs import lock_run
    return lock_run(folder) if folder else contextlib.nullcontext()


def _report_run(train_one, dataset, folder: Path | None, export: bool = True, logger=None) -> int:
    """Train one run, evaluate it, print its summary, export it to ONNX; Ctrl-C keeps what was done.
    `logger`: a tracking.MlflowLogger, finished with the evaluated run (or marked killed or failed)."""
    from digitlab.cli.summary import print_summary
    from digitlab.evaluation import evaluate_run
    from digitlab.export import start_export
    with contextlib.ExitStack() as stack:
        with _locked(folder):
            try:
                run = train_one()
            except KeyboardInterrupt:
                if logger:
                    logger.finish(status="KILLED")
                return _interrupted()
            except Exception:
                if logger:
                    logger.finish(status="FAILED")
                raise
            # Where the export needs a process of its own (Keras' converters on TensorFlow, training on JAX), it
            # starts now and converts while this one evaluates. It writes only model.onnx and export.json; stopped
            # if evaluation fails or is interrupted.
            started = stack.enter_context(start_export([run], dataset=dataset)) if export else None
            evaluate_run(run, dataset=dataset)
            if logger:
                logger.finish(run)
        print_summary(run)
        if export:
            from digitlab.cli.export import export_after
            export_after([run], dataset=dataset, started=started)
    return 0


def _report_group(train_group, folder: Path | None, claim=None, export: bool = True) -> int:
    from digitlab.cli.summary import print_seeds
    with _locked(folder):
        if claim and folder:
            claim()
        try:
            group = train_group()
        except KeyboardInterrupt:
            return _interrupted()
    print_seeds(group)
    if export:
        from digitlab.cli.export import export_after
        export_after(group.runs)
    return 0


def _interrupted() -> int:
    print("\ninterrupted: the run keeps its last completed epoch; continue it with "
          "`digitlab train --resume RUN`", file=sys.stderr)
    return 130
