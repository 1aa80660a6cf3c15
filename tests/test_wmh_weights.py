"""The shipped wmh_ensemble weights: checksums against the card, and a real lesion map on
patient 19 of the Ljubljana MS scans (open_ms MNI, axial slices 80-109 which hold 30,794 of
its 49,769 lesion voxels). Dice thresholds sit well above what a broken model reaches
(untrained weights: Dice < 0.05) and below the Dice measured when the weights were shipped
(see the card's ``measured`` metrics and the CHANGELOG)."""

from __future__ import annotations

import nibabel as nib
import pytest

import zoo
from conftest import axial_slab
from zoo import metrics, weights

pytestmark = pytest.mark.realdata

#: variant -> minimum Dice on the slab (measured at shipping: see MEASURED).
MIN_DICE = {"flair": 0.45, "flair_t1": 0.45}
#: variant -> Dice measured on the slab when the weights were shipped (flair: card 0.2.0,
#: flair_t1: card 0.3.0; untrained weights give 0.023 (flair) and 0.062 (flair_t1) on the
#: same slab).
MEASURED = {"flair": 0.621, "flair_t1": 0.626}


@pytest.mark.parametrize("variant", ["flair", "flair_t1"])
def test_bundled_weights_match_the_card(variant):
    records = zoo.card("wmh_ensemble").variant(variant)["weights"]
    if not records:
        pytest.skip(f"no weights shipped for {variant}")
    assert len(records) == zoo.card("wmh_ensemble")["inference"]["n_members"]
    for rec in records:
        path = weights.bundled_path(rec["file"])
        assert path is not None, rec["file"]
        assert weights.sha256_file(path) == rec["sha256"]
        assert path.stat().st_size == rec["size"]


def _slab(img, k0=80, k1=110):
    return axial_slab(img, k0, k1)


@pytest.mark.parametrize("variant", ["flair", "flair_t1"])
def test_shipped_weights_segment_patient19(shared_data, variant):
    if not zoo.card("wmh_ensemble").variant(variant)["weights"]:
        pytest.skip(f"no weights shipped for {variant}")
    src = shared_data / "open_ms" / "mni" / "patient19"
    model = zoo.load("wmh_ensemble", variant=variant)
    inputs = {name: _slab(nib.load(src / f"{name}.nii.gz")) for name in model.input_names}
    pred = model.predict(inputs)
    reference = _slab(nib.load(src / "lesion.nii.gz"))
    scores = metrics.wmh_challenge(reference, pred.images["wmh"])
    assert scores["dsc"] >= MIN_DICE[variant], scores
    assert pred.volumes_ml["wmh"] > 1.0
