"""Training tasks: what differs between entries when they train.

The engine (:mod:`zoo.training.trainer`) owns everything common to every entry: the
``tf.distribute`` strategy, mixed precision, per-epoch checkpoints in the zoo's weight format,
BackupAndRestore (resume), CSV and TensorBoard logs, the collapse guard, the run record. A
*task* module owns what is specific to a kind of training, and the recipe names it
(``task: segmentation2d``; recipes without ``task`` are 2D segmentation). A task module
provides three functions:

``prepare(card, variant, recipe, subjects, val_subjects, *, resample=False) -> Prepared``
    Read and preprocess the subjects (through the entry's own prediction pipeline).

``build(card, variant, recipe, member, seed, *, init_weights=None, freeze=()) -> (net, model)``
    Called inside the strategy's scope. ``net`` is the network whose weights are saved (what
    ``zoo.load`` loads); ``model`` is the compiled, built ``keras.Model`` that ``fit`` runs
    (``net`` itself, or a wrapper with its own ``train_step``: augmentation on the device, an
    adversarial step...). Its ``fit`` logs must contain ``loss``.

``datasets(prepared, recipe, seed) -> (train_ds, steps_per_epoch, val_ds, val_steps)``
    Endless ``tf.data`` training stream, the default steps of one epoch, and an optional
    finite validation dataset with its number of steps (``None, None`` without validation).

Task-specific recipe blocks (``loss``, ``data``, ``augmentation``...) are validated by
``training/task_schemas/<task>.json`` on top of the common ``recipe_schema.json``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from zoo import errors

#: Task name -> module. Add a line here for a new kind of training.
TASKS: dict[str, str] = {
    "segmentation2d": "zoo.training.tasks.segmentation2d",
    "classification3d": "zoo.training.tasks.classification3d",
    "gan_synthesis": "zoo.training.tasks.gan_synthesis",
    "segmentation3d": "zoo.training.tasks.segmentation3d",
}

#: The task of recipes that name none (the first recipes were all 2D segmentation).
DEFAULT_TASK = "segmentation2d"


@dataclass
class Prepared:
    """A task's preprocessed training data.

    Attributes:
        train: the training data in the task's own form (e.g. a SliceSet).
        val: validation data in the same form, or ``None``.
        info: counts for the run record (e.g. ``{"n_train_slices": 2780}``).
    """

    train: Any
    val: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def task_name(recipe: dict) -> str:
    """The recipe's task (``DEFAULT_TASK`` when it names none)."""
    return str(recipe.get("task") or DEFAULT_TASK)


def get_task(name: str) -> ModuleType:
    """The task module for ``name``. Raises RecipeError for an unknown task."""
    if name not in TASKS:
        raise errors.RecipeError(f"unknown training task {name!r}; known tasks: {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])
