"""`digitlab data`, `digitlab train` and `digitlab evaluate`."""
from __future__ import annotations

import sys
from pathlib import Path

from digitlab.backend import choose_backend
from digitlab.cli import fail


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="load a dataset, print its provenance and class counts, write a sample grid")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the four IDX files or mnist.npz (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--out", default="samples.png", help="PNG grid of sample digits to write (default: samples.png)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a registered model into a run directory")
    p.add_argument("--model", default="seed-ann", help="registered model name (unknown names list the known ones)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder with the dataset files (also $DIGITLAB_DATA_DIR)")
    p.add_argument("--epochs", help="passes over the training set")
    p.add_argument("--batch-size", dest="batch_size", help="images per gradient step")
    p.add_argument("--lr", help="(peak) learning rate")
    p.add_argument("--optimizer", help="adam | adamw | sgd | rmsprop")
    p.add_argument("--seed", help="random seed (default 0)")
    p.add_argument("--val", help="validation images held out of training (default 5000), or 'test' as in the tutorial")
    p.add_argument("--train-size", dest="train_size", help="train on a stratified subset of N images")
    p.add_argument("--out", help="the run directory to create (default: RUNS_ROOT/<time>-<model>-s<seed>)")
    p.add_argument("--runs-root", default="runs", help="where new run directories go (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
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


def train_config_from_args(args):
    from digitlab.config import TrainConfig, apply_overrides
    from digitlab.models import get_model_info
    info = get_model_info(args.model)
    cfg = apply_overrides(TrainConfig(model=args.model), info.defaults)
    keys = ["dataset", "epochs", "batch_size", "lr", "optimizer", "seed", "val", "train_size"]
    return apply_overrides(cfg, {k: getattr(args, k, None) for k in keys})


def cmd_train(args) -> int:
    from digitlab.models import get_model_info
    try:
        family = get_model_info(args.model).family
        cfg = train_config_from_args(args)
    except (KeyError, ValueError) as exc:
        return fail(str(exc).strip("'\""))
    backend = choose_backend(family)
    from digitlab.data import DataUnavailableError
    from digitlab.training import train
    print(f"training {cfg.model} on {cfg.dataset} (backend: {backend}, seed {cfg.seed})", flush=True)
    try:
        run = train(cfg, runs_root=args.runs_root, run_dir=args.out, data_dir=args.data_dir,
                    verbose=0 if args.quiet else 1)
    except DataUnavailableError as exc:
        return fail(str(exc), 1)
    except ValueError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: the run directory keeps the last completed epoch's model (state.json says so)",
              file=sys.stderr)
        return 130
    print_summary(run.path, run.metrics)
    return 0


def print_summary(path: Path, m: dict) -> None:
    print(f"\nrun:           {path}")
    print(f"test accuracy: {m['test_accuracy']:.4f}   test loss: {m['test_loss']:.4f}   "
          f"errors: {m['test_errors']}/{m['test_images']}")
    if m.get("train_seconds") is not None:
        print(f"training time: {m['train_seconds']:.1f} s ({m.get('keras_backend')})")
    pairs = ", ".join(f"{p['true']}->{p['predicted']} x{p['count']}" for p in m.get("confused_pairs", [])[:5])
    print(f"most confused: {pairs}")
    print(f"report:        {path / 'report.html'}")


def cmd_evaluate(args) -> int:
    choose_backend(None)
    from digitlab.runs import RunError, open_run
    from digitlab.evaluation import evaluate_run
    try:
        run = open_run(args.run)
    except RunError as exc:
        return fail(str(exc))
    print_summary(run.path, evaluate_run(run))
    return 0
