"""Fine-tune a trained run on the user's own digits without forgetting MNIST.

    new = finetune(open_run("runs/fastcnn"), user_digits("feedback:~/.local/share/digitlab/feedback.sqlite"),
                   out="runs/fastcnn-mine")
    new.metrics.extra["finetune"]["promoted"]

It starts from the run's weights, trains at a low learning rate on the user's training share (repeated,
so that a few dozen digits weigh against the replay) mixed with a replay sample of MNIST training images,
and freezes a CNN's convolutional feature extractor ("auto"): new strokes are new combinations of the same
edges. A stratified share of the user's digits is held out and never trained on. The new run directory is
a normal run (model.keras, config, data, state, history, metrics, report.html); its metrics.extra["finetune"]
and report.html give, before and after, the accuracy on the held-out digits, the MNIST test accuracy, and
which held-out digits changed answer. It is "promoted" only if MNIST test accuracy drops by at most
FinetuneConfig.max_mnist_drop points and the held-out accuracy does not fall; otherwise the report says why.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score

from digitlab import data as data_mod
from digitlab.atomic import write_text_atomic
from digitlab.config import TrainConfig
from digitlab.environment import environment_info, keras_backend
from digitlab.errors import ConfigError, DataError, RunError
from digitlab.feedback import FeedbackStore
from digitlab.folders import read_digit_folder
from digitlab.pages import esc, page, table
from digitlab.predictor import Predictor, load_keras_model
from digitlab.runs import MODEL_FILE, DataInfo, EpochRecord, Metrics, Run, RunState, claim_folder, lock_run
from digitlab.scoring import accuracy, log_loss
from digitlab.training import make_loss, save_model, targets

FREEZE_CHOICES = ("auto", "none", "features")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 4  # passes over the mix (user digits x user_repeat + replay)
    lr: float = 2e-4  # Adam; a fifth of the tutorial's 1e-3: the weights are already good
    batch_size: int = 64  # images per step
    replay: int = 3000  # MNIST training images mixed in, so that MNIST is not forgotten
    user_repeat: int = 8  # each user training digit appears this many times per epoch
    holdout: float = 0.25  # share of the user's digits per label held out for the before/after figures
    freeze: str = "auto"  # auto: the conv feature extractor for CNNs, nothing for dense nets | none | features
    seed: int = 0
    max_mnist_drop: float = 0.2  # points of MNIST test accuracy the new model may lose and still be promoted


@dataclass(frozen=True)
class UserDigits:
    x: np.ndarray  # (n, 28, 28) float32 in [0, 1], as the model sees them
    y: np.ndarray  # (n,) labels
    source: str  # "feedback:DB" or "folder:PATH"
    skipped: list = dataclasses.field(default_factory=list)  # (file, why) of a folder's bad files


def user_digits(spec: str) -> UserDigits:
    """feedback:DB (the server's corrections) or folder:PATH (subfolders 0/ ... 9/ of images)."""
    kind, _, where = spec.partition(":")
    if kind == "feedback" and where:
        if not Path(where).expanduser().is_file():
            raise DataError(f"no feedback database at {where}")
        with FeedbackStore.open(where) as store:
            x, y = store.arrays()
        return UserDigits(x, y, spec)
    if kind == "folder" and where:
        folder = read_digit_folder(where)
        return UserDigits(folder.x, folder.y, spec, folder.bad)
    raise ConfigError(f"--data must be feedback:DB or folder:PATH, got {spec!r}")


def stratified_holdout(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): per label, round(share * n) held out (at least one when n >= 2)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = min(len(idx) - 1, max(1 if len(idx) >= 2 else 0, int(round(share * len(idx)))))
        held += list(idx[:k])
        train += list(idx[k:])
    return np.array(sorted(train), np.int64), np.array(sorted(held), np.int64)


def freeze_features(model) -> int:
    """Make the layers up to the last convolution or pooling untrainable; how many were frozen."""
    kinds = ("Conv", "Pool", "BatchNormalization")
    last = max((i for i, layer in enumerate(model.layers) if any(k in type(layer).__name__ for k in kinds)),
               default=-1)
    for layer in model.layers[:last + 1]:
        layer.trainable = False
    return last + 1


def _scores(predictor: Predictor, x, y) -> tuple[np.ndarray, float, float]:
    proba = predictor.predict_proba(x)
    return proba, accuracy(y, proba), log_loss(y, proba)


def finetune(run: Run, digits: UserDigits, out: str | Path, cfg: FinetuneConfig = FinetuneConfig(),
             dataset: data_mod.Dataset | None = None, overwrite: bool = False, verbose: int = 0) -> Run:
    """Fine-tune `run` on `digits` into the run directory `out`; the new Run (promoted or not: see its metrics)."""
    base = run.config
    if not isinstance(base, TrainConfig):
        raise RunError(f"{run.path} is an ensemble: fine-tune one of its members instead")
    if base.dataset != "mnist":
        raise RunError(f"{run.path} was trained on {base.dataset}; fine-tuning on handwriting needs an MNIST run")
    if cfg.freeze not in FREEZE_CHOICES:
        raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}, got {cfg.freeze!r}")
    if not 0 < cfg.holdout < 1 or cfg.epochs < 1 or cfg.lr <= 0 or cfg.replay < 0 or cfg.user_repeat < 1:
        raise ConfigError("fine-tuning needs 0 < holdout < 1, epochs >= 1, lr > 0, replay >= 0, user_repeat >= 1")
    train_idx, held_idx = stratified_holdout(digits.y, cfg.holdout, cfg.seed)
    if len(held_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{digits.source} has {len(digits.y)} digits: too few to both train and hold out some "
                        "(at least two of one label are needed)")
    ds = dataset or data_mod.load_dataset("mnist")
    x_test, y_test = data_mod.scale(ds.x_test), ds.y_test
    x_held, y_held = digits.x[held_idx], digits.y[held_idx]

    model = load_keras_model(run.model_path)
    before_held, before_held_acc, _ = _scores(Predictor.from_keras(model), x_held, y_held)
    _, before_mnist, _ = _scores(Predictor.from_keras(model), x_test, y_test)

    rng = np.random.default_rng(cfg.seed)
    replay = rng.choice(len(ds.y_train), size=min(cfg.replay, len(ds.y_train)), replace=False)
    x_mix = np.concatenate([np.repeat(digits.x[train_idx], cfg.user_repeat, axis=0),
                            data_mod.scale(ds.x_train[replay])])
    y_mix = np.concatenate([np.repeat(digits.y[train_idx], cfg.user_repeat), ds.y_train[replay]])
    freeze = cfg.freeze if cfg.freeze != "auto" else ("features" if run.family == "conv" else "none")
    frozen = freeze_features(model) if freeze == "features" else 0
    loss, metrics = make_loss(base)
    keras.utils.set_random_seed(cfg.seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr), loss=loss, metrics=metrics)

    history, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(len(y_mix))
        h = model.fit(x_mix[order], targets(y_mix[order], base), batch_size=cfg.batch_size, epochs=1,
                      verbose=verbose, shuffle=False)
        history.append(EpochRecord(epoch=epoch + 1, loss=float(h.history["loss"][-1]),
                                   accuracy=float(h.history["accuracy"][-1]), lr=cfg.lr,
                                   seconds=time.perf_counter() - t0))
    seconds = time.perf_counter() - started
    for layer in model.layers:  # saved trainable: a later fine-tune decides again what to freeze
        layer.trainable = True

    after = Predictor.from_keras(model)
    after_held, after_held_acc, _ = _scores(after, x_held, y_held)
    after_proba, after_mnist, after_loss = _scores(after, x_test, y_test)
    changed = [{"index": int(i), "label": int(y_held[j]), "before": int(before_held[j].argmax()),
                "after": int(after_held[j].argmax())}
               for j, i in enumerate(held_idx) if before_held[j].argmax() != after_held[j].argmax()]
    drop = 100 * (before_mnist - after_mnist)
    reasons = []
    if drop > cfg.max_mnist_drop:
        reasons.append(f"MNIST test accuracy dropped {drop:.2f} points, more than the {cfg.max_mnist_drop} allowed")
    if after_held_acc < before_held_acc:
        reasons.append(f"accuracy on your held-out digits fell from {100 * before_held_acc:.1f}% "
                       f"to {100 * after_held_acc:.1f}%")
    summary = {
        "base_run": str(run.path), "base_model_sha256": run.model_sha256(), "data": digits.source,
        "user_digits": int(len(digits.y)), "user_train": int(len(train_idx)), "user_held_out": int(len(held_idx)),
        "held_out_per_label": {str(k): int(v) for k, v in zip(*np.unique(y_held, return_counts=True))},
        "replay": int(len(replay)), "freeze": freeze, "frozen_layers": frozen,
        "config": dataclasses.asdict(cfg), "seconds": seconds,
        "before": {"user_held_out_accuracy": before_held_acc, "mnist_test_accuracy": before_mnist},
        "after": {"user_held_out_accuracy": after_held_acc, "mnist_test_accuracy": after_mnist},
        "mnist_drop_points": drop, "changed": changed, "promoted": not reasons, "not_promoted_because": reasons,
    }

    path = Path(out)
    with lock_run(path):
        claim_folder(path, overwrite)
        new = Run(path)
        new.write_environment(environment_info(cfg.seed))
        new.write_config(dataclasses.replace(base, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                             seed=cfg.seed))
        new.write_data(DataInfo(dataset="mnist", source="finetune", sha256=data_mod.content_sha256(
            (digits.x, digits.y)), detail=f"{run.path} fine-tuned on {digits.source} "
            f"({len(train_idx)} digits, {len(held_idx)} held out) + {len(replay)} MNIST training images",
            train_images=int(len(y_mix)), test_images=int(len(y_test))))
        save_model(model, path / MODEL_FILE)
        new.write_history(history)
        pred = after_proba.argmax(1)
        new.write_metrics(Metrics(test_accuracy=after_mnist, test_loss=after_loss, test_images=int(len(y_test)),
                                  test_errors=int((pred != y_test).sum()),
                                  macro_f1=float(f1_score(y_test, pred, average="macro")),
                                  model=base.model, keras_backend=keras_backend(), train_seconds=seconds,
                                  extra={"finetune": summary}))
        write_text_atomic(path / "report.html", render_report(new, summary))
        new.write_state(RunState(status="completed", epochs_completed=cfg.epochs, train_seconds=seconds))
    return new


def render_report(run: Run, s: dict) -> str:
    b, a = s["before"], s["after"]
    verdict = ("<p><b>Promoted</b>: MNIST kept within bounds and your held-out digits read at least as well.</p>"
               if s["promoted"] else "<p><b>Not promoted</b>: " + esc("; ".join(s["not_promoted_because"])) + ".</p>")
    figures = table([["accuracy on your held-out digits", f"{100 * b['user_held_out_accuracy']:.1f}%",
                      f"{100 * a['user_held_out_accuracy']:.1f}%"],
                     ["MNIST test accuracy", f"{100 * b['mnist_test_accuracy']:.2f}%",
                      f"{100 * a['mnist_test_accuracy']:.2f}%"]], ["", "before", "after"])
    changed = (table([[c["index"], c["label"], c["before"], c["after"]] for c in s["changed"]],
                     ["digit #", "label", "before", "after"])
               if s["changed"] else "<p>No held-out digit changed answer.</p>")
    body = (f"<h1>{esc(run.title)}: fine-tuned</h1>{verdict}"
            f"<p>From {esc(s['base_run'])} on {esc(s['data'])}: {s['user_train']} of your digits trained on, "
            f"{s['user_held_out']} held out (stratified per label), {s['replay']} MNIST training images replayed; "
            f"frozen: {esc(s['freeze'])} ({s['frozen_layers']} layers); {s['seconds']:.1f} s.</p>"
            f"{figures}<h2>Held-out digits that changed answer</h2>{changed}")
    return page(run.title, body)
