"""Analytic fixtures for ``zoo.metrics`` (``specs/metrics.md`` §9), CPU only, synthetic arrays.

Arrays are ``(i, j, k)`` (nibabel order); the WMH in-plane erosion acts in the i-j plane.
Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from zoo import errors
from zoo import metrics as m

SQ2, SQ5, SQ8 = math.sqrt(2.0), math.sqrt(5.0), math.sqrt(8.0)
EYE = np.eye(4)


def box(shape, *slices):
    a = np.zeros(shape, dtype=bool)
    a[tuple(slices)] = True
    return a


def ball(shape, centre, radius):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius**2


def disc(shape, centre, radius, k):
    """A filled disc on slice ``k`` of an (I, J, K) array."""
    ii, jj = np.indices(shape[:2], dtype=np.float64)
    a = np.zeros(shape, dtype=bool)
    a[..., k] = (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 <= radius**2
    return a


def rotation(axis, deg):
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine_from(linear, origin=(0.0, 0.0, 0.0)):
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


def assert_same_result(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "flags":
            assert a[key] == b[key]
        elif math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert a[key] == b[key], key


# --- §1 DSC, §3 VS, §2.3 AVD -------------------------------------------------------------
def test_dice_half_overlapping_cubes():
    g = box((10, 10, 10), slice(0, 4), slice(0, 4), slice(0, 4))  # 64 voxels
    p = box((10, 10, 10), slice(2, 6), slice(0, 4), slice(0, 4))  # 64 voxels, 32 shared
    assert m.dice(g, p) == 0.5  # 2*32/128
    assert m.dice(g, p, "compat") == 0.5
    q = box((10, 10, 10), slice(1, 5), slice(1, 5), slice(1, 5))  # 27 shared with g
    assert m.dice(g, q) == pytest.approx(54 / 128, abs=1e-15)


def test_dice_accepts_01_integers_and_rejects_other_values():
    g = box((6, 6, 6), slice(0, 2), slice(0, 2), slice(0, 2))
    assert m.dice(g.astype(np.uint8), g.astype(np.float32)) == 1.0
    with pytest.raises(errors.MetricError, match="binary"):
        m.dice(g, g * 0.7)


def test_vol_similarity_100_vs_300():
    g = np.zeros((10, 10, 10), dtype=bool)
    p = np.zeros_like(g)
    g.flat[:100] = True
    p.flat[:300] = True
    assert m.vol_similarity(g, p) == 0.5  # 1 - 200/400
    assert m.vol_similarity(p, g) == 0.5  # symmetric


def test_abs_vol_diff_pct_is_relative_to_reference():
    g = np.zeros((10, 10, 10), dtype=bool)
    p = np.zeros_like(g)
    g.flat[:200] = True
    p.flat[:150] = True
    assert m.abs_vol_diff_pct(g, p) == 25.0  # |200-150|/200*100
    assert m.abs_vol_diff_pct(p, g) == pytest.approx(100 / 3, abs=1e-12)  # |150-200|/150*100


# --- §2.2 H95 and the in-plane erosion ---------------------------------------------------
@pytest.mark.parametrize("depth", [1, 3])
def test_h95_single_slice_squares_use_inplane_ring(depth):
    # 5x5 square G inside a concentric 9x9 square P, both on one slice. In-plane boundaries are
    # the rings. G ring (16 pts): every point is 2 from the P ring. P ring (32 pts): 20 at 2,
    # 8 next to the corners at sqrt5, 4 corners at sqrt8; P95 index 0.95*31 = 29.45 falls in
    # the top four -> sqrt8. If the z-neighbours (background at depth 3) took part in the
    # erosion, the whole squares would be boundary and the result sqrt5.
    k = depth // 2
    g = box((11, 11, depth), slice(3, 8), slice(3, 8), slice(k, k + 1))
    p = box((11, 11, depth), slice(1, 10), slice(1, 10), slice(k, k + 1))
    assert m.h95_wmh_mm(g, p, EYE) == pytest.approx(SQ8, abs=1e-12)
    assert m.h95_wmh_mm(p, g, EYE) == pytest.approx(SQ8, abs=1e-12)


def test_hd95_single_slice_squares_use_3d_boundary():
    # Same squares with the 3D 6-connected erosion: with empty slices above and below every
    # voxel is boundary; d_G = 0 (G inside P) and P95 of d_P over 81 points is sqrt5.
    g = box((11, 11, 3), slice(3, 8), slice(3, 8), slice(1, 2))
    p = box((11, 11, 3), slice(1, 10), slice(1, 10), slice(1, 2))
    assert m.hd95_mm(g, p, (1, 1, 1)) == pytest.approx(SQ5, abs=1e-12)
    # A one-slice image: outside counts as foreground, the boundary is the ring again.
    assert m.hd95_mm(g[..., 1:2], p[..., 1:2], (1, 1, 1)) == pytest.approx(SQ8, abs=1e-12)


def test_inplane_boundary_of_single_slice_square_and_cube():
    sq = box((9, 9, 3), slice(2, 7), slice(2, 7), slice(1, 2))
    b = m._boundary(sq, m._INPLANE_3x3)
    ring = sq.copy()
    ring[3:6, 3:6, 1] = False
    np.testing.assert_array_equal(b, ring)  # 16 ring voxels, centre 3x3 is not boundary
    cube = box((9, 9, 7), slice(2, 7), slice(2, 7), slice(1, 6))
    b = m._boundary(cube, m._INPLANE_3x3)
    assert b.sum() == 5 * 16  # one ring per slice; top/bottom faces are not boundary
    assert not b[3:6, 3:6, :].any()


@pytest.mark.parametrize("spacing_k, expected", [(1.0, 2.0), (3.0, 6.0)])
def test_h95_cube_against_its_middle_slice(spacing_k, expected):
    # G: 5x5 square on slices 1..5 (in-plane boundary: a ring per slice, 80 points).
    # P: the same square on slice 3 only. d_P = 0; d_G = |k - 3| * spacing_k for the rings:
    # 16 x 0, 32 x 1, 32 x 2 slices -> P95 = 2 slices. Top/bottom face interiors as boundary
    # would add points at sqrt(1 + 4) or more and change the result.
    g = box((9, 9, 7), slice(2, 7), slice(2, 7), slice(1, 6))
    p = box((9, 9, 7), slice(2, 7), slice(2, 7), slice(3, 4))
    aff = np.diag([1.0, 1.0, spacing_k, 1.0])
    assert m.h95_wmh_mm(g, p, aff) == pytest.approx(expected, abs=1e-12)


def test_h95_concentric_discs():
    shape = (41, 41, 3)
    for r_in, r_out in [(6, 9), (8, 12), (10, 11)]:
        g = disc(shape, (20, 20), r_in, 1)
        p = disc(shape, (20, 20), r_out, 1)
        assert abs(m.h95_wmh_mm(g, p, EYE) - (r_out - r_in)) <= 1.0


def test_hd95_concentric_spheres():
    shape = (31, 31, 31)
    for r_in, r_out in [(5, 8), (6, 10)]:
        g = ball(shape, (15, 15, 15), r_in)
        p = ball(shape, (15, 15, 15), r_out)
        assert abs(m.hd95_mm(g, p, (1, 1, 1)) - (r_out - r_in)) <= 1.0
        # on an isotropic 0.5 mm grid the same voxels are half as far apart
        assert m.hd95_mm(g, p, (0.5, 0.5, 0.5)) == pytest.approx(
            0.5 * m.hd95_mm(g, p, (1, 1, 1)), abs=1e-12)


@pytest.mark.parametrize("spacing, expected", [
    ((1, 1, 1), 2.0), ((1, 1, 3), 6.0), ((2, 1, 1), 2.0), ((0.5, 0.5, 2.5), 5.0)])
def test_single_voxels_two_slices_apart_anisotropic(spacing, expected):
    g = box((5, 5, 7), slice(2, 3), slice(2, 3), slice(1, 2))
    p = box((5, 5, 7), slice(2, 3), slice(2, 3), slice(3, 4))
    assert m.hd95_mm(g, p, spacing) == pytest.approx(expected, abs=1e-12)
    assert m.h95_wmh_mm(g, p, spacing) == pytest.approx(expected, abs=1e-12)
    assert m.h95_wmh_mm(g, p, np.diag([*spacing, 1.0])) == pytest.approx(expected, abs=1e-12)


def test_oblique_and_flipped_affine_give_same_distances():
    rng = np.random.default_rng(3)
    g = np.zeros((24, 22, 9), dtype=bool)
    p = np.zeros_like(g)
    g[4:15, 5:14, 2:7] = True
    g[17:21, 3:8, 3:5] = True
    p[5:17, 4:13, 2:8] = True
    p |= rng.random(g.shape) > 0.995
    spacing = np.array([0.9, 1.2, 3.0])
    diag = affine_from(np.diag(spacing), (-90.0, 120.0, -30.0))
    flip = np.diag([-1.0, 1.0, -1.0])
    oblique = affine_from(rotation(2, 25) @ rotation(0, -40) @ flip @ np.diag(spacing),
                          (12.5, -7.0, 33.0))
    ref_h95 = m.h95_wmh_mm(g, p, diag)
    ref_hd95 = m.hd95_mm(g, p, diag)
    assert ref_h95 > 1.0 and ref_hd95 > 1.0
    assert m.h95_wmh_mm(g, p, oblique) == pytest.approx(ref_h95, rel=1e-12, abs=1e-9)
    assert m.hd95_mm(g, p, oblique) == pytest.approx(ref_hd95, rel=1e-12, abs=1e-9)
    # a different spacing must change the value (so the comparison above is meaningful)
    assert m.h95_wmh_mm(g, p, np.diag([1.0, 1.0, 1.0, 1.0])) != pytest.approx(ref_h95)


def test_hd95_rejects_sheared_affine():
    g = box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(errors.MetricError, match="orthogonal"):
        m.hd95_mm(g, g, shear)


# --- §2.4, §2.5 lesions ------------------------------------------------------------------
def test_diagonal_voxels_are_one_lesion_26_connectivity():
    g = np.zeros((6, 6, 6), dtype=bool)
    g[1, 1, 1] = g[2, 2, 2] = True  # corner-touching only: 1 lesion with 26-connectivity
    p = np.zeros_like(g)
    p[1, 1, 1] = True
    assert m.lesion_recall(g, p) == 1.0  # 6-connectivity would give 1/2
    g[4, 4, 4] = True  # a second, separate lesion that is missed
    assert m.lesion_recall(g, p) == 0.5


def test_lesion_f1_official_vs_legacy():
    # One reference lesion (a bar) hit by two separate predicted components.
    g = box((10, 10, 5), slice(2, 3), slice(1, 9), slice(2, 3))
    p = np.zeros_like(g)
    p[2, 1, 2] = p[2, 8, 2] = True
    assert m.lesion_recall(g, p) == 1.0
    # official: precision 2/2 -> F1 = 1; legacy: precision 1/2 -> F1 = 2*0.5*1/1.5 = 2/3
    assert m.lesion_f1(g, p) == 1.0
    assert m.lesion_f1(g, p, mode="legacy_2017_07") == pytest.approx(2 / 3, abs=1e-15)
    ref = (g.astype(np.float32), EYE)
    assert m.wmh_challenge(ref, (p.astype(np.uint8), EYE))["lesion_f1"] == 1.0
    assert m.wmh_challenge(ref, (p.astype(np.uint8), EYE), lesion_f1_mode="legacy_2017_07")[
        "f1"] == pytest.approx(2 / 3, abs=1e-15)


def test_lesion_f1_official_precision_counts_false_positive_components():
    g = box((12, 12, 4), slice(1, 3), slice(1, 3), slice(1, 2))
    p = g.copy()
    p[8:10, 8:10, 1] = True  # a false positive component: precision 1/2, recall 1
    assert m.lesion_f1(g, p) == pytest.approx(2 / 3, abs=1e-15)


def test_legacy_f1_division_by_zero():
    g = box((6, 6, 6), slice(1, 2), slice(1, 2), slice(1, 2))
    empty = np.zeros_like(g)
    assert math.isnan(m.lesion_f1(g, empty, mode="legacy_2017_07"))
    with pytest.raises(errors.MetricError, match="divides by zero"):
        m.lesion_f1(g, empty, mode="legacy_2017_07", empty_policy="compat")


# --- §2.1 preparation --------------------------------------------------------------------
def test_label2_masking_removes_predicted_voxels():
    ref = np.zeros((10, 10, 4), dtype=np.float32)
    ref[1:3, 1:3, 1:3] = 1  # 8 WMH voxels
    ref[6:8, 6:8, 1:3] = 2  # 8 voxels of other pathology
    pred = ((ref == 1) | (ref == 2)).astype(np.float32)
    out = m.wmh_challenge((ref, EYE), (pred, EYE))
    assert out["dsc"] == 1.0 and out["avd"] == 0.0 and out["h95_wmh_mm"] == 0.0
    assert out["lesion_recall"] == 1.0 and out["lesion_f1"] == 1.0
    # without the masking the prediction would have 16 voxels: DSC 16/24, AVD 100 %
    assert m.dice(ref == 1, pred > 0) == pytest.approx(2 / 3)
    only_other = (ref == 2).astype(np.float32)
    out = m.wmh_challenge((ref, EYE), (only_other, EYE))
    assert "prediction_empty" in out["flags"] and out["dsc"] == 0.0


def test_prediction_binarisation_bounds():
    ref = np.zeros((4, 4, 4), dtype=np.float32)
    ref[0, :, :] = 1  # 16 WMH voxels
    pf = np.zeros((4, 4, 4), dtype=np.float32)
    pf[0, 0, :] = [0.5, 0.49, 1000.0, 2.0]  # 0.5 and 1000 inclusive: 3 predicted voxels
    assert m.wmh_challenge((ref, EYE), (pf, EYE))["avd"] == pytest.approx(13 / 16 * 100)
    pi = np.zeros((4, 4, 4), dtype=np.int16)
    pi[0, 0, :] = [1, 0, 1000, 7]  # integers: 1..1000 -> 3 voxels
    assert m.wmh_challenge((ref, EYE), (pi, EYE))["avd"] == pytest.approx(13 / 16 * 100)


def test_prediction_above_1000_zoo_error_compat_zero():
    ref = np.zeros((4, 4, 4), dtype=np.float32)
    ref[0, :, :] = 1
    pred = (ref > 0).astype(np.float32)
    pred[0, 0, 0] = 1001.0
    with pytest.raises(errors.MetricError, match="exceed 1000"):
        m.wmh_challenge((ref, EYE), (pred, EYE))
    out = m.wmh_challenge((ref, EYE), (pred, EYE), empty_policy="compat")
    assert out["abs_vol_diff_pct"] == pytest.approx(100 / 16)  # 15 of 16 voxels predicted
    assert "prediction_above_1000" in out["flags"]


def test_uint8_and_float_reference_identical():
    rng = np.random.default_rng(7)
    labels = np.zeros((20, 18, 6), dtype=np.uint8)
    labels[3:9, 4:10, 1:4] = 1
    labels[12:15, 2:6, 2:5] = 1
    labels[14:18, 12:16, 1:3] = 2
    prob = np.clip((labels > 0) * 0.8 + rng.normal(0, 0.25, labels.shape), 0, 1)
    aff = np.diag([0.96, 0.96, 3.0, 1.0])
    a = m.wmh_challenge((labels, aff), (prob.astype(np.float32), aff))
    b = m.wmh_challenge((labels.astype(np.float32), aff), (prob.astype(np.float32), aff))
    assert_same_result(a, b)
    assert 0.3 < a["dsc"] < 0.99  # a non-trivial case (background is not counted as WMH)


# --- §8 empty cases ----------------------------------------------------------------------
G = box((8, 8, 4), slice(2, 5), slice(2, 5), slice(1, 3))
P = box((8, 8, 4), slice(3, 6), slice(2, 5), slice(1, 3))
E = np.zeros((8, 8, 4), dtype=bool)
NAN = float("nan")


@pytest.mark.parametrize("g, p, dsc, vs, h95, avd, recall, f1", [
    (E, E, 1.0, 1.0, NAN, NAN, 1.0, 1.0),       # both empty
    (E, P, 0.0, 0.0, NAN, NAN, 1.0, 0.0),       # reference empty
    (G, E, 0.0, 0.0, NAN, 100.0, 0.0, 0.0),     # prediction empty
], ids=["both_empty", "reference_empty", "prediction_empty"])
def test_empty_table_zoo(g, p, dsc, vs, h95, avd, recall, f1):
    def same(x, y):
        return math.isnan(y) if math.isnan(x) else x == y

    assert same(m.dice(g, p), dsc)
    assert same(m.vol_similarity(g, p), vs)
    assert same(m.h95_wmh_mm(g, p, EYE), h95)
    assert same(m.hd95_mm(g, p, (1, 1, 1)), h95)
    assert same(m.abs_vol_diff_pct(g, p), avd)
    assert same(m.lesion_recall(g, p), recall)
    assert same(m.lesion_f1(g, p), f1)
    out = m.wmh_challenge((g.astype(np.float32), EYE), (p.astype(np.float32), EYE))
    for key, val in [("dsc", dsc), ("h95_wmh_mm", h95), ("abs_vol_diff_pct", avd),
                     ("lesion_recall", recall), ("lesion_f1", f1)]:
        assert same(out[key], val), key


def test_empty_flags_zoo():
    f = lambda g, p: m.wmh_challenge((g.astype(np.float32), EYE), (p.astype(np.uint8), EYE))["flags"]
    assert f(E, E) == ["reference_empty", "prediction_empty", "both_empty"]
    assert f(E, P) == ["reference_empty", "h95_reference_empty"]
    assert f(G, E) == ["prediction_empty"]
    assert f(G, P) == []


def test_both_nonempty_formula():
    # G, P: 3x3x2 boxes shifted by one along i; overlap 2x3x2 = 12 of 18 each
    assert m.dice(G, P) == pytest.approx(24 / 36)
    assert m.vol_similarity(G, P) == 1.0
    assert m.abs_vol_diff_pct(G, P) == 0.0
    assert m.h95_wmh_mm(G, P, EYE) == 1.0
    assert m.hd95_mm(G, P, (1, 1, 1)) == 1.0


def test_compat_empty_cases():
    assert math.isnan(m.dice(E, E, "compat"))
    assert math.isnan(m.vol_similarity(E, E, "compat"))
    assert m.dice(E, P, "compat") == 0.0 and m.vol_similarity(G, E, "compat") == 0.0
    assert math.isnan(m.h95_wmh_mm(G, E, EYE, "compat"))
    assert math.isnan(m.h95_wmh_mm(E, E, EYE, "compat"))
    assert m.abs_vol_diff_pct(G, E, "compat") == 100.0
    with pytest.raises(errors.MetricError, match="official WMH evaluator crashes"):
        m.h95_wmh_mm(E, P, EYE, "compat")
    with pytest.raises(errors.MetricError, match="official WMH evaluator crashes"):
        m.hd95_mm(E, P, (1, 1, 1), "compat")
    with pytest.raises(errors.MetricError, match="official WMH evaluator crashes"):
        m.abs_vol_diff_pct(E, P, "compat")
    with pytest.raises(errors.MetricError, match="official WMH evaluator crashes"):
        m.wmh_challenge((E.astype(np.float32), EYE), (E.astype(np.float32), EYE),
                        empty_policy="compat")
    out = m.wmh_challenge((G.astype(np.float32), EYE), (E.astype(np.float32), EYE),
                          empty_policy="compat")
    assert math.isnan(out["hd95"]) and out["avd"] == 100.0 and out["recall"] == 0.0


def test_unknown_policy_rejected():
    with pytest.raises(errors.MetricError, match="empty_policy"):
        m.dice(G, P, "strict")


# --- inputs and geometry -----------------------------------------------------------------
def test_shape_mismatch_raises():
    a = np.zeros((10, 10, 5), dtype=np.float32)
    b = np.zeros((10, 10, 6), dtype=np.float32)
    with pytest.raises(errors.MetricError, match="shape"):
        m.wmh_challenge((a, EYE), (b, EYE))
    with pytest.raises(errors.MetricError, match="shape"):
        m.dice(a > 0, b > 0)


def test_prediction_affine_checked_in_zoo_ignored_in_compat():
    ref = G.astype(np.float32)
    moved = EYE.copy()
    moved[0, 3] = 2.0  # prediction header 2 mm off
    with pytest.raises(errors.MetricError, match="grid"):
        m.wmh_challenge((ref, EYE), (P.astype(np.float32), moved))
    a = m.wmh_challenge((ref, EYE), (P.astype(np.float32), moved), empty_policy="compat")
    b = m.wmh_challenge((ref, EYE), (P.astype(np.float32), moved), check_affine=False)
    c = m.wmh_challenge((ref, EYE), P.astype(np.float32))  # bare array: reference grid
    assert b["dsc"] == c["dsc"] == 24 / 36
    assert a["dsc"] == pytest.approx(24 / 36, abs=1e-15)  # compat: 1 - 12/36


def test_paths_and_nibabel_images(tmp_path):
    labels = np.zeros((16, 14, 5), dtype=np.float32)
    labels[2:7, 3:8, 1:4] = 1
    labels[10:13, 9:12, 2:4] = 1
    labels[12:15, 1:4, 0:2] = 2
    pred = np.zeros(labels.shape, dtype=np.uint8)
    pred[3:8, 3:8, 1:4] = 1
    pred[12:15, 1:4, 0:2] = 1  # inside label 2: ignored
    aff = affine_from(np.diag([-0.9, 0.9, 3.0]), (100.0, -110.0, -40.0))
    ref_path, pred_path = tmp_path / "wmh.nii.gz", tmp_path / "result.nii.gz"
    nib.save(nib.Nifti1Image(labels, aff), ref_path)
    nib.save(nib.Nifti1Image(pred, aff), pred_path)
    from_paths = m.wmh_challenge(ref_path, str(pred_path))
    stored = nib.load(ref_path).affine  # NIfTI keeps the affine in float32
    from_arrays = m.wmh_challenge((labels, stored), (pred, stored))
    from_images = m.wmh_challenge(nib.load(ref_path), nib.load(pred_path))
    assert_same_result(from_paths, from_arrays)
    assert_same_result(from_paths, from_images)
    # G: 75 + 18 = 93 voxels, P: 75 (label-2 part removed), overlap 4*5*3 = 60
    assert from_paths["dsc"] == pytest.approx(120 / 168, abs=1e-12)
    assert from_paths["avd"] == pytest.approx(18 / 93 * 100, abs=1e-12)
    assert from_paths["recall"] == 0.5 and from_paths["f1"] == pytest.approx(2 / 3)


# --- cross-check against an independent SimpleITK pipeline (§2.1-2.5) --------------------
def _sitk_wmh(labels, pred, spacing, origin):
    """The evaluator's steps written with SimpleITK filters (float reference and prediction)."""
    sitk = pytest.importorskip("SimpleITK")
    from scipy.spatial import cKDTree

    def img(a):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))
        im.SetSpacing([float(s) for s in spacing])
        im.SetOrigin([float(o) for o in origin])
        return im

    ref, res = img(labels), img(pred)
    g = sitk.BinaryThreshold(ref, 0.5, 1.5, 1, 0)
    keep = sitk.BinaryThreshold(ref, 1.5, 2.5, 0, 1)
    p = sitk.BinaryThreshold(sitk.Mask(res, keep), 0.5, 1000, 1, 0)
    ga, pa = sitk.GetArrayFromImage(g).astype(bool), sitk.GetArrayFromImage(p).astype(bool)
    dsc = 2.0 * (ga & pa).sum() / (ga.sum() + pa.sum())

    def pts(x):
        edge = sitk.GetArrayFromImage(sitk.Subtract(x, sitk.BinaryErode(x, (1, 1, 0))))
        return np.array([ref.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]])
                         for idx in np.argwhere(edge)])

    tg, tp = pts(g), pts(p)
    h95 = max(np.percentile(cKDTree(tg).query(tp)[0], 95),
              np.percentile(cKDTree(tp).query(tg)[0], 95))
    avd = abs(ga.sum() - pa.sum()) / ga.sum() * 100
    cc = sitk.ConnectedComponentImageFilter()
    cc.SetFullyConnected(True)
    lg, lp = sitk.GetArrayFromImage(cc.Execute(g)), sitk.GetArrayFromImage(cc.Execute(p))
    recall = (len(np.unique(lg * pa)) - 1) / lg.max()  # labels hit, minus background
    precision = (len(np.unique(lp * ga)) - 1) / lp.max()
    f1 = 2 * precision * recall / (precision + recall)
    return dsc, h95, avd, recall, f1


def test_matches_simpleitk_pipeline():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(11)
    shape = (40, 36, 8)
    blobs = ndi.gaussian_filter(rng.random(shape), (2, 2, 0.7))
    labels = np.zeros(shape, dtype=np.float32)
    labels[blobs > 0.53] = 1
    labels[(blobs < 0.47) & (blobs > 0.465)] = 2
    noisy = ndi.gaussian_filter(rng.random(shape), (2, 2, 0.7))
    pred = np.where(noisy + (labels == 1) * 0.05 > 0.52, rng.random(shape) * 0.5 + 0.5,
                    rng.random(shape) * 0.4).astype(np.float32)
    spacing, origin = (0.95, 1.05, 3.0), (-100.0, 20.0, 7.5)
    aff = affine_from(np.diag(spacing), origin)
    want = _sitk_wmh(labels, pred, spacing, origin)
    got = m.wmh_challenge((labels, aff), (pred, aff))
    assert got["lesion_recall"] < 1.0 and got["lesion_f1"] < 1.0  # a non-trivial case
    for key, w in zip(["dsc", "h95_wmh_mm", "abs_vol_diff_pct", "lesion_recall", "lesion_f1"],
                      want):
        assert got[key] == pytest.approx(w, rel=1e-9, abs=1e-9), key


# --- §2.6 ranking, §7 summaries ----------------------------------------------------------
def test_challenge_rank_scores():
    results = {
        "B": {"dsc": 0.7, "h95_wmh_mm": 7.0, "abs_vol_diff_pct": 20.0, "lesion_recall": 0.6,
              "lesion_f1": 0.6},
        "A": {"dsc": 0.8, "hd95": 5.0, "avd": 10.0, "recall": 0.8, "f1": 0.7},
        "C": {"dsc": 0.6, "h95_wmh_mm": 6.0, "abs_vol_diff_pct": 30.0, "lesion_recall": 0.7,
              "lesion_f1": 0.5},
    }
    scores = m.challenge_rank_scores(results)
    assert list(scores) == ["A", "B", "C"]  # best (lowest) first
    # B: dsc .5, h95 1, avd .5, recall 1, f1 .5 -> 3.5/5; C: 1, .5, 1, .5, 1 -> 4/5
    assert scores["A"] == 0.0
    assert scores["B"] == pytest.approx(0.7, abs=1e-12)
    assert scores["C"] == pytest.approx(0.8, abs=1e-12)
    results["C"]["dsc"] = float("nan")
    with pytest.raises(errors.MetricError, match="non-finite"):
        m.challenge_rank_scores(results)


def test_summarise_excludes_and_counts_nan():
    s = m.summarise([1.0, 2.0, float("nan"), 3.0, 4.0])
    assert s["n"] == 4 and s["n_nan"] == 1
    assert s["mean"] == 2.5 and s["median"] == 2.5
    assert s["sd"] == pytest.approx(math.sqrt(5 / 3), abs=1e-12)  # ddof = 1
    assert s["q25"] == 1.75 and s["q75"] == 3.25  # linear interpolation
    empty = m.summarise([float("nan")])
    assert empty["n"] == 0 and empty["n_nan"] == 1 and math.isnan(empty["mean"])


# --- §4.2 hd_vox_network_grid ----------------------------------------------------------------
def test_hd_vox_network_grid_shifted_cubes_in_voxels():
    # Identical 5-voxel cubes shifted by 3 voxels along i: every face is at most 3 voxels from
    # the other boundary, and the far faces are exactly 3 apart.
    g = box((14, 12, 12), slice(2, 7), slice(2, 7), slice(2, 7))
    p = box((14, 12, 12), slice(5, 10), slice(2, 7), slice(2, 7))
    assert m.hd_vox_network_grid(g, p) == pytest.approx(3.0, abs=1e-12)
    assert m.hd_vox_network_grid(p, g) == pytest.approx(3.0, abs=1e-12)
    assert m.hd_vox_network_grid(g, g) == 0.0


def test_hd_vox_network_grid_matches_brute_force_with_edge_as_background():
    from scipy import ndimage as ndi
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    for _ in range(4):
        # Blobs that touch the image edge, where the outside-as-background rule matters.
        g = ndi.binary_dilation(rng.random((10, 16, 16)) > 0.97, iterations=2)
        p = ndi.binary_dilation(rng.random((10, 16, 16)) > 0.97, iterations=2)
        bg = g & ~ndi.binary_erosion(g)  # SciPy default: cross element, border_value 0
        bp = p & ~ndi.binary_erosion(p)
        d = cdist(np.argwhere(bp), np.argwhere(bg))
        expected = max(d.min(axis=1).max(), d.min(axis=0).max())
        assert m.hd_vox_network_grid(g, p) == pytest.approx(expected, abs=1e-9)
    # A mask that fills the whole image has its outer shell as boundary (HD95's zoo rule would
    # have none): the top face of G is 4 voxels from the cut face of P, half the image.
    g = np.ones((8, 8, 8), bool)
    p = box((8, 8, 8), slice(0, 8), slice(0, 8), slice(0, 4))
    assert m.hd_vox_network_grid(g, p) == pytest.approx(4.0, abs=1e-12)


def test_hd_vox_network_grid_empty_cases():
    g = box((6, 6, 6), slice(1, 4), slice(1, 4), slice(1, 4))
    e = np.zeros_like(g)
    assert math.isnan(m.hd_vox_network_grid(g, e))
    assert math.isnan(m.hd_vox_network_grid(e, g))
    with pytest.raises(errors.MetricError):
        m.hd_vox_network_grid(e, g, empty_policy="compat")


# --- Bland–Altman ---------------------------------------------------------------------------
def test_bland_altman_hand_computed():
    r = [10.0, 20.0, 30.0, math.nan]
    v = [12.0, 19.0, 33.0, 5.0]
    ba = m.bland_altman(r, v)  # differences 2, -1, 3
    sd = math.sqrt(((2 - 4 / 3) ** 2 + (-1 - 4 / 3) ** 2 + (3 - 4 / 3) ** 2) / 2)
    assert ba["n"] == 3 and ba["n_nan"] == 1
    assert ba["bias"] == pytest.approx(4 / 3, abs=1e-12)
    assert ba["sd"] == pytest.approx(sd, abs=1e-12)
    assert ba["loa_lower"] == pytest.approx(4 / 3 - 1.96 * sd, abs=1e-12)
    assert ba["loa_upper"] == pytest.approx(4 / 3 + 1.96 * sd, abs=1e-12)
    assert ba["mean_reference"] == pytest.approx(20.0)
    one = m.bland_altman([1.0], [2.0])
    assert one["bias"] == 1.0 and math.isnan(one["sd"])
    assert math.isnan(m.bland_altman([], [])["bias"])
    with pytest.raises(errors.MetricError):
        m.bland_altman([1.0, 2.0], [1.0])


def test_malignant_decision_is_argmax_and_a_tie_is_benign():
    """metrics.md §6: malignant iff s > 0.5 (argmax of the two softmax outputs, first index on
    a tie), so a score of exactly 0.5 is benign and counts as a negative prediction."""
    s = np.array([0.2, 0.5, 0.5000001, 0.9])
    np.testing.assert_array_equal(m.malignant(s), [0, 0, 1, 1])
    np.testing.assert_array_equal(m.malignant(s), np.argmax(np.stack([1 - s, s], axis=1), axis=1))
    c = m.classification_metrics([0, 0, 1, 1], s)  # the tie (a benign nodule) is a true negative
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (2, 0, 2, 0)
