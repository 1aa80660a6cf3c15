"""Shared fixtures. Real scans come from ``../shared/data`` (or ``$ZOO_SHARED_DATA``); tests
that need them are marked ``realdata`` and skip with a reason when the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ZOO_SHARED_DATA", REPO.parent / "shared" / "data"))


def axial_slab(img, k0: int, k1: int):
    """Axial slices ``k0:k1`` (voxel axis k) of a nibabel image as a new image whose affine
    places them where they were, with the source header and its qform/sform codes."""
    import nibabel as nib
    import numpy as np

    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ [0, 0, k0] + img.affine[:3, 3]
    out = nib.Nifti1Image(np.asarray(img.dataobj)[:, :, k0:k1], aff, img.header.copy())
    out.header.set_qform(aff, code=int(img.header["qform_code"]))
    out.header.set_sform(aff, code=int(img.header["sform_code"]))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-scan folder; skips the test when it is absent (e.g. a user's fresh clone)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real scans not found at {SHARED_DATA} (set ZOO_SHARED_DATA to run this test)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty weights cache so nothing leaks between tests."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))
