"""Trust benchmark (issue 11): calibration, selective prediction, out-of-distribution detection, drawn digits and
the cost of the verdict, per model over seeds, against the issue's goals; prints Markdown tables.

    python bench/trust.py --quick                                  # seed-ann and fastcnn, 1 seed: about 3 minutes
    python bench/trust.py --models seed-ann,fastcnn,bestcnn        # 3 seeds each (bestcnn: 21-50 min a run)
    python bench/trust.py --sheet /tmp/nondigits                   # also write contact sheets of the non-digit set
    python bench/trust.py --quick --outlier-exposure 300           # also each recipe trained on generated negatives

Each (model, seed) is one fresh process (so it picks its model's backend): it trains the model's registered
recipe with the default validation split (5,000 images held out) into OUT/<model>-s<seed>, or reuses that run
when it is complete, then measures with the Keras model:
  - calibration: the temperature is fitted on the validation split; ECE (15 bins), NLL and Brier on the
    10,000 test digits before and after;
  - every OOD method (msp, energy, mahalanobis, detector), each with its thresholds fitted at the default
    target (answer >= 99.25% of validation digits as `digit`, then reject as many of the non-digit set's fit
    part as possible; the detector trains on the set's train part, ood.DETECTOR_NEGATIVES_PER_KIND a kind):
    coverage and selective accuracy on the test digits, AUROC against Fashion-MNIST's test set and the
    non-digit set's held-out part, and the share of those answered something else than `digit`;
  - drawn digits: tests/test_drawn_digits.py's 160 drawings (digitlab.drawing) plus 80 of them inverted
    (light on dark), through preprocessing.to_mnist: the share answered `digit` and right;
  - cost: per image, the forward pass with features plus the verdict, minus the plain forward pass
    (Predictor.predict_proba), one image at a time (as the server sees requests) and in a batch of 1,000.
The headline table is for digitlab.ood.DEFAULT_METHOD; the method table shows every candidate.
`--outlier-exposure N` adds rows MODEL+oe: the same recipe trained with N generated non-digits of each kind
(the set's "train" part, disjoint from fit and holdout) whose target is the uniform distribution; it is an
experiment (digitlab.training does not do it), measured exactly like the plain run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {  # the issue's goals, at the default operating point
    "ece": 0.010,  # after calibration, on MNIST test
    "coverage": 0.99,
    "selective": {"seed-ann": 0.993, "bestcnn": 0.9985},  # the best CNN's goal; seed-ann's own
    "auroc_fashion": 0.995,  # CNNs
    "auroc_nondigits": 0.98,  # CNNs
    "rejected": 0.90,  # CNNs: share of the held-out non-digits not answered `digit`
    "drawn": 0.97,
    "cost_ms": 1.0,
}
CNNS = ("lenet5", "convnet", "fastcnn", "bestcnn")


# ---------------------------------------------------------------- one (model, seed), in its own process

def worker(model: str, seed: int, out: Path, per_kind: int, fashion: int, oe_per_kind: int) -> list[dict]:
    """Measure the model's run (trained here unless OUT has it); with oe_per_kind, also the same recipe
    trained with outlier exposure on that many generated negatives of each kind ("train" part)."""
    from digitlab.backend import choose_backend, quiet_tensorflow_logs
    from digitlab.registry import get_model_info
    quiet_tensorflow_logs()
    backend = choose_backend(get_model_info(model).family)

    from digitlab import nondigits
    from digitlab.config import TrainConfig
    from digitlab.data import load_mnist, prepare_split
    from digitlab.drawing import drawings, to_gray
    from digitlab.ood import DETECTOR_NEGATIVES_PER_KIND, Scorer
    from digitlab.preprocessing import to_mnist
    from digitlab.runs import open_run

    ds = load_mnist()
    cfg = TrainConfig(model=model, seed=seed, **get_model_info(model).defaults)
    path = out / f"{model}-s{seed}"
    run = open_run(path) if (path / "state.json").exists() else None
    if run is None or run.state.status != "completed":
        from digitlab.training import train
        run = train(cfg, run_dir=path, dataset=ds, verbose=0)
    sets = {
        "split": prepare_split(cfg, ds), "ds": ds,
        "fit": nondigits.split("fit", per_kind), "holdout": nondigits.split("holdout", per_kind),
        "negatives": nondigits.cached_split("train", DETECTOR_NEGATIVES_PER_KIND),  # the detector's
        "fashion": nondigits.fashion_mnist_test(fashion or None),
        # the drawn-digit test's 160 drawings, and 80 more inverted: light ink on a dark ground
        "drawn": [(d, to_mnist(to_gray(im))) for s in (0, 1) for _, d, im in drawings(s)]
        + [(d, to_mnist(1.0 - to_gray(im))) for _, d, im in drawings(2)],
    }
    common = {"model": model, "seed": seed, "backend": backend}
    results = [{**common, "run": str(path), "train_s": run.state.train_seconds,
                **measure(Scorer.from_run(run), sets, seed)}]
    if oe_per_kind:
        negatives = nondigits.split("train", oe_per_kind)
        oe_path = out / f"{model}-oe{oe_per_kind}-s{seed}"
        scorer, seconds = outlier_exposure(cfg, sets["split"], negatives.x, oe_path)
        results.append({**common, "model": f"{model}+oe", "run": str(oe_path), "train_s": seconds,
                        "negatives": len(negatives), **measure(scorer, sets, seed)})
    return [{**r, "measure_load": os.getloadavg()[0]} for r in results]


def measure(scorer, sets: dict, seed: int) -> dict:
    """Every OOD method fitted and evaluated on one model's outputs, and the default one's cost."""
    import numpy as np

    from digitlab import nondigits
    from digitlab.data import scale
    from digitlab.ood import DEFAULT_METHOD, evaluate_trust, fit_trust_outputs
    from digitlab.trust import METHODS

    split, ds, fit_set, holdout = sets["split"], sets["ds"], sets["fit"], sets["holdout"]
    start = time.perf_counter()
    pick = np.sort(np.random.default_rng(seed).permutation(len(split.y_train))[:20_000])
    train_out = scorer.outputs(scale(split.x_train[pick]))
    val_out = scorer.outputs(scale(split.x_val))
    test_out = scorer.outputs(scale(ds.x_test))
    fit_out, holdout_out = scorer.outputs(fit_set.x), scorer.outputs(holdout.x)
    negatives_out = scorer.outputs(sets["negatives"].x)
    fashion_out = scorer.outputs(sets["fashion"])
    drawn_out = scorer.outputs(np.stack([x for _, x in sets["drawn"]]))
    drawn_y = np.array([d for d, _ in sets["drawn"]])
    methods, default_trust = {}, None
    for method in METHODS:
        trust = fit_trust_outputs(scorer, train_out, split.y_train[pick], val_out, split.y_val, fit_out, method,
                                  nondigit_version=fit_set.version, nondigit_sha256=fit_set.sha256,
                                  negatives_out=negatives_out, seed=seed)
        ev = evaluate_trust(trust, test_out, ds.y_test, {"fashion": fashion_out, "nondigits": holdout_out})
        ood = {r.name: r for r in ev.ood}
        verdicts = trust.judge(drawn_out.proba, drawn_out.features)
        kinds = np.array([v.kind for v in trust.judge(holdout_out.proba, holdout_out.features)])
        methods[trust.method] = {
            "temperature": trust.temperature, "confidence": trust.thresholds.confidence, "ood": trust.thresholds.ood,
            "ece_before": ev.before.ece, "ece_after": ev.after.ece, "nll_before": ev.before.nll,
            "nll_after": ev.after.nll, "brier_before": ev.before.brier, "brier_after": ev.after.brier,
            "accuracy": ev.accuracy, "coverage": ev.coverage, "selective": ev.selective_accuracy,
            "unsure": ev.unsure, "not_a_digit": ev.not_a_digit, "table": ev.table,
            "auroc_fashion": ood["fashion"].auroc, "auroc_nondigits": ood["nondigits"].auroc,
            "rejected_fashion": ood["fashion"].rejected, "rejected": ood["nondigits"].rejected,
            "called_not_a_digit": ood["nondigits"].not_a_digit, "fit_rejection": trust.fit_rejection,
            "drawn": float(np.mean([v.kind == "digit" and v.digit == d for v, d in zip(verdicts, drawn_y)])),
            "rejected_by_kind": {k: float(np.mean(kinds[np.array(holdout.kinds) == k] != "digit"))
                                 for k in nondigits.KINDS},
        }
        if trust.method == DEFAULT_METHOD:
            default_trust = trust
    default_trust = default_trust or trust  # a model without features has msp only
    return {"measure_s": round(time.perf_counter() - start, 1), "methods": methods, "default": default_trust.method,
            "nondigits": {"fit": len(fit_set), "holdout": len(holdout), "version": fit_set.version,
                          "sha256_holdout": holdout.sha256},
            "cost": cost(scorer, default_trust, scale(ds.x_test[:1000]))}


def outlier_exposure(cfg, split, negatives, path: Path):
    """The recipe of `cfg`, trained with generated non-digits whose target is the uniform distribution
    (Hendrycks et al. 2019, "outlier exposure"): the model keeps its 10 outputs and learns to spread its
    probability on inputs unlike digits. An experiment: digitlab.training does not do this (yet).
    Returns (Scorer, training seconds); the model is kept in path/model.keras and reused."""
    import keras
    import numpy as np

    from digitlab.augmentation import augment_from
    from digitlab.data import scale
    from digitlab.models import create_model
    from digitlab.ood import Scorer
    from digitlab.predictor import Predictor, load_keras_model
    from digitlab.training import make_optimizer, reset_layer_seeds, save_model, steps_per_epoch

    if augment_from(cfg).active:
        raise SystemExit(f"--outlier-exposure supports recipes without augmentation; {cfg.model}'s has some")
    model_path, seconds = path / "model.keras", 0.0
    if model_path.exists():
        return Scorer(Predictor.from_keras(load_keras_model(model_path))), float((path / "seconds").read_text())
    path.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    x = np.concatenate([scale(split.x_train), negatives]).astype(np.float32)
    y = np.concatenate([np.eye(10, dtype=np.float32)[split.y_train],
                        np.full((len(negatives), 10), 0.1, np.float32)])  # uniform: "none of the ten"
    steps = steps_per_epoch(len(x), cfg.batch_size)
    model = create_model(cfg.model, **cfg.model_params)
    model.compile(optimizer=make_optimizer(cfg, steps),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing))
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x))
        reset_layer_seeds(model, cfg.seed, epoch)
        start = time.perf_counter()
        model.fit(x[order], y[order], batch_size=cfg.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=False, verbose=0)
        seconds += time.perf_counter() - start
    save_model(model, model_path)
    (path / "seconds").write_text(f"{seconds:.1f}")
    return Scorer(Predictor.from_keras(model)), seconds


def cost(scorer, trust, x, rounds: int = 15) -> dict:
    """ms per image of the trust step on top of the plain forward pass: one at a time, and in a batch.

    The plain and the trusted calls alternate in rounds and each figure is the median of its rounds' medians,
    so that other work on the machine (the load average is recorded) weighs on both alike.
    """
    import numpy as np

    def per_call(fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    def with_trust(batch):
        out = scorer.outputs(batch)
        return trust.judge(out.proba, out.features)

    one = x[:1]
    out1 = scorer.outputs(one)
    calls = {  # name: (function, repetitions per round, images per call)
        "plain_1": (lambda: scorer.predictor.predict_proba(one), 40, 1),
        "trust_1": (lambda: with_trust(one), 40, 1),
        "judge_1": (lambda: trust.judge(out1.proba, out1.features), 40, 1),
        "plain_batch": (lambda: scorer.predictor.predict_proba(x), 3, len(x)),
        "trust_batch": (lambda: with_trust(x), 3, len(x)),
    }
    for fn, _, _ in calls.values():
        fn()  # warm up: compilation, first-call allocations
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, reps, n) in calls.items():
            samples[name].append(per_call(fn, reps) / n)
    ms = {f"{name}_ms": statistics.median(v) for name, v in samples.items()}
    return {**ms, "extra_1_ms": ms["trust_1_ms"] - ms["plain_1_ms"],
            "extra_batch_ms": ms["trust_batch_ms"] - ms["plain_batch_ms"], "load": os.getloadavg()[0],
            "features": int(np.prod(out1.features.shape[1:])) if out1.features is not None else 0}


# ---------------------------------------------------------------- the tables

def mean_sd(values, fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def met(value: float, goal: float | None, higher: bool = True) -> str:
    if goal is None:
        return ""
    return "met" if (value >= goal if higher else value <= goal) else "**not met**"


def tables(results: list[dict]) -> str:
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    lines = ["### At the default operating point (method: " + results[0]["default"] + ")", "",
             "| model | seeds | ECE before → after | coverage | selective accuracy | AUROC Fashion | "
             "AUROC non-digits | non-digits rejected | drawn digits answered and right | "
             "trust cost ms/image (1 / batch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for model, rs in by_model.items():
        d = [r["methods"][r["default"]] if r["default"] in r["methods"] else r["methods"]["msp"] for r in rs]
        col = {k: [x[k] for x in d] for k in d[0] if not isinstance(d[0][k], (list, dict))}
        costs = [r["cost"] for r in rs]
        lines.append(
            f"| {model} | {len(rs)} | {mean_sd(col['ece_before'], '.2%')} → {mean_sd(col['ece_after'], '.2%')} | "
            f"{mean_sd(col['coverage'], '.2%')} | {mean_sd(col['selective'], '.2%')} | "
            f"{mean_sd(col['auroc_fashion'], '.4f')} | {mean_sd(col['auroc_nondigits'], '.4f')} | "
            f"{mean_sd(col['rejected'], '.1%')} | {mean_sd(col['drawn'], '.1%')} | "
            f"{mean_sd([c['extra_1_ms'] for c in costs], '.3f')} / "
            f"{mean_sd([c['extra_batch_ms'] for c in costs], '.4f')} |")
        m = {k: statistics.mean(v) for k, v in col.items()}
        base = model.split("+")[0]  # fastcnn+oe: the fastcnn recipe with outlier exposure
        cnn = base in CNNS
        verdicts += [
            (model, "ECE after <= 1.0%", f"{m['ece_after']:.2%}", met(m["ece_after"], GOALS["ece"], higher=False)),
            (model, "coverage >= 99%", f"{m['coverage']:.2%}", met(m["coverage"], GOALS["coverage"])),
            (model, f"selective accuracy >= {GOALS['selective'].get(base, 0):.2%}" if base in GOALS["selective"]
             else "selective accuracy (goal only for seed-ann and the best CNN)", f"{m['selective']:.2%}",
             met(m["selective"], GOALS["selective"].get(base))),
            (model, "AUROC Fashion >= 0.995" + ("" if cnn else " (CNN goal)"), f"{m['auroc_fashion']:.4f}",
             met(m["auroc_fashion"], GOALS["auroc_fashion"])),
            (model, "AUROC non-digits >= 0.98" + ("" if cnn else " (CNN goal)"), f"{m['auroc_nondigits']:.4f}",
             met(m["auroc_nondigits"], GOALS["auroc_nondigits"])),
            (model, "non-digits rejected >= 90%" + ("" if cnn else " (CNN goal)"), f"{m['rejected']:.1%}",
             met(m["rejected"], GOALS["rejected"])),
            (model, "drawn digits answered and right >= 97%", f"{m['drawn']:.1%}", met(m["drawn"], GOALS["drawn"])),
            (model, "trust cost <= 1 ms per image", f"{statistics.mean(c['extra_1_ms'] for c in costs):.3f} ms",
             met(statistics.mean(c["extra_1_ms"] for c in costs), GOALS["cost_ms"], higher=False)),
        ]
    lines += ["", "### Goals", "", "| model | goal | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts]
    lines += ["", "### Every OOD method (thresholds fitted per method at the same target)", "",
              "| model | method | coverage | selective accuracy | unsure / not_a_digit (test digits) | AUROC Fashion | "
              "AUROC non-digits | non-digits rejected (of which not_a_digit) | Fashion rejected | drawn digits |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, rs in by_model.items():
        for method in rs[0]["methods"]:
            d = [r["methods"][method] for r in rs]

            def c(key, fmt, d=d):
                return mean_sd([x[key] for x in d], fmt)
            lines.append(f"| {model} | {method} | {c('coverage', '.2%')} | {c('selective', '.2%')} | "
                         f"{c('unsure', '.2%')} / {c('not_a_digit', '.2%')} | {c('auroc_fashion', '.4f')} | "
                         f"{c('auroc_nondigits', '.4f')} | {c('rejected', '.1%')} ({c('called_not_a_digit', '.1%')}) | "
                         f"{c('rejected_fashion', '.1%')} | {c('drawn', '.1%')} |")
    lines += ["", "### Held-out non-digits rejected, by kind (default method)", "",
              "| model | " + " | ".join(results[0]["methods"][results[0]["default"]]["rejected_by_kind"]) + " |",
              "|---|" + "---|" * len(results[0]["methods"][results[0]["default"]]["rejected_by_kind"])]
    for model, rs in by_model.items():
        kinds = rs[0]["methods"][rs[0]["default"]]["rejected_by_kind"]
        lines.append(f"| {model} | " + " | ".join(
            f"{statistics.mean(r['methods'][r['default']]['rejected_by_kind'][k] for r in rs):.0%}" for k in kinds)
            + " |")
    lines += ["", "### Selective accuracy, answering the surest first (default method's calibrated confidence)", "",
              "| model | 100% | 99.5% | 99% | 98% |", "|---|---|---|---|---|"]
    for model, rs in by_model.items():
        tabs = [r["methods"][r["default"]]["table"] for r in rs]
        lines.append(f"| {model} | " + " | ".join(mean_sd([t[i][1] for t in tabs], ".2%")
                                                  for i in range(len(tabs[0]))) + " |")
    return "\n".join(lines)


def write_sheets(folder: Path, per_kind: int) -> None:
    """Contact sheets of the held-out non-digits: the canvases and what the model sees."""
    import numpy as np
    from PIL import Image

    from digitlab import nondigits
    folder.mkdir(parents=True, exist_ok=True)
    pics = list(nondigits.pictures("holdout", per_kind))
    s = nondigits.split("holdout", per_kind)
    cell, cols = 96, per_kind
    sheet = Image.new("L", (cols * cell, 2 * len(nondigits.KINDS) * cell), 128)
    for i, ((_, _, im), x) in enumerate(zip(pics, s.x)):
        r, c = divmod(i, cols)
        sheet.paste(im.resize((cell - 4, cell - 4), Image.Resampling.BOX), (c * cell + 2, 2 * r * cell + 2))
        seen = Image.fromarray(np.round(x * 255).astype(np.uint8)).resize((cell - 4, cell - 4))
        sheet.paste(seen, (c * cell + 2, (2 * r + 1) * cell + 2))
    sheet.save(folder / "nondigits-holdout.png")
    print(f"wrote {folder / 'nondigits-holdout.png'} (rows: {', '.join(nondigits.KINDS)})", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="seed-ann,fastcnn", help="comma-separated registered models")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed, 30 non-digits of each kind per part")
    ap.add_argument("--per-kind", type=int, default=60, help="non-digits of each kind per part (fit, holdout)")
    ap.add_argument("--fashion", type=int, default=0, help="Fashion-MNIST test images to use (0 = all 10,000)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-trust", help="where the runs are kept")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--sheet", type=Path, help="write contact sheets of the non-digit set to this folder")
    ap.add_argument("--outlier-exposure", type=int, default=0, metavar="N",
                    help="also train each model with outlier exposure on N generated non-digits of each kind "
                         "(an experiment; rows named MODEL+oe)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.per_kind = 1, 30
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.out, args.per_kind, args.fashion,
                                args.outlier_exposure)))
        return 0
    if args.sheet:
        write_sheets(args.sheet, min(args.per_kind, 12))
    results = []
    for model in args.models.split(","):
        for seed in range(args.seeds):
            t = time.perf_counter()
            # -P: bench/ must not shadow the standard library (a bench/numbers.py would hide `numbers`)
            cmd = [sys.executable, "-P", __file__, "--worker", model, str(seed), "--out", str(args.out),
                   "--per-kind", str(args.per_kind), "--fashion", str(args.fashion),
                   "--outlier-exposure", str(args.outlier_exposure)]
            env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # each model picks its own
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                return proc.returncode
            results += json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{model} seed {seed}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
