"""PNG overlays of a segmentation on its image, for checking results by eye (needs Pillow,
``pip install 'keras-medzoo[viz]'``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo import errors
from zoo.io import Volume, staged_file
from zoo.preprocessing.orientation import Reorientation


#: RGB colours (0-1) of the overlay classes.
COLOURS: dict[str, tuple[float, float, float]] = {
    "true positive": (0.0, 0.85, 0.0),     # green: prediction and reference
    "false positive": (1.0, 0.15, 0.15),   # red: prediction only
    "false negative": (0.2, 0.5, 1.0),     # blue: reference only
    "prediction": (1.0, 0.15, 0.15),       # red: prediction, no reference given
}
#: Opacity of the class colour over the grey image.
ALPHA = 0.6
#: Minimum displayed tile height in pixels (slices are enlarged to at least this).
MIN_TILE_PX = 320


def overlay_classes(pred: np.ndarray, reference: np.ndarray | None) -> dict[str, np.ndarray]:
    """Boolean masks of the overlay classes: with a reference, ``true positive`` (both),
    ``false positive`` (prediction only) and ``false negative`` (reference only); without,
    ``prediction``. Arrays of any equal shape; non-zero = foreground."""
    p = np.asarray(pred) > 0
    if reference is None:
        return {"prediction": p}
    r = np.asarray(reference) > 0
    return {"true positive": p & r, "false positive": p & ~r, "false negative": ~p & r}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def overlay_png(image: Volume, mask: np.ndarray, path: str | os.PathLike, *, n_slices: int = 4,
                reference: np.ndarray | None = None, slices: Sequence[int] | None = None,
                min_tile_px: int = MIN_TILE_PX) -> Path:
    """Write axial slices of ``image`` with the segmentation drawn over them, with a legend.

    With a ``reference``, voxels are coloured by agreement: true positives green, false
    positives red, false negatives blue (:data:`COLOURS`); without, the prediction is red.
    A legend under the slices names each colour with its voxel count over the whole volume,
    and each slice is labelled with its index. Slices are enlarged (nearest neighbour, pixel
    aspect from the voxel spacing) to at least ``min_tile_px`` pixels high so the picture can
    be read without zooming.

    Args:
        image: the input volume (any orientation; shown in radiological display:
            patient left on the image right, anterior up).
        mask: ``(I, J, K)`` prediction on the image's grid (non-zero = foreground).
        path: the PNG to write (atomically).
        n_slices: how many axial slices, evenly spread over those containing ``mask`` or
            ``reference`` (or the middle half of the volume when both are empty).
        reference: optional ``(I, J, K)`` reference mask on the same grid.
        slices: explicit axial slice indices in the RAS-reoriented volume.
        min_tile_px: minimum displayed height of one slice, in pixels.
    Returns:
        The written path.
    Raises:
        ZooError: Pillow is not installed.
        ValueError: ``mask`` or ``reference`` is not of the image's shape.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - depends on the environment
        raise errors.ZooError("PNG overlays need Pillow: pip install 'keras-medzoo[viz]'") from None
    for name, m in (("mask", mask), ("reference", reference)):
        if m is not None and tuple(np.shape(m)) != tuple(image.shape):
            raise ValueError(f"overlay {name} has shape {np.shape(m)}, the image {image.shape}")
    r = Reorientation.between(image.affine, image.shape, ("R", "A", "S"))
    img = r.forward(np.asarray(image.array, dtype=np.float32))
    classes = {k: r.forward(v) for k, v in overlay_classes(mask, reference).items()}
    spacing = np.sqrt((r.target_affine(np.asarray(image.affine, float))[:3, :3] ** 2).sum(axis=0))
    shown = np.logical_or.reduce(list(classes.values()))
    if slices is None:
        hit = np.nonzero(shown.any(axis=(0, 1)))[0]
        if len(hit) == 0:
            k = img.shape[2]
            hit = np.arange(k // 4, max(k // 4 + 1, 3 * k // 4))
        slices = np.unique(hit[np.linspace(0, len(hit) - 1, num=min(n_slices, len(hit))).astype(int)])
    lo, hi = np.percentile(img[img != 0] if (img != 0).any() else img, (1, 99))
    tiles = []
    for k in slices:
        g = np.clip((img[:, :, k] - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.stack([g, g, g], axis=-1)
        for name, cls in classes.items():
            sel = cls[:, :, k]
            rgb[sel] = (1 - ALPHA) * rgb[sel] + ALPHA * np.array(COLOURS[name])
        tiles.append(np.rot90(rgb)[:, ::-1])  # rows = anterior->posterior, columns = R->L
    # display size: enlarge to min_tile_px high, keeping the physical aspect of the pixels
    sx, sy = float(spacing[0]), float(spacing[1])
    h0, w0 = tiles[0].shape[:2]
    scale = max(1.0, min_tile_px / h0)
    out_h, out_w = int(round(h0 * scale)), int(round(w0 * scale * sx / sy))
    font_px = max(14, out_h // 18)
    font = _font(font_px)
    gap = 6
    pictures = []
    for k, t in zip(slices, tiles):
        pic = Image.fromarray((t * 255).astype(np.uint8)).resize((out_w, out_h), Image.NEAREST)
        ImageDraw.Draw(pic).text((6, 4), f"slice {int(k)}", fill=(255, 255, 0), font=font)
        pictures.append(pic)
    # legend items: a colour swatch and "name (n voxels)", wrapped onto as many lines as needed
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = [(name, f"{name} ({int(cls.sum())} voxels)") for name, cls in overlay_classes(mask, reference).items()]
    widths = [font_px + 6 + int(measure.textlength(text, font=font)) + 2 * font_px for _, text in items]
    width = max(len(pictures) * out_w + (len(pictures) - 1) * gap, max(widths) + 16)
    lines, x = [[]], 8
    for item, w in zip(items, widths):
        if x + w > width and lines[-1]:
            lines.append([])
            x = 8
        lines[-1].append((item, x))
        x += w
    line_h = font_px + 10
    canvas = Image.new("RGB", (width, out_h + 8 + line_h * len(lines)), (0, 0, 0))
    for n, pic in enumerate(pictures):
        canvas.paste(pic, (n * (out_w + gap), 0))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        y = out_h + 8 + row * line_h
        for (name, text), x in line:
            draw.rectangle([x, y, x + font_px, y + font_px], fill=tuple(int(round(255 * c)) for c in COLOURS[name]))
            draw.text((x + font_px + 6, y - 2), text, fill=(255, 255, 255), font=font)
    dest = Path(path)
    with staged_file(dest, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return dest
