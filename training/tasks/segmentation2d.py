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
from zoo.training.augment import augment_batch
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
    train_ds = make_dataset(prepared.train, batch, seed, flip_lr=bool(recipe["augmentation"]["flip_lr"]),
                            patch_size=patch,
                            foreground_fraction=float(recipe["data"].get("patch_foreground_fraction", 0.5)))
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



def build_member(card: ModelCard, variant: str, member: int, patch_size: int | None = None) -> keras.Model:
    """One untrained member, built by the card's entry module (the same builder as prediction)."""
    from zoo import registry

    entry = importlib.import_module(registry.ENTRIES[card.id])
    return entry.build_member(card, variant, member, patch_size)
