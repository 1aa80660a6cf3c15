"""The upstream presets are equal to the reference implementations (issue 15).

Fixtures (``tests/fixtures/upstream_parity/<case>.npz``) were made once with ANTsPyNet 0.3.2 by
``tools/make_upstream_parity_fixtures.py``: seeded random weights in the authors' Keras 2 layout,
the reference function run end to end on a real scan, its probabilities at a strided grid of
voxels. Here the same weights are drawn again (:func:`zoo.converters.seeded.seeded_layout`, same
seed, same layout spec), written as the authors' ``.h5`` files, fetched offline and converted by
the zoo (``zoo.presets.fetch(..., source=folder)``), and run through
``zoo.load(..., weights="upstream")`` + ``predict`` with the preset's profile. No network, no
ANTsPyNet.

To keep CI fast, the network runs only on the slices that the sampled voxels need (the others
are not compared); every preprocessing and inversion step still runs on the whole volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import errors, presets
from zoo.converters.keras2_h5 import write_keras2_h5
from zoo.converters.seeded import seeded_layout
from zoo.preprocessing.pipeline import SlicePipeline

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_parity"
TOLERANCE = 1e-4  # issue 15: max |probability difference| against the reference

#: case -> (entry, variant, input name -> fixture input name, probability output)
WMH_CASES = {
    "wmh_flair_mni": ("wmh_ensemble", "flair"),
    "wmh_flair_t1_mni": ("wmh_ensemble", "flair_t1"),
    "wmh_flair_native": ("wmh_ensemble", "flair"),
}


def load_fixture(case: str) -> tuple[dict, dict]:
    path = FIXTURES / f"{case}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not made yet (tools/make_upstream_parity_fixtures.py)")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    return arrays, meta


def write_upstream_folder(folder: Path, meta: dict, layout: list | None = None) -> Path:
    """The authors' files of the fixture (``<key>.h5``), drawn from its seeds and layout spec."""
    for key, seed in zip(meta["keys"], meta["seeds"]):
        write_keras2_h5(folder / f"{key}.h5", seeded_layout(layout or meta["layout"], seed))
    return folder


def only_slices_for(monkeypatch, module, ks_input: np.ndarray, axis_input: int = 2) -> None:
    """Run the network only on the slices that cover input voxel planes ``ks_input`` (along
    input axis ``axis_input``); found by mapping a slice-number marker back to the input grid
    with the pipeline's own inverse."""
    def slices_to_run(skip, band, state):
        n, h, w = state.network_shape[:3]
        marker = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None], (n, h, w))
        back = SlicePipeline.grid_to_input(SlicePipeline.slices_to_grid(marker, state, 0.0), state)
        planes = np.take(back, ks_input, axis=axis_input)
        needed = np.unique(np.rint(planes[planes > 0]).astype(int)) - 1
        run = np.zeros(n, dtype=bool)
        run[needed] = True
        return run
    monkeypatch.setattr(module, "slices_to_run", slices_to_run)


@pytest.mark.parametrize("case", sorted(WMH_CASES))
def test_wmh_upstream_equals_antspynet(case, tmp_path, monkeypatch, shared_data):
    from zoo.entries import wmh_ensemble as entry_module

    arrays, meta = load_fixture(case)
    entry, variant = WMH_CASES[case]
    inputs = {name: shared_data / rel for name, rel in meta["inputs"].items()}
    for name, path in inputs.items():
        if not path.is_file():
            pytest.skip(f"{path} missing")
    folder = write_upstream_folder(tmp_path / "upstream", meta)
    paths, digests = presets.fetch(entry, variant, source=folder)
    assert [p.name for p in paths] == ["member0.npz", "member1.npz", "member2.npz"]

    only_slices_for(monkeypatch, entry_module, arrays["k"])
    model = zoo.load(entry, variant=variant, weights="upstream")
    assert model.card.profile == "antspynet"
    pred = model.predict({k: str(v) for k, v in inputs.items()})
    prob = np.asarray(pred.images["wmh_probability"].dataobj, dtype=np.float32)
    assert list(prob.shape) == meta["shape"]
    got = prob[np.ix_(arrays["i"], arrays["j"], arrays["k"])]
    diff = float(np.abs(got - arrays["probability"]).max())
    print(f"{case}: max |prob diff| {diff:.3g} over {got.size} voxels "
          f"(reference mean {arrays['probability'].mean():.4f}, std {arrays['probability'].std():.4f})")
    assert arrays["probability"].std() > 0.05  # the random networks are not saturated
    assert diff <= TOLERANCE


def test_mismatched_layout_is_a_typed_error(tmp_path):
    """A file whose layout does not fit (here: the FLAIR+T1 layout for the FLAIR-only variant)
    raises ConversionError naming the layer and both shapes, and writes nothing."""
    arrays, meta = load_fixture("wmh_flair_t1_mni")
    folder = tmp_path / "upstream"
    flair_only_keys = [f"sysuMediaWmhFlairOnlyModel{i}" for i in range(3)]
    write_upstream_folder(folder, {**meta, "keys": flair_only_keys})
    with pytest.raises(errors.ConversionError, match=r"\(5, 5, 2, 64\).*\(5, 5, 1, 64\)"):
        presets.fetch("wmh_ensemble", "flair", source=folder)
    assert not any(presets.converted_dir("wmh_ensemble", "flair").glob("*.npz"))


def test_profile_mismatch_is_a_typed_error():
    with pytest.raises(errors.ProfileMismatchError, match="antspynet"):
        zoo.load("wmh_ensemble", variant="flair", weights="upstream", profile="zoo")
    with pytest.raises(errors.ProfileMismatchError, match="zoo"):
        zoo.load("wmh_ensemble", variant="flair", profile="antspynet")


def test_claustrum_upstream_equals_antspynet(tmp_path, monkeypatch, shared_data):
    """claustrum_multiview with the authors' (here seeded) weights and profile antspynet against
    ANTsPyNet's claustrum_segmentation(do_preprocessing=False) on the MNI152 T1. Only the
    coronal/axial slices the sampled lines need are run (the fixture records which)."""
    from zoo.entries import claustrum_common
    from zoo.inference import multiview

    arrays, meta = load_fixture("claustrum_mni152")
    t1 = shared_data / meta["inputs"]["t1"]
    if not t1.is_file():
        pytest.skip(f"{t1} missing")
    folder = write_upstream_folder(tmp_path / "upstream", meta)
    presets.fetch("claustrum_multiview", "multiview", source=folder)

    needed = {view: np.array(n, int) for view, n in meta["predicted_slices"].items()}
    original = multiview.predict_view
    calls = []

    def predict_needed(model, slices, band_fraction, batch_size=8):
        view = ("axial", "coronal")[len(calls)]  # inference.views order
        calls.append(view)
        run = np.zeros(len(slices), bool)
        run[needed[view][(needed[view] >= 0) & (needed[view] < len(slices))]] = True
        probs = np.full(slices.shape[:3], np.nan, np.float32)
        probs[run] = original(model, slices[run], band_fraction, batch_size)[0]
        return probs, np.ones(len(slices), bool)

    monkeypatch.setattr(claustrum_common, "predict_view", predict_needed)
    model = zoo.load("claustrum_multiview", weights="upstream")
    assert model.card.profile == "antspynet"
    pred = model.predict({"t1": str(t1)})
    prob = np.asarray(pred.images["claustrum_probability"].dataobj, dtype=np.float32)
    got = prob[np.ix_(arrays["i"], arrays["j"], arrays["k"])]
    assert np.isfinite(got).all(), "a sampled voxel depends on a slice the fixture did not predict"
    diff = float(np.abs(got - arrays["probability"]).max())
    print(f"claustrum_mni152: max |prob diff| {diff:.3g} over {got.size} voxels")
    assert arrays["probability"].std() > 0.05
    assert diff <= TOLERANCE
