"""report.html: one self-contained page (images embedded as data URLs) that opens from disk, no server.

    html = render_report(context, metrics, report_text, figures, history)
"""
from __future__ import annotations

import json

from digitlab.pages import esc, img, page, table
from digitlab.runs import HISTORY_FIELDS


def _fmt(v, column: str = "") -> str:
    if v is None:
        return ""
    if column == "epoch":
        return str(int(v))
    if column == "lr":
        return f"{v:.3g}"
    if column == "seconds":
        return f"{v:.2f}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_report(context, metrics, report_text: str, figures: dict[str, bytes], history) -> str:
    """context: evaluation.EvaluationContext; metrics: runs.Metrics; history: list of runs.EpochRecord."""
    parts = [f"<h1>{esc(context.title)}</h1>"]
    parts += [f"<p class='note'>{esc(note)}</p>" for note in context.notes]
    kpis = [("test accuracy", f"{metrics.test_accuracy:.2%}"), ("test loss", f"{metrics.test_loss:.4f}"),
            ("errors", f"{metrics.test_errors} / {metrics.test_images}"), ("macro F1", f"{metrics.macro_f1:.4f}")]
    if metrics.train_seconds is not None:
        kpis.append(("training time", f"{metrics.train_seconds:.1f} s"))
    parts.append("".join(f"<div class='kpi'><b>{esc(v)}</b>{esc(k)}</div>" for k, v in kpis))

    if history:
        parts.append("<h2>Training curves</h2>")
        parts.append("<div class='pair'>" + "".join(img(figures[k], k) for k in ("loss", "accuracy") if k in figures)
                     + "</div>")
        parts.append(table([[_fmt(getattr(r, c), c) for c in HISTORY_FIELDS] for r in history], HISTORY_FIELDS))
    for section in context.sections:  # e.g. diagnostics added by other stages
        parts.append(f"<h2>{esc(section['title'])}</h2>{section['html']}")

    parts.append("<h2>Confusion matrix</h2>" + img(figures["confusion_matrix"], "confusion matrix"))
    parts.append("<h2>Most-confused pairs</h2>")
    parts.append(table([[p["true"], p["predicted"], p["count"]] for p in metrics.confused_pairs],
                       ["true", "predicted", "times"]))
    parts.append("<h2>Classification report</h2><pre>" + esc(report_text) + "</pre>")
    parts.append("<h2>Misclassified test images</h2>" + img(figures["misclassified"], "misclassified digits"))

    for heading, value in context.details.items():
        if value:
            parts.append(f"<h2>{esc(heading)}</h2><pre>{esc(json.dumps(value, indent=2))}</pre>")
    return page(context.title, "\n".join(parts))
