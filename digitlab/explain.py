"""Why the model said that: occlusion sensitivity on the 28x28 input, and a PNG overlay of it.

    heat = occlusion_map(predictor.predict_proba, x28)          # (28, 28): how much each pixel supports the answer
    png = explanation_png(x28, heat)                            # 224x224: the input, the evidence painted over it

Occlusion (Zeiler & Fergus 2014): a PATCH x PATCH square of the input is set to the background (0) at
every STRIDE-pixel offset, all in one batch, and each pixel gets the mean drop in the answer's
probability over the squares that cover it. Positive (red): hiding it lowers the answer's probability,
so it is evidence for the answer; negative (blue): evidence against. It needs only the model's
probabilities, so it works on any runtime (Keras, ONNX, scikit-learn) and costs one batch of 169
images with the defaults.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

PATCH = 4  # px: about a stroke's width and a half, at MNIST's 20 px digit size
STRIDE = 2  # px: (28 - 4) / 2 + 1 = 13 offsets per axis, 169 occluded copies
RED, BLUE = (0.95, 0.15, 0.1), (0.1, 0.35, 1.0)  # evidence for / against the answer
OVERLAY_ALPHA = 0.7  # opacity of the strongest evidence over the grey input


def occlusion_map(predict_proba: Callable[[np.ndarray], np.ndarray], x28: np.ndarray, target: int | None = None,
                  patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
    """(28, 28) float32: mean drop of p(target) when a patch covering the pixel is blanked; target = the answer."""
    x = np.asarray(x28, dtype=np.float32)
    if x.shape != (28, 28):
        raise ValueError(f"occlusion_map takes one 28x28 image, got shape {x.shape}")
    base = np.asarray(predict_proba(x[None]))[0]
    target = int(np.argmax(base)) if target is None else int(target)
    offsets = [(r, c) for r in range(0, 28 - patch + 1, stride) for c in range(0, 28 - patch + 1, stride)]
    batch = np.repeat(x[None], len(offsets), axis=0)
    for i, (r, c) in enumerate(offsets):
        batch[i, r:r + patch, c:c + patch] = 0.0
    drops = base[target] - np.asarray(predict_proba(batch))[:, target]  # (offsets,)
    total = np.zeros((28, 28), np.float64)
    covered = np.zeros((28, 28), np.float64)
    for (r, c), d in zip(offsets, drops):
        total[r:r + patch, c:c + patch] += d
        covered[r:r + patch, c:c + patch] += 1
    return (total / np.maximum(covered, 1)).astype(np.float32)


def explanation_png(x28: np.ndarray, heat: np.ndarray, scale: int = 8) -> bytes:
    """The 28x28 input in grey, enlarged `scale` times, with the occlusion map over it: red supports the
    answer, blue speaks against it, in proportion to the largest absolute value. Drawn with Pillow, so it
    needs only the inference install (no Matplotlib)."""
    x = np.clip(np.asarray(x28, dtype=np.float32), 0, 1)
    h = np.asarray(heat, dtype=np.float32)
    limit = float(np.abs(h).max()) or 1.0
    size = (28 * scale, 28 * scale)
    grey = np.asarray(Image.fromarray(np.round(x * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST),
                      dtype=np.float32) / 255
    # The map is smooth at the patch scale: bilinear enlargement shows it as such.
    h = np.asarray(Image.fromarray(h / limit).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    red, blue = np.clip(h, 0, 1), np.clip(-h, 0, 1)
    alpha = OVERLAY_ALPHA * np.maximum(red, blue)[..., None]
    colour = red[..., None] * np.array(RED, np.float32) + blue[..., None] * np.array(BLUE, np.float32)
    rgb = grey[..., None] * (1 - alpha) + colour * alpha
    buf = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()
