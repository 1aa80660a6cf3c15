"""zoo.training.card_rows: card metric rows computed from a per-case cross-validation table."""

from __future__ import annotations

import pandas as pd
import pytest

from zoo.training import card_rows


def _table():
    return pd.DataFrame({"subject": ["a_flair", "a_t1w", "b_flair"], "contrast": ["flair", "t1w", "flair"],
                         "dsc": [0.9, 0.8, 0.95], "hd95_mm": [5.0, 9.0, 3.0]})


def test_pooled_then_per_group_rows_with_mean_sd_and_n():
    rows = card_rows.rows(_table(), ["dsc", "hd95_mm"], "contrast", {"split_type": "cv", "subset": "5-fold CV"},
                          order=["t1w", "flair"])
    assert [(r["name"], r["subset"], r["n"]) for r in rows] == [
        ("dsc", "5-fold CV; all contrast values", 3), ("hd95_mm", "5-fold CV; all contrast values", 3),
        ("dsc", "5-fold CV; t1w only", 1), ("hd95_mm", "5-fold CV; t1w only", 1),
        ("dsc", "5-fold CV; flair only", 2), ("hd95_mm", "5-fold CV; flair only", 2)]
    assert rows[0]["value"] == pytest.approx(0.8833) and rows[0]["sd"] == pytest.approx(0.0764)
    assert rows[4]["value"] == 0.925 and rows[1]["value"] == pytest.approx(5.6667)
    assert "sd" not in rows[2]  # one case: no SD
    assert all(r["split_type"] == "cv" and r["statistic"] == card_rows.STATISTIC for r in rows)


def test_unknown_metric_is_a_key_error():
    with pytest.raises(KeyError):
        card_rows.rows(_table(), ["jaccard"], None, {})
