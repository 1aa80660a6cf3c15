"""wmh_ensemble end to end on real scans (untrained weights): geometry round trip, orientation
equivariance, ensemble fusion, errors and outputs. CPU cost is about 0.5 s per slice per member,
so most tests run on an axial slab of a real scan, written to disk with its own header."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

import zoo
from conftest import axial_slab
from zoo import errors, weights

pytestmark = pytest.mark.realdata

NONZERO = {"mask_method": "nonzero"}  # open_ms is skull-stripped with a 0 background


def _slab(src, dst, k0=85, k1=89):
    """Write axial slices k0:k1 of a real scan as a NIfTI file with a consistent header."""
    nib.save(axial_slab(nib.load(src), k0, k1), dst)
    return dst


@pytest.fixture(scope="module")
def mni_slab(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("mni")
    src = shared_data / "open_ms" / "mni" / "patient19"
    return {name: _slab(src / f"{name}.nii.gz", d / f"{name}.nii.gz") for name in ("flair", "t1", "lesion")}


@pytest.fixture(scope="module")
def model():
    return zoo.load("wmh_ensemble", weights=None, options=NONZERO)


def _header_fields_equal(a: nib.Nifti1Header, b: nib.Nifti1Header, skip=("datatype", "bitpix")):
    def same(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return np.array_equal(x, y, equal_nan=x.dtype.kind == "f")

    return [k for k in a.keys() if k not in skip and not same(a[k], b[k])]


def test_flair_t1_real_scan_geometry_round_trip(model, mni_slab, tmp_path):
    pred = model.predict({"flair": str(mni_slab["flair"]), "t1": str(mni_slab["t1"])})
    written = pred.save(tmp_path / "out")
    ref = nib.load(mni_slab["flair"])
    for name, dtype in (("wmh", np.uint8), ("wmh_probability", np.float32)):
        out = nib.load(written[name])
        assert out.shape == ref.shape
        np.testing.assert_array_equal(out.affine, ref.affine)
        assert out.get_data_dtype() == dtype
        assert _header_fields_equal(ref.header, out.header) == [], name
    prob = nib.load(written["wmh_probability"]).get_fdata()
    mask = nib.load(written["wmh"]).get_fdata()
    np.testing.assert_array_equal(mask, prob > 0.5)
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert pred.volumes_ml["wmh"] == pytest.approx(mask.sum() * 1e-3)  # 1 mm isotropic
    # the end-slice band is floor(0.125 * 4) = 0 slices here; the summary file is written too
    assert written["summary"].is_file()


def test_permuted_and_flipped_input_gives_permuted_prediction(model, mni_slab):
    """Practices §1: a flipped/permuted copy gives identical labels after the inverse mapping."""
    base = model.predict({"flair": str(mni_slab["flair"]), "t1": str(mni_slab["t1"])})
    perm, flip = (2, 0, 1), 1

    def transform(img):
        data = np.flip(np.transpose(np.asarray(img.dataobj), perm), axis=flip)
        aff = img.affine[:, list(perm) + [3]].copy()
        n = data.shape[flip]
        aff[:3, 3] += aff[:3, flip] * (n - 1)
        aff[:3, flip] *= -1
        return nib.Nifti1Image(np.ascontiguousarray(data), aff)

    fl, t1 = nib.load(mni_slab["flair"]), nib.load(mni_slab["t1"])
    moved = model.predict({"flair": transform(fl), "t1": transform(t1)})
    expect_prob = np.flip(np.transpose(base.images["wmh_probability"].get_fdata(), perm), axis=flip)
    got_prob = moved.images["wmh_probability"].get_fdata()
    np.testing.assert_allclose(got_prob, expect_prob, atol=1e-6)
    expect_mask = np.flip(np.transpose(np.asarray(base.images["wmh"].dataobj), perm), axis=flip)
    np.testing.assert_array_equal(np.asarray(moved.images["wmh"].dataobj), expect_mask)
    np.testing.assert_allclose(moved.images["wmh"].affine, transform(fl).affine)


def test_native_geometry_flair_only_full_scan(shared_data, tmp_path):
    """A whole raw scanner-space FLAIR (320x320x36, 0.72x0.72x4 mm, oblique) through the
    FLAIR-only variant, with the in-plane resampling option so the 200x200 crop holds the head."""
    src = shared_data / "open_ms" / "native" / "patient01_study1" / "flair.nii.gz"
    m = zoo.load("wmh_ensemble", variant="flair", weights=None,
                 options={"mask_method": "nonzero", "inplane_spacing_mm": [1.0, 1.0]})
    pred = m.predict(str(src))
    ref = nib.load(src)
    out = pred.images["wmh"]
    assert out.shape == ref.shape == (320, 320, 36)
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert _header_fields_equal(ref.header, out.header, skip=("datatype", "bitpix", "scl_slope", "scl_inter")) == []
    assert out.header["qform_code"] == ref.header["qform_code"] and out.header["sform_code"] == ref.header["sform_code"]
    # the end-slice band: floor(0.125 * 36) = 4 slices at each end along the axial axis
    prob = pred.images["wmh_probability"].get_fdata()
    assert pred.qc["slices_band_removed"] == 8
    assert not prob[:, :, :4].any() and not prob[:, :, -4:].any()
    assert prob[:, :, 4:-4].any()
    paths = pred.save(tmp_path)
    assert nib.load(paths["wmh"]).shape == ref.shape


def test_ensemble_of_identical_members_equals_one_member(mni_slab):
    m = zoo.load("wmh_ensemble", variant="flair", weights=None, options=NONZERO)
    for member in m.models[1:]:
        member.set_weights(m.models[0].get_weights())
    x = np.random.default_rng(1).normal(size=(2, 200, 200, 1)).astype(np.float32)
    np.testing.assert_allclose(m.fused.predict_on_batch(x), m.models[0].predict_on_batch(x), atol=1e-6)
    # and differing members do change the mean
    m2 = zoo.load("wmh_ensemble", variant="flair", weights=None, options=NONZERO)
    assert np.abs(m2.fused.predict_on_batch(x) - m2.models[0].predict_on_batch(x)).max() > 1e-4


def test_threshold_and_band_options(mni_slab):
    m = zoo.load("wmh_ensemble", variant="flair", weights=None,
                 options={**NONZERO, "threshold": 0.45, "end_slice_fraction": 0.34})
    pred = m.predict(str(mni_slab["flair"]))
    prob = pred.images["wmh_probability"].get_fdata()
    np.testing.assert_array_equal(np.asarray(pred.images["wmh"].dataobj), prob > 0.45)
    assert pred.qc["slices_band_removed"] == 2  # floor(0.34 * 4) = 1 at each end
    assert not prob[:, :, 0].any() and not prob[:, :, -1].any() and prob[:, :, 1:3].any()


def test_missing_and_unknown_inputs(model, mni_slab):
    with pytest.raises(errors.MissingModalityError, match=r"needs \['t1'\].*variant 'flair'"):
        model.predict({"flair": str(mni_slab["flair"])})
    with pytest.raises(errors.MissingModalityError, match="no input 't2'"):
        model.predict({"flair": str(mni_slab["flair"]), "t1": str(mni_slab["t1"]), "t2": "x.nii.gz"})
    with pytest.raises(errors.InputNotFoundError, match="t1: file not found"):
        model.predict({"flair": str(mni_slab["flair"]), "t1": "/nonexistent/T1.nii.gz"})


def test_t1_on_another_grid(model, mni_slab):
    fl = nib.load(mni_slab["flair"])
    t1 = nib.load(mni_slab["t1"])
    shifted_aff = t1.affine.copy()
    shifted_aff[:3, 3] += t1.affine[:3, 0] * 2  # same world, voxel grid shifted by 2 along i
    data = np.asarray(t1.dataobj)[2:]  # new voxel i is old voxel i + 2
    moved = nib.Nifti1Image(np.ascontiguousarray(data), shifted_aff)
    with pytest.raises(errors.GridMismatchError, match="resample=True"):
        model.predict({"flair": fl, "t1": moved})
    pred = model.predict({"flair": fl, "t1": moved}, resample=True)
    assert pred.images["wmh"].shape == fl.shape


def test_given_brain_mask_replaces_the_computed_one(mni_slab):
    m = zoo.load("wmh_ensemble", variant="flair", weights=None, options={"mask_method": "threshold"})
    fl = nib.load(mni_slab["flair"])
    mask = (np.asarray(fl.dataobj) != 0).astype(np.uint8)
    a = m.predict({"flair": fl, "brain_mask": (mask, fl.affine)})
    assert a.qc["brain_mask_source"] == "given"
    b = zoo.load("wmh_ensemble", variant="flair", weights=None, options=NONZERO)
    for src, dst in zip(m.models, b.models):
        dst.set_weights(src.get_weights())
    np.testing.assert_allclose(a.images["wmh_probability"].get_fdata(),
                               b.predict(fl).images["wmh_probability"].get_fdata(), atol=1e-6)


def test_save_never_overwrites_an_input(model, mni_slab, tmp_path):
    target = tmp_path / "wmh.nii.gz"
    target.write_bytes(mni_slab["flair"].read_bytes())
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    pred = model.predict({"flair": str(target), "t1": str(mni_slab["t1"])})
    with pytest.raises(errors.OutputError, match="refusing to overwrite the input"):
        pred.save(tmp_path)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wmh.nii.gz"]  # nothing partial


def test_weights_load_paths(tmp_path, mni_slab, monkeypatch):
    from zoo import registry

    bundled = registry.card

    def card_without_weights(name):
        c = bundled(name)
        for rec in c.data["variants"].values():
            rec["weights"] = []
        return c

    with monkeypatch.context() as mp:
        mp.setattr(registry, "card", card_without_weights)
        with pytest.raises(errors.WeightsNotAvailableError, match="ships no trained weights"):
            zoo.load("wmh_ensemble")
    # your own weights load for a variant whose card lists shipped weights too
    m = zoo.load("wmh_ensemble", variant="flair", weights=None)
    for i, member in enumerate(m.models):
        weights.save_weights(member, tmp_path / f"member{i}.npz")
    loaded = zoo.load("wmh_ensemble", variant="flair", weights=str(tmp_path))
    assert loaded.weights_source == [str(tmp_path / f"member{i}.npz") for i in range(3)]
    for a, b in zip(m.models, loaded.models):
        for va, vb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(vb, va.astype(np.float16).astype(np.float32))
    with pytest.raises(errors.WeightsError, match="3 members but 1"):
        zoo.load("wmh_ensemble", variant="flair", weights=str(tmp_path / "member0.npz"))
    with pytest.raises(errors.WeightsNotAvailableError):
        zoo.load("wmh_ensemble", variant="flair", weights=str(tmp_path / "nothing"))


@pytest.mark.parametrize("apply_mask", [True, False])
def test_apply_mask_hides_everything_outside_the_brain_mask(mni_slab, apply_mask):
    """apply_mask=true: what lies outside the brain mask (skull, fat) cannot reach the network;
    false: the mask gives only the z-score statistics, so the outside does reach it."""
    from zoo import registry
    from zoo.entries.wmh_ensemble import pipeline
    from zoo.io import Volume, read_volume

    card = registry.card("wmh_ensemble").with_options({"apply_mask": apply_mask})
    fl = read_volume(str(mni_slab["flair"]), "flair")
    inside = np.zeros(fl.shape, bool)
    inside[40:140, 50:170, :] = True
    head = np.where(inside, fl.array, np.random.default_rng(0).uniform(0, 500, fl.shape)).astype(np.float32)
    pipe = pipeline(card, "flair")
    mask = Volume(inside.astype(np.uint8), fl.affine, fl.header)
    a, _ = pipe.apply({"flair": fl, "brain_mask": mask})
    b, _ = pipe.apply({"flair": Volume(head, fl.affine, fl.header), "brain_mask": mask})
    assert np.array_equal(a, b) == apply_mask


def test_apply_mask_is_a_trained_option(tmp_path):
    """Weights trained with apply_mask record it; zoo.load uses it and refuses the other value."""
    import json

    m = zoo.load("wmh_ensemble", variant="flair", weights=None)
    for i, member in enumerate(m.models):
        weights.save_weights(member, tmp_path / f"member{i}.npz")
    (tmp_path / "run_record.json").write_text(json.dumps(
        {"entry": "wmh_ensemble", "trained_options": {"apply_mask": True}}))
    loaded = zoo.load("wmh_ensemble", variant="flair", weights=str(tmp_path))
    assert loaded.card.option_value("apply_mask") is True
    with pytest.raises(errors.OptionMismatchError, match="apply_mask"):
        zoo.load("wmh_ensemble", variant="flair", weights=str(tmp_path), options={"apply_mask": False})
