"""``wmh_ensemble``'s ``skip_slices`` (issue 6, part 3): slices the network is not run on.

The end-slice band's output is zeroed anyway and slices without brain get probability 0; on a
real slab that holds the top of the brain and empty slices above it, skipping them gives the
same mask as running every slice, and the same probabilities on the slices that were run.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import zoo
from conftest import REPO, axial_slab
from zoo.entries.wmh_ensemble import slices_to_run

MEMBER0 = REPO / "weights" / "wmh_ensemble" / "flair" / "member0.npz"


class _State:
    def __init__(self, brain):
        self._brain = np.asarray(brain, bool)

    def brain_slices(self):
        return self._brain


def test_slices_to_run_rules():
    band = np.array([1, 0, 0, 0, 0, 1], bool)
    state = _State([0, 0, 1, 1, 0, 0])
    assert slices_to_run("none", band, state) is None
    np.testing.assert_array_equal(slices_to_run("band", band, state), [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(slices_to_run("band_and_empty", band, state), [0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="skip_slices"):
        slices_to_run("some", band, state)
    assert zoo.card("wmh_ensemble")["options"]["skip_slices"]["default"] == \
        zoo.card("wmh_ensemble")["inference"]["skip_slices"]


@pytest.mark.realdata
def test_skipping_brainless_slices_keeps_the_mask(shared_data):
    # open_ms MNI patient19: brain (non-zero FLAIR) on axial slices k = 18..138 of 182
    img = nib.load(str(shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz"))
    slab = axial_slab(img, 134, 144)  # 5 slices with brain, 5 empty ones above
    # the non-zero mask of this skull-stripped scan: a 10-slice slab is too little head for the
    # default skull_stripping mask (a whole-head model)
    kw = dict(variant="flair", weights=str(MEMBER0))
    opts = {"n_members": 1, "mask_method": "nonzero"}
    full = zoo.load("wmh_ensemble", options={**opts, "skip_slices": "none"}, **kw)
    fast = zoo.load("wmh_ensemble", options=opts, **kw)  # card default: band_and_empty
    assert fast.card["inference"]["skip_slices"] == "band_and_empty"
    pf, ps = full.predict(slab), fast.predict(slab)
    assert pf.qc["slices_run"] == 10
    assert ps.qc["slices_run"] == 10 - 2 * 1 - 4  # band of 1 at each end; 4 more without brain
    prob_f = np.asarray(pf.images["wmh_probability"].dataobj)
    prob_s = np.asarray(ps.images["wmh_probability"].dataobj)
    run = slice(1, 5)  # the slices both runs predicted (k 135..138 of the volume)
    assert prob_f[:, :, run].max() > 0.05  # a non-trivial map
    # equal up to float rounding (other batch sizes pick other CPU kernels)
    np.testing.assert_allclose(prob_f[:, :, run], prob_s[:, :, run], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pf.images["wmh"].dataobj), np.asarray(ps.images["wmh"].dataobj))


def test_bad_skip_value_is_refused():
    with pytest.raises(ValueError, match="skip_slices must be one of"):
        model = zoo.load("wmh_ensemble", variant="flair", weights=None,
                         options={"n_members": 1, "skip_slices": "all"})
        model.predict((np.random.default_rng(0).uniform(1, 9, (8, 8, 4)), np.eye(4)))
