"""digitlab.tracking: `digitlab train --tensorboard` writes Keras' TensorBoard logs into the run and `--mlflow`
logs to MLflow (SQLite beside the runs, in a temporary folder here), one step per epoch (the loop's per-epoch
fits carry the run's epoch)."""
from __future__ import annotations

import pytest

from digitlab.cli import main
from digitlab.runs import Run


def scalars(folder, tag):
    """(step, value) of a scalar in TensorBoard event files, read with TensorFlow's own protobufs."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    found = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            found += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value if v.tag == tag]
    return sorted(found)


@pytest.mark.slow  # a real training, and MLflow creating its SQLite tables: ~15 s idle
def test_tensorboard_and_mlflow_log_each_epoch(tmp_path, mnist, capsys):
    """One training with both: TensorBoard files in the run; MLflow in RUNS_ROOT/mlflow.db (SQLite)."""
    from mlflow.tracking import MlflowClient
    root = tmp_path / "runs"
    assert main(["train", "--model", "seed-ann", "--epochs", "2", "--train-size", "500", "--val", "200",
                 "--batch-size", "100", "--quiet", "--no-export", "--tensorboard", "--mlflow",
                 "--runs-root", str(root), "--lr", "0.002"]) == 0
    (out,) = [p for p in root.iterdir() if p.is_dir() and p.name != "mlruns"]
    run = Run(out)
    assert run.state.status == "completed"
    train_loss = scalars(out / "tensorboard" / "train", "epoch_loss")
    val_acc = scalars(out / "tensorboard" / "validation", "epoch_accuracy")
    assert [s for s, _ in train_loss] == [0, 1] and [s for s, _ in val_acc] == [0, 1]
    assert [round(v, 4) for _, v in train_loss] == [round(r.loss, 4) for r in run.history]
    assert [round(v, 4) for _, v in val_acc] == [round(r.val_accuracy, 4) for r in run.history]

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("digitlab").experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == out.name
    assert logged.data.params["lr"] == "0.002" and logged.data.params["model"] == "seed-ann"
    history = client.get_metric_history(logged.info.run_id, "val_accuracy")
    assert [(m.step, round(m.value, 4)) for m in history] == [(r.epoch, round(r.val_accuracy, 4)) for r in run.history]
    assert logged.data.metrics["test_accuracy"] == run.metrics.test_accuracy
    assert {"model.keras", "report.html", "metrics.json"} <= {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_tensorboard_is_for_one_new_run(tmp_path, capsys):
    assert main(["train", "--mlflow", "--seeds", "2", "--out", str(tmp_path / "g")]) == 2
    assert "--tensorboard and --mlflow log one new run" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
