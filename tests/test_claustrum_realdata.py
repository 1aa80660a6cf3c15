"""Claustrum entries on real scans (``../shared/data``): the adult IXI T1 and the neonatal /
fetal T2w, untrained and with weights converted from Keras 2 ``.h5`` files in the authors'
layout. Small slabs of the scans keep the tests fast; outputs must be on each input's grid."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest

import zoo
from zoo import weights
from zoo.entries import claustrum_common as cc

pytestmark = pytest.mark.realdata

UPSTREAM = {"claustrum_multiview": [f"{v}_{i}.h5" for v in ("axial", "coronal") for i in range(3)],
            "neonatal_claustrum": [f"{v}_model{i}_epoch30.h5" for v in ("a", "c") for i in range(3)]}


def _slab(img, i: slice, j: slice, k: slice):
    """A sub-block of a nibabel image that stays where it was in world space, same header codes."""
    start = np.array([s.start for s in (i, j, k)], float)
    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
    out = nib.Nifti1Image(np.asarray(img.dataobj)[i, j, k], aff, img.header.copy())
    out.header.set_qform(aff, code=int(img.header["qform_code"]) or 1)
    out.header.set_sform(aff, code=int(img.header["sform_code"]))
    return out


def write_upstream_h5(path, model, seed: int):
    """A Keras 2 ``save_weights`` file in the released models' layout: the 19 convolutions as
    ``conv2d_1`` ... ``conv2d_19`` (``kernel:0``, ``bias:0``) plus weightless layers."""
    rng = np.random.default_rng(seed)
    names, groups = ["input_1"], {"input_1": []}
    n = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        n += 1
        name = f"conv2d_{n}"
        names.append(name)
        groups[name] = [(f"{name}/{w.name}:0", (rng.normal(0, 0.05, w.shape)).astype(np.float32))
                        for w in layer.weights]
        if n in (2, 4, 6, 8):
            names.append(f"max_pooling2d_{n // 2}")
            groups[names[-1]] = []
    with h5py.File(path, "w") as fh:
        fh.attrs["layer_names"] = np.asarray([s.encode() for s in names])
        fh.attrs["backend"] = b"tensorflow"
        fh.attrs["keras_version"] = b"2.2.4"
        for name in names:
            g = fh.create_group(name)
            g.attrs["weight_names"] = np.asarray([w.encode() for w, _ in groups[name]])
            for w, value in groups[name]:
                g.create_dataset(w, data=value)
    return groups


def _converted(name, tmp_path):
    card = zoo.card(name)
    files = []
    for s, fname in enumerate(UPSTREAM[name]):
        files.append(tmp_path / fname)
        groups = write_upstream_h5(files[-1], cc.build_member(card, "multiview", 0), seed=s)
    records = weights.convert_keras2_h5_files(lambda: cc.build_member(card, "multiview", 0), files,
                                              tmp_path / "converted")
    assert len(records) == 6
    return tmp_path / "converted", groups


def _check_on_grid(pred, img):
    for out in pred.images.values():
        assert out.shape == img.shape
        np.testing.assert_array_equal(out.affine, img.affine)
        assert int(out.header["qform_code"]) == int(img.header["qform_code"])
        assert int(out.header["sform_code"]) == int(img.header["sform_code"])
    lab = np.asarray(pred.images["claustrum"].dataobj)
    assert set(np.unique(lab)) <= {0, 1, 2}
    prob = np.asarray(pred.images["claustrum_probability"].dataobj)
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


@pytest.fixture(scope="module")
def adult_slab(shared_data):
    img = nib.load(str(shared_data / "ixi002" / "t1.nii.gz"))  # LAS, 1.2 x 0.94 x 0.94 mm
    return _slab(img, slice(35, 115), slice(120, 126), slice(150, 156))


@pytest.fixture(scope="module")
def neonatal_slabs(shared_data):
    fetal = nib.load(str(shared_data / "neonatal_inputs" / "sub-0009_fetal_t2w.nii.gz"))  # LPS 0.75 mm
    template = nib.load(str(shared_data / "neonatal_inputs" / "template_month0_t2w.nii.gz"))  # 0.8 mm
    return {"fetal": _slab(fetal, slice(30, 105), slice(90, 95), slice(80, 85)),
            "template": _slab(template, slice(100, 215), slice(200, 205), slice(200, 205))}


def test_adult_untrained_on_the_ixi_t1(adult_slab):
    model = zoo.load("claustrum_multiview", weights=None, options={"members_per_view": 1})
    pred = model.predict(adult_slab)
    _check_on_grid(pred, adult_slab)
    assert pred.qc["untrained_weights"] is True
    assert pred.qc["views"]["axial"]["in_band"] < pred.qc["views"]["axial"]["n_slices"]


def test_adult_with_converted_upstream_weights(adult_slab, tmp_path):
    folder, groups = _converted("claustrum_multiview", tmp_path)
    model = zoo.load("claustrum_multiview", weights=str(folder))
    head = [layer for layer in model.models[5].layers if layer.weights][-1]
    np.testing.assert_allclose(np.asarray(head.weights[0]), groups["conv2d_19"][0][1], atol=1e-3)
    pred = model.predict(adult_slab)
    _check_on_grid(pred, adult_slab)
    assert pred.qc["untrained_weights"] is False


@pytest.mark.parametrize("which", ["fetal", "template"])
def test_neonatal_untrained_on_real_t2w(neonatal_slabs, which):
    img = neonatal_slabs[which]
    pred = zoo.load("neonatal_claustrum", weights=None, options={"members_per_view": 1}).predict(img)
    _check_on_grid(pred, img)


def test_neonatal_with_converted_upstream_weights(neonatal_slabs, tmp_path):
    folder, _ = _converted("neonatal_claustrum", tmp_path)
    img = neonatal_slabs["fetal"]
    pred = zoo.load("neonatal_claustrum", weights=str(folder)).predict(img, age_weeks=30)
    _check_on_grid(pred, img)
    assert "age_below_35_weeks" in pred.qc["flags"]
