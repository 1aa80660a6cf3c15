"""The training engine: one recipe -> trained ensemble members in the zoo's weight format.

    subjects (dataset adapter) -> task.prepare (the entry's prediction pipeline)
    -> task.datasets (tf.data) -> task.build (network + compiled training model, e.g. a
       SegmentationTrainer with augmentation inside train_step, on the accelerator)
    -> fit under a tf.distribute strategy, optional mixed precision
    -> per-epoch checkpoints, BackupAndRestore (resume), CSV + TensorBoard logs,
       collapse guard (re-initialise and restart, spec wmh_ensemble.md §7)
    -> member{i}.npz (float16, sha256) + run_record.json

The task (:mod:`zoo.training.tasks`) is the recipe's ``task``: 2D slice segmentation by
default. The same code runs on a laptop CPU (tests), one GPU, several GPUs
(MirroredStrategy) and several machines (MultiWorkerMirroredStrategy with ``TF_CONFIG``).
"""

from __future__ import annotations

import fnmatch
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
from types import ModuleType
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import errors, weights as weights_mod
from zoo.card import ModelCard
from zoo.io import atomic_write_text
from zoo.trained_options import weights_options
from zoo.training.tasks import Prepared, get_task, task_name

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


# --- members ---------------------------------------------------------------------------------------
def freeze_layers(net: keras.Model, prefixes: Sequence[str]) -> list[str]:
    """Make layers whose name starts with one of ``prefixes`` non-trainable; returns their names.
    An item with ``*``, ``?`` or ``[`` is a shell pattern matched against the whole name
    (``"cr*_conv"``: the convolutions of the CR blocks, their BatchNorms left trainable)."""
    def hit(name: str, p: str) -> bool:
        return fnmatch.fnmatchcase(name, p) if any(c in p for c in "*?[") else name.startswith(p)

    frozen = [layer.name for layer in net.layers if any(hit(layer.name, p) for p in prefixes)]
    for layer in net.layers:
        if layer.name in frozen:
            layer.trainable = False
    return frozen


def with_run_budget(recipe: Mapping[str, Any], epochs: int, steps_per_epoch: int | None) -> dict[str, Any]:
    """The recipe with the run's ``epochs`` and, where its ``data`` block has one, its
    ``steps_per_epoch``, so a schedule sized from the recipe (segmentation3d's one-cycle and
    flat-cos ``total_steps = epochs x data.steps_per_epoch``) spans the steps actually trained
    when ``zoo train --epochs/--steps-per-epoch`` override the recipe. The run record keeps it."""
    out = {**recipe, "epochs": int(epochs)}
    if steps_per_epoch and "steps_per_epoch" in (recipe.get("data") or {}):
        out["data"] = {**recipe["data"], "steps_per_epoch": int(steps_per_epoch)}
    return out


def train_member(task: ModuleType, card: ModelCard, variant: str, recipe: Mapping[str, Any],
                 prepared: Prepared, member: int, out_dir: Path, *, epochs: int, steps_per_epoch: int | None,
                 strategy: tf.distribute.Strategy, init_weights: str | Path | None = None,
                 freeze: Sequence[str] = (), callbacks: Sequence[keras.callbacks.Callback] = (),
                 verbose: Any = "auto") -> dict[str, Any]:
    """Train one ensemble member with ``task``; returns its record (seed, attempts, history,
    weights sha256).

    Re-running with the same ``out_dir`` resumes an interrupted run (BackupAndRestore): the
    record's ``epochs`` then counts every epoch of the run, ``resumed_from_epoch`` says where
    this call started, and ``history`` holds the epochs of this call (``log.csv`` has them all).
    With a ``collapse_guard`` block in the recipe, a member whose epoch loss exceeds
    ``loss_above`` is re-initialised and restarted (at most ``max_restarts`` times).
    ``callbacks`` are extra Keras callbacks, run after the built-in ones (backup, CSV log,
    TensorBoard, checkpoint, collapse guard).
    """
    seed = int(recipe["seeds"][member])
    mdir = out_dir / f"member{member}"
    mdir.mkdir(parents=True, exist_ok=True)
    guard = recipe.get("collapse_guard")
    t0 = time.perf_counter()
    max_restarts = int(guard["max_restarts"]) if guard else 0
    for attempt in range(max_restarts + 1):
        run_seed = seed + 1000 * attempt
        keras.utils.set_random_seed(run_seed)
        with strategy.scope():
            net, model = task.build(card, variant, recipe, member, run_seed, init_weights=init_weights,
                                    freeze=freeze)
        frozen = [layer.name for layer in net.layers if not layer.trainable]
        train_ds, default_steps, val_ds, val_steps = task.datasets(prepared, recipe, run_seed)
        steps = steps_per_epoch or default_steps
        collapse = CollapseGuard(float(guard["loss_above"]) if guard else math.inf)
        (mdir / "checkpoints").mkdir(exist_ok=True)
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps, verbose=verbose,
                            validation_data=val_ds, validation_steps=val_steps, callbacks=[
                                keras.callbacks.BackupAndRestore(str(mdir / "backup")),
                                keras.callbacks.CSVLogger(str(mdir / "log.csv"), append=True),
                                keras.callbacks.TensorBoard(str(mdir / "tensorboard"), write_graph=False),
                                NetCheckpoint(net, mdir / "checkpoints"),
                                collapse,
                                *callbacks,
                            ])
        if not collapse.collapsed:
            break
        log.warning("member %d collapsed (loss > %s); re-initialising (attempt %d)", member,
                    guard["loss_above"], attempt + 2)
        shutil.rmtree(mdir / "backup", ignore_errors=True)
        if (mdir / "log.csv").exists():  # keep the collapsed attempt's log beside the new one
            os.replace(mdir / "log.csv", mdir / f"log_attempt{attempt + 1}_collapsed.csv")
    else:
        raise errors.ZooError(f"member {member} collapsed {max_restarts + 1} times; "
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
    recipe = with_run_budget(recipe, n_epochs, steps_per_epoch)
    policy = mixed_precision or recipe.get("mixed_precision")
    previous = keras.config.dtype_policy()
    if policy:
        keras.mixed_precision.set_dtype_policy(policy)
    try:
        t0 = time.perf_counter()
        task = get_task(task_name(recipe))
        prepared = task.prepare(card, variant, recipe, subjects, val_subjects, resample=resample)
        prep_s = time.perf_counter() - t0
        strat = select_strategy(strategy)
        results = []
        for member in range(n_members):
            init = None if not init_from else init_from[member if len(init_from) > 1 else 0]
            results.append(train_member(task, card, variant, recipe, prepared, member, out, epochs=n_epochs,
                                        steps_per_epoch=steps_per_epoch, strategy=strat, init_weights=init,
                                        freeze=freeze or recipe["finetune"]["freeze"],
                                        callbacks=callbacks, verbose=verbose))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    record = {
        "entry": card.id, "card_version": card.version, "variant": variant, "task": task_name(recipe),
        "recipe": dict(recipe),
        "command": command or " ".join(sys.argv),
        "data": {"train": [_subject_record(s) for s in subjects],
                 "validation": [_subject_record(s) for s in val_subjects],
                 **prepared.info},
        "epochs_requested": n_epochs, "steps_per_epoch": steps_per_epoch, "strategy": strategy,
        "replicas": strat.num_replicas_in_sync, "mixed_precision": policy, "init_from": [str(p) for p in init_from or []],
        "preprocess_seconds": round(prep_s, 1), "members": results, "environment": environment(),
        "trained_options": weights_options(card),  # the input frame etc. (zoo.trained_options)
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
