"""A ROC curve as a PNG (Pillow, ``pip install 'keras-medzoo[viz]'``; no plotting library)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from zoo import errors
from zoo.io import staged_file

#: Curve colours (RGB 0-255), in order of the curves given.
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def roc_png(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
            title: str = "ROC", size_px: int = 560) -> Path:
    """Draw ROC curves (false positive rate on x, true positive rate on y, both 0-1) with the
    chance diagonal, axis ticks every 0.2 and a legend of the curve names (e.g. ``"nodule
    level, AUC 0.91 [0.85, 0.96]"``), and write them to ``path`` atomically.

    Args:
        curves: name -> ``(fpr, tpr)`` point sequences (as :func:`zoo.metrics.roc_curve`).
        path: the PNG to write (its folder is created).
    Returns:
        ``path``.
    Raises:
        ImportError: Pillow is missing; MetricError: a curve's arrays differ in length or leave [0, 1].
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("the ROC curve PNG needs Pillow: pip install 'keras-medzoo[viz]'") from None
    try:
        font = ImageFont.load_default(size=max(11, size_px // 40))
    except TypeError:  # pragma: no cover - Pillow < 10.1
        font = ImageFont.load_default()
    margin, legend_h = size_px // 8, 22 * len(curves) + 10
    side = size_px - 2 * margin
    img = Image.new("RGB", (size_px, size_px + legend_h), "white")
    draw = ImageDraw.Draw(img)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return margin + fpr * side, margin + (1.0 - tpr) * side

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(160, 160, 160), width=1)
    for v in np.linspace(0, 1, 6):
        x, y = xy(v, 0)
        draw.line([(x, y), (x, y + 5)], fill="black")
        draw.text((x - 8, y + 8), f"{v:.1f}", fill="black", font=font)
        x, y = xy(0, v)
        draw.line([(x - 5, y), (x, y)], fill="black")
        draw.text((x - 32, y - 7), f"{v:.1f}", fill="black", font=font)
    draw.text((margin + side // 2 - 70, margin + side + 28), "false positive rate", fill="black", font=font)
    draw.text((6, margin - 22), "true positive rate", fill="black", font=font)
    draw.text((margin, 8), title, fill="black", font=font)
    for n, (name, (fpr, tpr)) in enumerate(curves.items()):
        f, t = np.asarray(fpr, float), np.asarray(tpr, float)
        if f.shape != t.shape or f.ndim != 1 or np.any((f < 0) | (f > 1) | (t < 0) | (t > 1)):
            raise errors.MetricError(f"ROC curve {name!r}: fpr and tpr must be equal-length 1D arrays in [0, 1]")
        colour = COLOURS[n % len(COLOURS)]
        draw.line([xy(a, b) for a, b in zip(f, t)], fill=colour, width=3)
        ly = size_px + 22 * n
        draw.line([(margin, ly + 8), (margin + 30, ly + 8)], fill=colour, width=3)
        draw.text((margin + 38, ly), name, fill="black", font=font)
    dest = Path(path)
    with staged_file(dest) as tmp:
        img.save(tmp, format="PNG")
    return dest
