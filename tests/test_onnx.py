"""ONNX export and the onnxruntime backend (issue 6, part 2).

Every registered entry's member exports to a float32 graph with named, batch-dynamic inputs
whose onnxruntime output equals Keras' (max abs difference < 1e-4); ``wmh_ensemble`` with its
shipped weights is checked on real preprocessed slices, through ``zoo export`` and through
``zoo.load(..., backend="onnx")`` (same masks as the Keras backend). The tests skip with a
reason when tf2onnx/onnxruntime (dependencies of the zoo) are not installed, and per entry
when the entry's module is not importable yet.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest

import zoo
from conftest import REPO, axial_slab
from zoo import errors, onnx_backend, registry
from zoo.cli import main

needs_onnx = pytest.mark.skipif(not onnx_backend.available(),
                                reason="tf2onnx/onnxruntime not installed (pip install -e .)")
TOL = 1e-4
MEMBER0 = REPO / "weights" / "wmh_ensemble" / "flair" / "member0.npz"


def entry_module(name: str):
    try:
        return importlib.import_module(registry.ENTRIES[name])
    except ImportError as exc:
        pytest.skip(f"entry {name} is not importable yet ({exc})")


def _inputs(member, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((batch, *[int(d) for d in t.shape[1:]])).astype(np.float32)
            for n, t in zip(onnx_backend.input_names(member), member.inputs)}


# --- without the extra ---------------------------------------------------------------------------
def test_unknown_backend_and_missing_extra(monkeypatch):
    with pytest.raises(errors.BackendError, match="unknown backend 'torch'"):
        zoo.load("wmh_ensemble", variant="flair", weights=None, backend="torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(errors.BackendError, match=r"pip install onnxruntime"):
        zoo.load("wmh_ensemble", variant="flair", weights=None, backend="onnx")


def test_default_backend_resolution(monkeypatch):
    """None -> $ZOO_BACKEND -> the card's inference.backend -> keras; auto -> onnx only with the
    extra installed and trained weights (wmh_ensemble's card says auto)."""
    wmh_card, spine_card = registry.card("wmh_ensemble"), registry.card("spine_vertebrae")
    monkeypatch.delenv(registry.BACKEND_ENV, raising=False)
    assert wmh_card["inference"]["backend"] == "auto"
    assert registry.resolve_backend(spine_card, None, trained=True) == "keras"
    monkeypatch.setattr(onnx_backend, "available", lambda: True)
    assert registry.resolve_backend(wmh_card, None, trained=True) == "onnx"
    assert registry.resolve_backend(wmh_card, None, trained=False) == "keras"
    assert registry.resolve_backend(wmh_card, "keras", trained=True) == "keras"
    monkeypatch.setattr(onnx_backend, "available", lambda: False)
    assert registry.resolve_backend(wmh_card, None, trained=True) == "keras"
    monkeypatch.setenv(registry.BACKEND_ENV, "onnx")
    assert registry.resolve_backend(wmh_card, None, trained=True) == "onnx"
    monkeypatch.setenv(registry.BACKEND_ENV, "torch")
    with pytest.raises(errors.BackendError, match="unknown backend 'torch'"):
        registry.resolve_backend(wmh_card, None, trained=True)


# --- every entry -----------------------------------------------------------------------------------
@needs_onnx
@pytest.mark.parametrize("name", sorted(registry.ENTRIES))
def test_member_export_matches_keras(name, tmp_path):
    import keras
    import onnxruntime as ort

    mod = entry_module(name)
    card = zoo.card(name)
    keras.utils.set_random_seed(0)
    member = mod.build_members(card, card["default_variant"])[0]
    path = tmp_path / f"{name}.onnx"
    onnx_backend.to_onnx(member, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = onnx_backend.input_names(member)
    assert sorted(i.name for i in sess.get_inputs()) == sorted(names)
    for i in sess.get_inputs():
        assert i.type == "tensor(float)" and i.shape[0] == "batch", (i.name, i.type, i.shape)
    (out,) = sess.get_outputs()
    assert (out.name, out.type, out.shape[0]) == ("output", "tensor(float)", "batch")
    batch = 1 if len(member.inputs[0].shape) == 5 else 2  # 3D members: one window is enough
    x = _inputs(member, batch)
    want = np.asarray(member(x[names[0]] if len(names) == 1 else x, training=False), np.float32)
    got = sess.run(["output"], x)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOL * max(1.0, float(np.abs(want).max()))


# --- wmh_ensemble with its shipped weights on real slices -------------------------------------------
@pytest.fixture(scope="module")
def wmh(tmp_path_factory):
    """Keras and ONNX ZooModels of wmh_ensemble (flair, member0 of the shipped weights) and
    the ONNX cache folder they used."""
    if not onnx_backend.available():
        pytest.skip("tf2onnx/onnxruntime not installed (pip install -e .)")
    home = tmp_path_factory.mktemp("onnx_home")
    old = os.environ.get("ZOO_HOME")
    os.environ["ZOO_HOME"] = str(home)
    try:
        kw = dict(variant="flair", weights=str(MEMBER0), options={"n_members": 1})
        k = zoo.load("wmh_ensemble", backend="keras", **kw)
        o = zoo.load("wmh_ensemble", backend="onnx", **kw)
    finally:
        if old is None:
            os.environ.pop("ZOO_HOME", None)
        else:
            os.environ["ZOO_HOME"] = old
    return k, o, home


@pytest.fixture(scope="module")
def slab(shared_data):
    import nibabel as nib

    return axial_slab(nib.load(str(shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz")), 88, 96)


@pytest.mark.realdata
def test_onnx_equals_keras_on_real_slices_and_through_predict(wmh, slab):
    from zoo.entries.wmh_ensemble import pipeline
    from zoo.io import read_volume

    k, o, _ = wmh
    x, _ = pipeline(k.card, k.variant).apply({"flair": read_volume(slab, "flair")})
    assert x.shape == (8, 200, 200, 1) and x.std() > 0.5  # real, normalised slices
    want = np.asarray(k.models[0].predict_on_batch(x))
    got = o.models[0].predict_on_batch(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < TOL
    assert (want > 0.5).sum() > 100  # the slab holds lesions: the comparison is not trivial

    # the whole prediction through zoo.load(..., backend="onnx"): same pipeline, same output
    assert o.backend == "onnx" and "backend=onnx" in repr(o)
    pk, po = k.predict(slab), o.predict(slab)
    diff = np.abs(np.asarray(pk.images["wmh_probability"].dataobj)
                  - np.asarray(po.images["wmh_probability"].dataobj))
    assert diff.max() < TOL
    mk, mo = np.asarray(pk.images["wmh"].dataobj), np.asarray(po.images["wmh"].dataobj)
    assert mk.sum() > 100 and (mk != mo).sum() <= 0.001 * mk.sum()
    np.testing.assert_array_equal(po.images["wmh"].affine, slab.affine)


def test_cached_graph_is_reused(wmh, monkeypatch):
    k, _, home = wmh
    monkeypatch.setenv("ZOO_HOME", str(home))
    assert list((home / "onnx" / "wmh_ensemble" / "flair").glob("member0-*.onnx"))

    def no_conversion(*a, **kw):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(onnx_backend, "to_onnx", no_conversion)
    (m,) = onnx_backend.onnx_members("wmh_ensemble", "flair", k.models)
    x = np.zeros((1, 200, 200, 1), np.float32)
    assert np.abs(m(x) - np.asarray(k.models[0].predict_on_batch(x))).max() < TOL


@needs_onnx
def test_cli_export_writes_a_named_dynamic_graph(tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "wmh.onnx"
    rc = main(["export", "wmh_ensemble", "--variant", "flair", "--format", "onnx", "--option",
               "n_members=1", "--weights", str(MEMBER0), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out.split() == [str(out)]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape) == ("image", ["batch", 200, 200, 1])
    y = sess.run(["output"], {"image": np.zeros((3, 200, 200, 1), np.float32)})[0]
    assert y.shape == (3, 200, 200, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["wmh.onnx"]  # no temporary file left


@needs_onnx
def test_cli_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    assert main(["export", "wmh_ensemble", "-o", str(tmp_path / "x.txt")]) == 2
    assert main(["export", "no_such_entry", "-o", str(tmp_path / "x.onnx")]) == 1
    assert main(["export", "wmh_ensemble", "--variant", "nope", "-o", str(tmp_path / "x.onnx")]) == 1
    assert main(["export", "claustrum_multiview", "--untrained", "--fused", "-o",
                 str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 4 and all(line.startswith("zoo: error:") for line in lines), err
    assert "Traceback" not in err and "multiview" in lines[3]
    assert list(tmp_path.iterdir()) == []


def test_cli_predict_backend_flag_reaches_load(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_load(name, **kwargs):
        calls.append(kwargs)
        raise errors.BackendError("stop here")

    monkeypatch.setattr(zoo, "load", fake_load)
    args = ["predict", "wmh_ensemble", "--untrained", "--input", "flair=x.nii.gz", "-o", str(tmp_path)]
    assert main([*args, "--backend", "onnx"]) == 1
    assert main(args) == 1
    assert calls[0]["backend"] == "onnx" and "backend" not in calls[1]  # None: the card's default
    assert capsys.readouterr().err.count("zoo: error: stop here") == 2
