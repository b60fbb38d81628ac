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
    scaled = [np.asarray(img, dtype=np.float32) / (255.0 if np.asarray(img).dtype == np.uint8 else 1.0)
              for img in images]
    lines = max(str(t).count("\n") + 1 for t in titles)
    mosaic, centres = tile_mosaic(scaled, cols, gap=(16, 4 + 7 * lines))  # room for each title above its tile
    width = cols * 1.3  # inches; the height follows the mosaic's shape (imshow keeps square pixels)
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + (0.4 if title else 0)))
    ax.imshow(mosaic, cmap=white_gaps("gray"), vmin=0, vmax=1, interpolation="nearest")
    for (x, y_top), t in zip(centres, titles):
        ax.text(x, y_top - 2, t, ha="center", va="bottom", fontsize=8)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return figure_png(fig)


def tile_mosaic(tiles: list[np.ndarray], cols: int, gap: tuple[int, int] = (4, 4)):
    """The tiles in one image, `cols` a row, NaN between them (drawn white), and each tile's (centre x, top y).

    One image with text beside it draws in a tenth of the time of one axes per tile (a grid of 40 digits took
    about 1 s that way), and reads the same."""
    h, w = tiles[0].shape
    gx, gy = gap
    rows = (len(tiles) + cols - 1) // cols
    mosaic = np.full((gy + rows * (h + gy), gx + cols * (w + gx)), np.nan, dtype=np.float32)
    centres = []
    for i, tile in enumerate(tiles):
        top, left = gy + (i // cols) * (h + gy), gx + (i % cols) * (w + gx)
        mosaic[top:top + h, left:left + w] = tile
        centres.append((left + (w - 1) / 2, top - 0.5))
    return mosaic, centres


def white_gaps(name: str):
    """Matplotlib's colour map `name`, drawing NaN (the gaps of a tile_mosaic) white."""
    return plt.get_cmap(name).with_extremes(bad="white")


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
