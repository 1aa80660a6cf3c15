"""Tests of the diamondgan data over all co-registered subjects (``synthesis_data``), per-slice
source availability and subset masking in training, and the held-out evaluation with its two
baselines fitted on training subjects only (``synthesis_heldout``; issue 18)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo import errors
from zoo.training.datasets import Subject
from zoo.training.synthesis_heldout import SUBSETS, apply_linear, fit_baselines
from zoo.training.tasks.gan_synthesis import (SynthesisSet, generator_loss, lsgan, slice_availability,
                                              supports)

CHANNELS = ["flair", "t1", "t2"]


def _set(n: int, a: float, b: float, seed: int, t2_available: bool = True) -> SynthesisSet:
    """Slices whose brain target is exactly ``a * t2 + b``; T1 is noise."""
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(-0.9, 0.9, (n, 16, 16))
    t2 = rng.uniform(-0.9, 0.9, (n, 16, 16))
    target = np.clip(a * t2 + b, -0.99, 1.0)
    target[:, :2] = -1.0  # background rows
    src = np.stack([-np.ones_like(t1), t1, t2 if t2_available else -np.ones_like(t2)], axis=-1)
    avail = np.tile([[0, 1, int(t2_available)]], (n, 1)).astype(np.int8)
    return SynthesisSet(src.astype(np.float32), target.astype(np.float32), avail, np.array(["s"] * n))


def test_baselines_are_fitted_on_training_slices_only():
    train = _set(6, 0.5, -0.2, 0)
    test = _set(3, -0.8, 0.3, 1)  # another relation: a fit on it would give (-0.8, 0.3)
    b = fit_baselines(train, CHANNELS, ("t1", "t2"))
    np.testing.assert_allclose(b.coefficients, [0.0, 0.5, -0.2], atol=1e-6)
    assert b.identity in ("t1", "t2") and b.n_pixels > 0
    pred = apply_linear(b, test.sources, CHANNELS)
    np.testing.assert_allclose(pred, np.clip(0.5 * test.sources[..., 2] - 0.2, -1, 1), atol=1e-5)
    assert fit_baselines(_set(6, 1.0, 0.0, 0), CHANNELS, ("t1", "t2")).identity == "t2"
    with pytest.raises(errors.InputError, match="t2"):
        fit_baselines(_set(4, 0.5, 0.0, 0, t2_available=False), CHANNELS, ("t2",))


def test_slice_availability_marks_constant_sources_absent():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 8, 8, 3)).astype(np.float32)
    x[1, ..., 2] = 0.3  # the T2 holds one fill value on slice 1
    ok = slice_availability(x)
    assert ok.tolist() == [[True] * 3, [True, True, False], [True] * 3]


def test_subset_masking_weights():
    import tensorflow as tf

    avail = tf.constant([[0, 1, 1], [0, 1, 0]], tf.float32)
    np.testing.assert_array_equal(supports((0, 1, 1), avail).numpy(), [1, 0])
    np.testing.assert_array_equal(supports((0, 1, 0), avail).numpy(), [1, 1])
    d = tf.constant([[0.0], [10.0]])
    assert float(lsgan(d, 0.0, tf.constant([1.0, 0.0]))) == 0.0  # sample 2 does not count
    assert float(lsgan(d, 0.0)) == 50.0
    s = tf.zeros((2, 4, 4, 3))
    cyc = tf.concat([tf.zeros((1, 4, 4, 3)), tf.ones((1, 4, 4, 3))], axis=0)
    total, c, _ = generator_loss(s, s, cyc, cyc, d * 0, d * 0, lambda_cycle=1.0, real_label=0.0,
                                 weights=tf.constant([1.0, 0.0]))
    assert float(c) == 0.0 and float(total) == 0.0
    _, c_all, _ = generator_loss(s, s, cyc, cyc, d * 0, d * 0, lambda_cycle=1.0, real_label=0.0)
    assert float(c_all) == 1.0


# --- real data ------------------------------------------------------------------------------
def test_synthesis_subjects(shared_data):
    from zoo.training.synthesis_data import synthesis_subjects

    if not (shared_data / "wmh_ms_clinical").is_dir():
        pytest.skip("wmh_ms_clinical not found")
    subjects = {s.id: s for s in synthesis_subjects(shared_data)}
    kinds = {s.meta["kind"] for s in subjects.values()}
    assert kinds == {"mni", "multicontrast", "clinical"}
    assert subjects["patient07"].meta["contrasts"] == ["flair", "t1", "t2"]
    assert "brain_mask" not in subjects["patient07"].images
    assert subjects["110218"].meta["contrasts"] == ["flair", "t1", "t2"]
    assert subjects["105465"].meta["contrasts"] == ["flair", "t1"]
    assert subjects["110218"].images["brain_mask"].is_file()
    assert subjects["110218"].images["flair"].name == "flair_raw.nii.gz"
    for absent in ("102313", "104252", "105074"):  # no source / no brain mask
        assert absent not in subjects
    assert sum(s.meta["kind"] == "clinical" for s in subjects.values()) == 9


def _crop(src: Path, dst: Path, names, box=(slice(40, 216), slice(30, 226), slice(7, 11))) -> dict:
    out = {}
    for n in names:
        img = nib.load(str(src / f"{n}.nii.gz"))
        dst.mkdir(parents=True, exist_ok=True)
        nib.save(img.slicer[box], str(dst / f"{n}.nii.gz"))
        out[n] = dst / f"{n}.nii.gz"
    return out


def test_evaluate_heldout_end_to_end(shared_data, tmp_path):
    """Untrained G1 on clinical crops: every subset and method is scored on the same slices,
    the baselines are fitted without the held-out subject, one PNG is written."""
    from PIL import Image

    from zoo.training.synthesis_heldout import evaluate_heldout

    root = shared_data / "wmh_ms_clinical"
    if not root.is_dir():
        pytest.skip("wmh_ms_clinical not found")
    subs = []
    for sid, names in (("104670", ("flair_raw", "t1", "t2", "brain_mask")),
                       ("105465", ("flair_raw", "t1")), ("110218", ("flair_raw", "t1", "t2", "brain_mask"))):
        files = _crop(root / sid, tmp_path / sid, names)
        if "brain_mask" not in files:  # the silver mask of heads/
            img = nib.load(str(shared_data / "heads" / f"bashiri_{sid}_flair" / "brain_mask.nii.gz"))
            nib.save(img.slicer[40:216, 30:226, 7:11], str(tmp_path / sid / "brain_mask.nii.gz"))
            files["brain_mask"] = tmp_path / sid / "brain_mask.nii.gz"
        images = {"flair": files.pop("flair_raw"), **files}
        subs.append(Subject(sid, images, None, "tabriz", {"kind": "clinical"}))
    result = evaluate_heldout(shared_data, ["110218"], None, tmp_path / "eval", subjects=subs, max_slices=2)
    for b in result["baselines"].values():
        assert "110218" not in b["fitted_on"]
    assert result["baselines"]["t2"]["fitted_on"] == ["104670"]  # the T1-only subject cannot fit T2
    assert sorted(result["baselines"]["t1"]["fitted_on"]) == ["104670", "105465"]
    subsets = result["results"]["110218"]["subsets"]
    assert set(subsets) == {"+".join(s) for s in SUBSETS}
    for methods in subsets.values():
        assert set(methods) == {"model", "linear", "identity"}
        assert len({m["n_slices"] for m in methods.values()}) == 1  # same slices for every method
        for m in methods.values():
            assert np.isfinite(m["psnr_db"]) and -1 <= m["ssim"] <= 1 and 0 <= m["mae"] <= 1
        # a linear map fitted on another subject still beats the untrained generator
        assert methods["linear"]["mae"] < methods["model"]["mae"]
    png = Image.open(tmp_path / "eval" / "110218.png")
    assert png.size[0] >= 6 * 240 and (tmp_path / "eval" / "table.csv").is_file()


def _margin_table():
    import pandas as pd

    rows = []
    for sid, sub, method, psnr, ssim, mae in (
            ("a", "t1+t2", "model", 20.0, 0.70, 0.05), ("a", "t1+t2", "linear", 19.0, 0.72, 0.06),
            ("b", "t1+t2", "model", 18.0, 0.60, 0.07), ("b", "t1+t2", "linear", 18.5, 0.50, 0.06),
            ("a", "t1", "model", 15.0, 0.40, 0.10), ("a", "t1", "linear", 16.0, 0.45, 0.09)):
        rows.append({"subject": sid, "subset": sub, "method": method, "psnr_db": psnr, "ssim": ssim, "mae": mae})
        rows.append({"subject": sid, "subset": sub, "method": "identity", "psnr_db": 10.0, "ssim": 0.1, "mae": 0.3})
    return pd.DataFrame(rows).drop_duplicates(["subject", "subset", "method"])


def test_margins_are_model_minus_baseline_means_with_wins_and_the_release_rule():
    from zoo.training.synthesis_heldout import margins

    both, t1 = margins(_margin_table(), "linear")
    assert (both["subset"], both["n"], t1["subset"], t1["n"]) == ("t1+t2", 2, "t1", 1)
    assert both["psnr_db_model"] == 19.0 and both["psnr_db_linear"] == 18.75 and both["psnr_db_margin"] == 0.25
    assert both["ssim_margin"] == pytest.approx(0.04) and both["mae_margin"] == 0.0
    assert (both["psnr_db_wins"], both["ssim_wins"], both["mae_wins"]) == (1, 1, 1)  # lower MAE wins
    assert both["beats"] is True and t1["beats"] is False
    assert all(r["beats"] for r in margins(_margin_table(), "identity"))
    with pytest.raises(ValueError, match="model rows"):
        margins(_margin_table().iloc[1:], "linear")


def test_margins_command_prints_both_baselines(tmp_path, capsys):
    import json

    from zoo.training.synthesis_heldout import main

    _margin_table().to_csv(tmp_path / "table.csv", index=False)
    assert main(["margins", str(tmp_path / "table.csv")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["subset"], r["baseline"]) for r in rows] == [("t1+t2", "linear"), ("t1", "linear"),
                                                             ("t1+t2", "identity"), ("t1", "identity")]
    with pytest.raises(SystemExit):
        main(["evaluate", "--weights", str(tmp_path)])  # no --holdout


def test_card_rows_are_recomputable_from_the_table(tmp_path):
    """Every measured row names its cases, and :func:`zoo.training.card_rows.check` recomputes it;
    a typed number is caught."""
    from zoo.training import card_rows as rows_mod
    from zoo.training.synthesis_heldout import card_rows

    (tmp_path / "training" / "results").mkdir(parents=True)
    _margin_table().to_csv(tmp_path / "training" / "results" / "t.csv", index=False)
    measured, comparisons = card_rows(_margin_table(), "training/results/t.csv", {"variant": "flair"})
    # t1+t2: model, linear, identity; t1: model, linear, identity; 3 metrics each
    assert len(measured) == 18 and all(r["variant"] == "flair" and r["split_type"] == "test" for r in measured)
    first = measured[0]
    assert (first["name"], first["value"], first["n"], first["cases"]) == (
        "psnr_db", 19.0, 2, {"subset": "t1+t2", "method": "model"})
    assert "BASELINE" in measured[3]["subset"] and "BASELINE" not in first["subset"]
    assert all(rows_mod.check(r, tmp_path) == [] for r in measured)
    assert rows_mod.check({**first, "value": 19.5}, tmp_path)
    assert [(c["subset"], c["baseline"]) for c in comparisons] == [
        ("t1+t2", "linear"), ("t1", "linear"), ("t1+t2", "identity"), ("t1", "identity")]


def test_card_margins_match_the_committed_table():
    """The diamondgan card's comparisons (model minus baseline per subset) are what
    :func:`margins` computes from the committed held-out table."""
    import pandas as pd

    from zoo import registry
    from zoo.training.synthesis_heldout import margins

    repo = Path(__file__).resolve().parents[1]
    rows = [r for r in registry.card("diamondgan")["metrics"].get("comparisons", []) if "table" in r]
    assert rows  # card 0.2.0 holds the issue-18 margins
    for r in rows:
        found = {m["subset"]: m for m in margins(pd.read_csv(repo / r["table"]), r["baseline"])}[r["subset"]]
        assert {k: r[k] for k in found} == found, r["what"]


def test_init_continues_patch_weights_on_whole_slices(tmp_path):
    """``train --init``: G1 weights trained on patches start a whole-slice (240x240) G1 (fully
    convolutional); G2 and the discriminators start fresh."""
    import zoo
    from zoo import weights as weights_mod
    from zoo.training.recipe import load_recipe
    from zoo.training.tasks import gan_synthesis

    card = zoo.card("diamondgan").with_options({"n_res_blocks": 1})
    patch = load_recipe("diamondgan", "flair", {"data": {"patch_size": 32}, "batch_size": 1, "gan": {"pool_size": 1}})
    g1_patch, _ = gan_synthesis.build(card, "flair", patch, 0, 1)
    weights_mod.save_weights(g1_patch, tmp_path / "member0.npz")
    whole = load_recipe("diamondgan", "flair", {"data": {"patch_size": None}, "batch_size": 1, "gan": {"pool_size": 1}})
    g1, trainer = gan_synthesis.build(card, "flair", whole, 0, 2, init_weights=tmp_path / "member0.npz")
    assert g1.input["sources"].shape[1:3] == (240, 240)
    for a, b in zip(g1.weights, g1_patch.weights):  # the run's member0.npz is float16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float16).astype(np.float32))
    fresh, _ = gan_synthesis.build(card, "flair", whole, 0, 2)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(fresh.weights, g1.weights))


def test_train_command_passes_init(tmp_path, monkeypatch, capsys):
    from zoo.training import synthesis_data, trainer
    from zoo.training.synthesis_heldout import main

    seen = {}

    def fake_train(card, recipe, subjects, out, **kwargs):
        seen.update(kwargs, subjects=[s.id for s in subjects], patch=recipe["data"]["patch_size"])
        return {"members": [{"history": {}}]}

    subjects = [Subject(i, {}, None, "x", {}) for i in ("a", "b", "c")]
    monkeypatch.setattr(synthesis_data, "synthesis_subjects", lambda shared: subjects)
    monkeypatch.setattr(trainer, "train", fake_train)
    assert main(["train", "--holdout", "b", "--out", str(tmp_path), "--set", "data.patch_size=null",
                 "--init", "p1/member0.npz"]) == 0
    assert seen["init_from"] == ["p1/member0.npz"] and seen["subjects"] == ["a", "c"] and seen["patch"] is None
    assert main(["train", "--holdout", "b", "--out", str(tmp_path)]) == 0
    assert seen["init_from"] is None
