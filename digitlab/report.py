"""report.html: one self-contained page (images embedded as data URLs) that opens from disk, no server.

    html = render_report(context, metrics, report_text, figures, history)
    section = trust_section(metrics.trust, trust_model, {"reliability": png, "coverage": png}, notes)
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
    if metrics.trust is not None:
        kpis += [("ECE, calibrated", f"{metrics.trust.ece_after:.2%}"),
                 ("test digits answered", f"{metrics.trust.coverage:.2%}")]
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


def _pct(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}%}"


def trust_section(figures, trust, pngs: dict[str, bytes], notes: list[str]) -> dict:
    """The report's trust section (issue 11): calibration, selective prediction, out-of-distribution detection.

    figures: runs.TrustFigures; trust: trust.TrustModel; pngs: "reliability" and "coverage"; notes: paragraphs."""
    f = figures
    ood = "never" if f.ood_threshold is None else f"above {f.ood_threshold:.4g}"
    parts = [f"<p>Every prediction gets a verdict: <b>digit</b> when its calibrated probability is at least "
             f"{f.confidence_threshold:.3f} and its {esc(f.method)} OOD score is at most the OOD threshold; "
             f"<b>unsure</b> (best guess and runner-up) below that probability; <b>not a digit</b> when the OOD score "
             f"is {esc(ood)}; <b>blank</b> when preprocessing finds no ink. Temperature T = {f.temperature:.3f}. "
             f"Thresholds chosen to answer at least {trust.target_acceptance:.2%} of {f.fit_images:,} fitting digits "
             f"as <b>digit</b> (reached: {_pct(trust.val_acceptance)}) and, within that, to reject as many of "
             f"{trust.nondigit_images or 0} generated non-digits as possible (rejected: {_pct(trust.fit_rejection)}). "
             f"<code>digitlab predict --threshold/--ood-threshold</code> overrides them.</p>"]
    if trust.method == "detector":
        parts.append(f"<p>The detector OOD score is the larger of two, each scaled to 1 at the fitting digits' 99th "
                     f"percentile: the Mahalanobis distance of the penultimate features to the nearest class mean, "
                     f"and a small network's score, trained on {trust.feature_images or 0:,} training digits against "
                     f"{trust.negative_images or 0:,} generated non-digits (none of them among those above).</p>")
    parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
    parts.append("<h3>Calibration on the test set</h3>")
    parts.append(table([["ECE (15 bins)", _pct(f.ece_before), _pct(f.ece_after)],
                        ["NLL", f"{f.nll_before:.4f}", f"{f.nll_after:.4f}"],
                        ["Brier", f"{f.brier_before:.4f}", f"{f.brier_after:.4f}"]],
                       ["", "before calibration", f"after (T = {f.temperature:.3f})"]))
    parts.append(img(pngs["reliability"], "reliability diagram"))
    parts.append("<h3>Selective prediction</h3>")
    parts.append(f"<p>At the operating point: {_pct(f.coverage)} of the test digits answered as <b>digit</b>, "
                 f"{_pct(f.selective_accuracy)} of those right; {_pct(f.unsure)} <b>unsure</b>, "
                 f"{_pct(f.not_a_digit)} called <b>not a digit</b>.</p>")
    parts.append(table([[_pct(c, 1), _pct(a)] for c, a in f.coverage_table],
                       ["coverage (surest answered first)", "accuracy on the answered"]))
    parts.append(img(pngs["coverage"], "accuracy against coverage"))
    parts.append("<h3>Out-of-distribution inputs</h3>")
    parts.append(table([[o.name, f"{o.images:,}", f"{o.auroc:.4f}", _pct(o.rejected), _pct(o.not_a_digit)]
                        for o in f.ood] + [["test digits", "", "", _pct(1 - f.coverage), _pct(f.not_a_digit)]],
                       ["set", "images", "AUROC against the test digits", "not answered as digit",
                        "called not a digit"]))
    return {"title": "Trust: calibration, verdicts and out-of-distribution inputs", "html": "\n".join(parts)}
