"""Pieces of the reference preprocessing profiles (issue 15), without TensorFlow: the odd-pixel
rules of the centred crop/pad, the centre-of-mass window and the reference grid."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.preprocessing.cropping import CenterCropPad
from zoo.preprocessing.pipeline import com_window
from zoo.preprocessing.reference_grid import ReferenceGrid


def _ramp(h, w):
    return np.arange(h * w, dtype=np.float32).reshape(1, h, w) + 1


def test_zoo_rule_is_unchanged_and_exactly_invertible():
    x = _ramp(181, 219)
    c = CenterCropPad((181, 219), (200, 200))
    y = c.forward(x, 0.0)
    assert y[0, 9, 0] == x[0, 0, 9] and y[0, 8, 0] == 0  # 9 pixels padded before, crop starts at 9
    back = c.inverse(y)
    np.testing.assert_array_equal(back[0, :, 9:209], x[0, :, 9:209])  # every kept pixel back in place
    assert not back[0, :, :9].any() and not back[0, :, 209:].any()


def test_antspynet_rule_pads_the_extra_pixel_before_and_recentres_one_pixel_off():
    x = _ramp(181, 219)
    c = CenterCropPad((181, 219), (200, 200), rule="antspynet", inverse_rule="recentre")
    y = c.forward(x, 0.0)
    assert y[0, 10, 0] == x[0, 0, 9] and y[0, 9, 0] == 0  # 10 padded before; crop start 9
    back = c.inverse(y)
    # the reference's restacking is a second centred crop/pad: one pixel off for odd differences
    np.testing.assert_array_equal(back[0, 1:, 10:210], x[0, :-1, 9:209])
    even = CenterCropPad((182, 218), (200, 200), rule="antspynet", inverse_rule="recentre")
    kept = even.inverse(even.forward(_ramp(182, 218)))
    np.testing.assert_array_equal(kept[0, :, 9:209], _ramp(182, 218)[0, :, 9:209])


def test_com_window_follows_the_floor_of_the_centre_of_mass():
    v = np.zeros((300, 40, 10), np.float32)
    v[200, 20, 5] = 3.0
    v[201, 20, 5] = 1.0  # centre of mass 200.25 -> 200
    assert com_window(v, (256, 256, 256)) == ((73, 300), (0, 40), (0, 10))
    v2 = np.zeros((60, 4, 4), np.float32)
    v2[50, 1, 1] = 1.0  # a small axis is cut when its centre of mass is far off-centre
    assert com_window(v2, (64, 64, 64))[0] == (19, 60)


def test_reference_grid_round_trip_and_centre():
    rng = np.random.default_rng(0)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [40.0, -30.0, -20.0]
    vol = np.zeros((60, 70, 50), np.float32)
    vol[10:50, 15:55, 10:40] = rng.uniform(1, 2, (40, 40, 30))
    rg = ReferenceGrid.centred_on(affine, vol != 0, (64, 80, 48))
    fwd = rg.forward(vol)
    assert fwd.shape == (64, 80, 48)
    # the mask's centre of mass sits at the grid centre (world coordinates)
    com_vox = np.argwhere(vol != 0).mean(0)
    com_ras = affine[:3, :3] @ com_vox + affine[:3, 3]
    centre = rg.out_affine()[:3, :3] @ ((np.array(rg.size) - 1) / 2) + rg.out_affine()[:3, 3]
    np.testing.assert_allclose(centre, com_ras, atol=1e-9)
    back = rg.inverse(fwd)
    inner = (slice(12, 48), slice(17, 53), slice(12, 38))  # away from edges: linear twice ~ smooth
    assert np.abs(back[inner] - vol[inner]).mean() < 0.2
    with pytest.raises(Exception, match="empty"):
        ReferenceGrid.centred_on(affine, np.zeros((5, 5, 5), bool), (4, 4, 4))
