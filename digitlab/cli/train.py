"""`digitlab data`, `digitlab models`, `digitlab train` and `digitlab evaluate`.

    digitlab models                                          # the registry: families, recipes, parameters
    digitlab train --model seed-ann --val test               # the tutorial, as published
    digitlab train --model mlp --hidden 512,256 --dropout 0.2,0.5 --l2 1e-4 --batchnorm
    digitlab train --model fastcnn --val 0                   # ~99.2% in about 30 s of CPU
    digitlab train --model bestcnn --augment elastic --seeds 3
    digitlab train --model mlp --schedule cosine --warmup-epochs 1 --label-smoothing 0.1
    digitlab train --model convnet --early-stopping 3 --monitor val_accuracy
    digitlab train --resume runs/20261126-071500-bestcnn-s0  # after Ctrl-C or a killed process
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitlab.backend import choose_backend
from digitlab.cli import fail

# CLI flag -> TrainConfig field, for the flags that set a config field directly.
CONFIG_FLAGS = ["dataset", "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay",
                "label_smoothing", "schedule", "warmup_epochs", "step_epochs", "step_gamma", "seed", "val",
                "train_size", "aug_shift", "aug_rotate", "aug_zoom", "aug_elastic_alpha", "aug_elastic_sigma",
                "early_stopping", "monitor", "save_best", "restore_best", "jit_compile", "mixed_precision"]
# CLI flag -> model builder parameter (only models whose builder takes it accept it).
MODEL_FLAGS = ["hidden", "activation", "dropout", "input_dropout", "batchnorm", "l1", "l2", "max_norm", "widths"]


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="load a dataset, print its provenance and class counts, write a sample grid")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the four IDX files or mnist.npz (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", default="samples.png", help="PNG grid of sample digits to write (default: samples.png)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("models", help="list the registered models, their recipes and parameters")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a registered model into a run directory",
                       description="Train a model. Settings default to the model's registered recipe "
                                   "(digitlab models); flags override them.")
    p.add_argument("--model", default="seed-ann", help="registered model name (digitlab models lists them)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the dataset files (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", help="the run directory to create (default: RUNS_ROOT/<time>-<model>-s<seed>)")
    p.add_argument("--runs-root", default="runs", help="where new run directories go (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (or --seeds group) from its last "
                                                   "completed epoch, with its saved settings")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="train N runs with seeds SEED, SEED+1, ... into one group folder (OUT/s<seed>/, seeds.json); "
                        "print mean and std")

    g = p.add_argument_group("data")
    g.add_argument("--seed", help="random seed (default 0)")
    g.add_argument("--val", help="validation images held out of training (default 5000), 0 for none, "
                                 "or 'test' as in the tutorial")
    g.add_argument("--train-size", dest="train_size", help="train on a stratified subset of N images")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", help="passes over the training set")
    g.add_argument("--batch-size", dest="batch_size", help="images per gradient step")
    g.add_argument("--lr", help="(peak) learning rate")
    g.add_argument("--optimizer", help="adam | adamw | sgd | rmsprop")
    g.add_argument("--momentum", help="sgd momentum (default 0.9)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="sgd Nesterov momentum (default on)")
    g.add_argument("--weight-decay", dest="weight_decay", help="decoupled weight decay, any optimizer (adamw defaults to 0.004)")
    g.add_argument("--label-smoothing", dest="label_smoothing", help="e.g. 0.1; 0 = plain cross-entropy")
    g.add_argument("--schedule", help="learning-rate schedule: constant | step | cosine | onecycle")
    g.add_argument("--warmup-epochs", dest="warmup_epochs", help="linear warm-up, in epochs (fractions allowed)")
    g.add_argument("--step-epochs", dest="step_epochs", help="step schedule: decay every N epochs")
    g.add_argument("--step-gamma", dest="step_gamma", help="step schedule: decay factor (default 0.1)")
    g.add_argument("--jit-compile", dest="jit_compile", action="store_const", const="true",
                   help="XLA-compile the TensorFlow train step (measure: often slower for convs on CPU)")
    g.add_argument("--mixed-precision", dest="mixed_precision", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 arithmetic with float32 weights (CPUs with AVX512_BF16; measured ~1.1x faster "
                        "for fastcnn on TensorFlow here, so off by default)")

    g = p.add_argument_group("augmentation (training images only; no flips: a mirrored digit is another symbol)")
    g.add_argument("--augment", choices=["none", "affine", "elastic"],
                   help="preset: affine = shift 2 px, rotate 10 deg, zoom 10%%; elastic = affine + Simard's "
                        "elastic distortion (alpha 34, sigma 4); the flags below refine it")
    g.add_argument("--shift", dest="aug_shift", help="max random shift, pixels")
    g.add_argument("--rotate", dest="aug_rotate", help="max random rotation, degrees")
    g.add_argument("--zoom", dest="aug_zoom", help="max random zoom, fraction (0.1 = 90%% to 110%%)")
    g.add_argument("--elastic-alpha", dest="aug_elastic_alpha", help="elastic distortion strength, pixels (0 = off)")
    g.add_argument("--elastic-sigma", dest="aug_elastic_sigma", help="elastic field smoothness, pixels")

    g = p.add_argument_group("early stopping and checkpoints")
    g.add_argument("--early-stopping", dest="early_stopping", metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement; implies --save-best")
    g.add_argument("--monitor", help="val_loss (default) | val_accuracy | loss | accuracy")
    g.add_argument("--save-best", dest="save_best", action="store_const", const="true",
                   help="keep best.keras, the best epoch by --monitor (the tutorial's ModelCheckpoint)")
    g.add_argument("--no-restore-best", dest="restore_best", action="store_const", const="false",
                   help="end with the last epoch's model even when best.keras is kept")

    g = p.add_argument_group("model parameters (models that take them; digitlab models lists each one's)")
    g.add_argument("--hidden", help="mlp hidden sizes, e.g. 512,256")
    g.add_argument("--activation", help="mlp activation: relu | tanh | sigmoid | gelu")
    g.add_argument("--dropout", help="dropout rate, one for all layers or one per hidden layer (0.2,0.5)")
    g.add_argument("--input-dropout", dest="input_dropout", help="mlp dropout on the input pixels")
    g.add_argument("--batchnorm", action="store_const", const=True, help="mlp: batch normalisation per layer")
    g.add_argument("--l1", help="L1 weight penalty, e.g. 1e-5")
    g.add_argument("--l2", help="L2 weight penalty, e.g. 0.01 as in the tutorial's regularizers.l2(0.01)")
    g.add_argument("--max-norm", dest="max_norm", help="max-norm constraint on each unit's weights, e.g. 3")
    g.add_argument("--widths", help="CNN channel widths per stage, e.g. 16,32,64")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any builder parameter (VALUE as JSON, else text); repeatable")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run on the test set and write its report")
    p.add_argument("run", help="a run directory")
    p.set_defaults(func=cmd_evaluate)


def cmd_data(args) -> int:
    from digitlab.data import DataUnavailableError, load_dataset
    from digitlab.plots import samples_png, save_png
    import numpy as np
    try:
        ds = load_dataset(args.dataset, data_dir=args.data_dir)
    except DataUnavailableError as exc:
        return fail(str(exc), 1)
    p = ds.provenance
    print(f"dataset: {ds.name}\nsource:  {p['source']} ({p['detail']})\nsha256:  {p['sha256']}\ncache:   {p['cache']}")
    print(f"train:   {len(ds.y_train)} images {ds.x_train.shape[1:]} {ds.x_train.dtype}; test: {len(ds.y_test)}")
    print(f"{'class':>14} {'train':>7} {'test':>6}")
    for c, name in enumerate(ds.class_names):
        print(f"{name:>14} {int(np.sum(ds.y_train == c)):>7} {int(np.sum(ds.y_test == c)):>6}")
    save_png(args.out, samples_png(ds.x_train, ds.y_train, ds.class_names))
    print(f"sample grid: {args.out}")
    return 0


def cmd_models(args) -> int:
    from digitlab.models import get_model_info, model_names, model_params
    for name in model_names():
        info = get_model_info(name)
        print(f"{name}  [{info.family}]  {info.description}")
        recipe = " ".join(f"{k}={v}" for k, v in info.defaults.items())
        print(f"    recipe: {recipe or '(TrainConfig defaults)'}")
        params = ", ".join(f"{k}={v!r}" for k, v in model_params(name).items())
        print(f"    parameters: {params or 'none'}")
    return 0


def parse_model_params(args) -> dict:
    """The builder parameters given on the command line, as JSON-friendly values for config.json."""
    from digitlab.models import _int_list
    params = {}
    for key in MODEL_FLAGS:
        raw = getattr(args, key, None)
        if raw is None:
            continue
        if key in ("hidden", "widths"):
            params[key] = _int_list(raw, key)
        elif key == "dropout":
            values = [float(v) for v in str(raw).split(",") if v.strip()]
            params[key] = values[0] if len(values) == 1 else values
        elif key in ("input_dropout", "l1", "l2", "max_norm"):
            params[key] = _float(raw, key)
        else:
            params[key] = raw
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def _float(raw, key: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"--{key.replace('_', '-')} must be a number, got {raw!r}") from exc


def train_config_from_args(args):
    """TrainConfig defaults < the model's registered recipe < --augment preset < explicit flags."""
    from digitlab.augmentation import PRESETS
    from digitlab.config import TrainConfig, apply_overrides, validate
    from digitlab.models import check_params, get_model_info
    info = get_model_info(args.model)
    cfg = apply_overrides(TrainConfig(model=args.model), info.defaults)
    if getattr(args, "augment", None):
        cfg = apply_overrides(cfg, PRESETS[args.augment])
    cfg = apply_overrides(cfg, {k: getattr(args, k, None) for k in CONFIG_FLAGS})
    params = parse_model_params(args)
    if params:
        check_params(cfg.model, params)
        cfg = apply_overrides(cfg, {"model_params": {**cfg.model_params, **params}})
    return validate(cfg)


def given_training_flags(args) -> list[str]:
    """The training flags the user set (for --resume, which takes none)."""
    flags = [k for k in CONFIG_FLAGS + MODEL_FLAGS if getattr(args, k, None) is not None]
    flags += ["augment"] if getattr(args, "augment", None) else []
    flags += ["param"] if getattr(args, "param", None) else []
    flags += ["seeds"] if getattr(args, "seeds", None) is not None else []
    flags += ["model"] if getattr(args, "model", "seed-ann") != "seed-ann" else []
    return ["--" + f.replace("_", "-").replace("aug-", "") for f in flags]


def cmd_train(args) -> int:
    from digitlab.models import get_model_info
    if args.resume:
        return cmd_resume(args)
    try:
        family = get_model_info(args.model).family
        cfg = train_config_from_args(args)
    except (KeyError, ValueError) as exc:
        return fail(str(exc).strip("'\""))
    backend = choose_backend(family)
    from digitlab.training import train, train_seeds
    seeds = f"seeds {cfg.seed}..{cfg.seed + args.seeds - 1}" if args.seeds else f"seed {cfg.seed}"
    print(f"training {cfg.model} on {cfg.dataset} (backend: {backend}, {seeds})", flush=True)
    verbose = 0 if args.quiet else 1
    return _train_and_report(
        lambda: train(cfg, runs_root=args.runs_root, run_dir=args.out, data_dir=args.data_dir, verbose=verbose),
        lambda: train_seeds(cfg, args.seeds, runs_root=args.runs_root, out=args.out, data_dir=args.data_dir,
                            verbose=verbose),
        seed_group=args.seeds is not None)


def cmd_resume(args) -> int:
    from digitlab.runs import read_json
    extra = given_training_flags(args)
    if extra:
        return fail(f"--resume continues the run with the settings saved in it; drop {', '.join(extra)} "
                    "(to change settings, start a new run)")
    path = Path(args.resume)
    from digitlab.training import SEEDS_FILE
    cfg = read_json(path / "config.json") or (read_json(path / SEEDS_FILE) or {}).get("config")
    if not cfg:
        return fail(f"{path} is not a run directory or --seeds group (no config.json or {SEEDS_FILE})")
    from digitlab.models import get_model_info
    try:
        backend = choose_backend(get_model_info(cfg["model"]).family)
    except KeyError as exc:
        return fail(str(exc).strip("'\""))
    from digitlab.training import is_seed_group, resume, resume_seeds
    print(f"resuming {path} ({cfg['model']}, backend: {backend})", flush=True)
    verbose = 0 if args.quiet else 1
    return _train_and_report(lambda: resume(path, data_dir=args.data_dir, verbose=verbose),
                             lambda: resume_seeds(path, data_dir=args.data_dir, verbose=verbose),
                             seed_group=is_seed_group(path))


def _train_and_report(train_one, train_group, seed_group: bool) -> int:
    """Run a training (one run, or a --seeds group), print its summary, turn failures into exit codes."""
    from digitlab.data import DataUnavailableError
    try:
        if seed_group:
            print_seeds(train_group())
            return 0
        run = train_one()
    except DataUnavailableError as exc:
        return fail(str(exc), 1)
    except ValueError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return _interrupted()
    print_summary(run.path, run.metrics, run.state)
    return 0


def _interrupted() -> int:
    print("\ninterrupted: the run keeps its last completed epoch; continue it with "
          "`digitlab train --resume RUN`", file=sys.stderr)
    return 130


def print_summary(path: Path, m: dict, state: dict | None = None) -> None:
    print(f"\nrun:           {path}")
    print(f"test accuracy: {m['test_accuracy']:.4f}   test loss: {m['test_loss']:.4f}   "
          f"errors: {m['test_errors']}/{m['test_images']}")
    if m.get("train_seconds") is not None:
        print(f"training time: {m['train_seconds']:.1f} s ({m.get('keras_backend')})")
    state = state or {}
    if state.get("stopped_early_at_epoch"):
        print(f"early stopping: stopped after epoch {state['stopped_early_at_epoch']}; "
              f"best epoch {state.get('best_epoch')} by {state.get('monitor')}")
    if state.get("final_model"):
        print(f"final model:   {state['final_model']}")
    pairs = ", ".join(f"{p['true']}->{p['predicted']} x{p['count']}" for p in m.get("confused_pairs", [])[:5])
    print(f"most confused: {pairs}")
    print(f"report:        {path / 'report.html'}")


def print_seeds(group) -> None:
    s = group.summary
    print(f"\n{'seed':>6} {'test acc':>9} {'train s':>8}  run")
    for seed, acc, secs, run in zip(s["seeds"], s["test_accuracy"], s["train_seconds"], s["runs"]):
        print(f"{seed:>6} {acc:>9.4f} {secs:>8.1f}  {run}")
    print(f"{'mean':>6} {s['test_accuracy_mean']:>9.4f} {s['train_seconds_mean']:>8.1f}")
    print(f"{'std':>6} {s['test_accuracy_std']:>9.4f} {s['train_seconds_std']:>8.1f}   (sample std, n-1)")
    print(f"group:  {group.path}")


def cmd_evaluate(args) -> int:
    choose_backend(None)
    from digitlab.runs import RunError, open_run
    from digitlab.evaluation import evaluate_run
    try:
        run = open_run(args.run)
    except RunError as exc:
        return fail(str(exc))
    print_summary(run.path, evaluate_run(run), run.state)
    return 0
