"""PNG overlays of a segmentation on its image, for checking results by eye (needs Pillow,
``pip install 'keras-medzoo[viz]'``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo import errors
from zoo.io import Volume, publish
from zoo.preprocessing.orientation import Reorientation


def overlay_png(image: Volume, mask: np.ndarray, path: str | os.PathLike, *, n_slices: int = 4,
                reference: np.ndarray | None = None, slices: Sequence[int] | None = None) -> Path:
    """Write axial slices of ``image`` with ``mask`` in red (and ``reference`` in green) as one PNG.

    Args:
        image: the input volume (any orientation; shown in radiological display:
            patient left on the image right, anterior up).
        mask: ``(I, J, K)`` prediction on the image's grid (non-zero = foreground).
        path: the PNG to write (atomically).
        n_slices: how many axial slices, evenly spread over those containing ``mask`` (or
            the middle half of the volume when the mask is empty).
        reference: optional ``(I, J, K)`` reference mask (drawn in green; overlap yellow).
        slices: explicit axial slice indices in the RAS-reoriented volume.
    Returns:
        The written path.
    Raises:
        ZooError: Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise errors.ZooError("PNG overlays need Pillow: pip install 'keras-medzoo[viz]'") from None
    r = Reorientation.between(image.affine, image.shape, ("R", "A", "S"))
    img = r.forward(np.asarray(image.array, dtype=np.float32))
    pred = r.forward(np.asarray(mask) > 0)
    ref = None if reference is None else r.forward(np.asarray(reference) > 0)
    if slices is None:
        hit = np.nonzero(pred.any(axis=(0, 1)) | (ref.any(axis=(0, 1)) if ref is not None else False))[0]
        if len(hit) == 0:
            k = img.shape[2]
            hit = np.arange(k // 4, max(k // 4 + 1, 3 * k // 4))
        slices = np.unique(hit[np.linspace(0, len(hit) - 1, num=min(n_slices, len(hit))).astype(int)])
    lo, hi = np.percentile(img[img != 0] if (img != 0).any() else img, (1, 99))
    tiles = []
    for k in slices:
        g = np.clip((img[:, :, k] - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.stack([g, g, g], axis=-1)
        rgb[pred[:, :, k]] = 0.5 * rgb[pred[:, :, k]] + 0.5 * np.array([1.0, 0.0, 0.0])
        if ref is not None:
            rgb[ref[:, :, k]] = 0.5 * rgb[ref[:, :, k]] + 0.5 * np.array([0.0, 1.0, 0.0])
        tiles.append(np.rot90(rgb)[:, ::-1])  # rows = anterior->posterior, columns = R->L
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
    canvas = (np.concatenate(tiles, axis=1) * 255).astype(np.uint8)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".png", dir=dest.parent)
    os.close(fd)
    try:
        Image.fromarray(canvas).save(tmp)
        publish(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest
