"""Experiment tracking where users already look: TensorBoard logs inside the run, and MLflow.

    callbacks = tensorboard_callbacks(run_dir)     # RUN/tensorboard/{train,validation}: `tensorboard --logdir RUN`
    logger = MlflowLogger(cfg, run_dir, uri=None)  # None: sqlite:///RUNS_ROOT/mlflow.db, artifacts in RUNS_ROOT/mlruns
    train(cfg, run_dir=run_dir, callbacks=[*callbacks, logger])
    logger.finish(run)                             # test figures, report.html, model.keras; ends the MLflow run

digitlab.training runs one `fit` per epoch with the run's epoch as initial_epoch, so both log each
epoch under its own step. Both are optional extras (`digitlab[track]`): asked for and missing, they are
a ConfigError before training starts.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import keras

from digitlab.errors import ConfigError
from digitlab.runs import METRICS, MODEL_FILE

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
REPORT = "report.html"  # digitlab.evaluation writes it


def tensorboard_callbacks(run_dir: str | Path) -> list:
    if importlib.util.find_spec("tensorboard") is None:  # said before training, not at the first epoch's end
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'digitlab[track]'")
    # write_graph off: the JAX backend has no TensorFlow graph to write
    return [keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), write_graph=False)]


EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class MlflowLogger(keras.callbacks.Callback):
    """Log a digitlab run to MLflow: its settings as params, each epoch's figures, then (finish) the report."""

    epoch_level = True  # on_train_begin and on_epoch_end only: the scan engine can run it

    def __init__(self, cfg, run_dir: str | Path, uri: str | None = None, experiment: str = "digitlab"):
        super().__init__()
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("--mlflow needs MLflow: pip install 'digitlab[track]' (mlflow-skinny)")
        import mlflow

        self.mlflow, self.cfg, self.run_dir = mlflow, cfg, Path(run_dir)
        root = self.run_dir.resolve().parent
        self.uri = uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = mlflow.tracking.MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=None if uri else (root / "mlruns").as_uri())
        self.run_id: str | None = None

    def _start(self) -> str:
        if self.run_id is None:
            import dataclasses
            run = self.client.create_run(self.experiment_id, run_name=self.run_dir.name,
                                         tags={"digitlab.run_dir": str(self.run_dir.resolve())})
            self.run_id = run.info.run_id
            params = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "model_params"}
            params |= {f"model_params.{k}": v for k, v in self.cfg.model_params.items()}
            for key, value in params.items():
                self.client.log_param(self.run_id, key, str(value)[:500])
        return self.run_id

    def on_train_begin(self, logs=None):
        self._start()

    def on_epoch_end(self, epoch, logs=None):
        run_id = self._start()
        for name in EPOCH_METRICS:
            if (logs or {}).get(name) is not None:
                self.client.log_metric(run_id, name, float(logs[name]), step=epoch + 1)

    def finish(self, run=None, status: str = "FINISHED") -> None:
        """After evaluation: the test figures, report.html, metrics.json and model.keras; end the MLflow run."""
        run_id = self._start()
        if run is not None and run.metrics is not None:
            self.client.log_metric(run_id, "test_accuracy", run.metrics.test_accuracy)
            self.client.log_metric(run_id, "test_loss", run.metrics.test_loss)
        if run is not None:
            for name in (REPORT, METRICS, MODEL_FILE):
                if (run.path / name).exists():
                    self.client.log_artifact(run_id, str(run.path / name))
        self.client.set_terminated(run_id, status)
