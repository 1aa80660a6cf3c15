"""Claustrum entries (claustrum_multiview, neonatal_claustrum): architecture, views and fusion,
geometry, QC, weights (specs claustrum_multiview.md §5, §8, §14; neonatal_claustrum.md §5, §9, §14)."""

from __future__ import annotations

import keras
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import zoo
from zoo import errors, postprocessing
from zoo.entries import claustrum_common as cc
from zoo.inference.multiview import band_coverage, fuse_views, predict_view
from zoo.io import Volume
from zoo.model import ZooModel
from zoo.preprocessing.pipeline import SlicePipeline

ENTRIES = ("claustrum_multiview", "neonatal_claustrum")


def _trainable(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


# --- architecture -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("claustrum_multiview", 180), ("neonatal_claustrum", 200)])
def test_parameter_count_per_member_and_six_members(name, size):
    card = zoo.card(name)
    members = cc.build_members(card, "multiview")
    assert len(members) == 6
    assert members[0].inputs[0].shape[1:] == (size, size, 1)
    assert _trainable(members[0]) == 2_494_529          # spec §5 unit-test target
    assert len({m.name for m in members}) == 6


def test_adult_weights_load_unchanged_into_the_neonatal_200_graph(tmp_path):
    from zoo import weights

    adult = cc.build_member(zoo.card("claustrum_multiview"), "multiview", 0)
    weights.save_weights(adult, tmp_path / "adult.npz")
    neo = cc.build_member(zoo.card("neonatal_claustrum"), "multiview", 0)
    weights.load_weights(neo, tmp_path / "adult.npz")
    for a, b in zip(adult.weights, neo.weights):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3, rtol=2e-3)  # float16 storage


# --- views ----------------------------------------------------------------------------------------
STEPS = [
    {"step": "reorient", "codes": ["R", "A", "S"]},
    {"step": "brain_mask", "method": "threshold", "thresholds": {"img": 10}, "largest_cc": False,
     "fill_holes": True, "apply_given": True},
    {"step": "zscore"},
    {"step": "slices", "views": {"axial": 2, "coronal": 1}, "view": "axial"},
    {"step": "crop_pad", "size": [40, 40], "pad_value": "min"},
]


def _blob_volume(shape=(37, 45, 33)):
    """RAS volume: a brain box of value 100 (background 0) with a bright blob of 300."""
    a = np.zeros(shape, np.float32)
    a[4:-4, 4:-4, 4:-4] = 100.0
    a[20:24, 10:13, 15:19] = 300.0
    return a


def _orig(crop, axis, index):
    """Index in the uncropped slice of network-space ``index`` along in-plane ``axis``."""
    start, pad = crop._offsets(axis)
    return int(index) + start - pad


def test_views_cut_axial_k_and_coronal_j_and_invert_exactly():
    arr = _blob_volume()
    vol = Volume(arr, np.eye(4), nib.Nifti1Header(), source="img")
    pipe = SlicePipeline(STEPS, ["img"])
    views = pipe.apply_views({"img": vol}, ["axial", "coronal"])
    xa, sa = views["axial"]
    xc, sc = views["coronal"]
    assert xa.shape == (33, 40, 40, 1) and xc.shape == (45, 40, 40, 1)
    # axial slice k = (row j, column i); coronal slice j = (row k, column i) (spec §4 step 4)
    za, zc = xa[..., 0], xc[..., 0]
    k, r, c = np.unravel_index(np.argmax(za), za.shape)
    assert 15 <= k < 19 and _orig(sa.crop, 0, r) in range(10, 13) and _orig(sa.crop, 1, c) in range(20, 24)
    j, r, c = np.unravel_index(np.argmax(zc), zc.shape)
    assert 10 <= j < 13 and _orig(sc.crop, 0, r) in range(15, 19) and _orig(sc.crop, 1, c) in range(20, 24)
    # the same view through apply (training) equals apply_views
    x1, _ = pipe.apply({"img": vol})
    np.testing.assert_array_equal(x1, xa)
    ref = (arr - arr[arr >= 10].mean()) / arr[arr >= 10].std()
    for x, s, kept_j in ((xa, sa, slice(2, 42)), (xc, sc, slice(None))):
        back = pipe.slices_to_grid(x[..., 0], s, fill_value=np.nan)
        kept = np.isfinite(back)
        expect = np.zeros(arr.shape, bool)
        expect[:, kept_j, :] = True           # the axial view cropped j from 45 to 40 (start 2)
        np.testing.assert_array_equal(kept, expect)
        np.testing.assert_allclose(back[kept], ref[kept], atol=1e-5)


def test_band_keeps_20_and_25_percent_inverse_round_trip_odd_and_even():
    for n, f in ((203, 0.25), (290, 0.25), (176, 0.2), (181, 0.2)):
        keep = ~postprocessing.end_slice_band(n, f)
        assert keep.sum() == n - 2 * int(f * n)
        assert not keep[: int(f * n)].any() and keep[int(f * n)] and not keep[n - int(f * n):].any()


def test_fusion_of_two_identical_constant_views_returns_the_constant():
    shape = (12, 14, 16)
    v = np.full(shape, 0.7, np.float32)
    assert np.allclose(fuse_views([v, v]), 0.7)
    # nan-aware fusion averages only the covering views
    cov_a = band_coverage(np.arange(16) >= 4, (2, 1, 0), shape)
    cov_c = band_coverage(np.ones(14, bool), (1, 2, 0), shape)
    a = np.where(cov_a, 0.9, 0.0).astype(np.float32)
    out = fuse_views([a, v], [cov_a, cov_c], band_fill="nan_aware")
    assert np.allclose(out[:, :, 4:], 0.8) and np.allclose(out[:, :, :4], 0.7)
    with pytest.raises(ValueError):
        fuse_views([v, v[:-1]])


class _Intensity(keras.layers.Layer):
    """A stand-in network: p = sigmoid(8 (x - 2)) on z-scored intensities, so a bright blob
    (z > 2) is foreground, whatever view it is seen in."""

    def call(self, x):
        return keras.ops.sigmoid(8.0 * (x - 2.0))


def _blob_model(card_name: str, threshold: float = 0.4) -> ZooModel:
    card = zoo.card(card_name).with_options({"threshold": threshold})
    size = card.variant("multiview")["architecture"]["input_shape"][0]
    members = []
    for i in range(6):
        inp = keras.Input((size, size, 1))
        members.append(keras.Model(inp, _Intensity()(inp), name=f"m{i}"))
    import importlib

    return ZooModel(card, "multiview", members, importlib.import_module(zoo.registry.ENTRIES[card_name]), None)


def _bilateral_image():
    """LAS, anisotropic (1.2 x 0.9 x 1.0 mm) image with two bright blobs at world x = -20 mm
    (left) and x = +20 mm (right) around a symmetric brain box centred at x = 0."""
    shape = (60, 80, 70)
    aff = np.array([[-1.2, 0, 0, 35.4], [0, 0.9, 0, -35.5], [0, 0, 1.0, -34.5], [0, 0, 0, 1]])
    a = np.zeros(shape, np.float32)
    a[5:55, 6:74, 5:65] = 100.0
    inv = np.linalg.inv(aff)
    blobs = {}
    for side, x in (("left", -20.0), ("right", 20.0)):
        i, j, k = np.rint(inv @ [x, 0.0, 0.0, 1.0])[:3].astype(int)
        a[i - 2:i + 3, j - 3:j + 4, k - 3:k + 4] = 400.0
        blobs[side] = (slice(i - 2, i + 3), slice(j - 3, j + 4), slice(k - 3, k + 4))
    img = nib.Nifti1Image(a, aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=2)
    return img, blobs


def test_known_blobs_come_back_where_they_were_in_both_views_and_sides():
    img, blobs = _bilateral_image()
    model = _blob_model("claustrum_multiview")
    pred = model.predict(img)
    lab = np.asarray(pred.images["claustrum"].dataobj)
    assert lab.shape == img.shape
    np.testing.assert_array_equal(pred.images["claustrum"].affine, img.affine)
    for side, value in (("left", 1), ("right", 2)):
        inside = lab[blobs[side]]
        assert (inside == value).mean() > 0.6, side
    near = np.zeros(img.shape, bool)
    for sl in blobs.values():
        near[sl] = True
    near = ndimage.binary_dilation(near, iterations=2)  # resampling blurs the edges by a voxel or so
    assert (lab[~near] > 0).sum() == 0
    assert pred.volumes_ml["claustrum_left"] > 0 and pred.volumes_ml["claustrum_right"] > 0
    assert abs(pred.qc["midline_x_mm"]) < 1.0
    # each view alone finds the blobs (p > 0.8 there), so the equal-weight fusion keeps them
    vol = zoo.io.read_volume(img, "t1")
    pipe = cc.pipeline(model.card, "multiview")
    for view, (x, state) in pipe.apply_views({"t1": vol}, ["axial", "coronal"]).items():
        net = cc._view_models(model, ["axial", "coronal"])[view]
        probs, keep = predict_view(net, x, 0.2)
        native = pipe.grid_to_input(pipe.slices_to_grid(probs, state), state)
        for sl in blobs.values():
            assert native[sl].max() > 0.8, view


def test_geometry_round_trip_header_and_threshold_option():
    img, _ = _bilateral_image()
    pred = _blob_model("claustrum_multiview", threshold=0.5).predict(img)
    for name in ("claustrum", "claustrum_probability"):
        out = pred.images[name]
        assert out.shape == img.shape
        np.testing.assert_array_equal(out.affine, img.affine)
        assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert pred.images["claustrum"].get_data_dtype() == np.uint8
    prob = np.asarray(pred.images["claustrum_probability"].dataobj)
    lab = np.asarray(pred.images["claustrum"].dataobj)
    np.testing.assert_array_equal(lab > 0, prob > 0.5)


def test_given_brain_mask_is_applied():
    img, blobs = _bilateral_image()
    mask = np.zeros(img.shape, np.uint8)
    mask[:30] = 1  # keeps only one side of the LAS i axis (x > 0: the right blob)
    mask = nib.Nifti1Image(mask, img.affine)
    lab = np.asarray(_blob_model("claustrum_multiview").predict({"t1": img, "brain_mask": mask})
                     .images["claustrum"].dataobj)
    assert (lab[blobs["left"]] > 0).sum() == 0 and (lab[blobs["right"]] > 0).sum() > 0


def test_qc_flags():
    rules = {"min_volume_ml_per_side": 0.05, "min_age_weeks": 35}
    assert cc.qc_flags(rules, {"claustrum_left": 0.3, "claustrum_right": 0.3}, 40.0) == []
    flags = cc.qc_flags(rules, {"claustrum_left": 0.0, "claustrum_right": 0.01}, 31.5)
    assert flags == ["claustrum_left_missing", "claustrum_right_implausibly_small", "age_below_35_weeks"]
    assert cc.qc_flags({**rules, "max_volume_ml_per_side": 2.0},
                       {"claustrum_left": 0.3, "claustrum_right": 9.0}, None) == ["claustrum_right_implausibly_large"]
    assert cc.qc_flags(zoo.card("neonatal_claustrum")["postprocessing"]["qc"],
                       {"claustrum_left": 0.3, "claustrum_right": 0.3}, 34.9) == ["age_below_35_weeks"]


def test_neonatal_age_flag_through_predict():
    img, _ = _bilateral_image()
    small = nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2],
                            img.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))  # keep the test fast
    pred = _blob_model("neonatal_claustrum").predict(small, age_weeks=30.0)
    assert "age_below_35_weeks" in pred.qc["flags"]
    assert pred.images["claustrum"].shape == small.shape


@pytest.mark.parametrize("name", ENTRIES)
def test_load_without_weights_says_how_to_get_them(name):
    with pytest.raises(errors.WeightsNotAvailableError) as info:
        zoo.load(name)
    msg = str(info.value)
    assert "convert_keras2_h5_files" in msg and "How to get them" in msg
    assert ("zoo finetune" if name == "neonatal_claustrum" else "zoo train") in msg


def test_combine_view_runs(tmp_path):
    for view in ("a", "c"):
        (tmp_path / view).mkdir()
        for i in range(3):
            (tmp_path / view / f"member{i}.npz").write_bytes(f"{view}{i}".encode())
    out = cc.combine_view_runs(tmp_path / "a", tmp_path / "c", tmp_path / "w")
    assert [p.read_bytes() for p in out] == [b"a0", b"a1", b"a2", b"c0", b"c1", b"c2"]
    with pytest.raises(errors.WeightsNotAvailableError):
        cc.combine_view_runs(tmp_path / "a", tmp_path / "missing", tmp_path / "w2")


def test_denoise_substitute_reduces_noise():
    from zoo.preprocessing.denoise import denoise

    rng = np.random.default_rng(0)
    clean = np.full((14, 14, 14), 50.0, np.float32)
    clean[4:10, 4:10, 4:10] = 150.0
    noisy = np.abs(clean + rng.normal(0, 15, clean.shape)).astype(np.float32)
    out = denoise(noisy, {"method": "patch_based"})
    assert out.shape == noisy.shape
    assert np.abs(out - clean).mean() < np.abs(noisy - clean).mean()
    np.testing.assert_array_equal(denoise(noisy, {"method": "none"}), noisy)
    with pytest.raises(ValueError):
        denoise(noisy, {"method": "anlm"})
