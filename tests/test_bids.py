"""BIDS in and out (issue 19, part 2): ``zoo predict NAME --bids DATASET -o DERIVATIVES``.

The BIDS tree is built in the test from the Ljubljana MS scans (open_ms MNI patients 19 and 07,
FLAIR + T1w, cropped to 8 axial slices so that a prediction takes seconds):

    sub-01/ses-1/anat/sub-01_ses-1_{FLAIR,T1w}.nii.gz   patient19
    sub-02/anat/sub-02_{FLAIR,T1w}.nii.gz               patient07
    sub-03/anat/sub-03_FLAIR.nii.gz                     patient19, T1w missing: reported, batch goes on

The outputs are parsed back with pybids, the library that found the inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import zoo
from conftest import axial_slab
from zoo import bids_io, errors
from zoo.cli import main

bids = pytest.importorskip("bids", reason="pybids not installed (pip install 'keras-medzoo[bids]')")
SLAB = (88, 96)  # axial slices k of the MNI grid (182 slices): periventricular lesions


def _write(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(axial_slab(nib.load(str(src)), *SLAB), str(dest))


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bids") / "ds"
    mni = shared_data / "open_ms" / "mni"
    layout = {"sub-01/ses-1": ("patient19", ("FLAIR", "T1w")), "sub-02": ("patient07", ("FLAIR", "T1w")),
              "sub-03": ("patient19", ("FLAIR",))}
    for folder, (patient, suffixes) in layout.items():
        prefix = folder.replace("/", "_")
        for suffix in suffixes:
            _write(mni / patient / f"{suffix.lower().replace('t1w', 't1')}.nii.gz",
                   root / folder / "anat" / f"{prefix}_{suffix}.nii.gz")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "open_ms slab", "BIDSVersion": "1.9.0"}), encoding="utf-8")
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n", encoding="utf-8")
    return root


@pytest.mark.realdata
def test_find_cases_by_entities_and_suffixes(dataset):
    card = zoo.card("wmh_ensemble")
    cases = bids_io.find_cases(dataset, card, None)
    assert [c.id for c in cases] == ["sub-01_ses-1", "sub-02", "sub-03"]
    assert Path(cases[0].inputs["flair"]).name == "sub-01_ses-1_FLAIR.nii.gz"
    assert Path(cases[1].inputs["t1"]).name == "sub-02_T1w.nii.gz"
    assert cases[0].problem is None and cases[1].problem is None
    assert isinstance(cases[2].problem, errors.MissingModalityError) and "T1w" in str(cases[2].problem)
    # the FLAIR-only variant needs no T1w: sub-03 is complete
    assert all(c.problem is None for c in bids_io.find_cases(dataset, card, "flair"))
    assert [c.id for c in bids_io.find_cases(dataset, card, None, ["sub-02", "03"])] == ["sub-02", "sub-03"]
    assert [c.id for c in bids_io.find_cases(dataset, card, None, sessions=["1"])] == ["sub-01_ses-1"]
    with pytest.raises(errors.InputError, match=r"no participant\(s\) \['04'\]"):
        bids_io.find_cases(dataset, card, None, ["04"])
    with pytest.raises(errors.InputError, match="not a BIDS dataset"):
        bids_io.find_cases(dataset / "sub-02", card, None)


@pytest.mark.realdata
def test_two_runs_of_one_suffix_are_reported_not_guessed(dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset / "sub-02", ds / "sub-02")
    shutil.copy(dataset / "dataset_description.json", ds)
    anat = ds / "sub-02" / "anat"
    (anat / "sub-02_T1w.nii.gz").rename(anat / "sub-02_run-1_T1w.nii.gz")
    shutil.copy(anat / "sub-02_run-1_T1w.nii.gz", anat / "sub-02_run-2_T1w.nii.gz")
    (case,) = bids_io.find_cases(ds, zoo.card("wmh_ensemble"), None)
    assert isinstance(case.problem, errors.InputError) and "2 T1w images" in str(case.problem)


@pytest.mark.realdata
def test_bids_predict_writes_derivatives_and_reports(dataset, tmp_path, capsys):
    deriv = tmp_path / "derivatives" / "zoo"
    base = ["predict", "wmh_ensemble", "--bids", str(dataset), "-o", str(deriv)]
    # two shards: sub-01_ses-1 and sub-03 (missing T1w) in the first, sub-02 in the second
    assert main([*base, "--shard", "1/2"]) == 1
    out1 = capsys.readouterr()
    assert "sub-03 failed: MissingModalityError" in out1.err and "1 ok, 1 failed" in out1.out
    assert main([*base, "--shard", "2/2", "--participant-label", "01", "02", "03"]) == 0
    report = pd.concat([pd.read_csv(deriv / f"report_shard{i}of2.csv") for i in (1, 2)])
    status = dict(zip(report["subject"], report["status"]))
    assert status == {"sub-01_ses-1": "ok", "sub-03": "failed", "sub-02": "ok"}
    failed = report[report["subject"] == "sub-03"].iloc[0]
    assert failed["error_type"] == "MissingModalityError" and "T1w" in failed["error"]
    assert not (deriv / "sub-03").exists()  # nothing written for the failed case

    description = json.loads((deriv / "dataset_description.json").read_text(encoding="utf-8"))
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "zoo" and "wmh_ensemble" in description["GeneratedBy"][0]["Description"]

    layout = bids.BIDSLayout(str(deriv), validate=False, is_derivative=True)
    masks = layout.get(suffix="mask", desc="wmh", extension=".nii.gz")
    probsegs = layout.get(suffix="probseg", desc="wmh", extension=".nii.gz")
    assert sorted(f.get_entities()["subject"] for f in masks) == ["01", "02"]
    assert len(probsegs) == 2
    (mask01,) = [f for f in masks if f.get_entities()["subject"] == "01"]
    ents = mask01.get_entities()
    assert (ents["session"], ents["space"], ents["datatype"]) == ("1", "orig", "anat")
    assert Path(mask01.path).name == "sub-01_ses-1_space-orig_desc-wmh_mask.nii.gz"

    card = zoo.card("wmh_ensemble")
    meta = layout.get_metadata(mask01.path)
    assert meta["zoo"]["entry"] == "wmh_ensemble" and meta["zoo"]["card_version"] == card.version
    assert [w["sha256"] for w in meta["zoo"]["weights"]] == [
        r["sha256"] for r in card.variant("flair_t1")["weights"]]
    assert meta["Sources"] == ["bids:raw:sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz",
                               "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]

    # space-orig: the FLAIR's grid; the mask is the probability map above the card's threshold
    flair = nib.load(str(dataset / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_FLAIR.nii.gz"))
    mask = nib.load(mask01.path)
    prob = nib.load(next(f.path for f in probsegs if f.get_entities()["subject"] == "01"))
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine)
    m = np.asarray(mask.dataobj)
    assert m.sum() > 50  # the slab holds lesions
    np.testing.assert_array_equal(m > 0, np.asarray(prob.dataobj) > card["inference"]["threshold"])


@pytest.mark.realdata
def test_bids_refuses_raw_dataset_and_foreign_derivatives(dataset, tmp_path, capsys, monkeypatch):
    assert main(["predict", "wmh_ensemble", "--bids", str(dataset), "-o", str(dataset),
                 "--participant-label", "02"]) == 1
    assert "is the raw BIDS dataset" in capsys.readouterr().err
    other = tmp_path / "fmriprep"
    other.mkdir()
    (other / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}), encoding="utf-8")
    assert main(["predict", "wmh_ensemble", "--bids", str(dataset), "-o", str(other),
                 "--participant-label", "02"]) == 1
    assert "was not written by the zoo" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["dataset_description.json"]


def test_bids_usage_and_missing_pybids(tmp_path, capsys, monkeypatch):
    assert main(["predict", "wmh_ensemble", "--input", "flair=x.nii.gz", "--participant-label", "01",
                 "-o", str(tmp_path)]) == 2
    assert "need --bids" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "bids", None)  # import fails as if not installed
    assert main(["predict", "wmh_ensemble", "--bids", str(tmp_path), "-o", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'keras-medzoo[bids]'" in err and not (tmp_path / "d").exists()
