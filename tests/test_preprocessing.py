"""Tests of ``zoo.preprocessing`` and ``zoo.postprocessing`` (spec ``wmh_ensemble.md`` §4, §10,
§13, §15; ``practices.md`` §1, §2). CPU only, small synthetic arrays; expected values are
worked out by hand in the comments.

Arrays are ``(i, j, k)`` (nibabel voxel order); affines map voxels to RAS mm. nibabel axis
codes: ``L`` means the axis points to patient Left (a negative x column in RAS).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from zoo import errors
from zoo.card import ModelCard
from zoo.io import read_volume
from zoo.postprocessing import binarise, end_slice_band, volume_ml
from zoo.preprocessing import brainmask
from zoo.preprocessing.cropping import CenterCropPad
from zoo.preprocessing.grid import align_inputs, resample_to_grid, same_grid
from zoo.preprocessing.intensity import zscore
from zoo.preprocessing.orientation import Reorientation
from zoo.preprocessing.pipeline import SlicePipeline
from zoo.preprocessing.resampling import InplaneResampling

RNG = np.random.default_rng(7)
LAS = ("L", "A", "S")


def _las_affine(spacing=(0.9, 1.1, 3.0), origin=(80.0, -120.0, -60.0), angle_deg=10.0) -> np.ndarray:
    """A LAS affine (i -> -x, j -> +y, k -> +z) with anisotropic spacing, an offset and a small
    in-plane rotation (still LAS for nibabel's ``io_orientation``)."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-spacing[0], spacing[1], spacing[2]])
    aff[:3, 3] = origin
    return aff


def _permute_flip(a: np.ndarray, affine: np.ndarray, perm, flips):
    """The same world image stored with another voxel order.

    Returns ``(b, affine_b, M)`` where array axis d of ``b`` is axis ``perm[d]`` of ``a``
    (reversed if ``flips[d]``), and ``M`` maps voxel indices of ``b`` to those of ``a``
    (``b[v] == a[M v]``), so ``affine_b = affine @ M`` describes the same world image.
    """
    b = np.transpose(a, tuple(perm) + tuple(range(3, a.ndim)))
    M = np.zeros((4, 4))
    M[3, 3] = 1.0
    for d, (src, flip) in enumerate(zip(perm, flips)):
        n = a.shape[src]
        if flip:
            b = np.flip(b, axis=d)
            M[src, d], M[src, 3] = -1.0, n - 1
        else:
            M[src, d] = 1.0
    return np.ascontiguousarray(b), affine @ M, M


ALL_48 = [(p, f) for p in itertools.permutations(range(3))
          for f in itertools.product((False, True), repeat=3)]


# --- reorientation ---------------------------------------------------------------------------------
def test_reorientation_all_48_axis_orders():
    a = RNG.random((5, 6, 7))
    A = _las_affine()
    seen = 0
    for perm, flips in ALL_48:
        b, aff_b, M = _permute_flip(a, A, perm, flips)
        # the construction really is the same world image: b[v] == a[M v]
        v = np.array([1, 2, 3, 1])
        u = (M @ v).astype(int)
        assert b[tuple(v[:3])] == a[tuple(u[:3])]

        r = Reorientation.between(aff_b, b.shape, LAS)
        out = r.forward(b)
        np.testing.assert_array_equal(out, a)  # identical for every one of the 48 inputs
        back = r.inverse(out)
        np.testing.assert_array_equal(back, b)
        assert back.shape == b.shape
        # trailing (channel) axes are carried along
        stacked = np.stack([b, -b], axis=-1)
        np.testing.assert_array_equal(r.forward(stacked), np.stack([a, -a], axis=-1))
        np.testing.assert_array_equal(r.inverse(r.forward(stacked)), stacked)

        t_aff = r.target_affine(aff_b)
        np.testing.assert_allclose(t_aff, A, atol=1e-9)
        # voxel (0,0,0) of the reoriented array is a[0,0,0]; it sits in b at M^-1 (0,0,0)
        v0 = np.linalg.solve(M, [0, 0, 0, 1]).round().astype(int)
        assert b[tuple(v0[:3])] == out[0, 0, 0]
        np.testing.assert_allclose(t_aff @ [0, 0, 0, 1], aff_b @ v0, atol=1e-9)
        seen += 1
    assert seen == 48


def test_reorientation_identity_and_shape_check():
    a = RNG.random((5, 6, 7))
    r = Reorientation.between(_las_affine(), a.shape, LAS)
    np.testing.assert_array_equal(r.forward(a), a)
    # RAS target flips i only: out[i] = a[4 - i]
    r_ras = Reorientation.between(_las_affine(), a.shape, ("R", "A", "S"))
    np.testing.assert_array_equal(r_ras.forward(a), a[::-1])
    with pytest.raises(ValueError):
        r_ras.inverse(np.zeros((6, 6, 7)))


# --- centre crop / pad -----------------------------------------------------------------------------
#: s -> (crop start, pad before) by the rule of spec §4 step 4 for a 200 target, by hand:
#: 240: (240-200)/2 = 20; 252: 26; 232: 16; 256: 28; 201: floor(0.5) = 0;
#: 132: (200-132)/2 = 34 before (34 after); 150: 25 (25 after); 190: 5 (5 after);
#: 199: floor(0.5) = 0 before, 1 after; 200: nothing.
OFFSETS = {240: (20, 0), 252: (26, 0), 232: (16, 0), 256: (28, 0), 201: (0, 0),
           132: (0, 34), 150: (0, 25), 190: (0, 5), 199: (0, 0), 200: (0, 0)}
SIZES = [(240, 240), (252, 232), (256, 132), (150, 190), (201, 199), (200, 200)]


@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_crop_pad_offsets_and_round_trip(hw):
    h, w = hw
    (crop_r, pad_r), (crop_c, pad_c) = OFFSETS[h], OFFSETS[w]
    keep_r, keep_c = min(h, 200), min(w, 200)
    x = (np.arange(3 * h * w, dtype=np.float32) + 1).reshape(3, h, w)  # unique, all > 0
    ccp = CenterCropPad((h, w), (200, 200))
    y = ccp.forward(x, pad_value=-5.0)
    assert y.shape == (3, 200, 200)
    np.testing.assert_array_equal(y[:, pad_r:pad_r + keep_r, pad_c:pad_c + keep_c],
                                  x[:, crop_r:crop_r + keep_r, crop_c:crop_c + keep_c])
    # everything else is padding
    pad_region = np.ones((200, 200), bool)
    pad_region[pad_r:pad_r + keep_r, pad_c:pad_c + keep_c] = False
    assert (y[:, pad_region] == -5.0).all()
    assert pad_region.sum() == 200 * 200 - keep_r * keep_c

    # marker: the first kept input voxel lands at (pad before) in the output
    marker = np.zeros((1, h, w), np.float32)
    marker[0, crop_r, crop_c] = 1.0
    ym = ccp.forward(marker)
    assert tuple(np.argwhere(ym[0] == 1.0)[0]) == (pad_r, pad_c)

    # inverse: exact on the kept region, fill value where the crop removed voxels
    back = ccp.inverse(y, fill_value=-1.0)
    assert back.shape == x.shape
    kept = np.zeros((h, w), bool)
    kept[crop_r:crop_r + keep_r, crop_c:crop_c + keep_c] = True
    np.testing.assert_array_equal(back[:, kept], x[:, kept])
    assert (back[:, ~kept] == -1.0).all()
    assert (~kept).sum() == h * w - keep_r * keep_c


def test_crop_pad_ge3t_hand_values():
    # GE3T 256x132 (spec §15, D11 centred): rows 28:228 kept, columns padded 34 before
    x = np.zeros((1, 256, 132), np.float32)
    x[0, 28, 0] = 1.0
    x[0, 227, 131] = 2.0
    x[0, 27, 5] = 3.0  # cropped away
    x[0, 228, 5] = 4.0  # cropped away
    ccp = CenterCropPad((256, 132), (200, 200))
    y = ccp.forward(x)
    assert y[0, 0, 34] == 1.0 and y[0, 199, 165] == 2.0
    assert set(np.unique(y)) == {0.0, 1.0, 2.0}
    back = ccp.inverse(y)
    assert back[0, 28, 0] == 1.0 and back[0, 227, 131] == 2.0
    assert back[0, 27, 5] == 0.0 and back[0, 228, 5] == 0.0


def test_crop_pad_per_channel_pad_value_and_inverse_trailing_axes():
    x = RNG.random((2, 150, 190, 2)).astype(np.float32)
    ccp = CenterCropPad((150, 190), (200, 200))
    y = ccp.forward(x, pad_value=np.array([-1.5, -2.5], np.float32))
    assert y.shape == (2, 200, 200, 2)
    assert (y[:, :25, :, 0] == -1.5).all() and (y[:, :25, :, 1] == -2.5).all()
    assert (y[:, 175:, :, 0] == -1.5).all() and (y[:, :, 195:, 1] == -2.5).all()
    assert (y[:, :, :5, 0] == -1.5).all()
    np.testing.assert_array_equal(y[:, 25:175, 5:195], x)
    np.testing.assert_array_equal(ccp.inverse(y), x)


# --- brain masks -----------------------------------------------------------------------------------
def test_threshold_mask_keeps_voxels_at_or_above_threshold():
    x = np.array([69.0, 69.999, 70.0, 70.5, 200.0, -3.0]).reshape(6, 1, 1)
    m = brainmask.threshold_mask(x, 70, largest_cc=False, fill_holes=False)
    assert m.dtype == bool
    np.testing.assert_array_equal(m.ravel(), [False, False, True, True, True, False])


def _slice(mask_shape, k, *boxes):
    m = np.zeros(mask_shape, bool)
    for bi, bj in boxes:
        m[bi, bj, k] = True
    return m


def test_largest_component_per_slice_golden():
    shape = (12, 12, 4)
    m = np.zeros(shape, bool)
    # k=0: A 2x3 = 6 voxels, B 2x2 = 4 voxels -> keep A
    m[1:3, 1:4, 0] = True
    m[7:9, 7:9, 0] = True
    # k=1: C and D (2x2 each) touch only at a corner -> one 8-connected component of 8 voxels;
    # E is a 7-voxel line. 8-connectivity keeps C+D (4-connectivity would keep E).
    m[1:3, 1:3, 1] = True
    m[3:5, 3:5, 1] = True
    m[8, 0:7, 1] = True
    # k=2: size order reversed w.r.t. k=0's positions: 4 voxels at top-left, 16 at bottom-right
    m[1:3, 1:3, 2] = True
    m[6:10, 6:10, 2] = True
    # k=3: empty slice stays empty
    out = brainmask.largest_component_per_slice(m)

    expected = np.zeros(shape, bool)
    expected[1:3, 1:4, 0] = True
    expected[1:3, 1:3, 1] = True
    expected[3:5, 3:5, 1] = True
    expected[6:10, 6:10, 2] = True
    np.testing.assert_array_equal(out, expected)
    assert out.sum(axis=(0, 1)).tolist() == [6, 8, 16, 0]


def test_largest_component_does_not_connect_across_slices():
    shape = (10, 10, 2)
    m = np.zeros(shape, bool)
    # k=0: P 3x3 = 9 voxels; Q 2 voxels
    m[0:3, 0:3, 0] = True
    m[8, 8:10, 0] = True
    # k=1: R 4 voxels directly above Q (in 3D Q+R = 6 voxels), S 5 voxels elsewhere.
    m[7:9, 8:10, 1] = True
    m[0, 4:9, 1] = True
    out = brainmask.largest_component_per_slice(m)
    expected = np.zeros(shape, bool)
    expected[0:3, 0:3, 0] = True
    expected[0, 4:9, 1] = True  # S (5) beats R (4) within slice 1; Q+R would be 6 in 3D
    np.testing.assert_array_equal(out, expected)


def test_largest_component_tie_and_empty():
    m = np.zeros((6, 6, 1), bool)
    m[0, 0:2, 0] = True
    m[4, 0:2, 0] = True
    out = brainmask.largest_component_per_slice(m)
    assert out.sum() == 2  # exactly one of two equal components survives
    assert not brainmask.largest_component_per_slice(np.zeros((4, 4, 3), bool)).any()


def test_fill_holes_per_slice():
    shape = (12, 12, 5)
    m = np.zeros(shape, bool)
    # k=1: a closed square ring with empty slices on both sides. Per-slice filling fills it
    # (a 3D fill would not: the interior touches the empty slices 0 and 2).
    m[2:7, 2:7, 1] = True
    m[3:6, 3:6, 1] = False
    # k=3: an 8-connected diamond ring around (5, 5): closed for 4-connected background
    for di, dj in [(-2, 0), (-1, 1), (0, 2), (1, 1), (2, 0), (1, -1), (0, -2), (-1, -1)]:
        m[5 + di, 5 + dj, 3] = True
    # k=2 and k=4: full caps; k=2 holds a ring open in-plane (a one-voxel gap in its side)
    m[2:7, 2:7, 2] = True
    m[3:6, 3:6, 2] = False
    m[2, 4, 2] = False  # the gap: (3, 4) inside connects to (1, 4) outside through (2, 4)
    m[1:10, 1:10, 4] = True
    out = brainmask.fill_holes_per_slice(m)

    expected = m.copy()
    expected[3:6, 3:6, 1] = True
    expected[4:7, 5, 3] = True  # diamond interior: centre and its 4 neighbours
    expected[5, 4:7, 3] = True
    np.testing.assert_array_equal(out, expected)
    assert not out[3:6, 3:6, 2].any()  # the open hole stays empty


def test_threshold_mask_full_phantom():
    x = np.zeros((20, 20, 2), np.float32)
    x[2:12, 2:12, :] = 100.0  # brain
    x[5:8, 5:8, :] = 50.0  # a dark lesion inside: below the threshold, filled as a hole
    x[15:17, 15:17, 0] = 90.0  # a bright 4-voxel blob: not the largest component of slice 0
    m = brainmask.threshold_mask(x, 70)
    expected = np.zeros(x.shape, bool)
    expected[2:12, 2:12, :] = True
    np.testing.assert_array_equal(m, expected)
    # options off: the raw threshold
    m_raw = brainmask.threshold_mask(x, 70, largest_cc=False, fill_holes=False)
    np.testing.assert_array_equal(m_raw, x >= 70)
    m_cc = brainmask.threshold_mask(x, 70, largest_cc=False)
    assert m_cc[15, 15, 0] and m_cc[5, 5, 0]


def test_nonzero_mask():
    x = np.array([0.0, -1.0, 1e-6, 3.0, 0.0, -0.0]).reshape(1, 2, 3)
    np.testing.assert_array_equal(brainmask.nonzero_mask(x).ravel(),
                                  [False, True, True, True, False, False])


# --- z-score -----------------------------------------------------------------------------------------
def test_zscore_hand_values_population_std():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0]).reshape(5, 1, 1)
    mask = np.array([True, True, True, True, False]).reshape(5, 1, 1)
    z = zscore(x, mask)
    assert z.dtype == np.float32
    # mean 2.5, population std sqrt(1.25) = 1.1180340 (ddof=1 would be 1.2909944)
    std = np.sqrt(1.25)
    expected = (np.array([1, 2, 3, 4, 100]) - 2.5) / std
    np.testing.assert_allclose(z.ravel(), expected, rtol=1e-6)
    assert z[0, 0, 0] == pytest.approx(-1.3416408, abs=1e-6)
    assert z[4, 0, 0] == pytest.approx(87.2066, abs=1e-3)  # outside the mask, same statistics
    assert z[mask].mean() == pytest.approx(0.0, abs=1e-7)
    assert z[mask].std() == pytest.approx(1.0, abs=1e-6)


def test_zscore_without_mask_uses_all_voxels():
    x = RNG.random((4, 5, 6)) * 50 + 10
    z = zscore(x)
    assert z.mean() == pytest.approx(0.0, abs=1e-5)
    assert z.std() == pytest.approx(1.0, abs=1e-5)


def test_zscore_errors():
    x = RNG.random((3, 3, 3))
    with pytest.raises(errors.ConstantImageError, match="flair"):
        zscore(x, np.zeros(x.shape, bool), source="flair")
    with pytest.raises(errors.ConstantImageError, match="t1"):
        zscore(np.full((3, 3, 3), 42.0), source="t1")
    # constant inside the mask, varying outside: still constant for the statistics
    y = np.full((3, 3, 3), 7.0)
    y[0] = 1.0
    with pytest.raises(errors.ConstantImageError):
        zscore(y, y == 7.0)


# --- in-plane resampling -----------------------------------------------------------------------------
def test_inplane_resampling_shapes_and_identity():
    r = InplaneResampling((8, 6, 3), (0.5, 0.5), (1.0, 1.0))
    assert r.out_shape == (4, 3, 3) and not r.is_identity
    assert InplaneResampling((7, 10, 4), (0.9, 1.2), (1.0, 1.0)).out_shape == (6, 12, 4)  # round(6.3), 12
    same = InplaneResampling((8, 6, 3), (0.7, 0.7), (0.7, 0.7))
    assert same.is_identity
    x = RNG.random((8, 6, 3)).astype(np.float32)
    assert same.forward(x) is x and same.inverse(x) is x


def test_inplane_resampling_ramp_values():
    r = InplaneResampling((8, 6, 3), (0.5, 0.5), (1.0, 1.0))
    ii, jj, kk = np.indices((8, 6, 3), dtype=np.float32)
    # edge-aligned: output voxel v covers input voxels 2v, 2v+1, its centre is input 2v + 0.5
    np.testing.assert_allclose(r.forward(ii)[:, 0, 0], [0.5, 2.5, 4.5, 6.5], atol=1e-5)
    np.testing.assert_allclose(r.forward(jj)[0, :, 0], [0.5, 2.5, 4.5], atol=1e-5)
    np.testing.assert_array_equal(r.forward(kk)[1, 1, :], [0, 1, 2])  # slice axis untouched
    # back: input voxel u sits at coarse index u/2 - 0.25; interior voxels are exact for a
    # ramp, the outer ones are clamped to the outer coarse centres (0.5 and 6.5)
    back = r.inverse(r.forward(ii))
    assert back.shape == (8, 6, 3)
    np.testing.assert_allclose(back[:, 2, 1], [0.5, 1, 2, 3, 4, 5, 6, 6.5], atol=1e-5)


def test_inplane_resampling_round_trip_smooth_image():
    # g, h have zero slope at the field-of-view edges; |g''| <= (pi/16)^2, |h''| <= (pi/12)^2.
    # Tolerance (linear interpolation error h^2/8 |f''| per axis and stage): downsampling
    # samples at input mid-points (h = 1 voxel, 1/8), upsampling interpolates coarse samples
    # 2 voxels apart (h = 2, 4/8), and the outer half coarse voxel is clamped (<= 5/8 incl.
    # the 1/8 of the first stage): total <= 0.75 (|g''| + |h''|) = 0.080.
    n_i, n_j = 16, 12
    g = np.cos(np.pi * (np.arange(n_i) + 0.5) / n_i)
    h = np.cos(np.pi * (np.arange(n_j) + 0.5) / n_j)
    x = (g[:, None, None] * h[None, :, None] * np.array([1.0, -2.0, 0.5])).astype(np.float32)
    r = InplaneResampling(x.shape, (0.5, 0.5), (1.0, 1.0))
    back = r.inverse(r.forward(x))
    scale = np.array([1.0, 2.0, 0.5])  # per-slice amplitude
    tol = 0.75 * ((np.pi / n_i) ** 2 + (np.pi / n_j) ** 2)
    err = np.abs(back - x).max(axis=(0, 1)) / scale
    assert (err <= tol).all(), (err, tol)
    assert (err > 0).all()  # linear resampling is lossy: the test would notice an identity


# --- grids -----------------------------------------------------------------------------------------
def _ref_affine():
    # power-of-two spacings keep inverse affines exact
    return np.array([[-1.0, 0, 0, 40.0], [0, 0.5, 0, -30.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])


def test_same_grid():
    a = read_volume((np.zeros((6, 7, 8), np.float32), _ref_affine()))
    near = _ref_affine()
    near[0, 3] += 5e-5
    far = _ref_affine()
    far[0, 3] += 1e-3
    assert same_grid(a, read_volume((np.ones((6, 7, 8), np.float32), near)))
    assert not same_grid(a, read_volume((np.zeros((6, 7, 8), np.float32), far)))
    assert not same_grid(a, read_volume((np.zeros((6, 7, 9), np.float32), _ref_affine())))


def test_align_inputs_mismatch_message(tmp_path):
    import nibabel as nib

    shifted = _ref_affine() @ np.array([[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    flair_path, t1_path = tmp_path / "flair.nii.gz", tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.float32), _ref_affine()), str(flair_path))
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.float32), shifted), str(t1_path))
    vols = {"flair": read_volume(flair_path, "flair"), "t1": read_volume(t1_path, "t1")}
    with pytest.raises(errors.GridMismatchError) as exc:
        align_inputs(vols, "flair")
    msg = str(exc.value)
    assert str(flair_path) in msg and str(t1_path) in msg
    assert "t1" in msg and "flair" in msg and "resample" in msg
    # on the same grid nothing happens
    same = {"flair": vols["flair"], "t1": vols["flair"].with_array(np.zeros((6, 7, 8)))}
    out = align_inputs(same, "flair")
    assert out["t1"] is same["t1"]


def test_align_inputs_resamples_integer_shift_exactly():
    shape = (6, 7, 8)
    ref = read_volume((RNG.random(shape).astype(np.float32), _ref_affine()), "flair")
    s = np.array([2, -1, 0])
    T = np.eye(4)
    T[:3, 3] = s
    moving_data = (RNG.random(shape) * 10).astype(np.float32)
    # moving voxel u sits at the world point of reference voxel u + s
    moving = read_volume((moving_data, _ref_affine() @ T), "t1")
    out = align_inputs({"flair": ref, "t1": moving}, "flair", resample=True)
    t1 = out["t1"]
    assert t1.shape == shape
    np.testing.assert_array_equal(t1.affine, ref.affine)
    # reference voxel v takes moving voxel v - s: valid for i in [2, 6), j in [0, 6)
    expected = np.zeros(shape, np.float32)
    expected[2:, :6, :] = moving_data[:4, 1:, :]
    np.testing.assert_allclose(t1.array, expected, atol=1e-5)
    assert out["flair"] is ref

    # a mask input is resampled with nearest neighbour: a half-voxel shift stays binary
    half = np.eye(4)
    half[0, 3] = 0.5
    mask = read_volume(((RNG.random(shape) > 0.5).astype(np.float32), _ref_affine() @ half))
    m = resample_to_grid(mask, ref, order=0).array
    assert set(np.unique(m)) <= {0.0, 1.0}
    lin = align_inputs({"flair": ref, "t1": mask}, "flair", resample=True)["t1"].array
    assert set(np.unique(lin)) - {0.0, 1.0}  # linear for images: interpolated values
    nn = align_inputs({"flair": ref, "brain_mask": mask}, "flair", resample=True)["brain_mask"].array
    assert set(np.unique(nn)) <= {0.0, 1.0}


# --- the card's slice pipeline ---------------------------------------------------------------------
def _card_steps(method: str = "nonzero", apply_given: bool = False):
    """The card's steps at the paper's native in-plane spacing (no resampling), so the expected
    network-space positions below are exact; ``apply_given`` False (the paper: a brain mask only
    gives the z-score statistics) unless asked, whatever the card's default."""
    steps = copy.deepcopy(ModelCard.bundled("wmh_ensemble")["preprocessing"]["steps"])
    for s in steps:
        if s["step"] == "brain_mask":
            s["method"] = method
            s["apply_given"] = apply_given
        if s["step"] == "resample_inplane":
            s["spacing_mm"] = None
    return steps


def _phantom(shape, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros(shape, np.float32)
    i0, j0 = shape[0] // 4, shape[1] // 4
    x[i0:shape[0] - i0, j0:shape[1] - j0, :] = rng.random((shape[0] - 2 * i0, shape[1] - 2 * j0,
                                                           shape[2])) * 100 + 50
    return x


def _expected_z(x):
    m = x != 0
    return (x - x[m].mean()) / x[m].std()


def _slice_index_maps(n):
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 200, 200)).copy()


def test_slice_pipeline_las_input():
    shape = (20, 24, 9)  # (I, J, K), LAS
    A = _las_affine(angle_deg=0.0)
    flair, t1 = _phantom(shape, 1), _phantom(shape, 2)
    vols = {"flair": read_volume((flair, A), "flair"), "t1": read_volume((t1, A), "t1")}
    pipe = SlicePipeline(_card_steps(), ["flair", "t1"])
    x, state = pipe.apply(vols)
    assert x.shape == (9, 200, 200, 2) and x.dtype == np.float32
    assert state.network_shape == x.shape

    # each slice reaches the network as (row = j, column = i); J=24 -> 88 rows padded before,
    # I=20 -> 90 columns padded before (spec §4 step 4)
    for c, raw in enumerate((flair, t1)):
        z = _expected_z(raw.astype(np.float64))
        np.testing.assert_allclose(x[:, 88:112, 90:110, c], np.transpose(z, (2, 1, 0)), atol=1e-5)
        # pad value: the normalised volume's minimum, per channel (D5)
        pad = np.float32(z.min())
        assert x[0, 0, 0, c] == pytest.approx(pad, abs=1e-6)
        assert (x[:, :88, :, c] == x[0, 0, 0, c]).all() and (x[:, 112:, :, c] == x[0, 0, 0, c]).all()
        assert (x[:, :, :90, c] == x[0, 0, 0, c]).all() and (x[:, :, 110:, c] == x[0, 0, 0, c]).all()
    assert x[0, 0, 0, 0] != x[0, 0, 0, 1]

    # invert a network-space map equal to the slice index: every voxel gets its own k
    inv = pipe.invert(_slice_index_maps(9), state)
    assert inv.shape == shape
    np.testing.assert_array_equal(inv, np.broadcast_to(np.arange(9, dtype=np.float32), shape))
    # and the channel-0 network input maps back onto the z-scored FLAIR
    back = pipe.invert(x[..., 0], state)
    np.testing.assert_allclose(back, _expected_z(flair.astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), (True, False, False)),
                                         ((2, 0, 1), (False, True, False)),
                                         ((1, 2, 0), (True, True, True)),
                                         ((2, 1, 0), (False, False, True))],
                         ids=["RAS", "perm201", "perm120_flipall", "perm210"])
def test_slice_pipeline_permuted_input_lands_on_its_own_grid(perm, flips):
    shape = (20, 24, 9)
    A = _las_affine()
    flair, t1 = _phantom(shape, 3), _phantom(shape, 4)
    pipe = SlicePipeline(_card_steps(), ["flair", "t1"])
    x_ref, _ = pipe.apply({"flair": read_volume((flair, A)), "t1": read_volume((t1, A))})

    fb, aff_b, _ = _permute_flip(flair, A, perm, flips)
    tb, _, _ = _permute_flip(t1, A, perm, flips)
    x, state = pipe.apply({"flair": read_volume((fb, aff_b)), "t1": read_volume((tb, aff_b))})
    assert x.shape[0] == 9  # N = K of the reoriented (LAS) grid, not of the input
    np.testing.assert_array_equal(x, x_ref)  # the network sees the same slices

    inv = pipe.invert(_slice_index_maps(9), state)
    assert inv.shape == fb.shape
    k_index = np.broadcast_to(np.arange(9, dtype=np.float32), shape)
    expected, _, _ = _permute_flip(k_index, A, perm, flips)
    np.testing.assert_array_equal(inv, expected)


def test_slice_pipeline_crops_large_slices_and_fills_on_inverse():
    shape = (210, 190, 3)  # I > 200: columns 5:205 kept; J < 200: rows padded 5 before
    A = _las_affine(angle_deg=0.0)
    flair = _phantom(shape, 5)
    pipe = SlicePipeline(_card_steps(), ["flair"])
    x, state = pipe.apply({"flair": read_volume((flair, A))})
    assert x.shape == (3, 200, 200, 1)
    z = _expected_z(flair.astype(np.float64))
    np.testing.assert_allclose(x[:, 5:195, :, 0], np.transpose(z[5:205], (2, 1, 0)), atol=1e-5)
    inv = pipe.invert(_slice_index_maps(3) + 1, state, fill_value=-1.0)
    expected = np.full(shape, -1.0, np.float32)
    expected[5:205] = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(inv, expected)


def test_slice_pipeline_threshold_mask_and_user_mask():
    shape = (20, 24, 4)
    A = _las_affine(angle_deg=0.0)
    flair = _phantom(shape, 6)  # brain values in [50, 150), background 0
    flair[0, 0, :] = 90.0  # an isolated bright corner (>= 70): dropped by the largest-CC step
    pipe = SlicePipeline(_card_steps("threshold"), ["flair"])
    x, state = pipe.apply({"flair": read_volume((flair, A))})
    m = brainmask.threshold_mask(flair, 70)
    assert not m[0, 0, :].any()
    np.testing.assert_array_equal(state.masks["flair"], m)
    zf = (flair - flair[m].mean()) / flair[m].std()
    np.testing.assert_allclose(x[:, 88:112, 90:110, 0], np.transpose(zf, (2, 1, 0)), atol=1e-5)
    # a user mask replaces the computed one
    user = np.zeros(shape, np.float32)
    user[5:15, 6:18, :] = 1
    x2, state2 = pipe.apply({"flair": read_volume((flair, A)),
                             "brain_mask": read_volume((user, A))})
    um = user > 0
    np.testing.assert_array_equal(state2.masks["flair"], um)
    zu = (flair - flair[um].mean()) / flair[um].std()
    np.testing.assert_allclose(x2[:, 88:112, 90:110, 0], np.transpose(zu, (2, 1, 0)), atol=1e-5)
    # apply_given (the card's default since 0.4.0): the same statistics, the input zeroed outside
    pipe = SlicePipeline(_card_steps("threshold", apply_given=True), ["flair"])
    x3, _ = pipe.apply({"flair": read_volume((flair, A)), "brain_mask": read_volume((user, A))})
    za = np.where(um, zu, -flair[um].mean() / flair[um].std())
    np.testing.assert_allclose(x3[:, 88:112, 90:110, 0], np.transpose(za, (2, 1, 0)), atol=1e-5)


def test_slice_pipeline_unknown_step():
    with pytest.raises(ValueError, match="unknown preprocessing step"):
        SlicePipeline([{"step": "bias_correct"}], ["flair"])


# --- post-processing -------------------------------------------------------------------------------
def test_end_slice_band_default():
    band = end_slice_band(48, 0.125)  # k = floor(6.0) = 6
    assert band.dtype == bool and band.shape == (48,)
    assert np.flatnonzero(band).tolist() == list(range(6)) + list(range(42, 48))
    band = end_slice_band(83, 0.125)  # k = floor(10.375) = 10
    assert np.flatnonzero(band).tolist() == list(range(10)) + list(range(73, 83))
    assert not end_slice_band(7, 0.125).any()  # k = 0
    assert not end_slice_band(48, 0.0).any()


def test_end_slice_band_legacy_off_by_one():
    band = end_slice_band(48, 0.125, legacy=True)  # [0, 6) and [48-6-1, 48-2] = [41, 46]
    assert np.flatnonzero(band).tolist() == list(range(6)) + list(range(41, 47))
    assert not band[-1]
    band = end_slice_band(83, 0.125, legacy=True)  # [0, 10) and [72, 81]
    assert np.flatnonzero(band).tolist() == list(range(10)) + list(range(72, 82))
    assert not band[-1]


def test_volume_ml_and_binarise():
    mask = np.zeros((10, 10, 20), np.uint8)
    mask[:, :, :10] = 1  # 1000 voxels
    assert volume_ml(mask, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(mask, (0.5, 0.5, 2.0)) == pytest.approx(0.5)
    assert volume_ml(np.zeros((3, 3, 3)), (1, 1, 1)) == 0.0
    p = np.array([0.2, 0.5, 0.50001, 0.9])
    np.testing.assert_array_equal(binarise(p, 0.5), [0, 0, 1, 1])  # strict '>'
    assert binarise(p, 0.5).dtype == np.uint8


def test_3d_resampling_shape_affine_and_round_trip():
    """Resampling of all three axes: voxel counts from the field of view, the new affine keeps
    the field of view's outer edges in place, and a smooth field survives the round trip."""
    from zoo.preprocessing.resampling import Resampling

    r = Resampling((20, 30, 16), (1.0, 0.5, 2.0), (1.0, 1.0, 1.0))
    assert r.out_shape == (20, 15, 32)
    assert np.allclose(r.out_spacing, (1.0, 1.0, 1.0))
    affine = np.diag([1.0, 0.5, 2.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    new = r.out_affine(affine)
    # the world position of the first voxel's outer corner is unchanged
    corner_in = affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_out = new @ np.array([-0.5, -0.5, -0.5, 1.0])
    assert np.allclose(corner_in, corner_out)
    assert np.allclose(np.linalg.norm(new[:3, :3], axis=0), r.out_spacing)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in (20, 30, 16)], indexing="ij")
    field = (i + 2 * j + 3 * k).astype(np.float32)
    back = r.inverse(r.forward(field))
    assert back.shape == field.shape
    assert np.abs(back - field)[2:-2, 2:-2, 2:-2].max() < 0.05
    keep = Resampling((20, 30, 16), (1.0, 0.5, 2.0), (None, 1.0, None))
    assert keep.out_shape == (20, 15, 16)


def test_otsu_mask_keeps_the_head_minus_its_rim():
    """``mask_method=otsu`` (scans that are not skull-stripped): the Otsu foreground's largest
    component, eroded in-plane; a constant volume gives an empty mask."""
    from zoo.preprocessing.brainmask import otsu_mask

    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.arange(48)] * 3, indexing="ij")
    head = (i - 24) ** 2 + (j - 24) ** 2 + (k - 24) ** 2 <= 18 ** 2
    vol = np.where(head, 100.0, 0.0) + rng.uniform(0, 5, head.shape)
    vol[2:5, 2:5, 2:5] = 100.0  # a small bright speck outside: not the largest component
    mask = otsu_mask(vol, erode_voxels=3)
    assert mask[24, 24, 24] and not mask[3, 3, 3]
    assert (mask & ~head).sum() == 0
    assert not mask[24, 24 + 17, 24]  # within 3 voxels of the in-plane edge: eroded
    assert 0.5 < mask.sum() / head.sum() < 0.9
    assert not otsu_mask(np.full((8, 8, 8), 7.0)).any()


# --- threaded affine transform ---------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [True, False])
def test_threaded_affine_transform_equals_scipy(diagonal):
    """Slabs on several threads give SciPy's single call (linear: to float rounding; nearest
    neighbour and constant mode: the single call itself, bit for bit)."""
    from scipy import ndimage

    from zoo.preprocessing.threaded import affine_transform

    rng = np.random.default_rng(3)
    a = rng.random((60, 70, 40)).astype(np.float32)
    m = np.array([[0.9, 0.1, 0.0], [-0.1, 0.95, 0.05], [0.0, 0.02, 1.1]])
    m = np.diag(m) if diagonal else m
    off, shape = np.array([3.0, -2.0, 1.5]), (90, 80, 45)
    for order, mode, tol in ((1, "nearest", 1e-6), (0, "nearest", 0.0), (1, "constant", 0.0)):
        ref = ndimage.affine_transform(a, m, off, output_shape=shape, order=order, mode=mode)
        got = affine_transform(a, m, off, output_shape=shape, order=order, mode=mode, threads=3)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= tol, (order, mode)
    # a slab offset that ignored the matrix would move every slab but the first
    wrong = np.concatenate([ndimage.affine_transform(a, m, off, output_shape=(45, 80, 45), order=1, mode="nearest")] * 2)
    assert np.abs(affine_transform(a, m, off, output_shape=shape, order=1, mode="nearest", threads=2)
                  - wrong).max() > 0.1
