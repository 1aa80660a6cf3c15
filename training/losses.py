"""Training losses, each written as a formula (practices §5)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

REDUCTION_MODES = ("batch", "per_sample")


@keras.saving.register_keras_serializable(package="zoo")
class SoftDiceLoss(keras.losses.Loss):
    """Soft Dice loss with a linear denominator (spec ``wmh_ensemble.md`` §6).

    With ``p`` the predicted foreground probability, ``g`` the binary target and ``s`` the
    smoothing term (default 1)::

        Dice = (2 · Σ p·g + s) / (Σ p + Σ g + s)        loss = 1 − Dice

    * Denominator: linear (Σ p + Σ g), not squared (Σ p² + Σ g²).
    * Smoothing: ``s`` added to numerator and denominator, so an empty prediction on an empty
      target gives Dice = 1 (loss 0), and a perfect binary prediction gives exactly 0.
    * Reduction (``reduction_mode``):

      - ``"batch"`` (default, spec §6): the sums run over every pixel of every slice of the
        batch flattened together; one Dice per batch. This is not the mean of per-slice Dice
        values. Under data parallelism it becomes per replica, and the value is divided by the
        number of replicas in sync (the Keras convention, which Keras' own reduction skips for
        a scalar loss): replica gradients then sum to the mean gradient and the logged loss
        (which Keras multiplies back) stays the Dice loss in [0, 1].
      - ``"per_sample"`` (for comparison): one Dice per slice (sums over H, W and the
        foreground channel), and the loss is the mean over the batch of ``1 − Dice_i``.

      In both modes :meth:`call` returns a scalar, so the Keras ``reduction`` argument
      (``"sum_over_batch_size"``, ``None``, ...) cannot re-average it. Sample weights have no
      per-sample meaning for a batch-global Dice and are rejected.
    * Foreground only; the background is not included:

      - ``y_pred`` ``(B, H, W, 1)``: sigmoid foreground probability (the WMH head, D2);
      - ``y_pred`` ``(B, H, W, 2)``: softmax; channel 1 is the foreground;
      - ``y_true`` ``(B, H, W, 1)``: binary {0, 1}; ``(B, H, W, 2)``: one-hot, channel 1
        is the foreground; ``(B, H, W)``: binary without a channel axis.

      Other channel counts raise ``ValueError``. Any rank ≥ 2 works the same way (the last
      axis is the channel axis).
    * Precision: ``y_true`` and ``y_pred`` are cast to float32 first and the result is float32,
      also under a ``mixed_float16``/``mixed_bfloat16`` policy (practices §8).

    Args:
        smooth: the smoothing term ``s`` (> 0; default 1.0 as spec §6).
        reduction_mode: ``"batch"`` or ``"per_sample"``.
        name: loss name.
        reduction: the Keras reduction; irrelevant because the value is already a scalar.
    """

    def __init__(self, smooth: float = 1.0, reduction_mode: str = "batch",
                 name: str = "soft_dice_loss", reduction: str | None = "sum_over_batch_size",
                 dtype: Any = None) -> None:
        if dtype not in (None, "float32"):
            raise ValueError(f"SoftDiceLoss is computed in float32 (practices §8); got dtype={dtype!r}")
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if reduction_mode not in REDUCTION_MODES:
            raise ValueError(f"reduction_mode must be one of {list(REDUCTION_MODES)}; "
                             f"got {reduction_mode!r}")
        if not smooth > 0:
            raise ValueError(f"smooth must be > 0 (it keeps an empty prediction on an empty target "
                             f"finite); got {smooth}")
        self.smooth = float(smooth)
        self.reduction_mode = reduction_mode

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("SoftDiceLoss is a batch-global Dice (spec §6); sample weights have no "
                             "per-sample meaning for it. Drop sample_weight/class_weight.")
        loss = super().__call__(y_true, y_pred)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss * (1.0 / replicas) if replicas > 1 else loss

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        p = _foreground(y_pred, "y_pred")
        if y_true.shape.rank == y_pred.shape.rank - 1:
            y_true = y_true[..., None]
        g = _foreground(y_true, "y_true")
        if self.reduction_mode == "batch":
            axes = None
        else:
            axes = list(range(1, p.shape.rank))
        intersection = tf.reduce_sum(p * g, axis=axes)
        total = tf.reduce_sum(p, axis=axes) + tf.reduce_sum(g, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return tf.reduce_mean(1.0 - dice)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"smooth": self.smooth, "reduction_mode": self.reduction_mode})
        return config


def _foreground(x: tf.Tensor, what: str) -> tf.Tensor:
    """The foreground channel, keeping the channel axis: ``(..., 1)``."""
    channels = x.shape[-1]
    if channels == 1:
        return x
    if channels == 2:
        return x[..., 1:2]
    raise ValueError(f"{what} has shape {x.shape}; SoftDiceLoss expects a last (channel) axis of "
                     "1 (sigmoid / binary) or 2 (softmax / one-hot, channel 1 = foreground)")


@keras.saving.register_keras_serializable(package="zoo")
class FocalTverskyLoss(keras.losses.Loss):
    """Focal Tversky loss of ``spine_vertebrae`` (spec ``spine_vertebrae.md`` §6, decision D1).

    With softmax probabilities ``p`` and one-hot ``g`` (channels last, background included),
    per sample ``b`` and class ``c`` (sums over the spatial axes)::

        TI_bc = (Σ p·g + s) / (Σ p·g + α·Σ p·(1−g) + β·Σ (1−p)·g + s)      s = 1e-5

    * ``mode="code"`` (default, the authors' code): ``L = 1 − (mean_{b,c} TI_bc)^γ``, the
      power applied after averaging over batch and classes; α = 0.5 (false positives),
      β = 0.99 (false negatives), γ = 2.
    * ``mode="abraham"`` (the paper's citation, Abraham & Khan, ISBI 2019):
      ``L = mean_{b,c} (1 − TI_bc)^(1/γ)`` (use γ = 4/3).

    Args:
        alpha, beta, gamma, smooth: as above.
        mode: ``"code"`` or ``"abraham"``.
        from_logits: ``y_pred`` are logits (softmax applied here, in float32).
    ``y_true``: one-hot ``(B, ..., C)`` or integer labels ``(B, ..., 1)``/``(B, ...)`` with C
    taken from ``y_pred``. Returns a float32 scalar.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.99, gamma: float = 2.0, smooth: float = 1e-5,
                 mode: str = "code", from_logits: bool = True, name: str = "focal_tversky_loss",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if mode not in ("code", "abraham"):
            raise ValueError(f"mode must be 'code' or 'abraham'; got {mode!r}")
        self.alpha, self.beta, self.gamma, self.smooth = float(alpha), float(beta), float(gamma), float(smooth)
        self.mode, self.from_logits = mode, bool(from_logits)

    def call(self, y_true, y_pred):
        p = tf.cast(y_pred, tf.float32)
        if self.from_logits:
            p = tf.nn.softmax(p, axis=-1)
        g = _one_hot(y_true, p)
        axes = list(range(1, p.shape.rank - 1))
        tp = tf.reduce_sum(p * g, axis=axes)
        fp = tf.reduce_sum(p * (1.0 - g), axis=axes)
        fn = tf.reduce_sum((1.0 - p) * g, axis=axes)
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        if self.mode == "code":
            return 1.0 - tf.pow(tf.reduce_mean(ti), self.gamma)
        return tf.reduce_mean(tf.pow(1.0 - ti, 1.0 / self.gamma))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "smooth": self.smooth,
                       "mode": self.mode, "from_logits": self.from_logits})
        return config


def _one_hot(y_true, p: tf.Tensor) -> tf.Tensor:
    """``y_true`` as a float32 one-hot tensor shaped like ``p`` (``(B, ..., C)``)."""
    y = tf.cast(y_true, tf.float32)
    channels = p.shape[-1]
    if y.shape.rank == p.shape.rank and y.shape[-1] == channels and channels != 1:
        return y
    if y.shape.rank == p.shape.rank:
        y = y[..., 0]
    return tf.one_hot(tf.cast(tf.round(y), tf.int32), channels, dtype=tf.float32)


@keras.saving.register_keras_serializable(package="zoo")
class SoftmaxDiceLoss(SoftDiceLoss):
    """:class:`SoftDiceLoss` on the foreground channel of softmax(logits) (the plain-Dice
    choice of ``spine_vertebrae``; the formula and reductions are SoftDiceLoss's).
    ``y_true``: integer labels ``(B, ..., 1)`` in {0, 1} or one-hot ``(B, ..., 2)``."""

    def call(self, y_true, y_pred):
        return super().call(y_true, tf.nn.softmax(tf.cast(y_pred, tf.float32), axis=-1))


@keras.saving.register_keras_serializable(package="zoo")
class SoftJaccardLoss(keras.losses.Loss):
    """Soft Jaccard (intersection over union) loss of ``skull_stripping`` (Kaliyugarasan et al.
    2020, Table 1: "based on the Jaccard index"; MONAI ``DiceLoss(jaccard=True)`` form).

    With the foreground probability ``p`` (softmax of 2-channel logits, or the single channel)
    and the binary reference ``g``, per sample ``b`` (sums over the spatial axes)::

        J_b = (Σ p·g + s) / (Σ p + Σ g − Σ p·g + s)        L = mean_b (1 − J_b),   s = 1e-5

    Args:
        smooth: ``s`` above.
        from_logits: ``y_pred`` are logits (softmax over the channel axis, in float32).
    ``y_true``: integer labels ``(B, ..., 1)`` in {0, 1} or one-hot ``(B, ..., 2)``. Returns a
    float32 scalar.
    """

    def __init__(self, smooth: float = 1e-5, from_logits: bool = True, name: str = "soft_jaccard_loss",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.smooth, self.from_logits = float(smooth), bool(from_logits)

    def call(self, y_true, y_pred):
        p = tf.cast(y_pred, tf.float32)
        if self.from_logits:
            p = tf.nn.softmax(p, axis=-1) if p.shape[-1] > 1 else tf.sigmoid(p)
        p = _foreground(p, "y_pred")
        g = _foreground(_one_hot(y_true, tf.concat([1.0 - p, p], axis=-1)), "y_true")
        axes = list(range(1, p.shape.rank))
        inter = tf.reduce_sum(p * g, axis=axes)
        union = tf.reduce_sum(p, axis=axes) + tf.reduce_sum(g, axis=axes) - inter
        return tf.reduce_mean(1.0 - (inter + self.smooth) / (union + self.smooth))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"smooth": self.smooth, "from_logits": self.from_logits})
        return config
