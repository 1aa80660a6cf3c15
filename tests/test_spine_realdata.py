"""spine_vertebrae on a real Chu et al. 2015 scan (shared/data/spine_chu): the shipped weights
segment the vertebral bodies with a Dice an untrained model does not reach, outputs come back
on the input's grid, and the CLI writes the same. The scan is cropped to the spine (62 sagittal
slices, 300 x 300 voxels around the bodies) so one 16 x 400 x 400 window covers it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import zoo
from zoo import metrics

pytestmark = pytest.mark.realdata

CASE = "case02"
CROP = (slice(8, 70), slice(40, 340), slice(40, 340))
#: Dice the shipped ensemble must reach on the crop: card 0.3.0 weights reach 0.880 (0.2.0:
#: 0.833; case02 was a training case of fold models 0 and 2; the out-of-fold figures are in the
#: card), an untrained member 0.08 (two seeds: 0.083, 0.078), because it labels all bright tissue.
DICE_MIN = 0.7


def _crop(img, region):
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ [s.start for s in region] + img.affine[:3, 3]
    out = nib.Nifti1Image(np.asarray(img.dataobj)[region], aff, img.header.copy())
    out.header.set_qform(aff, code=int(img.header["qform_code"]))
    out.header.set_sform(aff, code=int(img.header["sform_code"]))
    return out


@pytest.fixture(scope="module")
def case(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("spine")
    src = shared_data / "spine_chu" / CASE
    paths = {}
    for name in ("image", "mask_th12_l5"):
        paths[name] = d / f"{name}.nii.gz"
        nib.save(_crop(nib.load(src / f"{name}.nii.gz"), CROP), paths[name])
    return paths


@pytest.fixture(scope="module")
def shipped(case):
    model = zoo.load("spine_vertebrae")
    return model, model.predict(str(case["image"]))


def test_shipped_weights_segment_a_real_scan(case, shipped):
    model, pred = shipped
    ref = nib.load(case["image"])
    label = np.asarray(nib.load(case["mask_th12_l5"]).dataobj) > 0
    for name in ("vertebral_bodies", "vertebrae", "vertebral_bodies_probability"):
        img = pred.images[name]
        assert img.shape == ref.shape
        np.testing.assert_array_equal(img.affine, ref.affine)
    mask = np.asarray(pred.images["vertebral_bodies"].dataobj) > 0
    dsc = metrics.dice(label, mask)
    assert dsc >= DICE_MIN, f"Dice {dsc:.3f} below {DICE_MIN}"
    per = np.asarray(pred.images["vertebrae"].dataobj)
    np.testing.assert_array_equal(per > 0, mask)
    names = [k for k in pred.volumes_ml if k != "vertebral_bodies"]
    assert len(names) == pred.qc["n_bodies"] == int(per.max())
    assert sum(pred.volumes_ml[k] for k in names) == pytest.approx(pred.volumes_ml["vertebral_bodies"], rel=1e-6)
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000
    assert pred.volumes_ml["vertebral_bodies"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-6)
    if names == ["Th12", "L1", "L2", "L3", "L4", "L5"]:  # levels only for six separate bodies
        assert all(5.59 <= pred.volumes_ml[k] < 80 for k in names)
        assert not pred.qc["flags"]
    else:  # merged or missing bodies: numbered, and flagged for visual QC
        assert names == [f"body{i + 1}" for i in range(len(names))]
        assert any(f.startswith("visual_qc") for f in pred.qc["flags"])


def test_untrained_model_fails_the_threshold(case):
    model = zoo.load("spine_vertebrae", weights=None, options={"n_members": 1})
    pred = model.predict(str(case["image"]))
    label = np.asarray(nib.load(case["mask_th12_l5"]).dataobj) > 0
    assert metrics.dice(label, np.asarray(pred.images["vertebral_bodies"].dataobj) > 0) < DICE_MIN


def test_cli_predict_writes_the_same(case, shipped, tmp_path):
    from zoo import cli

    _, pred = shipped
    out = tmp_path / "out"
    assert cli.main(["predict", "spine_vertebrae", "--input", f"t2={case['image']}", "-o", str(out)]) == 0
    files = sorted(p.name for p in out.rglob("*.nii.gz"))
    assert any("vertebrae" in f for f in files) and any("vertebral_bodies" in f for f in files)
    written = next(p for p in out.rglob("*vertebral_bodies.nii.gz"))
    img = nib.load(written)
    np.testing.assert_array_equal(img.affine, nib.load(case["image"]).affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(pred.images["vertebral_bodies"].dataobj))
    summary = json.loads(next(out.rglob("*prediction.json")).read_text(encoding="utf-8"))
    assert summary["volumes_ml"] == pytest.approx(pred.volumes_ml)


def test_score_on_the_network_grid(case, shipped):
    """Spec §11: the published numbers are DSC and the full HD in voxels of the 4.4 x 0.78 x
    0.78 mm network grid. Its DSC differs from the input grid's by resampling and by what the
    network marks in the zero padding around the 300 mm field of view (0.839 vs 0.880 with
    card 0.3.0), which the input grid never sees; a wrong label transform would give ~0."""
    from types import SimpleNamespace

    from zoo.entries import spine_vertebrae

    model, pred = shipped
    s = spine_vertebrae.score(SimpleNamespace(label=case["mask_th12_l5"], meta={"label_rule": None}), pred, model)
    assert set(spine_vertebrae.EVAL_COLUMNS) <= set(s)
    assert s["dsc_network_grid"] == pytest.approx(s["dsc"], abs=0.1)
    print({k: round(float(v), 3) for k, v in s.items() if k != "flags"})
    assert s["dsc_network_grid_raw"] == pytest.approx(s["dsc_network_grid"], abs=0.05)
    assert 0 < s["hd_vox_network_grid"] < 400 and 0 < s["hd_vox_network_grid_raw"] < 400
    assert pred.network_grid["probability"].shape == tuple(pred.qc["network_shape"])
    assert "network_grid" not in pred.to_dict()
    # Per-vertebra volumes for the Bland–Altman analysis: the reference has six bodies.
    label = np.asarray(nib.load(case["mask_th12_l5"]).dataobj) > 0
    voxel_ml = float(np.prod(nib.load(case["mask_th12_l5"]).header.get_zooms()[:3])) / 1000
    ref_ml = [s[f"volume_ml_ref_{v}"] for v in spine_vertebrae.VERTEBRAE]
    assert sum(ref_ml) == pytest.approx(label.sum() * voxel_ml, rel=1e-6) and min(ref_ml) > 20
    pred_ml = [s[f"volume_ml_pred_{v}"] for v in spine_vertebrae.VERTEBRAE]
    named = "Th12" in pred.volumes_ml
    assert all(np.isfinite(pred_ml)) == named and (named or all(np.isnan(pred_ml)))


#: Per-level Dice each named vertebra must reach against the expert's level label on case10
#: (card 0.3.0: 0.87-0.92; member 0, which never saw case10, also separates its six bodies).
LEVEL_DICE_MIN = 0.8


def test_six_named_vertebrae_on_a_whole_scan(shared_data):
    """The done-when of the entry: a whole real scan in, the mask and six vertebral volumes
    Th12..L5 out on the input's grid, each level on the expert's level. case10 was a training
    case of members 1 and 2 (out-of-fold for member 0, whose own prediction also gave six)."""
    src = shared_data / "spine_chu" / "case10"
    pred = zoo.load("spine_vertebrae").predict(str(src / "image.nii.gz"))
    ref = nib.load(src / "labels.nii.gz")  # 1..7 = T11..L5
    levels = np.asarray(ref.dataobj)
    per = np.asarray(pred.images["vertebrae"].dataobj)
    assert per.shape == levels.shape and np.array_equal(pred.images["vertebrae"].affine, ref.affine)
    names = [k for k in pred.volumes_ml if k != "vertebral_bodies"]
    assert names == ["Th12", "L1", "L2", "L3", "L4", "L5"], pred.qc["flags"]
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000
    for i, name in enumerate(names, start=1):
        assert pred.volumes_ml[name] == pytest.approx((per == i).sum() * voxel_ml, rel=1e-6)
        dsc = metrics.dice(levels == i + 1, per == i)
        assert dsc >= LEVEL_DICE_MIN, f"{name}: Dice {dsc:.3f} against the expert's {name}"
