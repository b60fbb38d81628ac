"""Shared fixtures: real MNIST (cached once per machine) and one small trained run for the whole session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mnist():
    from digitlab.data import load_mnist
    return load_mnist()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist):
    """seed-ann trained briefly on a 12k subset, then evaluated: about 96% test accuracy in a few seconds."""
    from digitlab.config import TrainConfig
    from digitlab.evaluation import evaluate_run
    from digitlab.training import train
    cfg = TrainConfig(model="seed-ann", epochs=3, batch_size=64, val="1000", train_size=12000, seed=0)
    run = train(cfg, run_dir=tmp_path_factory.mktemp("runs") / "seed-ann", dataset=mnist, verbose=0)
    evaluate_run(run, dataset=mnist)
    return run


@pytest.fixture(scope="session")
def trained_predictor(trained_run):
    """The trained run's model, loaded once, as the one inference path (digitlab.predictor)."""
    from digitlab.predictor import Predictor
    return Predictor.from_run(trained_run)
