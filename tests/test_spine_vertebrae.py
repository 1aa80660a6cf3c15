"""spine_vertebrae: architecture, invertible 3D pipeline, loss, optimizer, augmentation,
post-processing, label rule, adapters, card and recipe (fast, synthetic; spec
specs/spine_vertebrae.md §15)."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from zoo import postprocessing, registry
from zoo.io import Volume
from zoo.preprocessing.cropping import CenterCropPadND
from zoo.preprocessing.volume_pipeline import VolumePipeline

STEPS = [
    {"step": "reorient", "codes": ["R", "A", "S"], "invertible": True},
    {"step": "resample", "spacing_mm": [4.4, 0.78, 0.78], "invertible": True},
    {"step": "zscore", "region": "all", "invertible": True},
    {"step": "crop_pad", "size": [16, 32, 32], "pad_value": 0, "invertible": True},
]


def _volume(array, affine):
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, float))
    return Volume(np.asarray(array), img.affine.copy(), img.header.copy())


# --- architecture -------------------------------------------------------------------------------
def test_parameter_count_and_output_shape():
    from zoo.architectures.resunet3d import build_resunet3d

    full = build_resunet3d((16, 400, 400, 1))
    assert full.count_params() == 4_806_481  # spec §5
    assert full.output_shape == (None, 16, 400, 400, 2)
    small = build_resunet3d((16, 32, 32, 1))
    assert small.count_params() == 4_806_481  # fully convolutional: patch weights load into the window
    out = np.asarray(small(np.zeros((1, 16, 32, 32, 1), np.float32)))
    assert out.shape == (1, 16, 32, 32, 2) and np.all(np.isfinite(out))
    with pytest.raises(ValueError):
        build_resunet3d((12, 32, 32, 1))


def test_card_builds_the_spec_network():
    card = registry.card("spine_vertebrae")
    from zoo.entries import spine_vertebrae as entry

    net = entry.build_member(card, "t2", 0, patch_size=(16, 32, 32))
    assert net.count_params() == card["model_details"]["parameters"]["t2"] == 4_806_481


# --- geometry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_size,size", [((5, 7, 8), (8, 4, 8)), ((9, 3, 6), (4, 8, 7))])
def test_crop_pad_nd_inverse_odd_and_even(in_size, size):
    a = np.arange(np.prod(in_size), dtype=np.float32).reshape(in_size) + 1
    c = CenterCropPadND(in_size, size)
    out = c.forward(a)
    assert out.shape == size
    back = c.inverse(out)
    kept = back != 0
    np.testing.assert_array_equal(back[kept], a[kept])
    # TorchIO CropOrPad placement: pad floor(diff/2) before, crop floor(|diff|/2) at the start
    if in_size[0] < size[0]:
        assert np.all(out[: (size[0] - in_size[0]) // 2] == 0) and out[(size[0] - in_size[0]) // 2].any()
    else:
        assert out[0].any()


def test_crop_pad_nd_torchio_offsets():
    c = CenterCropPadND((5, 10), (8, 7))  # pad 3 (1 before, 2 after); crop 3 (1 at the start)
    a = np.arange(50).reshape(5, 10)
    out = c.forward(a, pad_value=-1)
    assert (out[0] == -1).all() and (out[6:] == -1).all()
    np.testing.assert_array_equal(out[1:6], a[:, 1:8])


def _lps_case(rng):
    """An LPS-ordered volume at about 1 mm (i: R->L, j: A->P, k: I->S) with a bright box."""
    arr = rng.normal(0, 1, (40, 30, 20)).astype(np.float32)
    arr[10:30, 8:20, 5:15] += 5
    aff = np.diag([-1.05, -0.9, 1.2, 1.0])
    aff[:3, 3] = [20, 10, -5]
    return arr, aff


def test_pipeline_round_trip_geometry_and_labels():
    rng = np.random.default_rng(0)
    arr, aff = _lps_case(rng)
    vol = _volume(arr, aff)
    pipe = VolumePipeline(STEPS)
    x, st = pipe.apply(vol)
    assert x.dtype == np.float32 and x.shape == st.crop.out_size
    assert all(n >= w for n, w in zip(x.shape, (16, 32, 32)))
    np.testing.assert_allclose(st.spacing, (4.4, 0.78, 0.78), rtol=0.1)
    assert nib.aff2axcodes(st.network_affine) == ("R", "A", "S")
    label = np.zeros(arr.shape, np.uint8)
    label[10:30, 8:20, 5:15] = 1
    y = pipe.apply_label(label, st)
    assert set(np.unique(y)) <= {0, 1}
    back = pipe.invert(y.astype(np.float32), st, order=1) > 0.5
    assert back.shape == arr.shape
    # the box comes back in place (anisotropic resampling only blurs its edges)
    inter = np.count_nonzero(back & (label > 0))
    assert 2 * inter / (back.sum() + label.sum()) > 0.85
    # world centroid of the network-grid label equals the native one within a voxel
    def centroid(mask, affine):
        idx = np.argwhere(mask).mean(axis=0)
        return affine[:3, :3] @ idx + affine[:3, 3]
    np.testing.assert_allclose(centroid(y > 0, st.network_affine), centroid(label > 0, aff), atol=2.5)


def test_pipeline_exact_inverse_when_no_resampling():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 3, (10, 20, 40)).astype(np.float32)
    aff = np.diag([-4.4, 0.78, -0.78, 1.0])  # L, A, I: reorient flips, resampling skipped
    vol = _volume(arr, aff)
    pipe = VolumePipeline(STEPS)
    x, st = pipe.apply(vol)
    assert st.resampling is None
    assert x.shape == (16, 32, 40)  # pad X and Y; Z larger than the window stays (sliding window)
    np.testing.assert_array_equal(pipe.invert(pipe.apply_label(arr, st), st, order=0), arr)
    crop = VolumePipeline(STEPS, large_inputs="crop")
    xc, stc = crop.apply(vol)
    assert xc.shape == (16, 32, 32)


def test_flipped_and_permuted_copies_reach_the_same_network_array():
    rng = np.random.default_rng(2)
    arr, aff = _lps_case(rng)
    pipe = VolumePipeline(STEPS)
    x0, _ = pipe.apply(_volume(arr, aff))
    # PSR copy: same world, voxel axes permuted (j, k, i) and flipped
    perm = np.transpose(arr, (1, 2, 0))[::-1]
    aff_p = aff[:, [1, 2, 0, 3]].copy()
    aff_p[:3, 0] *= -1
    aff_p[:3, 3] = aff[:3, :3] @ [0, perm.shape[0] - 1, 0] + aff[:3, 3]
    x1, st1 = pipe.apply(_volume(np.ascontiguousarray(perm), aff_p))
    np.testing.assert_allclose(x1, x0, atol=1e-5)
    out = pipe.invert(x1, st1, order=0)
    assert out.shape == perm.shape


# --- sliding window --------------------------------------------------------------------------------
def test_sliding_window_covers_and_blends():
    from zoo.inference.sliding_window import sliding_window, window_starts

    assert window_starts(10, 4, 0.25) == [0, 3, 6]
    assert window_starts(4, 4, 0.5) == [0]
    vol = np.random.default_rng(0).normal(size=(20, 9, 11, 1)).astype(np.float32)
    calls = []

    def ident(b):
        calls.append(b.shape[0])
        return np.concatenate([b, 2 * b], axis=-1)

    for blend in ("constant", "gaussian"):
        out = sliding_window(ident, vol, (16, 8, 8), overlap=0.5, blend=blend, batch_size=3)
        np.testing.assert_allclose(out[..., :1], vol, atol=1e-5)
        np.testing.assert_allclose(out[..., 1:], 2 * vol, atol=1e-5)
    with pytest.raises(ValueError):
        sliding_window(ident, vol[:10], (16, 8, 8))


# --- loss and optimizer -----------------------------------------------------------------------------
def test_focal_tversky_two_voxel_hand_value():
    import tensorflow as tf

    from zoo.training.losses import FocalTverskyLoss

    # one sample, two voxels: probabilities of the foreground 0.8 and 0.3; labels 1 and 0
    p = np.array([[[0.2, 0.8], [0.7, 0.3]]], np.float32)
    g = np.array([[[1], [0]]], np.float32)
    s = 1e-5
    # foreground: tp 0.8, fp 0.3, fn 0.2; background: tp 0.7, fp 0.2, fn 0.3
    ti_fg = (0.8 + s) / (0.8 + 0.5 * 0.3 + 0.99 * 0.2 + s)
    ti_bg = (0.7 + s) / (0.7 + 0.5 * 0.2 + 0.99 * 0.3 + s)
    expected = 1 - ((ti_fg + ti_bg) / 2) ** 2
    loss = FocalTverskyLoss(from_logits=False)
    assert float(loss(tf.constant(g), tf.constant(p))) == pytest.approx(expected, rel=1e-5)
    ab = FocalTverskyLoss(from_logits=False, mode="abraham", gamma=4 / 3)
    exp_ab = ((1 - ti_fg) ** 0.75 + (1 - ti_bg) ** 0.75) / 2
    assert float(ab(tf.constant(g), tf.constant(p))) == pytest.approx(exp_ab, rel=1e-5)
    # logits give the same as their softmax
    logits = np.log(p)
    assert float(FocalTverskyLoss()(tf.constant(g), tf.constant(logits))) == pytest.approx(expected, rel=1e-5)


def test_ranger_first_step_lookahead_and_flat_cos():
    import keras

    from zoo.training.optim import FlatCos, Ranger, make_optimizer

    w = keras.Variable(np.array([1.0, -2.0], np.float32))
    opt = Ranger(learning_rate=0.1, weight_decay=None, lookahead_k=2, lookahead_alpha=0.5)
    g = np.array([0.5, 1.0], np.float32)
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
    # step 1: rho_1 <= 5, so the un-adapted step w - lr * m_hat with m_hat = g
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.05, -2.0 - 0.1], rtol=1e-6)
    fast1 = w.numpy().copy()
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
    # step 2 is a lookahead sync: slow (the start) + 0.5 * (fast - slow)
    t = 2.0
    m = 0.95 * 0.05 * g + 0.05 * g
    fast2 = fast1 - 0.1 * m / (1 - 0.95 ** t)
    np.testing.assert_allclose(w.numpy(), np.array([1.0, -2.0]) + 0.5 * (fast2 - [1.0, -2.0]), rtol=1e-5)
    sched = FlatCos(0.01, 100)
    assert float(sched(0)) == pytest.approx(0.01) and float(sched(74)) == pytest.approx(0.01)
    assert float(sched(100)) == pytest.approx(0.01 / 1e5, rel=1e-3)
    assert 0.0001 < float(sched(87)) < 0.01
    assert isinstance(make_optimizer({"name": "ranger", "learning_rate": 0.01}), Ranger)


# --- augmentation ---------------------------------------------------------------------------------
def test_augment3d_keeps_labels_binary_and_aligned():
    from zoo.training.augment3d import augment3d

    img = np.zeros((16, 48, 48), np.float32)
    lab = np.zeros((16, 48, 48), np.uint8)
    img[5:11, 15:35, 18:30] = 2.0
    lab[5:11, 15:35, 18:30] = 1
    rng = np.random.default_rng(0)
    cfg = {"affine_probability": 1, "elastic_probability": 1, "gamma_probability": 1}
    for _ in range(3):
        xi, yi = augment3d(img, lab, rng, (4.4, 0.78, 0.78), cfg)
        assert xi.shape == img.shape and set(np.unique(yi)) <= {0, 1}
        c_img = np.argwhere(xi > 1.0).mean(axis=0)
        c_lab = np.argwhere(yi > 0).mean(axis=0)
        np.testing.assert_allclose(c_img, c_lab, atol=1.0)
        assert abs(int(yi.sum()) - int(lab.sum())) < 0.35 * lab.sum()


# --- post-processing ------------------------------------------------------------------------------
def _six_bodies(spacing):
    """Six 30 x 20 x 24 mm boxes stacked along S with a 6 mm gap, plus a 1 mL blob; RAS grid."""
    sp = np.asarray(spacing, float)
    shape = tuple(int(v) for v in np.ceil(np.array([60, 60, 220]) / sp))
    mask = np.zeros(shape, np.uint8)
    boxes = []
    for b in range(6):
        z0 = 10 + b * 30  # mm; body 0 is the most inferior (small S)
        sl = (slice(int(15 / sp[0]), int(45 / sp[0])), slice(int(20 / sp[1]), int(40 / sp[1])),
              slice(int(z0 / sp[2]), int((z0 + 24) / sp[2])))
        mask[sl] = 1
        boxes.append(sl)
    blob = (slice(int(2 / sp[0]), int(12 / sp[0])), slice(int(2 / sp[1]), int(12 / sp[1])),
            slice(int(200 / sp[2]), int(210 / sp[2])))
    mask[blob] = 1
    return mask, boxes, np.diag([*sp, 1.0])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.4, 0.78, 0.78)])
def test_component_filter_in_ml_and_vertebra_names(spacing):
    from zoo.entries.spine_vertebrae import VERTEBRAE, name_vertebrae

    mask, boxes, aff = _six_bodies(spacing)
    kept, labels, vols = postprocessing.remove_small_components(mask, spacing, min_ml=5.59)
    assert labels.max() == 6 and len(vols) == 6  # the 1 mL blob is gone on both grids
    vertebrae, names, order = name_vertebrae(labels, aff)
    assert names == list(VERTEBRAE)
    assert name_vertebrae(labels, aff, vols)[1] == list(VERTEBRAE)
    # six components of which one is a merge (> 2x the mean) are not six levels
    merged = list(vols)
    merged[2] = 10 * float(np.mean(vols))
    assert name_vertebrae(labels, aff, merged)[1] == [f"body{i}" for i in range(1, 7)]
    # superior to inferior: Th12 is the box with the largest S, L5 the lowest
    assert np.all(vertebrae[boxes[5]] == 1) and np.all(vertebrae[boxes[0]] == 6)
    voxel_ml = float(np.prod(spacing)) / 1000
    for k, old in enumerate(order):
        assert vols[old - 1] == pytest.approx(np.count_nonzero(vertebrae == k + 1) * voxel_ml)
    assert vols[0] == pytest.approx(14.4, rel=0.15)  # 30 x 20 x 24 mm = 14.4 mL
    # a voxel threshold overrides the mL one; none keeps everything
    assert postprocessing.remove_small_components(mask, spacing, min_voxels=1)[1].max() == 7
    assert postprocessing.remove_small_components(mask, spacing)[1].max() == 7


def test_merged_components_rule():
    from zoo.entries.spine_vertebrae import merged_components

    assert merged_components([10, 10, 10, 10, 10, 60]) == [5]  # 60 > 2 x mean 18.3
    assert merged_components([10, 10, 10, 10, 10, 25]) == []   # 25 = 2 x mean 12.5, not larger
    assert merged_components([100.0]) == [] and merged_components([]) == []


def test_aggregate_bland_altman_over_named_vertebrae_only():
    from zoo.entries.spine_vertebrae import VERTEBRAE, aggregate

    rows = [{**{f"volume_ml_ref_{v}": 30.0 + i for i, v in enumerate(VERTEBRAE)},
             **{f"volume_ml_pred_{v}": 32.0 + i for i, v in enumerate(VERTEBRAE)}},
            {**{f"volume_ml_ref_{v}": 40.0 for v in VERTEBRAE},  # merged bodies: no names
             **{f"volume_ml_pred_{v}": float("nan") for v in VERTEBRAE}}]
    ba = aggregate(pd.DataFrame(rows))["bland_altman_volume_ml"]
    assert ba["n"] == 6 and ba["n_nan"] == 6
    assert ba["bias"] == pytest.approx(2.0) and ba["sd"] == pytest.approx(0.0, abs=1e-12)
    assert ba["mean_reference"] == pytest.approx(32.5)


def test_six_connectivity_splits_diagonal_voxels():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1
    assert postprocessing.remove_small_components(m, (1, 1, 1), connectivity=6)[1].max() == 2
    assert postprocessing.remove_small_components(m, (1, 1, 1), connectivity=26)[1].max() == 1


# --- label rule and adapters ---------------------------------------------------------------------
def _seven_bodies():
    lab = np.zeros((8, 8, 72), np.uint8)
    for v in range(7):  # label 1 at the top (largest k = superior on this RAS grid)
        k0 = 66 - 10 * v
        lab[2:6, 2:6, k0 - 6:k0] = v + 1
    return lab


def test_th12_l5_mask_drops_the_most_cranial_body():
    from zoo.training.datasets import th12_l5_mask

    lab = _seven_bodies()
    aff = np.eye(4)
    m, info = th12_l5_mask(lab, aff)
    np.testing.assert_array_equal(m, (lab >= 2).astype(np.uint8))
    assert info == {"n_bodies": 6, "flags": []}
    mb, info_b = th12_l5_mask((lab > 0).astype(np.uint8), aff)  # binary label: components
    np.testing.assert_array_equal(mb, m)
    flipped = np.diag([1.0, 1.0, -1.0, 1.0])  # k grows inferiorly: label 7 is now the top
    mf, info_f = th12_l5_mask(lab, flipped)
    np.testing.assert_array_equal(mf, ((lab >= 1) & (lab <= 6)).astype(np.uint8))
    m6, info6 = th12_l5_mask(lab, aff, rule=None)
    assert info6["n_bodies"] == 7 and info6["flags"]


def test_chu2015_layout_adapter_and_detection(tmp_path):
    from zoo.training import datasets, run

    for d in ("img", "seg"):
        (tmp_path / d).mkdir()
    for name in ("Img_02", "Img_10"):
        for d in ("img", "seg"):
            nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / d / f"{name}.nii.gz")
    assert run.detect_layout(tmp_path) == "chu2015"
    subjects = run.load_subjects(tmp_path, "auto", ["t2"])
    assert [s.id for s in subjects] == ["02", "10"]
    assert subjects[0].meta["label_rule"] == datasets.DROP_TH11
    assert subjects[0].images["t2"].name == subjects[0].label.name == "Img_02.nii.gz"
    (tmp_path / "seg" / "Img_10.nii.gz").unlink()
    from zoo import errors

    with pytest.raises(errors.InputError):
        datasets.chu2015(tmp_path)


# --- card and recipe ------------------------------------------------------------------------------
def test_card_and_recipe_validate():
    from zoo.training.recipe import load_recipe

    card = registry.card("spine_vertebrae")
    assert card.step("resample")["spacing_mm"] == [4.4, 0.78, 0.78]
    assert card.step("crop_pad")["size"] == [16, 400, 400]
    rec = load_recipe("spine_vertebrae")
    assert rec["task"] == "segmentation3d" and rec["optimizer"]["name"] == "ranger"
    assert rec["loss"] == {**rec["loss"], "alpha": 0.5, "beta": 0.99, "gamma": 2.0}
    reported = {(m["name"], m["dataset"]) for m in card.metrics["reported"]}
    assert ("dsc", "Chu et al. 2015 (external test)") in reported
    for m in card.metrics["measured"]:
        assert m["source"].startswith("this project") and "zoo " in m["command"]
    opt = card.with_options({"ensemble": "majority_vote", "large_inputs": "crop"})
    assert opt["inference"]["ensemble"] == "majority_vote"


def test_training_task_smoke_one_step(tmp_path):
    """segmentation3d end to end through the engine on two synthetic subjects (1 step, tiny
    patch; eager, because tracing the 3D U-Net costs more than one step), then ``zoo evaluate``
    with the run's weights on the held-out subject, whose label has six bodies."""
    import tensorflow as tf

    from zoo.training import datasets
    from zoo.training.recipe import load_recipe
    from zoo.training.trainer import train

    for i in range(2):
        d = tmp_path / f"case{i}"
        d.mkdir()
        rng = np.random.default_rng(i)
        img = rng.normal(0, 1, (20, 40, 40)).astype(np.float32)
        lab = np.zeros((20, 40, 40), np.uint8)
        if i == 0:
            lab[8:12, 10:30, 10:30] = 1
        else:  # six 3-voxel bodies along S with 3-voxel gaps
            for b in range(6):
                lab[8:12, 10:30, 4 + 6 * b:7 + 6 * b] = 1
        img[lab > 0] += 3
        aff = np.diag([4.4, 0.78, 0.78, 1.0])
        nib.save(nib.Nifti1Image(img, aff), d / "image.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), d / "mask_th12_l5.nii.gz")
    subjects = datasets.spine_chu(tmp_path)
    card = registry.card("spine_vertebrae")
    rec = load_recipe("spine_vertebrae", None, {"data": {"patch_size": [16, 16, 16], "steps_per_epoch": 1},
                                                "epochs": 1, "batch_size": 1})
    tf.config.run_functions_eagerly(True)
    try:
        record = train(card, rec, subjects[:1], tmp_path / "run", val_subjects=subjects[1:], verbose=0)
    finally:
        tf.config.run_functions_eagerly(False)
    m = record["members"][0]
    assert m["epochs"] == 1 and math.isfinite(m["history"]["loss"][0]) and "val_loss" in m["history"]
    assert (tmp_path / "run" / "member0.npz").is_file()

    from zoo import cli
    from zoo.entries.spine_vertebrae import EVAL_COLUMNS, VERTEBRAE

    out = tmp_path / "eval"
    assert cli.main(["evaluate", "spine_vertebrae", "--data", str(tmp_path), "--weights", str(tmp_path / "run"),
                     "--option", "n_members=1", "--subject", "case1", "-o", str(out)]) == 0
    table = pd.read_csv(out / "metrics.csv")
    assert list(table["subject"]) == ["case1"] and set(EVAL_COLUMNS) <= set(table.columns)
    body_ml = 4 * 20 * 3 * 4.4 * 0.78 * 0.78 / 1000
    np.testing.assert_allclose(table[[f"volume_ml_ref_{v}" for v in VERTEBRAE]].to_numpy(), body_ml, rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    ba = summary["agreement"]["bland_altman_volume_ml"]
    assert ba["n"] + ba["n_nan"] == 6 and summary["summary"]["dsc"]["n"] == 1
