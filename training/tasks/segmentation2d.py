"""Training task ``segmentation2d``: slice-wise 2D segmentation (``wmh_ensemble``, the claustrum
entries).

    subjects -> build_slices (the entry's prediction pipeline) -> SliceSet
    -> make_dataset: endless tf.data stream (static left-right mirror, optional random patches)
    -> SegmentationTrainer: recipe augmentation inside train_step (on the accelerator), then
       Keras' own step with the soft Dice loss (spec wmh_ensemble.md §7-§8)
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import weights as weights_mod
from zoo.card import ModelCard
from zoo.training.augment import augment_batch, intensity_batch
from zoo.training.losses import SoftDiceLoss
from zoo.training.optim import make_optimizer
from zoo.training.slices import SliceSet, build_slices
from zoo.training.tasks import Prepared


def prepare(card: ModelCard, variant: str, recipe: Mapping[str, Any], subjects: Sequence[Any],
            val_subjects: Sequence[Any] = (), *, resample: bool = False) -> Prepared:
    """Training (and validation) slices through the entry's own pipeline (:func:`build_slices`)."""
    train = build_slices(subjects, card, variant, recipe, resample=resample)
    val = build_slices(val_subjects, card, variant, recipe, resample=resample) if val_subjects else None
    return Prepared(train, val, {"n_train_slices": len(train), "n_val_slices": 0 if val is None else len(val)})


def build(card: ModelCard, variant: str, recipe: Mapping[str, Any], member: int, seed: int, *,
          init_weights: Any = None, freeze: Sequence[str] = ()) -> tuple[keras.Model, keras.Model]:
    """The member network (from the entry's own builder) wrapped in a compiled
    :class:`SegmentationTrainer` with the recipe's optimizer and soft Dice loss."""
    from zoo.training.trainer import freeze_layers

    net = build_member(card, variant, member, recipe["data"].get("patch_size"))
    if init_weights is not None:
        weights_mod.load_weights(net, init_weights)
    freeze_layers(net, freeze)
    model = SegmentationTrainer(net, recipe["augmentation"], seed)
    model(keras.ops.zeros((1, *net.inputs[0].shape[1:])))  # built before BackupAndRestore
    model.compile(optimizer=make_optimizer(recipe["optimizer"], recipe.get("schedule")),
                  loss=SoftDiceLoss(smooth=float(recipe["loss"].get("smooth", 1.0)),
                                    reduction_mode=recipe["loss"].get("reduction", "batch")),
                  metrics=[BinaryDice()])
    return net, model


def datasets(prepared: Prepared, recipe: Mapping[str, Any], seed: int):
    """Training stream (mirror + optional patches), the default epoch length
    (:func:`epoch_steps`) and the validation slices (whole set once per epoch)."""
    batch = int(recipe["batch_size"])
    patch = recipe["data"].get("patch_size")
    data = recipe["data"]
    train_ds = make_dataset(prepared.train, batch, seed, flip_lr=bool(recipe["augmentation"]["flip_lr"]),
                            patch_size=patch,
                            foreground_fraction=float(data.get("patch_foreground_fraction", 0.5)),
                            sample_by=data.get("sample_by", "slice"),
                            lesion_slice_fraction=data.get("lesion_slice_fraction"))
    val = prepared.val
    if val is None or not len(val):
        return train_ds, epoch_steps(len(prepared.train), recipe), None, None
    val_ds = make_dataset(val, batch, seed, flip_lr=False, shuffle=False, patch_size=patch)
    return train_ds, epoch_steps(len(prepared.train), recipe), val_ds, math.ceil(len(val) / batch)


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
        if p > 0.0:
            xa, ya = augment_batch(x, y, keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator),
                                   self.augmentation)
            chosen = keras.random.uniform((keras.ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < p
            x, y = keras.ops.where(chosen, xa, x), keras.ops.where(chosen, ya, y)
        return self._intensity(x), y

    def _intensity(self, x):
        """Intensity variation (:func:`intensity_batch`) on a share ``intensity_probability``
        of the slices of the batch (recipe ``augmentation.intensity_*``; 0 or absent: none)."""
        aug = self.augmentation
        p = float(aug.get("intensity_probability", 0.0))
        if p <= 0.0:
            return x
        xi = intensity_batch(x, keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator),
                             tuple(aug.get("intensity_scale", (1.0, 1.0))),
                             tuple(aug.get("intensity_shift", (0.0, 0.0))),
                             tuple(aug.get("intensity_gamma", (1.0, 1.0))))
        chosen = keras.random.uniform((keras.ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < p
        return keras.ops.where(chosen, keras.ops.cast(xi, x.dtype), x)

    def train_step(self, data):
        """Augment the batch on the device, then Keras' own step (loss tracking, loss scaling
        under mixed precision, per-replica reduction under tf.distribute)."""
        x, y = data
        return super().train_step(self._augment(x, y))



# --- data ----------------------------------------------------------------------------------------
SAMPLE_BY = ("slice", "subject")


def sample_indices(slices: SliceSet, rng: np.random.Generator, *, sample_by: str = "slice",
                   lesion_slice_fraction: float | None = None, shuffle: bool = True):
    """Endless iterator of slice indices into ``slices`` (before the mirror).

    ``sample_by="slice"`` without ``lesion_slice_fraction`` (the paper): seeded permutations of
    all slices, one pass after another (``shuffle=False``: in order). Otherwise, for every draw
    (the lesion-aware rule of issue 20): pick a subject uniformly (``"subject"``) or take the
    whole set (``"slice"``); then with probability ``lesion_slice_fraction`` a slice with at
    least one label voxel (if the subject has one), else any slice, uniformly. So every subject
    weighs the same whatever its slice count (a 1 mm MNI volume has 146 training slices, a
    thick-slice clinical one 16) and lesion-bearing slices are seen at least that often.

    Raises:
        ValueError: unknown ``sample_by`` or a fraction outside [0, 1].
    """
    if sample_by not in SAMPLE_BY:
        raise ValueError(f"data.sample_by must be one of {SAMPLE_BY}; got {sample_by!r}")
    q = None if lesion_slice_fraction is None else float(lesion_slice_fraction)
    if q is not None and not 0.0 <= q <= 1.0:
        raise ValueError(f"data.lesion_slice_fraction must be in [0, 1]; got {q}")
    m = len(slices)
    if sample_by == "slice" and q is None:
        while True:
            yield from (rng.permutation(m) if shuffle else np.arange(m))
    has_fg = slices.masks.reshape(m, -1).max(axis=1) > 0
    groups = ([np.arange(m)] if sample_by == "slice" else
              [np.nonzero(slices.subject_index == k)[0] for k in range(len(slices.subject_ids))])
    groups = [(g, g[has_fg[g]]) for g in groups if len(g)]
    while True:
        every, lesion = groups[rng.integers(len(groups))]
        pool = lesion if (q is not None and len(lesion) and rng.random() < q) else every
        yield int(pool[rng.integers(len(pool))])


def make_dataset(slices: SliceSet, batch_size: int, seed: int, *, flip_lr: bool,
                 shuffle: bool = True, patch_size: int | None = None,
                 foreground_fraction: float = 0.5, sample_by: str = "slice",
                 lesion_slice_fraction: float | None = None) -> tf.data.Dataset:
    """An endless ``tf.data`` stream of ``(image, mask)`` batches.

    The static left-right mirror (spec §8.1) doubles the set without copying memory: index
    ``i >= M`` is slice ``i - M`` flipped along the column axis. Each pass over the doubled set
    is reshuffled with a seeded generator (reproducible batch order per member seed).
    With ``sample_by``/``lesion_slice_fraction`` slices are drawn by :func:`sample_indices`
    instead, each mirrored with probability 1/2 when ``flip_lr``.
    With ``patch_size`` each slice is cut to a random ``patch_size`` square: centred on a
    random label voxel with probability ``foreground_fraction`` when the slice has one, else
    on a random voxel of the slice (clipped so the patch stays inside).
    """
    m = len(slices)
    n = 2 * m if flip_lr else m
    images, masks = slices.images, slices.masks
    h, w = images.shape[1:3]
    weighted = sample_by != "slice" or lesion_slice_fraction is not None
    if weighted:  # check the options now, not inside the generator
        next(sample_indices(slices, np.random.default_rng(0), sample_by=sample_by,
                            lesion_slice_fraction=lesion_slice_fraction))

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
        if weighted:
            for j in sample_indices(slices, rng, sample_by=sample_by,
                                    lesion_slice_fraction=lesion_slice_fraction):
                if flip_lr and rng.random() < 0.5:
                    yield cut(rng, images[j, :, ::-1], masks[j, :, ::-1])
                else:
                    yield cut(rng, images[j], masks[j])
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



def build_member(card: ModelCard, variant: str, member: int, patch_size: int | None = None) -> keras.Model:
    """One untrained member, built by the card's entry module (the same builder as prediction)."""
    from zoo import registry

    entry = importlib.import_module(registry.ENTRIES[card.id])
    return entry.build_member(card, variant, member, patch_size)
