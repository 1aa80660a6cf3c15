"""Model cards: schema validation, options (paper vs code), Markdown, reported numbers."""

import copy

import pytest
import yaml

import zoo
from zoo import errors
from zoo.card import ModelCard, validate
from zoo.registry import ENTRIES


@pytest.mark.parametrize("entry_id", sorted(ENTRIES))
def test_every_registered_card_validates(entry_id):
    c = zoo.card(entry_id)
    assert c.id == entry_id
    assert c["default_variant"] in c["variants"]


def test_schema_rejects_a_broken_card():
    data = zoo.card("wmh_ensemble").to_dict()
    bad = copy.deepcopy(data)
    del bad["license"]
    with pytest.raises(errors.CardError, match="license"):
        validate(bad, "bad.yaml")
    bad = copy.deepcopy(data)
    bad["inference"]["threshold"] = 1.5
    with pytest.raises(errors.CardError, match="threshold"):
        validate(bad, "bad.yaml")
    bad = copy.deepcopy(data)
    bad["metrics"]["measured"] = [{"name": "dsc", "value": 0.5, "split_type": "cv", "n": 2,
                                   "dataset": "x", "source": "x"}]  # no command: not rerunnable
    with pytest.raises(errors.CardError, match="command"):
        validate(bad, "bad.yaml")


def test_card_file_errors(tmp_path):
    with pytest.raises(errors.CardError, match="cannot be read"):
        ModelCard.from_file(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("id: [unclosed")
    with pytest.raises(errors.CardError, match="not valid YAML"):
        ModelCard.from_file(tmp_path / "x.yaml")


def test_unknown_entry_and_variant():
    with pytest.raises(errors.UnknownEntryError, match="unknown entry 'nope'"):
        zoo.card("nope")
    with pytest.raises(errors.UnknownVariantError, match="flair_t1"):
        zoo.card("wmh_ensemble").variant("t2")


def test_option_defaults_are_what_the_card_uses():
    """Each paper-vs-code switch states its default; the card field it names must hold it."""
    c = zoo.card("wmh_ensemble")
    checked = 0
    for key, spec in c["options"].items():
        if "." not in spec["where"]:
            continue  # lives in a training recipe
        assert c.option_value(key) == spec["default"], key
        checked += 1
    assert checked >= 10


def test_with_options_sets_the_named_field_and_revalidates():
    c = zoo.card("wmh_ensemble").with_options({"threshold": 0.45, "mask_method": "nonzero",
                                               "head": "softmax2"})
    assert c["inference"]["threshold"] == 0.45
    assert c.step("brain_mask")["method"] == "nonzero"
    assert all(v["architecture"]["head"] == "softmax2" for v in c["variants"].values())
    assert zoo.card("wmh_ensemble")["inference"]["threshold"] == 0.5  # original untouched
    with pytest.raises(errors.CardError, match="unknown option"):
        zoo.card("wmh_ensemble").with_options({"thresh": 0.4})
    with pytest.raises(errors.CardError):
        zoo.card("wmh_ensemble").with_options({"threshold": 2.0})
    with pytest.raises(errors.CardError, match="not in the card"):
        zoo.card("wmh_ensemble").with_options({"aug_shear_rad": 0.3})


def test_reported_metrics_transcribe_table_3():
    """The paper's Table 3 weighted averages (n = 110), kept apart from measured numbers."""
    c = zoo.card("wmh_ensemble")
    rep = {(m["name"], m["subset"]): m for m in c.metrics["reported"]}
    weighted = {k[0]: v for k, v in rep.items() if k[1] == "weighted average"}
    assert {k: v["value"] for k, v in weighted.items()} == {
        "dsc": 0.80, "h95_wmh_mm": 6.30, "abs_vol_diff_pct": 21.88, "lesion_recall": 0.84, "lesion_f1": 0.76}
    assert all(v["n"] == 110 and v["split_type"] == "challenge" for v in weighted.values())
    per_scanner_n = {m["subset"]: m["n"] for m in c.metrics["reported"] if m["source"].endswith("Table 3")
                     and m["subset"] != "weighted average"}
    assert sum(per_scanner_n.values()) == 110
    assert all("command" not in m for m in c.metrics["reported"])


def test_markdown_and_dict():
    c = zoo.card("wmh_ensemble")
    md = c.to_markdown()
    for text in ("# White-matter", "8,742,209", "| dsc | 0.8 | challenge | 110 |", "Li et al. 2018 Table 3",
                 "@article{li2018wmh", "Weights: 3 file(s)", "## Caveats"):
        assert text in md, text
    lung = zoo.card("lung_nodule").to_markdown()  # a measured row with its 95% interval
    assert "| roc_auc | 0.916 [0.85, 0.966] | validation | 100 |" in lung
    d = c.to_dict()
    d["id"] = "changed"
    assert c.id == "wmh_ensemble"
    assert yaml.safe_load(yaml.safe_dump(c.to_dict())) == c.to_dict()


def test_list_has_one_row_per_entry():
    df = zoo.list()
    assert list(df["name"]) == sorted(ENTRIES)
    row = df.set_index("name").loc["wmh_ensemble"]
    assert row["modalities"] == "FLAIR, T1w"
    c = zoo.card("wmh_ensemble")
    for variant, rec in c["variants"].items():
        assert f"{variant}: {'bundled' if rec['weights'] else 'none shipped'}" in row["weights"]
    assert row["version"] == zoo.card("wmh_ensemble").version
