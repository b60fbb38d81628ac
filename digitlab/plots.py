"""Matplotlib figures as PNG bytes (the report embeds them; the run folder keeps them as files).

    png = confusion_matrix_png(cm, ["0", "1", ...])
    save_png(path, png)
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from digitlab.atomic import write_bytes_atomic  # noqa: E402


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_png(path: str | Path, png: bytes) -> None:
    write_bytes_atomic(path, png)


def history_png(history: list, metric: str) -> bytes:
    """The tutorial's plot: training and validation `metric` per epoch."""
    epochs = [r.epoch for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [getattr(r, metric) for r in history], "o-", label=metric)
    val = [getattr(r, f"val_{metric}") for r in history]
    if any(v is not None for v in val):
        ax.plot(epochs, val, "s-", label=f"val_{metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_png(fig)


def confusion_matrix_png(cm: np.ndarray, class_names) -> bytes:
    """Counts and row-normalised side by side, with class labels."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for ax, mat, title, fmt in ((axes[0], cm, "Confusion matrix (counts)", "d"),
                                (axes[1], norm, "Row-normalised (recall per class)", ".3f")):
        im = ax.imshow(mat, cmap="Blues")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        ax.set_title(title)
        thresh = mat.max() / 2 if mat.max() else 0.5
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if mat[i, j] == 0:
                    continue
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > thresh else "black")
    fig.tight_layout()
    return figure_png(fig)


def digit_grid_png(images, titles, cols: int = 10, title: str | None = None) -> bytes:
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        return figure_png(fig)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255 if np.asarray(img).dtype == np.uint8 else 1)
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)


def misclassified_png(x, y_true, proba, order, class_names, limit: int = 40) -> bytes:
    """Misclassified test images, most confident mistakes first, titled true / predicted / confidence."""
    idx = list(order[:limit])
    pred = proba.argmax(axis=1)
    titles = [f"true {class_names[y_true[i]]} / pred {class_names[pred[i]]}\n{proba[i, pred[i]]:.1%}" for i in idx]
    return digit_grid_png([x[i] for i in idx], titles, cols=8,
                          title=f"Most confident mistakes ({len(order)} errors in all)")


def samples_png(x, y, class_names, per_class: int = 10) -> bytes:
    """A grid of sample digits: one row per class."""
    images, titles = [], []
    for c in range(len(class_names)):
        for i in np.flatnonzero(y == c)[:per_class]:
            images.append(x[i])
            titles.append(class_names[c])
    return digit_grid_png(images, titles, cols=per_class)
