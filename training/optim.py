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
    if name == "flat_cos":
        if not schedule.get("total_steps"):
            raise errors.RecipeError("schedule flat_cos needs total_steps (epochs x steps per epoch)")
        return FlatCos(float(base), int(schedule["total_steps"]), float(schedule.get("pct_flat", 0.75)),
                       float(schedule.get("div_final", 1e5)))
    if name == "one_cycle":
        if not schedule.get("total_steps"):
            raise errors.RecipeError("schedule one_cycle needs total_steps (epochs x steps per epoch)")
        return OneCycle(float(base), int(schedule["total_steps"]), float(schedule.get("pct_start", 0.3)),
                        float(schedule.get("div_factor", 25.0)), float(schedule.get("final_div_factor", 1e4)))
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


# --- spine_vertebrae: Ranger (RAdam + Lookahead) and the flat-cos schedule --------------------
class FlatCos(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's ``fit_flat_cos`` schedule (spec ``spine_vertebrae.md`` §7): ``base`` for the
    first ``pct_flat`` of ``total_steps``, then cosine-annealed to ``base / div_final``.

    ``lr(t) = base`` for ``t < pct_flat·T``; else with ``u = (t − pct_flat·T)/((1 − pct_flat)·T)``
    clipped to [0, 1]: ``lr = end + (base − end)·(1 + cos(π·u))/2``, ``end = base/div_final``.
    """

    def __init__(self, base: float, total_steps: int, pct_flat: float = 0.75, div_final: float = 1e5):
        self.base, self.total_steps = float(base), int(total_steps)
        self.pct_flat, self.div_final = float(pct_flat), float(div_final)

    def __call__(self, step):
        import math

        t = keras.ops.cast(step, "float32")
        flat = self.pct_flat * self.total_steps
        u = keras.ops.clip((t - flat) / max(1.0, self.total_steps - flat), 0.0, 1.0)
        end = self.base / self.div_final
        cos = end + (self.base - end) * 0.5 * (1.0 + keras.ops.cos(math.pi * u))
        return keras.ops.where(t < flat, self.base, cos)

    def get_config(self) -> dict:
        return {"base": self.base, "total_steps": self.total_steps, "pct_flat": self.pct_flat,
                "div_final": self.div_final}


class Ranger(keras.optimizers.Optimizer):
    """Ranger = RAdam (Liu et al., ICLR 2020) wrapped in Lookahead (Zhang et al., NeurIPS 2019),
    with fastai 2.7 defaults (spec ``spine_vertebrae.md`` §7): β1 0.95, β2 0.99, ε 1e-6,
    decoupled weight decay 0.01 (``w ← w − lr·wd·w`` before the step), Lookahead k 6, α 0.5.

    RAdam step t (1-based), with ``m, v`` the exponential moving averages of ``g`` and ``g²``::

        ρ∞ = 2/(1−β2) − 1,  ρt = ρ∞ − 2t·β2^t/(1−β2^t)
        ρt > 5:  w ← w − lr · r_t · (m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + ε),
                 r_t = sqrt((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt))
        else:    w ← w − lr · m/(1−β1^t)       (SGD with momentum while the variance is untrusted)

    Lookahead: every ``k``-th step the slow copy moves ``φ ← φ + α(w − φ)`` and ``w ← φ``.
    """

    def __init__(self, learning_rate: Any = 0.01, beta_1: float = 0.95, beta_2: float = 0.99,
                 epsilon: float = 1e-6, weight_decay: float | None = 0.01, lookahead_k: int = 6,
                 lookahead_alpha: float = 0.5, name: str = "ranger", **kwargs: Any):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.lookahead_k, self.lookahead_alpha = int(lookahead_k), float(lookahead_alpha)
        if self.lookahead_k < 1 or not 0.0 < self.lookahead_alpha <= 1.0:
            raise ValueError("lookahead_k must be >= 1 and lookahead_alpha in (0, 1]")

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m = [self.add_variable_from_reference(v, "m") for v in var_list]
        self._v = [self.add_variable_from_reference(v, "v") for v in var_list]
        self._slow = [self.add_variable_from_reference(v, "slow") for v in var_list]
        for slow, v in zip(self._slow, var_list):
            slow.assign(v)

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        i = self._get_variable_index(variable)
        m, v, slow = self._m[i], self._v[i], self._slow[i]
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        t = ops.cast(self.iterations + 1, variable.dtype)
        b1, b2 = self.beta_1, self.beta_2
        self.assign(m, b1 * m + (1.0 - b1) * g)
        self.assign(v, b2 * v + (1.0 - b2) * ops.square(g))
        b2t = ops.power(b2, t)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2t / (1.0 - b2t)
        m_hat = m / (1.0 - ops.power(b1, t))
        r = ops.sqrt(ops.maximum((rho_t - 4.0) * (rho_t - 2.0) * rho_inf, 0.0)
                     / ((rho_inf - 4.0) * (rho_inf - 2.0) * ops.maximum(rho_t, 1e-12)))
        adaptive = r * m_hat / (ops.sqrt(v / (1.0 - b2t)) + self.epsilon)
        self.assign_sub(variable, lr * ops.where(rho_t > 5.0, adaptive, m_hat))
        sync = ops.equal(ops.mod(self.iterations + 1, self.lookahead_k), 0)
        moved = slow + self.lookahead_alpha * (variable - slow)
        self.assign(slow, ops.where(sync, moved, slow))
        self.assign(variable, ops.where(sync, moved, variable))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "lookahead_k": self.lookahead_k, "lookahead_alpha": self.lookahead_alpha})
        return config


OPTIMIZERS["ranger"] = Ranger


# --- lung_nodule: fastai v1 one-cycle schedule ------------------------------------------------
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai v1 ``fit_one_cycle`` learning rate (spec ``lung_nodule.md`` §5; Smith 2018).

    With ``T = total_steps`` and ``T1 = pct_start·T``: warm-up from ``lr_max/div_factor`` to
    ``lr_max`` over ``T1`` steps, then annealing to ``lr_max/(div_factor·final_div_factor)``, both
    cosine: ``cos_anneal(a, b, u) = b + (a − b)·(1 + cos(π·u))/2`` with ``u`` the fraction of the
    phase done (clipped to [0, 1]). The β1 cycling of fastai (0.95 → 0.85 → 0.95) is not
    reproduced (Keras optimizers take a constant β1).
    """

    def __init__(self, lr_max: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        if total_steps < 1 or not 0.0 <= pct_start <= 1.0:
            raise ValueError("one_cycle needs total_steps >= 1 and 0 <= pct_start <= 1")
        self.lr_max, self.total_steps, self.pct_start = float(lr_max), int(total_steps), float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)

    def __call__(self, step):
        import math

        ops = keras.ops
        t = ops.cast(step, "float32")
        warm = self.pct_start * self.total_steps
        start = self.lr_max / self.div_factor
        end = start / self.final_div_factor

        def anneal(a, b, u):
            return b + (a - b) * 0.5 * (1.0 + ops.cos(math.pi * ops.clip(u, 0.0, 1.0)))

        up = anneal(start, self.lr_max, t / max(warm, 1.0))
        down = anneal(self.lr_max, end, (t - warm) / max(self.total_steps - warm, 1.0))
        return ops.where(t < warm, up, down)

    def get_config(self) -> dict:
        return {"lr_max": self.lr_max, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}
