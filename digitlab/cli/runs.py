"""`digitlab runs`: the runs under a folder as a table (or JSON), read through digitlab.runs only.

    digitlab runs                                   # everything under ./runs, newest first
    digitlab runs runs/sweep-mlp --sort val         # best validation accuracy first
    digitlab runs --model mlp --state completed --json
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from digitlab.errors import RunError
from digitlab.runs import CONFIG, EnsembleConfig, Run

SORTS = {  # --sort key -> (row attribute, descending)
    "date": ("date", True), "val": ("val_accuracy", True), "test": ("test_accuracy", True),
    "time": ("train_seconds", False), "model": ("model", False), "path": ("path", False),
}


@dataclass(frozen=True)
class RunRow:
    path: str  # relative to ROOT
    model: str
    settings: str  # the key settings, compact: epochs, batch, lr, optimizer, schedule, builder parameters
    val_accuracy: float | None  # the best epoch's (None without a validation set, or when val is test)
    test_accuracy: float | None  # metrics.json's, when the run was evaluated
    train_seconds: float | None
    date: str  # when the run started (environment.json), ISO
    state: str  # running | interrupted | completed | failed | pruned | ... | unreadable
    error: str | None = None


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="list the runs under a folder: model, settings, accuracy, time, state",
                       description="List the run directories under ROOT (searched recursively).")
    p.add_argument("root", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--sort", choices=list(SORTS), default="date", help="order of the rows (default: date, newest "
                                                                       "first; accuracies: best first)")
    p.add_argument("--model", help="only runs of this model")
    p.add_argument("--state", help="only runs in this state (completed, interrupted, failed, running, pruned)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(func=run)


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds a config.json, in path order."""
    if not root.is_dir():
        raise RunError(f"{root} is not a folder: name the folder that holds your runs (default: runs)")
    return sorted(p.parent for p in root.rglob(CONFIG))


def run_row(run: Run, root: Path) -> RunRow:
    where = str(run.path.relative_to(root)) if run.path != root else "."
    try:
        cfg = run.config
        state = run.state
        env = run.environment
        metrics = run.metrics
        if isinstance(cfg, EnsembleConfig):
            settings = f"{len(cfg.members)} members" + (", tta" if cfg.tta else "")
            val = None
        else:
            params = " ".join(f"{k}={_short(v)}" for k, v in cfg.model_params.items())
            settings = (f"epochs={cfg.epochs} batch={cfg.batch_size} lr={cfg.lr:g} {cfg.optimizer} {cfg.schedule}"
                        + (f" {params}" if params else ""))
            vals = [r.val_accuracy for r in run.history if r.val_accuracy is not None]
            val = max(vals) if vals and not run.data.val_is_test else None
        return RunRow(where, cfg.model, settings, val, metrics.test_accuracy if metrics else None,
                      state.train_seconds, env.created if env else "", state.status, state.error)
    except RunError as exc:
        return RunRow(where, "?", "", None, None, None, "", "unreadable", str(exc))


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def list_runs(root: Path, sort: str = "date", model: str | None = None, state: str | None = None) -> list[RunRow]:
    rows = [run_row(Run(p), root) for p in find_runs(root)]
    rows = [r for r in rows if (model is None or r.model == model) and (state is None or r.state == state)]
    key, descending = SORTS[sort]
    present = [r for r in rows if getattr(r, key) not in (None, "")]
    absent = [r for r in rows if getattr(r, key) in (None, "")]  # always last, whatever the direction
    return sorted(present, key=lambda r: getattr(r, key), reverse=descending) + absent


def run(args) -> int:
    root = Path(args.root)
    rows = list_runs(root, args.sort, args.model, args.state)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no runs under {root}" + (" matching the filters" if args.model or args.state else ""))
        return 0
    print(format_table(rows))
    return 0


def format_table(rows: list[RunRow]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    header = ("run", "model", "val", "test", "time", "date", "state", "settings")
    body = [(r.path, r.model, pct(r.val_accuracy), pct(r.test_accuracy),
             "-" if r.train_seconds is None else f"{r.train_seconds:.0f}s", r.date[:16].replace("T", " "),
             r.state, r.settings) for r in rows]
    widths = [max(len(str(line[i])) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *body)]
    return "\n".join(lines)

