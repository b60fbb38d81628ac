"""report.html: one self-contained page (images embedded as data URLs) that opens from disk, no server.

    html = render_report(title, summary, metrics, report_text, figures, history, context)
"""
from __future__ import annotations

import base64
import html
import json

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee} pre{background:#f7f7f7;padding:.8em;overflow-x:auto}
.kpi{display:inline-block;margin:0 1.5em 1em 0} .kpi b{font-size:1.6em;display:block}
.pair{display:flex;flex-wrap:wrap;gap:1em} .pair img{flex:1 1 420px;max-width:540px}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.5em 1em}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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


def render_report(title, summary, metrics, report_text, figures, history, context) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for note in context.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    kpis = [("test accuracy", f"{summary['test_accuracy']:.2%}"), ("test loss", f"{summary['test_loss']:.4f}"),
            ("errors", f"{summary['test_errors']} / {summary['test_images']}"), ("macro F1", f"{summary['macro_f1']:.4f}")]
    if summary.get("train_seconds") is not None:
        kpis.append(("training time", f"{summary['train_seconds']:.1f} s"))
    parts.append("".join(f"<div class='kpi'><b>{html.escape(v)}</b>{html.escape(k)}</div>" for k, v in kpis))

    if history:
        parts.append("<h2>Training curves</h2>")
        parts.append("<div class='pair'>" + "".join(_img(figures[k], k) for k in ("loss", "accuracy") if k in figures)
                     + "</div>")
        cols = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
        parts.append(_table([[_fmt(r.get(c), c) for c in cols] for r in history], cols))
    for section in context.get("extra_sections", []):  # e.g. diagnostics added by other stages
        parts.append(f"<h2>{html.escape(section['title'])}</h2>{section['html']}")

    parts.append("<h2>Confusion matrix</h2>" + _img(figures["confusion_matrix"], "confusion matrix"))
    parts.append("<h2>Most-confused pairs</h2>")
    parts.append(_table([[p["true"], p["predicted"], p["count"]] for p in metrics["confused_pairs"]],
                        ["true", "predicted", "times"]))
    parts.append("<h2>Classification report</h2><pre>" + html.escape(report_text) + "</pre>")
    parts.append("<h2>Misclassified test images</h2>" + _img(figures["misclassified"], "misclassified digits"))

    for key, heading in (("config", "Configuration"), ("data", "Data provenance"), ("state", "Run state"),
                         ("environment", "Environment")):
        if context.get(key):
            parts.append(f"<h2>{heading}</h2><pre>{html.escape(json.dumps(context[key], indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
