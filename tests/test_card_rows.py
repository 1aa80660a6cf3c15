"""zoo.training.card_rows: card metric rows computed from a per-case cross-validation table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from zoo import registry
from zoo.training import card_rows

REPO = Path(__file__).resolve().parents[1]


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


def test_rows_with_a_table_name_their_cases_and_check_finds_a_typed_number(tmp_path):
    (tmp_path / "training" / "results").mkdir(parents=True)
    _table().to_csv(tmp_path / "training" / "results" / "t.csv", index=False)
    rows = card_rows.rows(_table(), ["dsc"], "contrast", {"table": "training/results/t.csv"})
    assert "cases" not in rows[0] and rows[1]["cases"] == {"contrast": "flair"}
    assert all(card_rows.check(r, tmp_path) == [] for r in rows)
    typed = {**rows[1], "value": 0.93}
    assert card_rows.check(typed, tmp_path) == [
        "dsc {'contrast': 'flair'}: value 0.93 in the card, 0.925 from training/results/t.csv"]
    assert card_rows.check({**rows[0], "n": 4}, tmp_path)


def test_where_keeps_one_variant_and_every_row_names_it(tmp_path):
    (tmp_path / "training" / "results").mkdir(parents=True)
    table = pd.concat([_table().assign(variant="flair_t1"), _table().assign(variant="flair", dsc=[0.1, 0.2, 0.3])])
    table.to_csv(tmp_path / "training" / "results" / "t.csv", index=False)
    rows = card_rows.rows(table, ["dsc"], "contrast", {"table": "training/results/t.csv"}, where={"variant": "flair"})
    assert [r["cases"] for r in rows] == [{"variant": "flair"}, {"variant": "flair", "contrast": "flair"},
                                          {"variant": "flair", "contrast": "t1w"}]
    assert rows[0]["value"] == pytest.approx(0.2) and rows[0]["n"] == 3
    assert all(card_rows.check(r, tmp_path) == [] for r in rows)
    assert card_rows.check({**rows[0], "cases": {}}, tmp_path)  # both variants pooled: n 6, not 3
    with pytest.raises(ValueError, match="no case"):
        card_rows.rows(table, ["dsc"], None, {}, where={"variant": "t1"})


def test_every_card_row_that_names_a_table_matches_it():
    """The committed per-case tables (training/results/) behind the cards' measured rows."""
    for name in registry.ENTRIES:
        for row in registry.card(name)["metrics"]["measured"]:
            if "table" in row:
                assert (REPO / row["table"]).is_file(), (name, row["table"])
                assert card_rows.check(row, REPO) == [], name


def test_statistic_text_is_selectable():
    rows = card_rows.rows(_table(), ["dsc"], None, {}, statistic="mean over the held-out subjects")
    assert [r["statistic"] for r in rows] == ["mean over the held-out subjects"]
    assert card_rows.rows(_table(), ["dsc"], None, {})[0]["statistic"] == card_rows.STATISTIC
