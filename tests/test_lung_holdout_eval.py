"""Issue 17: the patient hold-out manifest of lidc_voi, `zoo evaluate lung_nodule` (nodule and
patient level, patient-bootstrap intervals, ROC PNG), the classification metrics it uses, the
input frame carried by the weights (trained_options) and the campaign script's plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from zoo import errors, metrics, registry
from zoo.training import datasets as ds
from zoo.training import lung_holdout

REPO = Path(__file__).resolve().parents[1]

# A tiny lidc_voi-like folder: patient -> [(HU inside the nodule, rating)]. The fake network of
# `planted` returns the crop's maximum intensity, i.e. p = (HU + 1200) / 1800 of the nodule.
PLANTED = {
    "P1": [(420, 5)],             # p 0.9, malignant
    "P2": [(-660, 1), (60, 4)],   # p 0.3 benign, p 0.7 malignant
    "P3": [(-120, 2)],            # p 0.6, benign (false positive)
    "P4": [(-840, 1), (-480, 2)], # p 0.2, 0.4 benign
    "P5": [(-210, 5), (0, 3)],    # p 0.55 malignant; the second is rated 3: excluded
    "P6": [(-600, 4)],            # p 1/3, malignant (false negative)
}


def _area(c) -> float:
    """Trapezoidal area under ROC points."""
    return float(np.sum(np.diff(c["fpr"]) * (c["tpr"][1:] + c["tpr"][:-1]) / 2.0))


def _p(hu: float) -> float:
    return (hu + 1200.0) / 1800.0


def make_voi(root: Path, planted=PLANTED) -> Path:
    """Write ``root/<patient>_R_<n>/{image,mask}.nii.gz`` (HU crops, lung -1000 HU, a 4x4x2
    nodule of the planted HU) and ``root/nodules.csv``."""
    rows = []
    for pid, nodules in planted.items():
        for n, (hu, rating) in enumerate(nodules, start=1):
            case = f"{pid}_R_{n}"
            (root / case).mkdir(parents=True)
            img = np.full((12, 12, 4), -1000, np.int16)
            mask = np.zeros((12, 12, 4), np.uint8)
            img[4:8, 4:8, 1:3] = hu
            mask[4:8, 4:8, 1:3] = 1
            aff = np.diag([0.7, 0.7, 2.5, 1.0])
            nib.save(nib.Nifti1Image(img, aff), root / case / "image.nii.gz")
            nib.save(nib.Nifti1Image(mask, aff), root / case / "mask.nii.gz")
            label = {1: "benign", 2: "benign", 3: "ambiguous", 4: "malignant", 5: "malignant"}[rating]
            rows.append({"case": case, "patient_id": pid, "nodule_id": n, "malignancy": rating, "label": label,
                         "diagnosis": int(rating >= 4), "diameter_mm": 2.8})
    pd.DataFrame(rows).to_csv(root / "nodules.csv", index=False)
    return root


@pytest.fixture
def planted(monkeypatch):
    """The lung_nodule entry's network output replaced by the crop's maximum intensity."""
    from zoo.entries import lung_nodule

    def fake(models, x, batch_size=8):
        return np.asarray(x, np.float64).reshape(len(x), -1).max(axis=1)

    monkeypatch.setattr(lung_nodule, "predict_probabilities", fake)
    return fake


def _subjects(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [ds.Subject(f"LIDC-IDRI-{i:04d}", {}, None, "lidc", {"has_malignant": bool(rng.random() < 0.45),
                                                                "nodules": []}) for i in range(n)]


# --- the hold-out split --------------------------------------------------------------------------
def test_split_is_deterministic_patient_disjoint_and_stratified():
    subjects = _subjects()
    train, val = lung_holdout.split_patients(subjects, 0.2, seed=42)
    again = lung_holdout.split_patients(list(reversed(subjects)), 0.2, seed=42)
    assert sorted(s.id for s in val) == sorted(s.id for s in again[1])  # order of the input does not matter
    assert not {s.id for s in train} & {s.id for s in val}
    assert {s.id for s in train} | {s.id for s in val} == {s.id for s in subjects}
    assert len(val) == round(0.2 * len(subjects))
    n_mal = sum(s.meta["has_malignant"] for s in subjects)
    val_mal = sum(s.meta["has_malignant"] for s in val)
    assert abs(val_mal - 0.2 * n_mal) <= 1  # stratified: the malignant share is kept
    other = lung_holdout.split_patients(subjects, 0.2, seed=7)[1]
    assert {s.id for s in other} != {s.id for s in val}
    with pytest.raises(ValueError):
        lung_holdout.split_patients(subjects, 1.2)


def test_holdout_files_and_manifest_parts(tmp_path):
    data = make_voi(tmp_path / "voi")
    out = tmp_path / "split" / "manifest.json"
    assert lung_holdout.main(["--data", str(data), "--out", str(out), "--fraction", "0.34"]) == 0
    first = out.read_text(encoding="utf-8")
    manifest = ds.read_manifest(out)
    assert list(manifest) == ["holdout"]
    val = ds.manifest_part(out, "validation")
    assert val == ds.manifest_part(out, "val") == manifest["holdout"]["val"] and len(val) == 2
    table = pd.read_csv(tmp_path / "split" / "manifest_nodules.csv")
    assert set(table.loc[table["part"] == "val", "patient"]) == set(val)
    assert len(table) == 9 and table["label"].isna().sum() == 1  # the rating-3 nodule is listed, unlabelled
    summary = json.loads((tmp_path / "split" / "manifest_summary.json").read_text(encoding="utf-8"))
    assert summary["parts"]["val"]["patients"] == 2 and summary["seed"] == 42
    lung_holdout.main(["--data", str(data), "--out", str(out), "--fraction", "0.34"])
    assert out.read_text(encoding="utf-8") == first  # deterministic
    with pytest.raises(errors.RecipeError):
        ds.manifest_part(out, "test")


def test_committed_split_is_what_the_command_writes(tmp_path, shared_data):
    """The card's validation figures name ``training/splits/lung_nodule_holdout.json``; the
    command with its defaults (20%, seed 42, rating labels) writes exactly that file from the
    shared lidc_voi, so the split can be checked and rebuilt, never edited by hand."""
    out = tmp_path / "manifest.json"
    assert lung_holdout.main(["--data", str(shared_data / "lidc_voi"), "--out", str(out)]) == 0
    committed = REPO / "training" / "splits" / "lung_nodule_holdout.json"
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(committed.read_text(encoding="utf-8"))
    parts = ds.read_manifest(committed)["holdout"]
    assert (len(parts["train"]), len(parts["val"])) == (274, 68) and not set(parts["train"]) & set(parts["val"])


def test_train_entry_takes_the_split(tmp_path, monkeypatch):
    """`zoo train --split`: the train partition trains, the val partition validates, nothing else."""
    from zoo.training import run as run_mod
    from zoo.training import trainer

    data = make_voi(tmp_path / "voi")
    manifest = tmp_path / "m.json"
    ds.write_manifest(manifest, {"holdout": {"train": ["P1", "P2", "P3"], "val": ["P4"]}})
    seen = {}

    def fake_train(card, recipe, subjects, out, *, val_subjects=(), **kw):
        seen["train"], seen["val"] = [s.id for s in subjects], [s.id for s in val_subjects]
        return {"members": []}

    monkeypatch.setattr(trainer, "train", fake_train)
    run_mod.train_entry("lung_nodule", data, split=manifest, phases=False, out_dir=tmp_path / "run")
    assert seen == {"train": ["P1", "P2", "P3"], "val": ["P4"]}
    with pytest.raises(errors.InputError):
        run_mod.train_entry("lung_nodule", data, split=manifest, val_ids=["P5"], phases=False)


# --- classification metrics (metrics.md §6) ---------------------------------------------------
def test_roc_auc_ties_by_hand_and_curve_area():
    y = [1, 1, 0, 0, 0]
    s = [0.8, 0.5, 0.5, 0.2, 0.5]
    # pairs (positive, negative): 0.8 beats all 3; 0.5 ties two 0.5s (1/2 each) and beats 0.2: 5/6
    assert metrics.roc_auc(y, s) == pytest.approx(5 / 6)
    c = metrics.roc_curve(y, s)
    assert c["fpr"][0] == 0 and c["tpr"][0] == 0 and c["fpr"][-1] == 1 and c["tpr"][-1] == 1
    assert _area(c) == pytest.approx(5 / 6)  # the tie moves diagonally
    assert c["fpr"].tolist() == pytest.approx([0, 0, 2 / 3, 1]) and c["tpr"].tolist() == [0, 0.5, 1, 1]
    rng = np.random.default_rng(1)
    yy, ss = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # many ties
    cc = metrics.roc_curve(yy, ss)
    assert _area(cc) == pytest.approx(metrics.roc_auc(yy, ss))
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        pass  # scikit-learn is not a dependency; the hand-computed case above stands
    else:
        assert metrics.roc_auc(yy, ss) == pytest.approx(roc_auc_score(yy, ss))
    with pytest.raises(errors.MetricError):
        metrics.roc_curve([1, 1], [0.2, 0.3])


def test_group_max_patient_rule():
    g = metrics.group_max(["a", "b", "a", "c"], [0, 0, 1, 0], [0.2, 0.6, 0.4, 0.1])
    assert g["group"].tolist() == ["a", "b", "c"]
    assert g["y_true"].tolist() == [1, 0, 0] and g["score"].tolist() == [0.4, 0.6, 0.1] and g["n"].tolist() == [2, 1, 1]


def test_cluster_bootstrap_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)

    def stat(draw):
        return {"roc_auc": metrics.roc_auc(y[draw], s[draw]), "mean": float(s[draw].mean())}

    a = metrics.cluster_bootstrap(60, stat, 300, seed=5)
    b = metrics.cluster_bootstrap(60, stat, 300, seed=5)
    assert a == b and a["n_resamples"] == 300
    for k, point in (("roc_auc", metrics.roc_auc(y, s)), ("mean", s.mean())):
        ci = a["intervals"][k]
        assert ci["low"] < point < ci["high"] and ci["n_valid"] == 300
    one_class = metrics.cluster_bootstrap(3, lambda d: {"x": float("nan") if d[0] == 0 else 1.0}, 50, seed=0)
    assert one_class["intervals"]["x"]["n_valid"] < 50


# --- zoo evaluate lung_nodule ------------------------------------------------------------------
def _hand_figures():
    """The planted case by hand (threshold 0.5, rating-3 nodule excluded):
    nodules p/label: P1 .9/1, P2 .3/0 .7/1, P3 .6/0, P4 .2/0 .4/0, P5 .55/1, P6 1/3/1.
    Predicted malignant: .9 .7 .6 .55 -> TP 3 (.9 .7 .55), FP 1 (.6), FN 1 (1/3), TN 3.
    AUC: positives .9 .7 .55 .333 vs negatives .3 .6 .2 .4: .9 and .7 beat all 4 (8), .55 beats 3,
    .333 beats .3 and .2 (2) -> 13/16.
    Patients (max p, label): P1 .9/1, P2 .7/1, P3 .6/0, P4 .4/0, P5 .55/1, P6 .333/1 -> TP 3, FP 1,
    FN 1, TN 1; AUC vs negatives .6 .4: .9 and .7 beat both (4), .55 beats .4 (1), .333 none -> 5/8."""
    return ({"roc_auc": 13 / 16, "accuracy": 6 / 8, "precision": 3 / 4, "recall": 3 / 4},
            {"roc_auc": 5 / 8, "accuracy": 4 / 6, "precision": 3 / 4, "recall": 3 / 4})


def test_score_by_hand():
    from zoo.training.evaluate_nodules import score

    rows = [{"patient": pid, "label": int(r >= 4), "p_malignant": _p(hu)}
            for pid, nodules in PLANTED.items() for hu, r in nodules if r != 3]
    res = score(rows, 0.5, n_resamples=200, seed=1)
    nodule, patient = _hand_figures()
    for level, want in (("nodule", nodule), ("patient", patient)):
        for k, v in want.items():
            assert res[level][k] == pytest.approx(v), (level, k)
    assert res["nodule"]["n"] == 8 and res["patient"]["n"] == 6
    assert res["bootstrap"]["n_resamples"] == 200


def test_zoo_evaluate_lung_nodule_cli(tmp_path, planted, capsys):
    """The CLI path on a fake lidc_voi folder, the validation part of a manifest, own weights
    (the shipped file; the network output is planted): hand-checked figures, files, PNG."""
    from PIL import Image

    from zoo.cli import main

    data = make_voi(tmp_path / "voi")
    manifest = tmp_path / "m.json"
    ds.write_manifest(manifest, {"holdout": {"train": ["P1"], "val": ["P2", "P3", "P4", "P5", "P6"]}})
    out = tmp_path / "eval"
    rc = main(["evaluate", "lung_nodule", "--data", str(data), "--manifest", str(manifest), "--part", "validation",
               "--bootstrap", "200", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "nodule level (n 7)" in text and "patient level (n 5)" in text
    nod = pd.read_csv(out / "nodules.csv")
    assert set(nod["patient"]) == {"P2", "P3", "P4", "P5", "P6"} and len(nod) == 7
    p = dict(zip(nod["case"], nod["p_malignant"]))
    assert p["P2_R_2"] == pytest.approx(_p(60), abs=1e-6) and p["P6_R_1"] == pytest.approx(_p(-600), abs=1e-6)
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    # without P1 (.9, malignant): nodules TP 2 FP 1 FN 1 TN 3; AUC (.7: 4, .55: 3, .333: 2) / 12
    assert s["nodule"]["roc_auc"] == pytest.approx(9 / 12) and s["nodule"]["accuracy"] == pytest.approx(5 / 7)
    # patients P2 .7/1, P3 .6/0, P4 .4/0, P5 .55/1, P6 .333/1: TP 2 FP 1 FN 1 TN 1; AUC (2 + 1 + 0) / 6
    assert s["patient"]["roc_auc"] == pytest.approx(3 / 6) and s["patient"]["recall"] == pytest.approx(2 / 3)
    assert s["n_nodules_excluded_rating3"] == 1 and s["part"] == "validation"
    assert s["frame"] == {"pad_shape": [88, 92, 62], "downsample": 2}  # the shipped weights' record (phase 1)
    for level in ("nodule", "patient"):
        for k in ("roc_auc", "accuracy"):
            ci = s["intervals"][level][k]
            assert ci["low"] <= s[level][k] <= ci["high"]
    with Image.open(out / "roc.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400
    assert set(pd.read_csv(out / "roc_curve.csv")["level"]) == {"nodule", "patient"}


# --- the frame carried by the weights ------------------------------------------------------------
def test_card_frame_matches_its_weights_record():
    card = registry.card("lung_nodule")
    for rec in card.variant("default")["weights"]:
        assert rec["trained_options"] == {k: card.option_value(k) for k in ("pad_shape", "downsample")}


def test_frame_mismatch_is_a_typed_error():
    with pytest.raises(errors.OptionMismatchError, match="pad_shape"):
        registry.load("lung_nodule", options={"pad_shape": [88, 91, 62], "downsample": 1})


def test_own_weights_bring_their_frame(tmp_path):
    """A run folder whose record says 88x91x62 (phase 2) predicts at it; another frame is refused."""
    shipped = REPO / "weights" / "lung_nodule" / "default" / "member0.npz"
    run = tmp_path / "phase1"
    run.mkdir()
    os.symlink(shipped, run / "member0.npz")  # the network is size-agnostic: any member file loads
    (run / "run_record.json").write_text(json.dumps(
        {"entry": "lung_nodule", "trained_options": {"pad_shape": [88, 91, 62], "downsample": 1}}), encoding="utf-8")
    model = registry.load("lung_nodule", weights=str(run))
    assert tuple(model.models[0].inputs[0].shape[1:]) == (88, 91, 62, 1)
    assert model.card.option_value("pad_shape") == [88, 91, 62]
    same = registry.load("lung_nodule", weights=str(run), options={"downsample": 1})
    assert same.card.option_value("downsample") == 1
    with pytest.raises(errors.OptionMismatchError, match="88, 91, 62"):
        registry.load("lung_nodule", weights=str(run), options={"pad_shape": [88, 92, 62], "downsample": 2})


# --- the campaign script ---------------------------------------------------------------------
def test_campaign_plan_dry_run(tmp_path):
    """DRY_RUN=1 prints the steps in order without running them: split, cost, phase 1 on the
    training part (stopped after phase 1), evaluation of the validation part, phase 1 on all
    patients, release of both (default, and the holdout run as variant holdout); phase 2 only with
    PHASE2=1."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "c"), "PY": "python3", "ZOO": "zoo"}
    out = subprocess.run(["bash", str(REPO / "training/campaigns/lung_issue17.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    cmds = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    assert "zoo.training.lung_holdout" in cmds[0] and "lung_phase_cost.py" in cmds[1]
    assert "--phases phase1 " in cmds[1] and "--batch 16" in cmds[1]
    assert cmds[2].startswith("+ zoo train lung_nodule") and "--split" in cmds[2] and "--stop-after phase1" in cmds[2]
    assert cmds[3].startswith("+ zoo evaluate lung_nodule") and "--part val" in cmds[3] and "holdout/run/phase1" in cmds[3]
    assert cmds[4].startswith("+ zoo train") and "--split" not in cmds[4] and "final/run" in cmds[4]
    assert "zoo.training.release" in cmds[5] and "final/run/phase1" in cmds[5]
    assert "holdout/run/phase1" in cmds[6] and "--as-variant holdout" in cmds[6]
    assert len(cmds) == 7 and "phase2" not in out.replace("phase1,phase2a", "")
    out2 = subprocess.run(["bash", str(REPO / "training/campaigns/lung_issue17.sh")],
                          env={**env, "PHASE2": "1"}, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--phases phase1,phase2a,phase2b" in out2 and "holdout/run/phase2b" in out2 and "release_phase2" in out2
