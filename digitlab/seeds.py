"""One recipe over several seeds: a group folder with one evaluated run per seed, and their mean and spread.

    group = train_seeds(TrainConfig(model="fastcnn"), seeds=3)   # runs/<time>-fastcnn-seeds3-s0/{s0,s1,s2}
    group.summary["test_accuracy_mean"], group.summary["test_accuracy_std"]
    group = resume_seeds("runs/...-fastcnn-seeds3-s0")          # completed seeds are kept
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from digitlab import data as data_mod
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError
from digitlab.evaluation import evaluate_run
from digitlab.runs import Run, SeedGroupFile, new_run_dir, read_seed_group, write_seed_group
from digitlab.training import check, resume, train


@dataclass(frozen=True)
class SeedGroup:
    path: Path  # the group folder: one run folder per seed (s0, s1, ...) and seeds.json
    runs: list[Run]
    summary: dict  # per-seed figures, mean and standard deviation (summarize)


def train_seeds(cfg: TrainConfig, seeds: int, runs_root: str | Path = "runs", out: str | Path | None = None,
                data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
                callbacks: list | None = None) -> SeedGroup:
    """Train cfg with seeds cfg.seed, cfg.seed + 1, ... into one group folder; runs already done are kept."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    check(cfg)
    path = Path(out) if out else new_run_dir(runs_root, f"{cfg.model}-seeds{seeds}", cfg.seed)
    path.mkdir(parents=True, exist_ok=True)
    seed_list = [cfg.seed + i for i in range(seeds)]
    write_seed_group(path, SeedGroupFile(cfg, seed_list))
    return _train_group(path, cfg, seed_list, data_dir, dataset, verbose, callbacks)


def resume_seeds(group_dir: str | Path, data_dir=None, dataset=None, verbose: int = 1, callbacks=None) -> SeedGroup:
    """Finish a --seeds group: completed seeds are kept, an interrupted one resumed, missing ones trained."""
    group = read_seed_group(group_dir)
    return _train_group(Path(group_dir), group.config, group.seeds, data_dir, dataset, verbose, callbacks)


def _train_group(path: Path, cfg: TrainConfig, seed_list: list[int], data_dir, dataset, verbose, callbacks):
    ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
    runs = []
    for seed in seed_list:
        run = Run(path / f"s{seed}")
        started = (run.path / "config.json").exists()
        if started and run.state.status == "completed" and run.metrics is not None:
            runs.append(run)
            continue
        keras.backend.clear_session()  # free the previous seed's graphs; keeps layer names stable
        if started and run.state.status != "completed":
            run = resume(run.path, dataset=ds, verbose=verbose, callbacks=callbacks)
        elif not started:
            run = train(dataclasses.replace(cfg, seed=seed), run_dir=run.path, dataset=ds, verbose=verbose,
                        callbacks=callbacks)
        evaluate_run(run, dataset=ds)  # a run trained but killed before its evaluation is evaluated now
        runs.append(run)
    summary = summarize(runs)
    write_seed_group(path, SeedGroupFile(cfg, seed_list, summary))
    return SeedGroup(path, runs, summary)


def summarize(runs: list[Run]) -> dict:
    """Test accuracy and training time per run, with mean and sample standard deviation (n - 1)."""
    acc = [float(r.metrics.test_accuracy) for r in runs]
    secs = [float(r.state.train_seconds or 0.0) for r in runs]

    def std(v):
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    return {"runs": [str(r.path) for r in runs], "seeds": [r.config.seed for r in runs],
            "test_accuracy": acc, "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": std(acc),
            "train_seconds": secs, "train_seconds_mean": float(np.mean(secs)), "train_seconds_std": std(secs)}
