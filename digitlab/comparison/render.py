"""The leaderboard files: Markdown, CSV, JSON, a PNG chart and an HTML page that embeds it.

    paths = write_leaderboard(board, "runs/compare")    # {"md": .../leaderboard.md, "csv": ..., "png": ...}
    print(leaderboard_markdown(board))                  # what `digitlab compare` prints at the end

Markdown and HTML share one table (`table_rows`) and one set of plain-language notes (`notes`):
training caps, a smoke-sized test set, gaps to the published figures and why they may exist.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from digitlab import classic
from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.comparison.leaderboard import ROW_FIELDS, Leaderboard, Meta, row_json
from digitlab.comparison.references import NO_REFERENCE, REFERENCES
from digitlab.pages import esc, img, page, table

FORMATS = ("md", "csv", "json", "html", "png")


def write_leaderboard(board: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """leaderboard.{md,csv,json,html} and leaderboard.png in `out_dir`; returns their paths."""
    from digitlab.plots import save_png  # imports matplotlib, see leaderboard_png

    out = Path(out_dir)
    paths = {ext: out / f"leaderboard.{ext}" for ext in FORMATS}
    write_text_atomic(paths["md"], leaderboard_markdown(board))
    write_text_atomic(paths["csv"], leaderboard_csv(board))
    write_json_atomic(paths["json"], {"rows": [row_json(r) for r in board.rows],
                                      "meta": dataclasses.asdict(board.meta)})
    png = leaderboard_png(board)
    save_png(paths["png"], png)
    write_text_atomic(paths["html"], leaderboard_html(board, png))
    return paths


def leaderboard_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in board.rows)
    return buf.getvalue()


# ---------------------------------------------------------------- text shared by the formats

def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def human_seconds(v) -> str:
    if v is None:
        return ""
    return f"{v:.2f} s" if v < 10 else f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def human_size(n) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _sources(board: Leaderboard) -> list[str]:
    sources = []
    for row in board.rows:
        if row.published_source and row.published_source not in sources:
            sources.append(row.published_source)
    return sources


def table_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The leaderboard as text cells, shared by the Markdown and HTML tables."""
    header = ["#", "model", "test accuracy (95% CI)", "published", "Δ (points)", "ECE own → calibrated",
              "train images", "train time", "predict / 10k", "size on disk"]
    sources = _sources(board)
    rows = []
    for r in board.rows:
        published = ""
        if r.published_accuracy is not None:
            published = f"{_pct(r.published_accuracy)} [{sources.index(r.published_source) + 1}]"
        delta = "" if r.published_delta is None else f"{100 * r.published_delta:+.2f}"
        calibrated = _pct(r.ece_uncalibrated) + ("" if r.ece is None else f" → {_pct(r.ece)}")
        rows.append([str(r.rank), r.model, f"{_pct(r.test_accuracy)} ({100 * r.ci95_low:.2f}–{100 * r.ci95_high:.2f})",
                     published, delta, calibrated, f"{r.train_images:,}", human_seconds(r.train_seconds),
                     human_seconds(r.predict_seconds_per_10k), human_size(r.size_bytes)])
    return header, rows


def _clustering_cells(board: Leaderboard) -> list[list[str]]:
    return [[r.model, _pct(r.train_accuracy), _pct(r.test_accuracy), f"{r.ari_train:.3f}", f"{r.ari_test:.3f}",
             f"{r.nmi_train:.3f}", f"{r.nmi_test:.3f}"] for r in board.rows if r.kind == "clustering"]


def notes(board: Leaderboard) -> list[str]:
    """Plain-language notes under the table: caps, missing references, gaps to the published figures."""
    out = []
    meta = board.meta
    full = meta.train_images_full - meta.calibration_images  # what a model trains on at most
    if meta.calibration_images:
        out.append(f"{meta.calibration_images:,} of the {meta.train_images_full:,} training images are held out of "
                   f"every model's training (a network's validation split) to calibrate it: a network by temperature "
                   f"scaling, as `digitlab evaluate` does a run; a classic model by isotonic regression per class "
                   f"(its vote-share probabilities need more than one temperature). ECE: top-label expected "
                   f"calibration error (15 bins) on the test images, of the model's own probabilities → after "
                   f"calibration; accuracy is the model's own. The published figures train on all "
                   f"{meta.train_images_full:,}.")
    else:
        out.append("No calibration split (calibration=0): every model trains on all the training images, and the "
                   "ECE is of its own probabilities, uncalibrated.")
    capped = [f"{r.model} ({r.train_images:,})" for r in board.rows if r.train_images < full]
    if capped and len(capped) == len(board.rows) and len({r.train_images for r in board.rows}) == 1:
        out.append(f"Every model trained on {board.rows[0].train_images:,} of the {full:,} training images "
                   f"(a quick run): the published figures use all {meta.train_images_full:,}, so expect these to sit "
                   f"lower.")
    elif capped:
        out.append(f"Trained on fewer than all {full:,} training images: {', '.join(capped)} — the published "
                   f"figures use all {meta.train_images_full:,}, so expect these to sit lower.")
    if meta.test_images < 10_000:
        out.append(f"Scored on a {meta.test_images:,}-image subset of the test set: a smoke run, not a result.")
    for r in board.rows:
        if r.train_images < full:
            continue  # the note on training caps above already explains its gap
        if r.published_delta is not None and abs(r.published_delta) > 0.01:
            ref = REFERENCES.get(r.model)
            side = "above" if r.published_delta > 0 else "below"
            why = f": {ref.note}" if ref and ref.note else ""
            out.append(f"{r.model} is {100 * abs(r.published_delta):.1f} points {side} its published figure{why}.")
    models = [r.model for r in board.rows]
    if board.dataset != "mnist":
        out.append("The published figures are for MNIST only; none are shown for this dataset.")
    else:
        if "rf" in models:
            out.append(f"rf: {NO_REFERENCE['rf']}.")
        if any(classic.is_clustering(m) for m in models):
            out.append(f"k-means: {NO_REFERENCE['kmeans']}.")
    if "svm" in models:
        out.append("svm: libsvm is single-threaded, so its time is one core's. It has no probabilities of its own: "
                   "its 'own' are a softmax of its decision values (hence their ECE), which the isotonic map turns "
                   "into calibrated probabilities; its test loss in leaderboard.csv is given both ways.")
    if any(r.reused for r in board.rows):
        out.append("Saved models were re-used (SHA-256 checked): their training time is the one recorded when "
                   "they were trained. Pass --retrain to measure it again.")
    return out


def _machine_line(meta: Meta) -> str:
    m, load = meta.machine, meta.load_average
    backend = f", Keras backend {meta.keras_backend}" if meta.keras_backend else ""
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}{backend}; "
            f"total wall time {human_seconds(meta.total_seconds)}, finished {meta.created} (load average "
            f"{(load.start or ['?'])[0]} at start, {(load.end or ['?'])[0]} at end: the cores are shared)")


# ---------------------------------------------------------------- Markdown

def leaderboard_markdown(board: Leaderboard) -> str:
    header, rows = table_rows(board)
    lines = [f"# digitlab compare: {board.dataset}", "", f"Machine: {_machine_line(board.meta)}.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i != 1 else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sources = _sources(board)
    if sources:
        lines += ["", "Published figures (no preprocessing, trained on all 60,000 images):"]
        for i, source in enumerate(sources, 1):
            methods = sorted({r.published_method for r in board.rows if r.published_source == source})
            lines.append(f"[{i}] {source}: " + "; ".join(methods))
    clusters = _clustering_cells(board)
    if clusters:
        lines += ["", "| clustering | train accuracy (majority vote) | test accuracy | ARI train | ARI test | "
                      "NMI train | NMI test |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in clusters]
    lines += ["", "Notes:"] + [f"- {n}" for n in notes(board)]
    lines += ["", "Each model's confusion matrix and report: `<model>/report.html` beside this file."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the chart

def leaderboard_png(board: Leaderboard) -> bytes:
    """Accuracy (with 95% CI and the published figure) beside what it costs: training, prediction, size."""
    # A bare Figure, not pyplot's: no GUI backend and no global figure list. Imported here, as
    # matplotlib costs a third of a second and the CLI's parser imports this package.
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from digitlab.plots import figure_png

    rows = board.rows[::-1]  # best at the top
    y = np.arange(len(rows))
    fig = Figure(figsize=(15, 0.45 * len(rows) + 1.6))
    axes = fig.subplots(1, 4, sharey=True, gridspec_kw={"width_ratios": [2.2, 1, 1, 1]})
    acc = np.array([r.test_accuracy for r in rows]) * 100
    err = np.array([[r.test_accuracy - r.ci95_low, r.ci95_high - r.test_accuracy] for r in rows]).T * 100
    ax = axes[0]
    ax.barh(y, acc, xerr=err, color="#4a7fb5", capsize=3)
    refs = [(i, r.published_accuracy * 100) for i, r in enumerate(rows) if r.published_accuracy is not None]
    if refs:
        ax.plot([v for _, v in refs], [i for i, _ in refs], "D", color="#d62728", label="published")
        ax.legend(loc="lower right", fontsize=8)
    low = min(list(acc) + [v for _, v in refs])
    x0 = max(0, 5 * math.floor((low - 3) / 5))
    ax.set_xlim(x0, 100)
    for i, v in enumerate(acc):  # inside the bar's base: the far end holds the CI and the published mark
        ax.text(x0 + 0.5, i, f"{v:.2f}%", va="center", fontsize=8, color="white", fontweight="bold")
    ax.set_yticks(y, [r.model for r in rows])
    ax.set_title("test accuracy % (95% CI)")
    costs = (("train_seconds", "training time (s)", 1), ("predict_seconds_per_10k", "prediction s / 10k images", 1),
             ("size_bytes", "size on disk (MB)", 1 / 2**20))
    for ax, (key, title, unit) in zip(axes[1:], costs, strict=True):
        vals = np.array([max(float(getattr(r, key)) * unit, 1e-3) for r in rows])
        ax.barh(y, vals, color="#8c8c8c")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short decades
        ax.set_title(title + ", log scale", fontsize=10)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


# ---------------------------------------------------------------- HTML

def leaderboard_html(board: Leaderboard, png: bytes) -> str:
    header, rows = table_rows(board)
    body = []
    for cells in rows:
        escaped = [esc(c) for c in cells]
        escaped[1] = f"<a href='{escaped[1]}/report.html'>{escaped[1]}</a>"  # each model's own report
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in escaped) + "</tr>")
    leaderboard = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                   + "".join(body) + "</table>")
    parts = [f"<h1>digitlab compare: {esc(board.dataset)}</h1>",
             f"<p>{esc(_machine_line(board.meta))}.</p>",
             img(png, "leaderboard chart"),
             "<h2>Leaderboard</h2>", leaderboard]
    sources = _sources(board)
    if sources:
        parts.append("<h2>Published figures</h2><ol>" + "".join(f"<li>{esc(s)}</li>" for s in sources) + "</ol>")
    clusters = _clustering_cells(board)
    if clusters:
        head = ["clustering", "train accuracy", "test accuracy", "ARI train", "ARI test", "NMI train", "NMI test"]
        parts.append("<h2>k-means</h2>" + table(clusters, head))
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes(board)) + "</ul>")
    meta = json.dumps(dataclasses.asdict(board.meta), indent=2, default=str)
    parts.append(f"<h2>Configuration</h2><pre>{esc(meta)}</pre>")
    return page("digitlab compare", "\n".join(parts))
