"""The training engine: one recipe -> trained ensemble members in the zoo's weight format.

    subjects (dataset adapter) -> build_slices (the prediction pipeline) -> tf.data
    -> SegmentationTrainer (augmentation inside train_step, on the accelerator)
    -> fit under a tf.distribute strategy, optional mixed precision
    -> per-epoch checkpoints, BackupAndRestore (resume), CSV + TensorBoard logs,
       collapse guard (re-initialise and restart, spec wmh_ensemble.md §7)
    -> member{i}.npz (float16, sha256) + run_record.json

The same code runs on a laptop CPU (tests), one GPU, several GPUs (MirroredStrategy) and
several machines (MultiWorkerMirroredStrategy with ``TF_CONFIG``).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import errors, weights as weights_mod
from zoo.card import ModelCard
from zoo.io import atomic_write_text
from zoo.training.augment import augment_batch
from zoo.training.losses import SoftDiceLoss
from zoo.training.slices import SliceSet, build_slices

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "mirrored", "multiworker", "none")


# --- distribution and precision ----------------------------------------------------------------
def select_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``name``.

    ``auto``: MirroredStrategy when more than one GPU is visible, MultiWorkerMirroredStrategy
    when ``TF_CONFIG`` names several workers, else the default (one device) strategy.
    ``mirrored``: MirroredStrategy over every local GPU (or the logical CPUs if no GPU).
    ``multiworker``: MultiWorkerMirroredStrategy (cluster from ``TF_CONFIG``).
    ``none``: the default strategy.
    """
    if name not in STRATEGIES:
        raise errors.RecipeError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "none"
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class BinaryDice(keras.metrics.Metric):
    """Hard Dice of ``y_pred > 0.5`` against ``y_true`` accumulated over an epoch (a log of
    training progress; evaluation uses ``zoo.metrics``)."""

    def __init__(self, name: str = "dice", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.inter = self.add_variable((), initializer="zeros", name="inter")
        self.total = self.add_variable((), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        p = keras.ops.cast(keras.ops.cast(y_pred[..., -1:], "float32") > 0.5, "float32")
        g = keras.ops.cast(y_true, "float32")
        self.inter.assign_add(keras.ops.sum(p * g))
        self.total.assign_add(keras.ops.sum(p) + keras.ops.sum(g))

    def result(self):
        return keras.ops.where(self.total > 0, 2.0 * self.inter / keras.ops.maximum(self.total, 1e-12), 1.0)

    def reset_state(self):
        self.inter.assign(0.0)
        self.total.assign(0.0)


class SegmentationTrainer(keras.Model):
    """Wraps a segmentation network; ``train_step`` applies the recipe's spatial augmentation
    to the batch on the device (images and masks jointly), then a normal gradient step.

    Args:
        net: the network being trained (its weights are what gets saved).
        augmentation: the recipe's ``augmentation`` block; ``affine_probability`` is the
            chance that a slice of the batch gets a fresh random affine.
        seed: seeds the augmentation stream.
    """

    def __init__(self, net: keras.Model, augmentation: Mapping[str, Any], seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.net = net
        self.augmentation = dict(augmentation)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        return self.net(x, training=training)

    def _augment(self, x, y):
        p = float(self.augmentation.get("affine_probability", 0.0))
        if p <= 0.0:
            return x, y
        xa, ya = augment_batch(x, y, keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator),
                               self.augmentation)
        chosen = keras.random.uniform((keras.ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < p
        return keras.ops.where(chosen, xa, x), keras.ops.where(chosen, ya, y)

    def train_step(self, data):
        """Augment the batch on the device, then Keras' own step (loss tracking, loss scaling
        under mixed precision, per-replica reduction under tf.distribute)."""
        x, y = data
        return super().train_step(self._augment(x, y))


class CollapseGuard(keras.callbacks.Callback):
    """Stops training when an epoch's mean training loss exceeds ``threshold`` (the Dice loss
    collapsed to its worst value, spec ``wmh_ensemble.md`` §7); the trainer then re-initialises
    the member and restarts from epoch 1."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = float(threshold)
        self.collapsed = False

    def on_epoch_end(self, epoch, logs=None):
        if logs and float(logs.get("loss", 0.0)) > self.threshold:
            self.collapsed = True
            self.model.stop_training = True


class NetCheckpoint(keras.callbacks.Callback):
    """Saves the trained network (not the optimizer) after every epoch as
    ``epoch{NNN}.npz`` in the zoo's float16 format (about 17 MB for the WMH U-Net), so any
    epoch can be loaded with ``zoo.load(..., weights=...)`` or ``zoo evaluate``. Resuming an
    interrupted run uses the separate BackupAndRestore state."""

    def __init__(self, net: keras.Model, folder: Path):
        super().__init__()
        self.net = net
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        weights_mod.save_weights(self.net, self.folder / f"epoch{epoch + 1:03d}.npz")


# --- data ----------------------------------------------------------------------------------------
def make_dataset(slices: SliceSet, batch_size: int, seed: int, *, flip_lr: bool,
                 shuffle: bool = True, patch_size: int | None = None,
                 foreground_fraction: float = 0.5) -> tf.data.Dataset:
    """An endless ``tf.data`` stream of ``(image, mask)`` batches.

    The static left-right mirror (spec §8.1) doubles the set without copying memory: index
    ``i >= M`` is slice ``i - M`` flipped along the column axis. Each pass over the doubled set
    is reshuffled with a seeded generator (reproducible batch order per member seed).
    With ``patch_size`` each slice is cut to a random ``patch_size`` square: centred on a
    random label voxel with probability ``foreground_fraction`` when the slice has one, else
    on a random voxel of the slice (clipped so the patch stays inside).
    """
    m = len(slices)
    n = 2 * m if flip_lr else m
    images, masks = slices.images, slices.masks
    h, w = images.shape[1:3]

    def cut(rng, img, msk):
        if not patch_size:
            return img, msk
        fg = np.argwhere(msk[..., 0] > 0)
        if len(fg) and rng.random() < foreground_fraction:
            r, c = fg[rng.integers(len(fg))]
        else:
            r, c = rng.integers(h), rng.integers(w)
        r0 = int(np.clip(r - patch_size // 2, 0, h - patch_size))
        c0 = int(np.clip(c - patch_size // 2, 0, w - patch_size))
        return img[r0:r0 + patch_size, c0:c0 + patch_size], msk[r0:r0 + patch_size, c0:c0 + patch_size]

    def gen():
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(n) if shuffle else np.arange(n)
            for i in order:
                j = i % m
                if i >= m:
                    yield cut(rng, images[j, :, ::-1], masks[j, :, ::-1])
                else:
                    yield cut(rng, images[j], masks[j])

    shape = (patch_size, patch_size) if patch_size else (h, w)
    sig = (tf.TensorSpec((*shape, images.shape[-1]), tf.float32),
           tf.TensorSpec((*shape, masks.shape[-1]), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_steps(n_slices: int, recipe: Mapping[str, Any]) -> int:
    """Steps of one epoch: the (mirrored) set once in originals, plus on average as many
    random-affine copies when ``affine_probability`` is 0.5 (the paper's 4x, spec §8)."""
    aug = recipe["augmentation"]
    n = n_slices * (2 if aug["flip_lr"] else 1)
    p = float(aug["affine_probability"])
    return max(1, math.ceil(n / (1.0 - min(p, 0.5)) / int(recipe["batch_size"])))


# --- members ---------------------------------------------------------------------------------------
def build_member(card: ModelCard, variant: str, member: int, patch_size: int | None = None) -> keras.Model:
    """One untrained member, built by the card's entry module (the same builder as prediction)."""
    from zoo import registry

    entry = importlib.import_module(registry.ENTRIES[card.id])
    return entry.build_member(card, variant, member, patch_size)


def _optimizer(spec: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "adam":
        return keras.optimizers.Adam(**kwargs)
    if spec["name"] == "adamw":
        return keras.optimizers.AdamW(**kwargs)
    return keras.optimizers.SGD(**kwargs)


def freeze_layers(net: keras.Model, prefixes: Sequence[str]) -> list[str]:
    """Make layers whose name starts with one of ``prefixes`` non-trainable; returns their names."""
    frozen = [layer.name for layer in net.layers if any(layer.name.startswith(p) for p in prefixes)]
    for layer in net.layers:
        if layer.name in frozen:
            layer.trainable = False
    return frozen


def train_member(card: ModelCard, variant: str, recipe: Mapping[str, Any], train: SliceSet,
                 member: int, out_dir: Path, *, epochs: int, steps_per_epoch: int | None,
                 strategy: tf.distribute.Strategy, val: SliceSet | None = None,
                 init_weights: str | Path | None = None, freeze: Sequence[str] = (),
                 callbacks: Sequence[keras.callbacks.Callback] = (),
                 verbose: Any = "auto") -> dict[str, Any]:
    """Train one ensemble member; returns its record (seed, attempts, history, weights sha256).

    Re-running with the same ``out_dir`` resumes an interrupted run (BackupAndRestore): the
    record's ``epochs`` then counts every epoch of the run, ``resumed_from_epoch`` says where
    this call started, and ``history`` holds the epochs of this call (``log.csv`` has them all).
    ``callbacks`` are extra Keras callbacks, run after the built-in ones (backup, CSV log,
    TensorBoard, checkpoint, collapse guard).
    """
    seed = int(recipe["seeds"][member])
    mdir = out_dir / f"member{member}"
    mdir.mkdir(parents=True, exist_ok=True)
    steps = steps_per_epoch or epoch_steps(len(train), recipe)
    guard = recipe["collapse_guard"]
    t0 = time.perf_counter()
    for attempt in range(int(guard["max_restarts"]) + 1):
        keras.utils.set_random_seed(seed + 1000 * attempt)
        with strategy.scope():
            net = build_member(card, variant, member, recipe["data"].get("patch_size"))
            if init_weights is not None:
                weights_mod.load_weights(net, init_weights)
            frozen = freeze_layers(net, freeze)
            model = SegmentationTrainer(net, recipe["augmentation"], seed + 1000 * attempt)
            model(keras.ops.zeros((1, *net.inputs[0].shape[1:])))  # built before BackupAndRestore
            model.compile(optimizer=_optimizer(recipe["optimizer"]),
                          loss=SoftDiceLoss(smooth=float(recipe["loss"].get("smooth", 1.0)),
                                            reduction_mode=recipe["loss"].get("reduction", "batch")),
                          metrics=[BinaryDice()])
        collapse = CollapseGuard(float(guard["loss_above"]))
        callbacks = [
            keras.callbacks.BackupAndRestore(str(mdir / "backup")),
            keras.callbacks.CSVLogger(str(mdir / "log.csv"), append=True),
            keras.callbacks.TensorBoard(str(mdir / "tensorboard"), write_graph=False),
            NetCheckpoint(net, mdir / "checkpoints"),
            collapse,
            *callbacks,
        ]
        (mdir / "checkpoints").mkdir(exist_ok=True)
        val_ds = None
        if val is not None and len(val):
            val_ds = make_dataset(val, int(recipe["batch_size"]), seed, flip_lr=False, shuffle=False,
                                  patch_size=recipe["data"].get("patch_size"))
        history = model.fit(make_dataset(train, int(recipe["batch_size"]), seed + 1000 * attempt,
                                         flip_lr=bool(recipe["augmentation"]["flip_lr"]),
                                         patch_size=recipe["data"].get("patch_size"),
                                         foreground_fraction=float(recipe["data"].get("patch_foreground_fraction", 0.5))),
                            epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                            validation_data=val_ds,
                            validation_steps=None if val_ds is None else math.ceil(len(val) / int(recipe["batch_size"])))
        if not collapse.collapsed:
            break
        log.warning("member %d collapsed (loss > %s); re-initialising (attempt %d)", member,
                    guard["loss_above"], attempt + 2)
        shutil.rmtree(mdir / "backup", ignore_errors=True)
        if (mdir / "log.csv").exists():  # keep the collapsed attempt's log beside the new one
            os.replace(mdir / "log.csv", mdir / f"log_attempt{attempt + 1}_collapsed.csv")
    else:
        raise errors.ZooError(f"member {member} collapsed {guard['max_restarts'] + 1} times; "
                              "check the learning rate and the labels")
    wpath = out_dir / f"member{member}.npz"
    digest = weights_mod.save_weights(net, wpath)
    first = history.epoch[0] if history.epoch else 0  # > 0 when BackupAndRestore resumed the run
    return {"member": member, "seed": seed, "attempts": attempt + 1,
            "epochs": first + len(history.epoch), "resumed_from_epoch": first or None,
            "steps_per_epoch": steps, "frozen_layers": frozen,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "weights": {"file": wpath.name, "sha256": digest, "size": wpath.stat().st_size},
            "seconds": round(time.perf_counter() - t0, 1)}


# --- the whole run ---------------------------------------------------------------------------------
def train(card: ModelCard, recipe: Mapping[str, Any], subjects: Sequence[Any], out_dir: str | Path, *,
          val_subjects: Sequence[Any] = (), members: int | None = None, epochs: int | None = None,
          steps_per_epoch: int | None = None, strategy: str = "auto", mixed_precision: str | None = None,
          init_from: Sequence[str | Path] | None = None, freeze: Sequence[str] | None = None,
          resample: bool = False, command: str | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = (), verbose: Any = "auto") -> dict[str, Any]:
    """Train ``members`` ensemble members of ``card``'s entry with ``recipe``.

    Args:
        card: the entry card (with options); ``recipe["variant"]`` selects the variant.
        recipe: a resolved recipe (:func:`zoo.training.recipe.load_recipe`).
        subjects: training subjects (adapters in :mod:`zoo.training.datasets`).
        out_dir: run folder: ``member{i}.npz`` weights, per-member logs and checkpoints,
            ``run_record.json``.
        val_subjects: optional validation subjects (never the same as training ones).
        members, epochs, steps_per_epoch: override the recipe (e.g. to fit a CPU budget).
        strategy: ``auto | mirrored | multiworker | none``.
        mixed_precision: ``mixed_float16`` (GPU) or ``mixed_bfloat16`` (CPU); losses and the
            sigmoid head stay float32.
        init_from: one weights file per member to start from (fine-tuning).
        freeze: layer-name prefixes to freeze (fine-tuning).
        callbacks: extra Keras callbacks for every member's ``fit`` (after the built-in ones).
    Returns:
        The run record (also written to ``out_dir/run_record.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlap = {s.id for s in subjects} & {s.id for s in val_subjects}
    if overlap:
        raise errors.ZooError(f"subjects in both training and validation: {sorted(overlap)}")
    variant = recipe["variant"]
    n_members = int(members or recipe["members"])
    n_epochs = int(epochs or recipe["epochs"])
    policy = mixed_precision or recipe.get("mixed_precision")
    previous = keras.config.dtype_policy()
    if policy:
        keras.mixed_precision.set_dtype_policy(policy)
    try:
        t0 = time.perf_counter()
        train_set = build_slices(subjects, card, variant, recipe, resample=resample)
        val_set = build_slices(val_subjects, card, variant, recipe, resample=resample) if val_subjects else None
        prep_s = time.perf_counter() - t0
        strat = select_strategy(strategy)
        results = []
        for member in range(n_members):
            init = None if not init_from else init_from[member if len(init_from) > 1 else 0]
            results.append(train_member(card, variant, recipe, train_set, member, out, epochs=n_epochs,
                                        steps_per_epoch=steps_per_epoch, strategy=strat, val=val_set,
                                        init_weights=init, freeze=freeze or recipe["finetune"]["freeze"],
                                        callbacks=callbacks, verbose=verbose))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    record = {
        "entry": card.id, "card_version": card.version, "variant": variant, "recipe": dict(recipe),
        "command": command or " ".join(sys.argv),
        "data": {"train": [_subject_record(s) for s in subjects],
                 "validation": [_subject_record(s) for s in val_subjects],
                 "n_train_slices": len(train_set), "n_val_slices": 0 if val_set is None else len(val_set)},
        "epochs_requested": n_epochs, "steps_per_epoch": steps_per_epoch, "strategy": strategy,
        "replicas": strat.num_replicas_in_sync, "mixed_precision": policy, "init_from": [str(p) for p in init_from or []],
        "preprocess_seconds": round(prep_s, 1), "members": results, "environment": environment(),
    }
    _atomic_json(out / "run_record.json", record)
    return record


def _subject_record(s: Any) -> dict[str, Any]:
    return {"id": s.id, "site": getattr(s, "site", None),
            "images": {k: str(v) for k, v in s.images.items()}, "label": str(s.label) if s.label else None}


def environment() -> dict[str, Any]:
    """Framework versions, hardware and the git commit of the code, for the run record."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "git_commit": commit}


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
