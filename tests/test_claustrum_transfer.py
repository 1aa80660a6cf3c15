"""Adult -> neonatal transfer (Neubauer, Li et al. 2022; spec neonatal_claustrum.md §6-§8,
issue 4 part 5): the transfer recipe, fine-tuning a few steps from one set of adult weights
through the shared trainer (segmentation2d task), and the ``zoo finetune`` command."""

from __future__ import annotations

import csv
import json

import keras
import nibabel as nib
import numpy as np
import pytest

import zoo
from zoo import errors, weights
from zoo.entries import claustrum_common as cc
from zoo.training import datasets
from zoo.training.recipe import load_recipe


def test_transfer_recipe_values():
    r = load_recipe("neonatal_claustrum")
    assert (r["epochs"], r["batch_size"], r["optimizer"]["learning_rate"]) == (30, 60, 2e-4)
    assert r["finetune"]["freeze"] == []                  # all layers trainable (the paper, D8)
    aug = r["augmentation"]
    assert aug["translate"] == 0.1 and aug["rotation_deg"] == 15 and aug["zoom"] == [0.9, 1.1]
    assert abs(np.degrees(aug["shear_rad"]) - 4.0) < 0.01
    assert aug["interpolation_mask"] == "bilinear" and aug["fill_mode"] == "constant"
    assert r["collapse_guard"]["loss_above"] == 0.996 and r["data"]["train_slice_band"] == 0.25


def test_augmentation_keeps_image_and_mask_aligned():
    """The centroid of an augmented square mask moves with the image (spec §14); translation
    and linear mask interpolation (soft edges) as the neonatal recipe."""
    from zoo.training.augment import augment_batch

    img = np.zeros((4, 64, 64, 1), np.float32)
    img[:, 20:36, 24:40] = 1.0
    cfg = dict(load_recipe("neonatal_claustrum")["augmentation"])
    xa, ya = augment_batch(img, img.copy(), np.array([3, 4]), cfg)
    xa, ya = np.asarray(xa)[..., 0], np.asarray(ya)[..., 0]
    np.testing.assert_allclose(xa, ya, atol=1e-6)     # same transform, same (linear) interpolation
    assert ((ya > 0) & (ya < 1)).any()                  # soft edges
    moved = [np.abs(np.argwhere(y > 0.5).mean(0) - [27.5, 31.5]).max() for y in ya]
    assert max(moved) > 0.5                             # the translation is applied
    # translation alone: the square moves by at most 10 % of the size, without deformation
    only = {"rotation_deg": 0, "shear_rad": 0, "zoom": [1, 1], "translate": 0.1,
            "interpolation_image": "nearest", "fill_mode": "constant"}
    xt, _ = augment_batch(img, img.copy(), np.array([5, 6]), only)
    for y in np.asarray(xt)[..., 0]:
        shift = np.argwhere(y > 0.5).mean(0) - [27.5, 31.5]
        assert (np.abs(shift) <= 6.4 + 0.5).all() and (y > 0.5).sum() == 256


def _subjects(tmp_path, n=2):
    """Tiny 0.5 mm T2w-like volumes (skull-stripped box, a bright two-sided 'claustrum')."""
    rows = []
    aff = np.diag([0.5, 0.5, 0.5, 1.0])
    rng = np.random.default_rng(0)
    for s in range(n):
        img = np.zeros((48, 48, 16), np.float32)
        img[4:44, 4:44, 2:14] = 100 + rng.normal(0, 5, (40, 40, 12))
        lab = np.zeros(img.shape, np.uint8)
        lab[12:15, 18:30, 4:12] = 1
        lab[33:36, 18:30, 4:12] = 2
        img[lab > 0] = 180.0
        d = tmp_path / f"s{s}"
        d.mkdir()
        nib.save(nib.Nifti1Image(img, aff), d / "t2.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), d / "label.nii.gz")
        rows.append({"subject": f"s{s}", "site": "synthetic", "t2": f"s{s}/t2.nii.gz", "label": f"s{s}/label.nii.gz"})
    path = tmp_path / "subjects.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["subject", "site", "t2", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


class _Snapshot(keras.callbacks.Callback):
    """Records the trained network's weights when fit begins."""

    def on_train_begin(self, logs=None):
        self.start = [np.asarray(w).copy() for w in self.model.net.weights]


def _adult_weights(path, seed):
    """Distinctive 'adult' weights (not a fresh initialisation), saved as the zoo's npz."""
    adult = cc.build_member(zoo.card("claustrum_multiview"), "multiview", 0)
    rng = np.random.default_rng(seed)
    for w in adult.weights:
        w.assign(rng.normal(0, 0.05, w.shape).astype("float32"))
    weights.save_weights(adult, path)
    return [np.asarray(w) for w in weights_loaded(path)]


def _changed(run_member, adult_w):
    tuned = cc.build_member(zoo.card("neonatal_claustrum"), "multiview", 0)
    weights.load_weights(tuned, run_member)
    return {v.path.split("/")[0]: not np.array_equal(np.asarray(v), a)  # float16 storage on both sides
            for v, a in zip(tuned.weights, adult_w)}


def test_finetune_starts_from_the_adult_weights_and_changes_them(tmp_path):
    """All layers trainable (the paper): training begins exactly at the adult weights, and
    every layer moves."""
    from zoo.training.trainer import train

    adult_w = _adult_weights(tmp_path / "adult.npz", seed=7)
    card = zoo.card("neonatal_claustrum")
    recipe = load_recipe("neonatal_claustrum")
    recipe["data"]["patch_size"] = 64      # CPU test: 64x64 patches of the 200x200 slices
    recipe["batch_size"] = 4
    subjects = datasets.from_csv(_subjects(tmp_path), ["t2"])
    snap = _Snapshot()
    record = train(card, recipe, subjects, tmp_path / "run", members=1, epochs=1, steps_per_epoch=2,
                   init_from=[tmp_path / "adult.npz"], callbacks=[snap], verbose=0)
    for start, ref in zip(snap.start, adult_w):
        np.testing.assert_array_equal(start, ref)          # training started from the adult weights
    changed = _changed(tmp_path / "run" / "member0.npz", adult_w)
    assert all(changed.values()), [k for k, v in changed.items() if not v]
    assert record["members"][0]["frozen_layers"] == []


def test_zoo_finetune_coronal_run_from_an_adult_ensemble_with_frozen_encoder(tmp_path):
    """``zoo finetune --from ADULT_DIR --option view=coronal``: the run starts from the adult
    coronal member 0 (member3.npz, spec D4) and, with the encoder frozen, only the decoder moves."""
    from zoo.cli import main

    adult_dir = tmp_path / "adult"
    adult_dir.mkdir()
    ws = [_adult_weights(adult_dir / f"member{i}.npz", seed=i) for i in range(6)]
    data = _subjects(tmp_path)
    rc = main(["finetune", "neonatal_claustrum", "--from", str(adult_dir), "--data", str(data),
               "--option", "view=coronal", "--members", "1", "--epochs", "1", "--steps-per-epoch", "2",
               "--batch-size", "4", "--set", "data.patch_size=64", "--set", "finetune.freeze=[enc]",
               "--out", str(tmp_path / "run")])
    assert rc == 0
    record = json.loads((tmp_path / "run" / "run_record.json").read_text(encoding="utf-8"))
    assert record["init_from"] == [str(adult_dir / "member3.npz")]
    changed = _changed(tmp_path / "run" / "member0.npz", ws[3])
    assert not any(v for k, v in changed.items() if k.startswith("enc"))   # frozen = adult coronal_0
    assert changed["head"] and changed["dec1_conv2"] and changed["bottleneck_conv1"]


def test_select_start_weights_follows_the_view():
    files = [f"member{i}.npz" for i in range(6)]
    neo, adult = zoo.card("neonatal_claustrum"), zoo.card("claustrum_multiview")
    assert cc.select_start_weights(neo, files) == ["member0.npz"]
    assert cc.select_start_weights(neo.with_options({"view": "coronal"}), files) == ["member3.npz"]
    assert cc.select_start_weights(adult.with_options({"view": "coronal"}), files) == files[3:]
    assert cc.select_start_weights(neo, files[:1]) == files[:1]


def weights_loaded(path):
    m = cc.build_member(zoo.card("neonatal_claustrum"), "multiview", 0)
    weights.load_weights(m, path)
    return m.weights


def test_zoo_finetune_from_the_adult_entry_without_weights_says_so(tmp_path):
    from zoo.cli import main

    data = _subjects(tmp_path, n=1)
    rc = main(["finetune", "neonatal_claustrum", "--from", "claustrum_multiview", "--data", str(data),
               "--out", str(tmp_path / "run")])
    assert rc != 0
    with pytest.raises(errors.WeightsNotAvailableError, match="claustrum_multiview ships no weights"):
        from zoo.training.run import start_weights
        start_weights("claustrum_multiview", "multiview")
