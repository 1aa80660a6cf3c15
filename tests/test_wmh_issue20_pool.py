"""training/campaigns/wmh_issue20_pool.py: the per-subject table behind wmh_ensemble's
cross-validation rows (reference volumes from the label files, the 1.5x volume rule, one
table for both variants)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _pool_module():
    spec = importlib.util.spec_from_file_location("wmh_issue20_pool", REPO / "training/campaigns/wmh_issue20_pool.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _label(path: Path, n_voxels: int) -> str:
    """A 0/1 label with ``n_voxels`` lesion voxels of 1 x 1 x 2 mm (2 uL each)."""
    arr = np.zeros((10, 10, 10), np.uint8)
    arr.reshape(-1)[:n_voxels] = 1
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path.name


def _cv(tmp_path: Path, volumes_ml: dict[str, float]) -> tuple[Path, list[Path]]:
    """Subjects CSV (labels of 500 voxels = 1 mL) and one metrics.csv per fold (two subjects each)."""
    subjects = pd.DataFrame({"subject": list(volumes_ml), "site": ["tabriz", "tabriz", "ljubljana", "tabriz"],
                             "label": [_label(tmp_path / f"{s}.nii.gz", 500) for s in volumes_ml]})
    subjects.to_csv(tmp_path / "subjects.csv", index=False)
    tables = []
    for k, ids in enumerate([list(volumes_ml)[:2], list(volumes_ml)[2:]]):
        (tmp_path / f"fold{k}").mkdir()
        pd.DataFrame({"subject": ids, "dsc": [0.5, 0.7], "h95_wmh_mm": [10.0, 20.0], "abs_vol_diff_pct": [5.0, 50.0],
                      "lesion_recall": [0.8, 0.6], "lesion_f1": [0.7, 0.5],
                      "volume_ml": [volumes_ml[i] for i in ids]}).to_csv(tmp_path / f"fold{k}/metrics.csv", index=False)
        tables.append(tmp_path / f"fold{k}/metrics.csv")
    return tmp_path / "subjects.csv", tables


def test_pool_volume_ratio_and_the_1_5x_rule(tmp_path):
    pool = _pool_module()
    subjects, tables = _cv(tmp_path, {"a": 1.5, "b": 1.6, "c": 0.6, "d": 0.7})
    table, summary = pool.pool(subjects, tables)
    assert table["reference_ml"].tolist() == pytest.approx([1.0] * 4)
    assert table["volume_within_1_5x"].tolist() == [1, 0, 0, 1]  # 1.5 and 1/0.7 in; 1.6 and 1/0.6 out
    assert table["fold"].tolist() == ["fold0", "fold0", "fold1", "fold1"]
    assert summary["tabriz"]["n"] == 3 and summary["tabriz"]["share_volume_within_1_5x"] == pytest.approx(2 / 3)
    assert summary["all"]["mean_dsc"] == pytest.approx(0.6)


def test_a_subject_held_out_twice_is_an_error(tmp_path):
    pool = _pool_module()
    subjects, tables = _cv(tmp_path, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    with pytest.raises(ValueError, match="held out twice"):
        pool.pool(subjects, [tables[0], tables[0]])


def test_write_table_replaces_only_its_variant(tmp_path):
    pool = _pool_module()
    subjects, tables = _cv(tmp_path, {"a": 1.0, "b": 2.0, "c": 1.0, "d": 1.0})
    table, _ = pool.pool(subjects, tables)
    out = tmp_path / "cv.csv"
    pool.write_table(table, "flair_t1", out)
    pool.write_table(table.assign(dsc=0.1), "flair", out)
    pool.write_table(table.assign(dsc=0.2), "flair", out)
    written = pd.read_csv(out, dtype={"subject": str})
    assert list(written.columns) == list(pool.TABLE_COLUMNS)
    assert written.groupby("variant")["dsc"].mean().to_dict() == pytest.approx({"flair": 0.2, "flair_t1": 0.6})
    assert len(written) == 8
