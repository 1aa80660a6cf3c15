"""Tests of the clinical MS adapter (``zoo.training.ms_clinical``), the brain mask shared by
training and prediction, the lesion-aware sampler and the intensity augmentation (issue 20).
Real-data tests read ``../shared/data/wmh_ms_clinical`` (skipped when absent) and work on
small crops written to ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo import errors, registry
from zoo.io import read_volume
from zoo.preprocessing.pipeline import MASK_INPUT, SlicePipeline
from zoo.training import datasets as ds
from zoo.training import ms_clinical as msc
from zoo.training.recipe import load_recipe
from zoo.training.run import detect_layout
from zoo.training.slices import SliceSet, build_slices


@pytest.fixture
def clinical(shared_data) -> Path:
    root = shared_data / "wmh_ms_clinical"
    if not (root / "subjects.csv").is_file():
        pytest.skip(f"{root} not found")
    return root


def _crop_tree(src: Path, dst: Path, subjects: dict[str, Path], box=(slice(60, 196), slice(60, 196), slice(6, 12))):
    """Copy ``subjects`` (id -> mask file or None) of the clinical tree as small crops (header
    origin shifted so every file keeps one grid), with a subjects.csv of those rows."""
    rows = [line for line in (src / "subjects.csv").read_text().splitlines()]
    keep = [rows[0]] + [r for r in rows[1:] if r.split(",")[0] in subjects]
    dst.mkdir(parents=True)
    (dst / "subjects.csv").write_text("\n".join(keep) + "\n")
    for sid in subjects:
        for f in (src / sid).glob("*.nii.gz"):
            img = nib.load(str(f))
            out = dst / sid / f.name
            out.parent.mkdir(exist_ok=True)
            nib.save(img.slicer[box], str(out))
    return dst


# --- the adapter -------------------------------------------------------------------------
def test_adapter_lists_flair_t1_subjects_with_their_masks(clinical):
    subjects = msc.wmh_ms_clinical(clinical, ("flair", "t1"))
    ids = [s.id for s in subjects]
    # 102313 has no T1 (FLAIR-only variant only); 104252 and 105074 have no brain mask at all
    assert "102313" not in ids and "104252" not in ids and "105074" not in ids
    assert len(ids) == 9
    by_id = {s.id: s for s in subjects}
    assert by_id["110218"].meta["brain_mask_source"] == "given"
    assert by_id["110218"].images[MASK_INPUT].parent.name == "110218"
    assert by_id["111008"].meta["brain_mask_source"] == "silver:bashiri_111008_flair"
    assert by_id["111008"].images[MASK_INPUT].parts[-3:-1] == ("heads", "bashiri_111008_flair")
    assert all(s.images["flair"].name == "flair_raw.nii.gz" for s in subjects)
    assert all(s.label.name == "lesion.nii.gz" for s in subjects)
    assert by_id["105465"].meta["nwmh"].name == "nwmh.nii.gz" and by_id["110218"].meta["nwmh"] is None
    assert list(by_id["110218"].images) == ["flair", "t1", MASK_INPUT]


def test_adapter_flair_only_and_missing_mask_policies(clinical):
    flair_only = {s.id: s for s in msc.wmh_ms_clinical(clinical, ("flair",))}
    assert "102313" in flair_only and len(flair_only) == 10
    assert flair_only["102313"].meta["flair_file"] == "normalised"
    assert flair_only["102313"].images["flair"].name == "flair.nii.gz"
    kept = {s.id: s for s in msc.wmh_ms_clinical(clinical, ("flair",), missing_mask="keep")}
    assert len(kept) == 12 and MASK_INPUT not in kept["104252"].images
    assert kept["104252"].meta["brain_mask_source"] is None
    with pytest.raises(errors.InputError, match="104252"):
        msc.wmh_ms_clinical(clinical, ("flair",), missing_mask="error")
    no_heads = msc.wmh_ms_clinical(clinical, ("flair",), heads_root=None)
    assert {s.meta["brain_mask_source"] for s in no_heads} == {"given"}
    with pytest.raises(errors.MissingModalityError):
        msc.wmh_ms_clinical(clinical, ("t1", "flair"))


def test_adapter_checks_voxel_grids(clinical, tmp_path):
    root = _crop_tree(clinical, tmp_path / "c", {"110218": None})
    img = nib.load(str(root / "110218" / "t1.nii.gz"))
    nib.save(img.slicer[:-1], str(root / "110218" / "t1.nii.gz"))  # one column fewer
    with pytest.raises(errors.GeometryError, match="t1.nii.gz"):
        msc.wmh_ms_clinical(root, ("flair", "t1"), heads_root=None)


def test_layout_detected_and_combined_cv(clinical, shared_data, tmp_path):
    assert detect_layout(clinical) == "wmh_ms_clinical"
    subjects = msc.wmh_cv_subjects(clinical, shared_data / "open_ms" / "mni", ("flair",), missing_mask="keep")
    assert len(subjects) == 14
    folds = msc.cv_folds(subjects, 5, seed=0)
    vals = [{s.id for s in val} for _, val in folds]
    assert sorted(i for v in vals for i in v) == sorted(s.id for s in subjects)
    mni_folds = [k for k, v in enumerate(vals) for i in v if i.startswith("patient")]
    assert len(set(mni_folds)) == 2  # the two MNI subjects are validated in different folds
    # the CSV round trip keeps the brain mask as an image (zoo train/evaluate --data <csv>)
    csv_path = msc.write_subjects_csv(subjects, tmp_path / "cv.csv", columns=("flair", MASK_INPUT))
    back = {s.id: s for s in ds.from_csv(csv_path, ["flair"])}
    assert back["111008"].images[MASK_INPUT].resolve() == subjects[[s.id for s in subjects].index("111008")].images[MASK_INPUT].resolve()
    assert MASK_INPUT not in back["patient07"].images and MASK_INPUT not in back["104252"].images
    assert detect_layout(csv_path) == "csv"


# --- normalisation shared by training and prediction ----------------------------------------
def test_training_slices_use_the_given_mask_as_predict_does(clinical, tmp_path):
    """build_slices (training) and the entry pipeline with a brain_mask input (predict) give
    the same network input; without the mask (the card's nonzero default on a head with skull)
    the z-score differs."""
    root = _crop_tree(clinical, tmp_path / "c", {"105465": None})
    heads = tmp_path / "heads" / "bashiri_105465_flair"
    heads.mkdir(parents=True)
    src = nib.load(str(clinical.parent / "heads" / "bashiri_105465_flair" / "brain_mask.nii.gz"))
    nib.save(src.slicer[60:196, 60:196, 6:12], str(heads / "brain_mask.nii.gz"))
    subject = msc.wmh_ms_clinical(root, ("flair",), heads_root=tmp_path / "heads")[0]
    assert subject.meta["brain_mask_source"] == "silver:bashiri_105465_flair"
    card = registry.card("wmh_ensemble")
    recipe = load_recipe("wmh_ensemble", "flair", {"data": {"train_slice_band": 0.0}})
    train = build_slices([subject], card, "flair", recipe)
    pipe = SlicePipeline(card["preprocessing"]["steps"], ["flair"])
    vols = {"flair": read_volume(subject.images["flair"], "flair"),
            MASK_INPUT: read_volume(subject.images[MASK_INPUT], MASK_INPUT)}
    x_pred, _ = pipe.apply(vols)
    np.testing.assert_array_equal(train.images, x_pred)
    x_nomask, _ = pipe.apply({"flair": vols["flair"]})
    assert np.abs(x_nomask - x_pred).max() > 0.1
    # nWMH is background: the target is 0 on every nWMH voxel and 1 on lesion voxels
    nwmh = pipe.forward_label(read_volume(subject.meta["nwmh"], "nwmh").array > 0, _)
    lesion = pipe.forward_label(read_volume(subject.label, "lesion").array > 0, _)
    assert nwmh.sum() > 0 and lesion.sum() > 0
    assert train.masks[..., 0][nwmh > 0].max() == 0.0
    assert train.masks[..., 0][lesion > 0].min() == 1.0


# --- lesion-aware, subject-balanced sampling ---------------------------------------------------
def _toy_slices() -> SliceSet:
    """Subject 0: 90 slices, lesion on slices 0-2; subject 1: 10 slices, lesion on slice 95."""
    masks = np.zeros((100, 8, 8, 1), np.float32)
    masks[:3, 4, 4] = 1
    masks[95, 2, 2] = 1
    index = np.array([0] * 90 + [1] * 10, np.int32)
    return SliceSet(np.zeros((100, 8, 8, 1), np.float32), masks, index, ["a", "b"])


def test_sampler_balances_subjects_and_favours_lesion_slices():
    from zoo.training.tasks.segmentation2d import sample_indices

    s = _toy_slices()
    draws = np.array([next(it) for it in [sample_indices(s, np.random.default_rng(1), sample_by="subject",
                                                         lesion_slice_fraction=0.7)] for _ in range(4000)])
    subj_b = (draws >= 90).mean()
    assert 0.45 < subj_b < 0.55  # subjects drawn uniformly, not 90:10
    lesion = np.isin(draws, [0, 1, 2, 95]).mean()
    assert lesion > 0.7  # >= q (plus lesion slices drawn among "any")
    plain = sample_indices(s, np.random.default_rng(1))
    first = [next(plain) for _ in range(100)]
    assert sorted(first) == list(range(100))  # the paper's permutation when no option is set
    with pytest.raises(ValueError, match="sample_by"):
        next(sample_indices(s, np.random.default_rng(0), sample_by="site"))
    with pytest.raises(ValueError, match="lesion_slice_fraction"):
        next(sample_indices(s, np.random.default_rng(0), lesion_slice_fraction=1.5))


def test_make_dataset_lesion_patches():
    from zoo.training.tasks.segmentation2d import make_dataset

    s = _toy_slices()
    ds_ = make_dataset(s, 50, 0, flip_lr=True, patch_size=4, foreground_fraction=1.0,
                       sample_by="subject", lesion_slice_fraction=1.0)
    _, y = next(iter(ds_))
    assert y.shape == (50, 4, 4, 1)
    assert float(np.asarray(y).reshape(50, -1).max(axis=1).min()) == 1.0  # every patch holds a lesion voxel


# --- intensity augmentation --------------------------------------------------------------------
def test_intensity_batch():
    from zoo.training.augment import intensity_batch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 16, 16, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(intensity_batch(x, 3)), x, atol=1e-5)  # default = identity
    y = np.asarray(intensity_batch(x, 3, scale=(2.0, 2.0), shift=(1.0, 1.0)))
    np.testing.assert_allclose(y, 2 * x + 1, atol=1e-4)
    g = np.asarray(intensity_batch(x, 3, gamma=(0.5, 2.0)))
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(g.min(axis=(1, 2), keepdims=True), lo, atol=1e-5)  # range kept
    np.testing.assert_allclose(g.max(axis=(1, 2), keepdims=True), hi, atol=1e-5)
    u, v = (x - lo) / (hi - lo), (g - lo) / (hi - lo)
    # one gamma per slice and channel: log v / log u constant inside a (slice, channel)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.log(np.clip(v, 1e-6, None)[..., 0][0]) / np.log(np.clip(u, 1e-6, None)[..., 0][0])
    finite = np.isfinite(ratio) & (u[0, ..., 0] > 0.05) & (u[0, ..., 0] < 0.95)
    assert np.ptp(ratio[finite]) < 1e-3 and 0.5 <= np.median(ratio[finite]) <= 2.0
    gammas = [np.median(np.log(v[b, ..., c][(u[b, ..., c] > 0.05) & (u[b, ..., c] < 0.95)]) /
                        np.log(u[b, ..., c][(u[b, ..., c] > 0.05) & (u[b, ..., c] < 0.95)]))
              for b in range(6) for c in range(2)]
    assert np.ptp(gammas) > 0.1  # drawn independently per slice and channel
    with pytest.raises(ValueError, match="gamma"):
        intensity_batch(x, 0, gamma=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        intensity_batch(x, 0, scale=(1.2, 0.8))


def test_trainer_applies_intensity_only_with_probability():
    import keras

    from zoo.training.tasks.segmentation2d import SegmentationTrainer

    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 1)])
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    off = SegmentationTrainer(net, {"affine_probability": 0.0, "intensity_probability": 0.0}, 0)
    np.testing.assert_array_equal(np.asarray(off._intensity(x)), x)
    on = SegmentationTrainer(net, {"affine_probability": 0.0, "intensity_probability": 1.0,
                                   "intensity_scale": [1.5, 1.5]}, 0)
    np.testing.assert_allclose(np.asarray(on._intensity(x)), 1.5 * x, atol=1e-4)


def test_evaluate_passes_the_given_brain_mask(clinical, tmp_path, monkeypatch):
    """zoo evaluate predicts with the subject's brain_mask (optional input), so evaluation uses
    the normalisation of training."""
    from zoo.model import ZooModel
    from zoo.training.evaluate import evaluate

    root = _crop_tree(clinical, tmp_path / "c", {"110218": None})
    subject = msc.wmh_ms_clinical(root, ("flair",), heads_root=None)[0]
    seen = []
    original = ZooModel.predict

    def spy(self, inputs, *args, **kwargs):
        seen.append(sorted(inputs))
        pred = original(self, inputs, *args, **kwargs)
        seen.append(pred.qc["brain_mask_source"])
        return pred

    monkeypatch.setattr(ZooModel, "predict", spy)
    result = evaluate("wmh_ensemble", [subject], tmp_path / "eval", variant="flair", weights=None,
                      options={"n_members": 1}, overlays=True)
    assert seen == [["brain_mask", "flair"], "given"]
    assert len(result["cases"]) == 1 and (tmp_path / "eval" / "overlay_110218.png").is_file()
