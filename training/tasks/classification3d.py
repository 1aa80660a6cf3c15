"""Training task ``classification3d``: one label per 3D crop (``lung_nodule``, spec
``specs/lung_nodule.md`` §2-§6), plus the patient-level k-fold cross-validation that measures it.

    subjects (one per patient; nodules in meta["nodules"], e.g. datasets.lidc_voi)
    -> prepare: each labelled nodule through the entry's own preprocessing (the code predict
       uses: HU check, window, dilated mask, tight box, pad)          -> (N, P, Q, R, 1), labels
    -> datasets: endless tf.data stream, malignant nodules twice per epoch (oversampling, §5)
    -> Classification3DTrainer: 3D rotation/scaling inside train_step (§6), softmax
       cross-entropy on 2 logits, the recipe's optimizer and one-cycle schedule (§5)

``python -m zoo.training.tasks.classification3d --data DIR --out DIR`` runs the k-fold
cross-validation by patient (:func:`cross_validate`) and optionally trains the final model on
every patient; see ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import weights as weights_mod
from zoo.card import ModelCard
from zoo.io import read_volume
from zoo.training.augment import augment_volumes
from zoo.training.optim import make_optimizer
from zoo.training.tasks import Prepared


def _entry(card: ModelCard):
    from zoo import registry

    return importlib.import_module(registry.ENTRIES[card.id])


# --- the three task functions ---------------------------------------------------------------
def load_crops(card: ModelCard, subjects: Sequence[Any], intensity: str = "hu") -> dict[str, Any]:
    """Network inputs and labels of every labelled nodule of ``subjects``.

    Each nodule (``subject.meta["nodules"]``: dicts with ``image``, ``mask``, ``label``, ``case``)
    goes through the entry's :func:`scale_intensities` and :func:`nodule_inputs`, the same code
    as prediction. Nodules with ``label None`` (rating 3) are skipped.

    Returns:
        ``{"x": float32 (N, P, Q, R, 1), "y": int32 (N,), "case": [...], "patient": [...]}``.
    """
    entry = _entry(card)
    xs, ys, cases, patients = [], [], [], []
    for s in subjects:
        for n in s.meta.get("nodules", ()):
            if n["label"] is None:
                continue
            ct = read_volume(str(n["image"]), "ct")
            mask = read_volume(str(n["mask"]), "nodule_mask")
            scaled = entry.scale_intensities(ct.array, card, intensity)
            x, _, _ = entry.nodule_inputs(card, scaled, (np.asarray(mask.array) > 0).astype(np.int32))
            xs.append(x[0])
            ys.append(int(n["label"]))
            cases.append(n["case"])
            patients.append(s.id)
    shape = entry.input_shape(card)
    return {"x": np.stack(xs) if xs else np.zeros((0, *shape), np.float32), "y": np.asarray(ys, np.int32),
            "case": cases, "patient": patients}


def prepare(card: ModelCard, variant: str, recipe: Mapping[str, Any], subjects: Sequence[Any],
            val_subjects: Sequence[Any] = (), *, resample: bool = False) -> Prepared:
    """Training (and validation) crops (:func:`load_crops`, ``recipe["data"]["intensity"]``)."""
    intensity = recipe["data"].get("intensity", "hu")
    train = load_crops(card, subjects, intensity)
    val = load_crops(card, val_subjects, intensity) if val_subjects else None
    info = {"n_train_nodules": int(len(train["y"])), "n_train_malignant": int(train["y"].sum()),
            "n_val_nodules": 0 if val is None else int(len(val["y"])), "input_shape": list(train["x"].shape[1:])}
    return Prepared(train, val, info)


def build(card: ModelCard, variant: str, recipe: Mapping[str, Any], member: int, seed: int, *,
          init_weights: Any = None, freeze: Sequence[str] = ()) -> tuple[keras.Model, keras.Model]:
    """The entry's network in a compiled :class:`Classification3DTrainer` (augmentation in
    ``train_step``), softmax cross-entropy on the logits, the recipe's optimizer/schedule."""
    from zoo.training.trainer import freeze_layers

    net = _entry(card).build_member(card, variant, member)
    if init_weights is not None:
        weights_mod.load_weights(net, init_weights)
    freeze_layers(net, freeze)
    model = Classification3DTrainer(net, recipe["augmentation"], recipe.get("schedule"), seed)
    model(keras.ops.zeros((1, *net.inputs[0].shape[1:])))
    model.compile(optimizer=make_optimizer(recipe["optimizer"], model.schedule_spec()),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return net, model


def datasets(prepared: Prepared, recipe: Mapping[str, Any], seed: int):
    """Endless training stream with the malignant nodules ``data.oversample_malignant`` times
    per epoch (spec §5: twice), its epoch length, and the validation set (no oversampling)."""
    batch = int(recipe["batch_size"])
    factor = int(recipe["data"].get("oversample_malignant", 2))
    order = epoch_indices(prepared.train["y"], factor)
    train_ds = make_dataset(prepared.train, order, batch, seed)
    steps = max(1, math.ceil(len(order) / batch))
    val = prepared.val
    if val is None or not len(val["y"]):
        return train_ds, steps, None, None
    val_ds = tf.data.Dataset.from_tensor_slices((val["x"], val["y"])).batch(batch)
    return train_ds, steps, val_ds, math.ceil(len(val["y"]) / batch)


def epoch_indices(labels: np.ndarray, oversample_malignant: int = 2) -> np.ndarray:
    """Indices of one epoch: every benign sample once, every malignant one
    ``oversample_malignant`` times (spec §5), in index order (shuffled by the stream)."""
    y = np.asarray(labels)
    reps = np.where(y == 1, int(oversample_malignant), 1)
    return np.repeat(np.arange(len(y)), reps)


def make_dataset(data: Mapping[str, Any], order: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless ``(x, y)`` batches; each pass over ``order`` is reshuffled with a seeded generator."""
    x, y = data["x"], data["y"]

    def gen():
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(order):
                yield x[i], y[i]

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec(x.shape[1:], tf.float32), tf.TensorSpec((), tf.int32)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Classification3DTrainer(keras.Model):
    """Wraps the classifier: ``train_step`` augments the batch on the device (spec §6, recipe
    ``augmentation``: ``rotation_deg``, ``p_rotation``, ``scale``, ``p_scale``) before Keras' own
    step. ``fit`` sets a one-cycle schedule's ``total_steps`` to ``epochs x steps_per_epoch``
    when the recipe leaves it null."""

    def __init__(self, net: keras.Model, augmentation: Mapping[str, Any], schedule: Any, seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.net = net
        self.augmentation = dict(augmentation)
        self._schedule = dict(schedule) if isinstance(schedule, Mapping) else schedule
        self.seed_generator = keras.random.SeedGenerator(seed)

    def schedule_spec(self) -> Any:
        """The recipe's schedule, with a provisional ``total_steps`` (set again by ``fit``)."""
        if isinstance(self._schedule, dict) and self._schedule.get("name") == "one_cycle":
            self._schedule.setdefault("total_steps", None)
            return {**self._schedule, "total_steps": self._schedule["total_steps"] or 1}
        return self._schedule

    def fit(self, *args, epochs: int = 1, steps_per_epoch: int | None = None, **kwargs):
        lr = getattr(self.optimizer, "_learning_rate", None)
        if (isinstance(self._schedule, dict) and not self._schedule.get("total_steps")
                and hasattr(lr, "total_steps") and steps_per_epoch):
            lr.total_steps = int(epochs) * int(steps_per_epoch)
        return super().fit(*args, epochs=epochs, steps_per_epoch=steps_per_epoch, **kwargs)

    def call(self, x, training=False):
        return self.net(x, training=training)

    def train_step(self, data):
        x, y = data
        a = self.augmentation
        if a.get("p_rotation", 0.0) > 0 or a.get("p_scale", 0.0) > 0:
            x = augment_volumes(x, keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator),
                                float(a.get("rotation_deg", 35.0)), tuple(a.get("scale", (1.0, 1.1))),
                                float(a.get("p_rotation", 0.5)), float(a.get("p_scale", 0.5)))
        return super().train_step((x, y))


# --- cross-validation by patient --------------------------------------------------------------
def cross_validate(data: str | Path, out_dir: str | Path, *, folds: int = 5, seed: int = 42,
                   recipe: str = "lung_nodule", recipe_set: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None, epochs: int | None = None,
                   final: bool = False, only_folds: Sequence[int] | None = None,
                   command: str | None = None, phases: bool = True, verbose: Any = 2) -> dict[str, Any]:
    """K-fold cross-validation by patient on a ``lidc_voi`` folder, then optionally the final
    model on every patient.

    Patients are dealt into ``folds`` folds stratified by "has a malignant nodule"
    (:func:`zoo.training.datasets.kfold`, seed ``seed``); each fold trains with the recipe on the
    other folds and predicts its own nodules with the same preprocessing as ``predict``.
    Nodule-level accuracy, precision, recall (malignant positive, threshold 0.5) and ROC AUC are
    computed per fold and on the pooled out-of-fold predictions (:mod:`zoo.metrics`).

    A recipe with ``phases`` (progressive resizing) trains every fold through all of them
    (:func:`zoo.training.phases.train_phases`, ``epochs`` overriding each phase's) and predicts
    with the last phase's card options; ``phases=False`` makes each fold one run.

    Writes ``out_dir/manifest.json`` (patient ids per fold), ``fold{i}/`` runs,
    ``cv_predictions.csv``, ``cv_metrics.json`` and, with ``final``, ``final/member0.npz``.
    Returns the metrics record.
    """
    import pandas as pd

    from zoo import metrics, registry
    from zoo.training import datasets as ds
    from zoo.training.recipe import dotted_overrides, load_recipe
    from zoo.training.trainer import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = load_recipe(recipe, None, dotted_overrides(recipe_set))
    card = registry.card(rec["entry"]).with_options(dict(options or {}))
    subjects = ds.lidc_voi(data, label_source=rec["data"].get("label_source", "rating"))
    splits = ds.kfold(subjects, folds, seed=seed, stratify_by="has_malignant")
    ds.write_manifest(out / "manifest.json", {f"fold{i}": (tr, va) for i, (tr, va) in enumerate(splits)})
    entry = _entry(card)
    staged = bool(phases and rec.get("phases"))
    if staged:  # predictions use the preprocessing of the last phase
        from zoo.training.phases import phase_card, train_phases

        eval_card = phase_card(card, rec["phases"][-1])
    else:
        rec = {**rec, "phases": None}
        eval_card = card

    def fit(subjs, folder):
        def run(run_card, run_recipe, run_out, *, init_from=None, epochs=None):
            return train(run_card, run_recipe, subjs, run_out, epochs=epochs, strategy="none",
                         init_from=init_from, command=command, verbose=verbose)
        return train_phases(card, rec, folder, run, epochs=epochs) if staged else run(card, rec, folder, epochs=epochs)

    rows, per_fold, runs = [], [], []
    t0 = time.perf_counter()
    for i, (tr, va) in enumerate(splits):
        if only_folds is not None and i not in only_folds:
            continue
        record = fit(tr, out / f"fold{i}")
        runs.append({"fold": i, "seconds": record["members"][0]["seconds"],
                     "epochs": record["members"][0]["epochs"],
                     "steps_per_epoch": record["members"][0]["steps_per_epoch"],
                     "final_loss": record["members"][0]["history"]["loss"][-1],
                     "phases": record.get("phases")})
        net = entry.build_member(eval_card, rec["variant"])
        weights_mod.load_weights(net, out / f"fold{i}" / "member0.npz")
        crops = load_crops(eval_card, va, rec["data"].get("intensity", "hu"))
        p = entry.predict_probabilities([net], crops["x"])
        fold_rows = [{"fold": i, "patient": pt, "case": c, "label": int(y), "p_malignant": float(q)}
                     for pt, c, y, q in zip(crops["patient"], crops["case"], crops["y"], p)]
        rows += fold_rows
        per_fold.append({"fold": i, **metrics.classification_metrics(crops["y"], p), "n": len(p)})
        pd.DataFrame(rows).to_csv(out / "cv_predictions.csv", index=False)
    table = pd.DataFrame(rows)
    pooled = metrics.classification_metrics(table["label"].to_numpy(), table["p_malignant"].to_numpy())
    result = {"data": str(data), "folds": folds, "seed": seed, "recipe": rec, "options": dict(options or {}),
              "card_preprocessing": eval_card["preprocessing"], "per_fold": per_fold,
              "pooled": {**pooled, "n": int(len(table)), "n_patients": int(table["patient"].nunique())},
              "runs": runs, "seconds": round(time.perf_counter() - t0, 1), "command": command}
    if final:
        record = fit(subjects, out / "final")
        result["final"] = {"weights": str(out / "final" / "member0.npz"),
                           "sha256": record["members"][0]["weights"]["sha256"],
                           "seconds": record["members"][0]["seconds"]}
    (out / "cv_metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of :func:`cross_validate`."""
    parser = argparse.ArgumentParser(prog="python -m zoo.training.tasks.classification3d",
                                     description="k-fold cross-validation by patient (lung_nodule on lidc_voi)")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recipe", default="lung_nodule")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--set", dest="recipe_set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override by dotted key (YAML value), repeatable")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="card option (YAML value), repeatable")
    parser.add_argument("--only-fold", type=int, action="append", default=None)
    parser.add_argument("--final", action="store_true", help="then train the final model on every patient")
    parser.add_argument("--no-phases", dest="phases", action="store_false",
                        help="one run per fold with the card's options instead of the recipe's phases")
    args = parser.parse_args(argv)
    import yaml

    def pairs(items):
        return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}

    result = cross_validate(args.data, args.out, folds=args.folds, seed=args.seed, recipe=args.recipe,
                            recipe_set=pairs(args.recipe_set), options=pairs(args.option), epochs=args.epochs,
                            final=args.final, only_folds=args.only_fold, phases=args.phases,
                            command="python -m zoo.training.tasks.classification3d " + " ".join(sys.argv[1:]
                                                                                               if argv is None else argv))
    for f in result["per_fold"]:
        print(f"fold {f['fold']}: n {f['n']} " + ", ".join(f"{k} {f[k]:.3f}" for k in ("accuracy", "precision", "recall", "roc_auc")))
    p = result["pooled"]
    print("pooled: n %d, " % p["n"] + ", ".join(f"{k} {p[k]:.3f}" for k in ("accuracy", "precision", "recall", "roc_auc")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
