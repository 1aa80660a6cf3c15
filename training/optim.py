"""Optimizers and learning-rate schedules named by recipes (``optimizer:`` and ``schedule:``).

One place for every entry: a recipe's ``optimizer`` block (``name`` plus Keras keyword
arguments) and its ``schedule`` (``constant``, or a mapping with ``name`` and its parameters)
become one Keras optimizer here.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

from zoo import errors

#: Recipe optimizer name -> Keras optimizer class.
OPTIMIZERS: dict[str, type] = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
}


def learning_rate(base: float, schedule: Any) -> Any:
    """The learning rate (a float or a ``keras.optimizers.schedules.LearningRateSchedule``)
    for the recipe's ``schedule``. Raises RecipeError for an unknown schedule."""
    name = schedule if isinstance(schedule, str) or schedule is None else schedule.get("name")
    if name in (None, "constant"):
        return float(base)
    raise errors.RecipeError(f"unknown learning-rate schedule {name!r}")


def make_optimizer(spec: Mapping[str, Any], schedule: Any = "constant") -> keras.optimizers.Optimizer:
    """A Keras optimizer from a recipe's ``optimizer`` block and ``schedule``.

    ``spec`` is ``{"name": ..., "learning_rate": ..., **keras_kwargs}``. Raises RecipeError for
    an unknown optimizer name or arguments the optimizer does not take.
    """
    name = spec["name"]
    if name not in OPTIMIZERS:
        raise errors.RecipeError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "learning_rate")}
    try:
        return OPTIMIZERS[name](learning_rate=learning_rate(spec["learning_rate"], schedule), **kwargs)
    except (TypeError, ValueError) as exc:
        raise errors.RecipeError(f"optimizer {name!r} refuses the recipe's arguments {kwargs}: {exc}") from None
