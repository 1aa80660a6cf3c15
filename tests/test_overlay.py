"""Tests of ``zoo.overlay``: true positives, false positives and false negatives are drawn in
their three colours where they are, with a legend, at a readable size (issue 20 part 5)."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.io import read_volume
from zoo.overlay import ALPHA, COLOURS, MIN_TILE_PX, overlay_classes, overlay_png

pytest.importorskip("PIL")


def _pixels_of(rgb: np.ndarray, colour) -> np.ndarray:
    want = np.round(255 * ALPHA * np.asarray(colour))  # black image under the colour
    return np.argwhere(np.all(np.abs(rgb.astype(int) - want) <= 1, axis=-1))


def _case():
    """RAS 1 mm volume (I=40, J=40, K=3), black; on slice 1: TP block at low i/low j, FP block
    at high i (patient right), FN block at high j (anterior)."""
    shape = (40, 40, 3)
    image = read_volume((np.zeros(shape, np.float32), np.eye(4)))
    pred = np.zeros(shape, np.uint8)
    ref = np.zeros(shape, np.uint8)
    pred[5:15, 5:15, 1] = ref[5:15, 5:15, 1] = 1   # true positive: 100 voxels
    pred[25:35, 5:15, 1] = 1                       # false positive: 100 voxels
    ref[5:15, 25:33, 1] = 1                        # false negative: 80 voxels
    return image, pred, ref


def test_classes():
    _, pred, ref = _case()
    c = overlay_classes(pred, ref)
    assert [int(v.sum()) for v in c.values()] == [100, 100, 80]
    assert list(overlay_classes(pred, None)) == ["prediction"]


def test_three_colours_where_expected(tmp_path):
    from PIL import Image

    image, pred, ref = _case()
    path = overlay_png(image, pred, tmp_path / "o.png", reference=ref, slices=[1])
    rgb = np.asarray(Image.open(path).convert("RGB"))
    tile_h = MIN_TILE_PX
    assert rgb.shape[0] > tile_h  # readable: the 40-pixel slice is enlarged, legend below
    tile = rgb[:tile_h]
    tp = _pixels_of(tile, COLOURS["true positive"])
    fp = _pixels_of(tile, COLOURS["false positive"])
    fn = _pixels_of(tile, COLOURS["false negative"])
    scale = tile_h / 40
    # areas in display pixels match the voxel counts (100, 100, 80 voxels)
    for found, n in ((tp, 100), (fp, 100), (fn, 80)):
        assert abs(len(found) / scale**2 - n) < 0.1 * n
    # radiological display: patient right (high i) on the image left, anterior (high j) up
    assert fp[:, 1].mean() < tp[:, 1].mean() and abs(fp[:, 0].mean() - tp[:, 0].mean()) < 2
    assert fn[:, 0].mean() < tp[:, 0].mean() and abs(fn[:, 1].mean() - tp[:, 1].mean()) < 2
    # legend: one swatch of each colour under the slices
    legend = rgb[tile_h:]
    for name in ("true positive", "false positive", "false negative"):
        swatch = np.argwhere(np.all(np.abs(legend.astype(int) - 255 * np.asarray(COLOURS[name])) <= 1, axis=-1))
        assert len(swatch) >= 100, name


def test_prediction_only_and_shape_check(tmp_path):
    from PIL import Image

    image, pred, ref = _case()
    rgb = np.asarray(Image.open(overlay_png(image, pred, tmp_path / "p.png", slices=[1])).convert("RGB"))
    assert len(_pixels_of(rgb[:MIN_TILE_PX], COLOURS["prediction"])) > 0
    assert len(_pixels_of(rgb[:MIN_TILE_PX], COLOURS["true positive"])) == 0
    with pytest.raises(ValueError, match="shape"):
        overlay_png(image, pred[:-1], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
