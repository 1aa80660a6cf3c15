"""zoo.trained_on: which evaluated subjects a variant's card weights trained on, and the warning of
``zoo evaluate`` when it scores them (the default lung_nodule weights on the hold-out patients)."""

from __future__ import annotations

import json

import pytest

from zoo import cli, registry, trained_on
from zoo.training import datasets

SPLIT = trained_on._splits_dir() / "lung_nodule_holdout.json"


def _parts():
    manifest = json.loads(SPLIT.read_text())
    (fold,) = manifest.values()
    return fold["train"], fold["val"]


def test_a_whole_dataset_record_covers_every_subject_of_that_folder_only(tmp_path):
    (tmp_path / "lidc_voi").mkdir()
    (tmp_path / "other").mkdir()
    records = [{"dataset": "lidc_voi"}]
    assert trained_on.overlap(records, tmp_path / "lidc_voi", ["b", "a"]) == ["b", "a"]
    assert trained_on.overlap(records, tmp_path / "other", ["b", "a"]) == []
    assert trained_on.overlap(None, tmp_path / "lidc_voi", ["a"]) == []


def test_a_split_record_covers_its_partition_only(tmp_path):
    train, val = _parts()
    records = [{"dataset": "lidc_voi", "split": "lung_nodule_holdout", "part": "train"}]
    data = tmp_path / "lidc_voi"
    assert trained_on.overlap(records, data, val) == []
    assert trained_on.overlap(records, data, [val[0], train[0], train[1]]) == [train[0], train[1]]
    assert trained_on.overlap([{**records[0], "part": "val"}], data, val[:3]) == val[:3]


def test_every_card_record_names_a_dataset_and_an_existing_split_partition():
    seen = 0
    for name in registry.ENTRIES:
        card = registry.card(name)
        for variant in card["variants"]:
            for record in card.variant(variant).get("trained_on", ()):
                seen += 1
                if "split" in record:
                    assert trained_on._record_ids(record), (name, variant, record)
    assert seen >= 4
    lung = registry.card("lung_nodule")
    assert lung.variant("default")["trained_on"] == [{"dataset": "lidc_voi"}]
    assert lung.variant("holdout")["trained_on"][0]["split"] == "lung_nodule_holdout"


def test_warning_names_the_count_and_the_card_field():
    text = trained_on.warning("lung_nodule", "default", [f"p{i}" for i in range(7)], 68)
    assert "7 of the 68" in text and "p4, ..." in text and "variants.default.trained_on" in text


@pytest.mark.parametrize("variant, warned", [(None, True), ("holdout", False)])
def test_zoo_evaluate_warns_when_the_card_weights_trained_on_the_subjects(variant, warned, shared_data, tmp_path,
                                                                          monkeypatch, capsys):
    """The validation part of the hold-out split: the default weights trained on all 68 patients,
    the holdout variant on none of them (the scoring itself is replaced: tests/test_lung_weights.py
    runs it)."""
    data = shared_data / "lidc_voi"
    if not data.is_dir():
        pytest.skip("shared/data/lidc_voi not present")
    monkeypatch.setattr(cli, "_evaluate_classification", lambda args, subjects, options: 0)
    argv = ["evaluate", "lung_nodule", "--data", str(data), "--manifest", str(SPLIT), "--part", "val",
            "-o", str(tmp_path / "eval")]
    if variant:
        argv += ["--variant", variant]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    n_val = len(datasets.manifest_part(SPLIT, "val"))
    assert (f"were trained on {n_val} of the {n_val} evaluated subjects" in err) is warned, err
