"""zoo.training.crossval: resumable folds and --init-from continuation (training and scoring are
replaced by recorders; no network is trained here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoo import errors
from zoo.training import crossval
from zoo.training.datasets import Subject


def _subjects(n_people=5):
    return [Subject(f"p{p}_{c}", {"image": Path(f"p{p}_{c}.nii.gz")}, Path(f"p{p}_{c}_mask.nii.gz"), None,
                    {"subject": f"p{p}", "contrast": c}) for p in range(n_people) for c in ("t1w", "flair")]


class _Calls(list):
    """Training calls (the list) and scoring calls (``scored``)."""

    def __init__(self):
        super().__init__()
        self.scored = []


@pytest.fixture()
def fake_campaign(monkeypatch):
    """crossval.run with the data, training and scoring replaced; records every training call."""
    import pandas as pd

    from zoo.training import evaluate as evaluate_mod
    from zoo.training import run as run_mod

    calls = _Calls()
    subjects = _subjects()
    monkeypatch.setattr(run_mod, "detect_layout", lambda data: "fake")
    monkeypatch.setattr(run_mod, "load_subjects", lambda data, layout, inputs: list(subjects))

    def train_entry(name, data, *, out_dir, val_ids=(), init_from=None, **kwargs):
        calls.append({"out": Path(out_dir).name, "val": sorted(val_ids), "init_from": init_from, "kwargs": kwargs})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "member0.npz").write_bytes(b"weights")

    def evaluate(name, part, out_dir, weights, options=None):
        calls.scored.append({"eval": Path(out_dir).relative_to(Path(out_dir).parents[1]).as_posix(), "options": options})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"subject": s.id, "dsc": 0.9, "jaccard": 0.8, "hd95_mm": 5.0, "brain_ml_ref": 1.0,
                       "brain_ml_pred": 1.0} for s in part]).to_csv(Path(out_dir) / "metrics.csv", index=False)

    monkeypatch.setattr(run_mod, "train_entry", train_entry)
    monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
    return calls


def test_folds_keep_a_person_together_and_a_finished_fold_is_skipped(tmp_path, fake_campaign):
    kw = dict(k=5, seed=0, group="subject", group_by="contrast")
    summary = crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", final=True, **kw)
    assert [c["out"] for c in fake_campaign] == ["fold0", "fold1", "fold2", "fold3", "fold4", "final"]
    for c in fake_campaign[:5]:
        assert len({v.split("_")[0] for v in c["val"]}) == 1 and len(c["val"]) == 2  # both scans of one person
    assert summary["n_cases"] == 10 and all(c["init_from"] is None for c in fake_campaign)
    crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", final=True, **kw)
    assert len(fake_campaign) == 6 and len(fake_campaign.scored) == 5  # nothing retrained or rescored


def test_init_from_continues_each_fold_from_its_own_model(tmp_path, fake_campaign):
    kw = dict(k=5, seed=0, group="subject", group_by="contrast")
    crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", final=True, **kw)
    fake_campaign.clear()
    crossval.run("skull_stripping", tmp_path / "data", tmp_path / "b", final=True, init_from=tmp_path / "a", **kw)
    assert [c["init_from"] for c in fake_campaign] == [
        str(tmp_path / "a" / name / "member0.npz") for name in ("fold0", "fold1", "fold2", "fold3", "fold4", "final")]


def test_tagged_scoring_reuses_the_fold_models_with_an_option(tmp_path, fake_campaign):
    kw = dict(k=5, seed=0, group="subject", group_by="contrast")
    crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", **kw)
    fake_campaign.clear()
    fake_campaign.scored.clear()
    summary = crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", options={"tta": "flip_x"},
                           tag="tta", **kw)
    assert fake_campaign == []  # scored again, nothing trained
    assert [c["eval"] for c in fake_campaign.scored] == [f"fold{i}/eval-tta" for i in range(5)]
    assert all(c["options"] == {"tta": "flip_x"} for c in fake_campaign.scored)
    assert summary["options"] == {"tta": "flip_x"} and summary["n_cases"] == 10
    assert (tmp_path / "a" / "summary-tta.json").is_file() and (tmp_path / "a" / "metrics-tta.csv").is_file()
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["options"] == {}
    with pytest.raises(errors.InputError, match="tag"):
        crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", options={"tta": "flip_x"}, **kw)


def test_final_only_trains_the_final_model_with_the_folds_settings(tmp_path, fake_campaign):
    argv = ["skull_stripping", "--data", str(tmp_path / "data"), "--k", "5", "--group", "subject",
            "--set", "epochs=20", "--set", "data.steps_per_epoch=50", "--batch-size", "1"]
    assert crossval.main([*argv, "--out", str(tmp_path / "cv"), "--final-only"]) == 0
    assert [(c["out"], c["val"]) for c in fake_campaign] == [("final", [])]  # no fold, nothing held out or scored
    crossval.main([*argv, "--out", str(tmp_path / "cv"), "--final-only"])
    assert len(fake_campaign) == 1  # done: not retrained
    crossval.main([*argv, "--out", str(tmp_path / "folds"), "--final"])
    final_only, folds_final = fake_campaign[0], fake_campaign[-1]
    assert len(fake_campaign.scored) == 5
    assert folds_final["out"] == "final" and final_only["kwargs"] == folds_final["kwargs"]
    assert final_only["kwargs"]["recipe_set"] == {"epochs": 20, "data.steps_per_epoch": 50}


def test_init_from_other_folds_is_refused(tmp_path, fake_campaign):
    crossval.run("skull_stripping", tmp_path / "data", tmp_path / "a", k=5, seed=0, group="subject")
    manifest = tmp_path / "a" / "manifest.json"
    folds = json.loads(manifest.read_text())
    folds["fold0"]["val"], folds["fold1"]["val"] = folds["fold1"]["val"], folds["fold0"]["val"]
    manifest.write_text(json.dumps(folds))
    fake_campaign.clear()
    with pytest.raises(errors.InputError, match="held-out"):
        crossval.run("skull_stripping", tmp_path / "data", tmp_path / "b", k=5, seed=0, group="subject",
                     init_from=tmp_path / "a")
    assert fake_campaign == []  # refused before any training
    with pytest.raises(errors.InputNotFoundError):
        crossval.run("skull_stripping", tmp_path / "data", tmp_path / "c", k=5, seed=0, group="subject",
                     init_from=tmp_path / "missing")


def test_chained_mask_eval_picks_the_fold_that_held_the_person_out(tmp_path):
    from zoo.training.chained_mask_eval import fold_weights_for

    run = tmp_path / "cv"
    folds = {"fold0": {"train": ["bashiri_2_t1w", "bashiri_2_flair"], "val": ["bashiri_1_t1w", "bashiri_1_flair"]},
             "fold1": {"train": ["bashiri_1_t1w", "bashiri_1_flair"], "val": ["bashiri_2_t1w", "bashiri_2_flair"]}}
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(folds))
    with pytest.raises(errors.InputNotFoundError, match="not finished"):
        fold_weights_for(run, "bashiri_2")
    for f in folds:
        (run / f).mkdir()
        (run / f / "member0.npz").write_bytes(b"w")
    assert fold_weights_for(run, "bashiri_1") == run / "fold0" / "member0.npz"
    assert fold_weights_for(run, "bashiri_2") == run / "fold1" / "member0.npz"
    with pytest.raises(errors.InputNotFoundError, match="no fold"):
        fold_weights_for(run, "bashiri_3")
    folds["fold1"]["train"].append("bashiri_2_t2w")  # a person on both sides: not grouped
    (run / "manifest.json").write_text(json.dumps(folds))
    with pytest.raises(errors.InputError, match="not grouped"):
        fold_weights_for(run, "bashiri_2")
