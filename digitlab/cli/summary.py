"""What train, evaluate and ensemble print when they finish."""
from __future__ import annotations


def print_summary(run) -> None:
    """run: a digitlab.runs.Run with metrics."""
    m, state = run.metrics, run.state
    print(f"\nrun:           {run.path}")
    print(f"test accuracy: {m.test_accuracy:.4f}   test loss: {m.test_loss:.4f}   "
          f"errors: {m.test_errors}/{m.test_images}")
    if m.train_seconds is not None:
        print(f"training time: {m.train_seconds:.1f} s ({m.keras_backend})")
    if state.stopped_early_at_epoch:
        print(f"early stopping: stopped after epoch {state.stopped_early_at_epoch}; "
              f"best epoch {state.best_epoch} by {state.monitor}")
    if state.final_model:
        print(f"final model:   {state.final_model}")
    pairs = ", ".join(f"{p['true']}->{p['predicted']} x{p['count']}" for p in m.confused_pairs[:5])
    print(f"most confused: {pairs}")
    print(f"report:        {run.path / 'report.html'}")


def print_seeds(group) -> None:
    """group: a digitlab.seeds.SeedGroup."""
    s = group.summary
    print(f"\n{'seed':>6} {'test acc':>9} {'train s':>8}  run")
    for seed, acc, secs, run in zip(s["seeds"], s["test_accuracy"], s["train_seconds"], s["runs"], strict=True):
        print(f"{seed:>6} {acc:>9.4f} {secs:>8.1f}  {run}")
    print(f"{'mean':>6} {s['test_accuracy_mean']:>9.4f} {s['train_seconds_mean']:>8.1f}")
    print(f"{'std':>6} {s['test_accuracy_std']:>9.4f} {s['train_seconds_std']:>8.1f}   (sample std, n-1)")
    print(f"group:  {group.path}")
