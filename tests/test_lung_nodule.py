"""lung_nodule: architecture (spec §4), CT preprocessing (§2-§3), label rule, oversampling,
one-cycle schedule, 3D augmentation, classification metrics, the predict API and a training
smoke test. The shipped weights are tested in ``test_lung_weights.py``."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from zoo import errors, metrics
from zoo.architectures.nodule_cnn3d import N_TRAINABLE, build_nodule_cnn3d
from zoo.preprocessing import ct as ctp
from zoo.training import datasets


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# --- architecture (spec §4, §12) ---------------------------------------------------------------
@pytest.mark.parametrize("shape, last", [((88, 91, 62, 1), (5, 5, 3, 512)), ((44, 46, 31, 1), (2, 2, 1, 512))])
def test_parameter_count_and_feature_maps(shape, last):
    m = build_nodule_cnn3d(shape)
    assert _trainable(m) == N_TRAINABLE == 24_427_906
    assert m.count_params() == 24_437_250  # + 9,344 BN moving statistics (spec §4)
    assert tuple(m.get_layer("cr5_add").output.shape[1:]) == last
    assert tuple(m.output.shape[1:]) == (2,)


def test_output_shape_small_input():
    m = build_nodule_cnn3d((16, 16, 16, 1))
    out = m(np.zeros((3, 16, 16, 16, 1), np.float32), training=False)
    assert out.shape == (3, 2) and np.all(np.isfinite(np.asarray(out)))
    with pytest.raises(ValueError):
        build_nodule_cnn3d((15, 16, 16, 1))


# --- preprocessing ---------------------------------------------------------------------------
def test_hu_window_golden_values():
    assert np.allclose(ctp.window(np.array([-1200.0, 600.0, -300.0, -2000.0, 3000.0])),
                       [0.0, 1.0, 0.5, 0.0, 1.0])


def test_rescale_to_hu():
    assert np.allclose(ctp.rescale_to_hu(np.array([0, 1024, 2000]), 1.0, -1024.0), [-1024, 0, 976])


def test_non_hu_is_refused_with_a_clear_error():
    rng = np.random.default_rng(0)
    for arr in (rng.random((8, 8, 4)), rng.normal(size=(8, 8, 4)), rng.random((8, 8, 4)) * 255):
        with pytest.raises(errors.NotHounsfieldError, match="intensity='normalised'"):
            ctp.check_hounsfield(arr)
    hu = rng.integers(-1000, 400, (8, 8, 4)).astype(np.int16)
    ctp.check_hounsfield(hu)  # a lung crop in HU passes
    with pytest.raises(errors.NonFiniteError):
        ctp.check_hounsfield(np.full((2, 2, 2), np.nan))


def test_dilation_single_voxel_gives_7_cube():
    m = np.zeros((11, 11, 11), bool)
    m[5, 5, 5] = True
    d = ctp.dilate(m, 3)
    assert d.sum() == 343 and d[2:9, 2:9, 2:9].all()


def test_crop_geometry_centred_pad_and_downsample():
    scaled = np.full((40, 40, 20), 0.7, np.float32)
    mask = np.zeros(scaled.shape, bool)
    mask[10:15, 20:24, 8:10] = True  # 5 x 4 x 2 -> dilated 11 x 10 x 8
    crop, info = ctp.nodule_crop(scaled, mask, (16, 17, 16))
    assert info["box_shape"] == [11, 10, 8] and not info["cropped"]
    assert info["box"] == [[7, 18], [17, 27], [5, 13]]
    nz = np.argwhere(crop > 0)
    # centred: floor((16-11)/2)=2 before, 3 after; (17-10)//2=3 before, 4 after; 4 before/after
    assert nz.min(0).tolist() == [2, 3, 4] and nz.max(0).tolist() == [12, 12, 11]
    assert crop.max() == pytest.approx(0.7)
    # a cuboid dilated by the full 3x3x3 element stays a cuboid, so its whole box is kept
    assert (crop > 0).sum() == 11 * 10 * 8
    small, _ = ctp.nodule_crop(scaled, mask, (32, 32, 32), downsample=2)
    assert small.shape == (16, 16, 16)


def test_crop_zeroes_outside_mask_and_tight_volume_edge():
    scaled = np.ones((20, 20, 3), np.float32)
    mask = np.zeros(scaled.shape, bool)
    mask[10, 10, 0] = True  # touches the first slice: dilation stops at the edge
    crop, info = ctp.nodule_crop(scaled, mask, (16, 16, 16))
    assert info["box_shape"] == [7, 7, 3]  # not 7 in z: the volume has 3 slices
    assert crop.sum() == 7 * 7 * 3


def test_crop_larger_than_pad_is_centre_cropped():
    mask = np.zeros((40, 40, 20), bool)
    mask[2:38, 5:10, 5:10] = True
    crop, info = ctp.nodule_crop(np.ones(mask.shape, np.float32), mask, (16, 16, 16))
    assert info["cropped"] and crop.shape == (16, 16, 16)


def test_spherical_mask_in_world_mm():
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    centre_vox = np.array([20, 16, 5])
    centre_mm = (affine @ np.append(centre_vox, 1))[:3]
    m = ctp.spherical_mask((40, 40, 12), affine, centre_mm, 6.0)
    assert m[tuple(centre_vox)]
    assert m[20, 16, 4] and not m[20, 16, 3]  # 2 mm slices: +-3 mm keeps one slice each side
    assert m[14, 16, 5] and not m[13, 16, 5]  # 0.5 mm in-plane: 6 voxels = 3 mm
    with pytest.raises(errors.InputError):
        ctp.spherical_mask((40, 40, 12), affine, (1e4, 0, 0), 6.0)


# --- labels, oversampling, schedule, augmentation ------------------------------------------------
def test_label_rule():
    assert datasets.malignancy_label([1, 2, 3]) == 0
    assert datasets.malignancy_label([3, 3]) is None
    assert datasets.malignancy_label([3, 4]) == 1  # median 3.5
    assert datasets.malignancy_label([2, 3]) == 0  # median 2.5
    assert [datasets.malignancy_label(r) for r in (1, 2, 3, 4, 5)] == [0, 0, None, 1, 1]
    with pytest.raises(ValueError):
        datasets.malignancy_label([0, 6])


def test_oversampling_doubles_malignant():
    from zoo.training.tasks.classification3d import epoch_indices

    y = np.array([0, 1, 0, 1, 1])
    idx = epoch_indices(y, 2)
    assert len(idx) == 8 and (y[idx] == 1).sum() == 6 and (y[idx] == 0).sum() == 2


def test_one_cycle_schedule():
    from zoo.training.optim import OneCycle, make_optimizer

    s = OneCycle(1e-3, 100, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert float(s(0)) == pytest.approx(4e-5, rel=1e-4)  # float32
    assert float(s(15)) == pytest.approx((4e-5 + 1e-3) / 2, rel=1e-4)  # cosine half-way
    assert float(s(30)) == pytest.approx(1e-3, rel=1e-4)
    assert float(s(100)) == pytest.approx(4e-9, rel=1e-2)
    opt = make_optimizer({"name": "adamw", "learning_rate": 1e-3, "weight_decay": 0.01},
                         {"name": "one_cycle", "total_steps": 10})
    assert isinstance(opt._learning_rate, OneCycle)
    with pytest.raises(errors.RecipeError):
        make_optimizer({"name": "adam", "learning_rate": 1e-3}, {"name": "one_cycle"})


def test_augment_volumes_shape_identity_and_rotation():
    from zoo.training.augment import augment_volumes

    rng = np.random.default_rng(1)
    x = rng.random((2, 16, 16, 8, 1)).astype(np.float32)
    same = augment_volumes(x, 3, rotation_deg=0.0, scale=(1.0, 1.0), p_rotation=1.0, p_scale=1.0)
    assert np.allclose(np.asarray(same), x)
    out = np.asarray(augment_volumes(x, 3, p_rotation=1.0, p_scale=1.0))
    assert out.shape == x.shape and not np.allclose(out, x)
    # a 90-degree rotation in the (0, 1) plane moves voxels within each slice, never across slices
    vol = np.zeros((1, 17, 17, 5, 1), np.float32)
    vol[0, 8, 2, 1, 0] = 1.0
    rot = np.asarray(augment_volumes(vol, 0, rotation_deg=90.0, scale=(1.0, 1.0), p_rotation=1.0, p_scale=0.0))
    assert rot.sum() == 1.0 and rot[0, :, :, 1, 0].sum() == 1.0


# --- metrics (metrics.md §6) ---------------------------------------------------------------------
def test_classification_metrics_known_values():
    y = [0, 0, 1, 1]
    assert metrics.roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # constant model: ties count 1/2
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    m = metrics.classification_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.1])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(0.5)
    assert math.isnan(metrics.classification_metrics([0, 1], [0.1, 0.2])["precision"])


# --- adapters --------------------------------------------------------------------------------------
def test_lidc_voi_adapter_counts(shared_data):
    subjects = datasets.lidc_voi(shared_data / "lidc_voi")
    nodules = [n for s in subjects for n in s.meta["nodules"]]
    labels = [n["label"] for n in nodules]
    assert labels.count(0) == 316 and labels.count(1) == 211  # data/README.md
    assert all(s.meta["n_benign"] + s.meta["n_malignant"] > 0 for s in subjects)
    diag = datasets.lidc_voi(shared_data / "lidc_voi", label_source="diagnosis")
    assert sum(n["label"] == 1 for s in diag for n in s.meta["nodules"]) == 281
    folds = datasets.kfold(subjects, 5, seed=42, stratify_by="has_malignant")
    for tr, va in folds:
        assert not {s.id for s in tr} & {s.id for s in va}


def test_pylidc_adapter_missing_dependency(tmp_path):
    try:
        import pylidc  # noqa: F401
        pytest.skip("pylidc is installed; only the missing-dependency path is tested")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"zoo\[lidc\]"):
        datasets.export_lidc_pylidc(tmp_path / "out")


# --- predict API (untrained network: geometry and the table, not the probabilities) ----------------
@pytest.fixture(scope="module")
def untrained():
    import zoo

    return zoo.load("lung_nodule", weights=None)


def test_predict_mask_centre_and_label_map(untrained, shared_data, tmp_path):
    case = shared_data / "lidc_voi" / "LIDC-IDRI-0001_R_1"
    pred = untrained.predict({"ct": str(case / "image.nii.gz"), "nodule_mask": str(case / "mask.nii.gz")})
    t = pred.table
    assert list(t.columns[:4]) == ["nodule", "p_malignant", "predicted_class", "predicted_label"]
    assert len(t) == 1 and 0.0 <= t.p_malignant[0] <= 1.0
    assert t.predicted_class[0] == int(t.p_malignant[0] >= 0.5)
    img = nib.load(case / "image.nii.gz")
    assert np.array_equal(pred.images["nodule_mask"].affine, img.affine)
    written = pred.save(tmp_path / "out")
    assert written["table"].read_text(encoding="utf-8").startswith("nodule,p_malignant")
    import json
    assert json.loads(written["summary"].read_text(encoding="utf-8"))["table"][0]["nodule"] == 1
    # by centre + diameter (world mm), two nodules at once
    c1 = (img.affine @ [20, 30, 5, 1])[:3]
    c2 = (img.affine @ [40, 20, 3, 1])[:3]
    pred2 = untrained.predict({"ct": str(case / "image.nii.gz"), "nodule_center_mm": [c1, c2],
                               "nodule_diameter_mm": 6.0})
    assert pred2.table.nodule.tolist() == [1, 2] and pred2.qc["mask_source"] == "sphere"
    with pytest.raises(errors.MissingModalityError):
        untrained.predict({"ct": str(case / "image.nii.gz")})


def test_predict_refuses_normalised_ct_unless_declared(untrained, shared_data):
    case = shared_data / "lidc" / "0001_n0"
    inputs = {"ct": str(case / "image.nii.gz"), "nodule_mask": str(case / "mask.nii.gz")}
    with pytest.raises(errors.NotHounsfieldError):
        untrained.predict(inputs)
    pred = untrained.predict(inputs, intensity="normalised")
    assert pred.qc["intensity"] == "normalised" and len(pred.table) == 1


def test_cli_writes_table_csv(shared_data, tmp_path, capsys):
    from zoo.cli import main

    case = shared_data / "lidc_voi" / "LIDC-IDRI-0001_R_1"
    rc = main(["predict", "lung_nodule", "--untrained", "--input", f"ct={case / 'image.nii.gz'}",
               "--input", f"nodule_mask={case / 'mask.nii.gz'}", "-o", str(tmp_path / "cli")])
    assert rc == 0
    assert (tmp_path / "cli" / "table.csv").is_file()
    assert "p_malignant" in capsys.readouterr().out


# --- training smoke test ---------------------------------------------------------------------------
def test_training_smoke(shared_data, tmp_path):
    """Two optimiser steps of the real task on 4 patients through the engine (trainer.train)."""
    from zoo import registry
    from zoo.training.recipe import load_recipe
    from zoo.training.trainer import train

    subjects = datasets.lidc_voi(shared_data / "lidc_voi")[:4]
    recipe = load_recipe("lung_nodule", None, {"batch_size": 2})
    record = train(registry.card("lung_nodule"), recipe, subjects, tmp_path / "run", epochs=1,
                   steps_per_epoch=2, strategy="none", verbose=0)
    m = record["members"][0]
    assert m["steps_per_epoch"] == 2 and math.isfinite(m["history"]["loss"][0])
    assert (tmp_path / "run" / "member0.npz").is_file()
    assert record["data"]["n_train_nodules"] >= 4
    assert record["trained_options"] == {"pad_shape": [88, 92, 62], "downsample": 2}  # the card frame (zoo.trained_options)


def test_layout_detection_lidc_voi(shared_data):
    from zoo.training.run import detect_layout, load_subjects

    assert detect_layout(shared_data / "lidc_voi") == "lidc_voi"
    subjects = load_subjects(shared_data / "lidc_voi", "auto", ["ct"])
    assert len({s.id for s in subjects}) == len(subjects) and all(s.id.startswith("LIDC-IDRI-") for s in subjects)
