"""Training recipes (``zoo.training.recipe``): the bundled wmh_ensemble recipe validates and holds
the spec's numbers (``specs/wmh_ensemble.md`` §4 step 6, §6-§8, §9, decisions D7/D13); variants
and overrides merge deeply; bad recipes raise RecipeError naming the field. No TensorFlow here."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from zoo import errors
from zoo.training import run
from zoo.training.recipe import load_recipe, schema, validate


@pytest.fixture(scope="module")
def raw() -> dict:
    """The bundled recipe as written (before variant/overrides)."""
    from importlib import resources

    text = resources.files("zoo.training").joinpath("recipes", "wmh_ensemble.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# --- the bundled recipe --------------------------------------------------------------------------
def test_bundled_recipe_validates(raw):
    validate(raw, "bundled")
    assert schema()["additionalProperties"] is False
    rec = load_recipe("wmh_ensemble")
    assert rec["variant"] == "flair_t1"  # the first variant is the default
    assert rec["source_file"].endswith("wmh_ensemble.yaml")
    assert set(rec["variants"]) == {"flair_t1", "flair"}


def test_recipe_holds_the_spec_numbers():
    """Transcriptions of specs/wmh_ensemble.md; a change here is a change of the method."""
    for variant in ("flair_t1", "flair"):
        rec = load_recipe("wmh_ensemble", variant)
        opt = rec["optimizer"]
        # §7: Adam lr 2e-4, beta 0.9/0.999, epsilon 1e-8 set explicitly (Keras 3 default is 1e-7)
        assert opt["name"] == "adam"
        assert opt["learning_rate"] == pytest.approx(2e-4, rel=0, abs=0)
        assert opt["beta_1"] == 0.9 and opt["beta_2"] == 0.999
        assert opt["epsilon"] == pytest.approx(1e-8, rel=0, abs=0)
        assert rec["schedule"] == "constant"
        assert rec["batch_size"] == 30 and rec["epochs"] == 50
        # §9: 3 members differing only in RNG state: 3 distinct seeds
        assert rec["members"] == 3
        assert len(rec["seeds"]) >= 3 and len(set(rec["seeds"][:3])) == 3
        # §6: batch-global soft Dice, smooth 1, linear denominator
        assert rec["loss"]["name"] == "soft_dice"
        assert rec["loss"]["smooth"] == 1.0 and rec["loss"]["reduction"] == "batch"
        assert "sum(p) + sum(g) + 1" in rec["loss"]["formula"]
        # §7 collapse guard
        assert rec["collapse_guard"]["loss_above"] == 0.99
        assert rec["collapse_guard"]["max_restarts"] >= 1
        # §4: wmh == 1 -> 1, label 2 background (D7); band 10 % per end (D13)
        assert rec["data"]["label_foreground"] == [1]
        assert rec["data"]["label2_policy"] == "background"
        assert rec["data"]["train_slice_band"] == 0.1
        assert rec["data"]["split_unit"] == "subject"
        assert rec["data"]["patch_size"] is None  # the paper trains on whole 200x200 slices
        # §8: static mirror, rotation 15 deg, nearest interpolation, fill nearest
        aug = rec["augmentation"]
        assert aug["flip_lr"] is True
        assert aug["rotation_deg"] == 15
        assert aug["interpolation_image"] == "nearest" and aug["interpolation_mask"] == "nearest"
        assert aug["fill_mode"] == "nearest"
        assert rec["mixed_precision"] is None  # fp32 as the paper
    # §8.2 zoom U(0.9, 1.1) for the challenge variant
    assert load_recipe("wmh_ensemble", "flair_t1")["augmentation"]["zoom"] == [0.9, 1.1]


# --- variants and overrides ----------------------------------------------------------------------
def test_variant_overrides_apply(raw):
    both = load_recipe("wmh_ensemble", "flair_t1")
    flair = load_recipe("wmh_ensemble", "flair")
    assert both["variant"] == "flair_t1" and flair["variant"] == "flair"
    assert flair["augmentation"]["zoom"] == raw["variant_overrides"]["flair"]["augmentation"]["zoom"]
    assert flair["augmentation"]["zoom"] != both["augmentation"]["zoom"]
    # deep merge: the rest of the augmentation block is untouched by the variant override
    for key in ("rotation_deg", "shear_rad", "flip_lr", "affine_probability", "interpolation_image"):
        assert flair["augmentation"][key] == both["augmentation"][key]
    # loading never mutates the cached/bundled data
    assert load_recipe("wmh_ensemble", "flair_t1")["augmentation"]["zoom"] == [0.9, 1.1]


def test_overrides_merge_deeply():
    rec = load_recipe("wmh_ensemble", "flair", {"optimizer": {"learning_rate": 1e-4},
                                                "data": {"patch_size": 48}, "epochs": 2,
                                                "augmentation": {"zoom": [0.8, 1.2]}})
    assert rec["optimizer"] == {"name": "adam", "learning_rate": 1e-4, "beta_1": 0.9,
                                "beta_2": 0.999, "epsilon": 1e-8}
    assert rec["data"]["patch_size"] == 48 and rec["data"]["train_slice_band"] == 0.1
    assert rec["data"]["label2_policy"] == "background"
    assert rec["epochs"] == 2 and rec["batch_size"] == 30
    assert rec["augmentation"]["zoom"] == [0.8, 1.2]  # overrides win over the variant's
    assert rec["augmentation"]["rotation_deg"] == 15


def _open_ms_root(root: Path, with_t1: bool = True) -> Path:
    for sid in ("patient01", "patient02"):
        d = root / sid
        d.mkdir(parents=True)
        for name in ("flair", "lesion") + (("t1",) if with_t1 else ()):
            (d / f"{name}.nii.gz").write_bytes(b"")  # only listed, never read here
    return root


def test_dotted_set_nests_and_merges(tmp_path, monkeypatch):
    """``zoo train --set a.b=v`` -> ``{"a": {"b": v}}`` merged deeply over the variant's recipe."""
    from zoo.training import trainer

    seen = {}

    def fake_train(card, recipe, subjects, out_dir, **kwargs):
        seen.update(recipe=recipe, subjects=subjects, kwargs=kwargs)
        return {"members": []}

    monkeypatch.setattr(trainer, "train", fake_train)
    root = _open_ms_root(tmp_path / "data")
    rec = run.train_entry("wmh_ensemble", root, variant="flair", out_dir=tmp_path / "run", batch_size=4,
                          recipe_set={"data.patch_size": 48, "optimizer.learning_rate": 1e-4,
                                      "collapse_guard.loss_above": 2.0}, val_ids=["patient02"])
    assert rec["out_dir"] == str(tmp_path / "run")
    r = seen["recipe"]
    assert r["variant"] == "flair" and r["batch_size"] == 4
    assert r["data"]["patch_size"] == 48 and r["data"]["train_slice_band"] == 0.1
    assert r["optimizer"]["learning_rate"] == 1e-4 and r["optimizer"]["epsilon"] == 1e-8
    assert r["collapse_guard"] == {"loss_above": 2.0, "max_restarts": 3}
    assert r["augmentation"]["zoom"] == [0.75, 1.33]  # the flair variant's override survives
    assert [s.id for s in seen["subjects"]] == ["patient01"]
    assert [s.id for s in seen["kwargs"]["val_subjects"]] == ["patient02"]


def test_members_is_a_recipe_value_so_one_member_takes_one_seed(tmp_path, monkeypatch):
    """``zoo train --members 1 --set seeds=[2]`` (one final member per process): the recipe's
    3 members would ask for 3 seeds; --members sets the recipe's count before that check."""
    from zoo.training import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda card, recipe, *a, **kw: seen.update(recipe=recipe) or {"members": []})
    root = _open_ms_root(tmp_path / "data")
    run.train_entry("wmh_ensemble", root, variant="flair", out_dir=tmp_path / "run", members=1,
                    recipe_set={"seeds": [2]})
    assert seen["recipe"]["members"] == 1 and seen["recipe"]["seeds"] == [2]
    with pytest.raises(errors.RecipeError, match="3 members need as many seeds"):
        run.train_entry("wmh_ensemble", root, variant="flair", out_dir=tmp_path / "run2", recipe_set={"seeds": [2]})


def test_open_ms_layout_collects_only_the_variant_inputs(tmp_path):
    root = _open_ms_root(tmp_path / "flair_only", with_t1=False)
    subjects = run.load_subjects(root, "auto", ["flair"])
    assert [s.id for s in subjects] == ["patient01", "patient02"]
    assert list(subjects[0].images) == ["flair"]


# --- errors --------------------------------------------------------------------------------------
def test_unknown_variant():
    with pytest.raises(errors.RecipeError, match="t2_only"):
        load_recipe("wmh_ensemble", "t2_only")


def test_unknown_recipe_name():
    with pytest.raises(errors.RecipeError, match="no bundled recipe"):
        load_recipe("no_such_entry")


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("id: x\nvariants: [a, b\n  epochs: : 3\n")
    with pytest.raises(errors.RecipeError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(errors.RecipeError, match="cannot be read"):
        load_recipe(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(errors.RecipeError, match="mapping"):
        load_recipe(path)


@pytest.mark.parametrize("field, value, named", [
    (("loss", "smooth"), 0, "loss/smooth"),
    (("optimizer", "name"), "rmsprop", "optimizer/name"),
    (("optimizer", "learning_rate"), 0, "optimizer/learning_rate"),
    (("augmentation", "interpolation_mask"), "cubic", "augmentation/interpolation_mask"),
    (("batch_size",), 0, "batch_size"),
    (("epochs",), 0, "epochs"),
    (("data", "train_slice_band"), 0.5, "data/train_slice_band"),
    (("data", "label2_policy"), "foreground", "data/label2_policy"),
    (("data", "patch_size"), 16, "data/patch_size"),
    (("augmentation", "zoom"), [0.9], "augmentation/zoom"),
    (("mixed_precision",), "float16", "mixed_precision"),
    (("version",), "1.0", "version"),
    (("extra_top_level_key",), 1, "top level"),
])
def test_schema_violations_name_the_field(raw, tmp_path, field, value, named):
    data = copy.deepcopy(raw)
    node = data
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    with pytest.raises(errors.RecipeError, match=named):
        load_recipe(_write(tmp_path, data))
    # the same value given as an override is caught too
    override: dict = {}
    node = override
    for key in field[:-1]:
        node = node.setdefault(key, {})
    node[field[-1]] = value
    with pytest.raises(errors.RecipeError, match=named):
        load_recipe("wmh_ensemble", "flair", override)


def test_missing_required_field(raw, tmp_path):
    data = copy.deepcopy(raw)
    del data["collapse_guard"]
    with pytest.raises(errors.RecipeError, match="collapse_guard"):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize("dotted", ["optimizer.nam", "data.patch_sise", "augmentation.rotation",
                                    "loss.smoth", "collapse_guard.loss_abov", "finetune.frezee"])
def test_misspelt_nested_key_is_refused(dotted):
    """A typo in a nested key (``zoo train --set optimizer.nam=adam``) must not be ignored silently
    or fail late inside Keras: the schema refuses it and names it."""
    block, key = dotted.split(".")
    with pytest.raises(errors.RecipeError, match=key):
        load_recipe("wmh_ensemble", "flair", {block: {key: 1}})


def test_members_need_as_many_seeds():
    with pytest.raises(errors.RecipeError, match="seeds"):
        load_recipe("wmh_ensemble", "flair", {"members": 5})


def test_unknown_task_is_refused(raw):
    """A recipe naming a training task the engine does not have fails validation, naming it."""
    data = copy.deepcopy(raw)
    data["task"] = "segmentation7d"
    with pytest.raises(errors.RecipeError, match="segmentation7d"):
        validate(data)


def test_task_blocks_are_checked_by_the_task_schema(raw):
    """The common schema only says ``augmentation`` is a mapping; the segmentation2d task schema
    still refuses a missing required key inside it."""
    data = copy.deepcopy(raw)
    del data["augmentation"]["rotation_deg"]
    with pytest.raises(errors.RecipeError, match="rotation_deg"):
        validate(data)


def test_dotted_overrides_nest_and_keep_the_base():
    from zoo.training.recipe import dotted_overrides

    base = {"batch_size": 4, "data": {"intensity": "hu"}}
    out = dotted_overrides({"optimizer.learning_rate": 1e-4, "data.patch_size": [16, 64, 64], "epochs": 2}, base)
    assert out == {"batch_size": 4, "epochs": 2, "optimizer": {"learning_rate": 1e-4},
                   "data": {"intensity": "hu", "patch_size": [16, 64, 64]}}
    assert base == {"batch_size": 4, "data": {"intensity": "hu"}}  # the base is not changed
    assert dotted_overrides(None) == {}
