"""Training task ``segmentation3d``: volumetric segmentation on random 3D patches
(``spine_vertebrae``).

    subjects -> the entry's VolumePipeline (reorient, resample, z-score, pad) -> network-grid
       volumes + labels (nearest), kept in memory
    -> make_dataset: endless tf.data stream of random (D, H, W) patches, centred on a random
       foreground voxel with probability ``patch_foreground_fraction``, augmented on the CPU
       (augment3d: affine, elastic, gamma; spec spine_vertebrae.md §8)
    -> the entry's network (fully convolutional: patch weights load into the full window),
       loss ``focal_tversky`` (spec §6) or ``dice``, optimizer/schedule from the recipe
       (Ranger + flat-cos, spec §7)

Recipe ``data`` keys: ``patch_size`` [D, H, W] (null: the card's window),
``patch_foreground_fraction``, ``steps_per_epoch`` (also sets the flat-cos length with
``epochs``), ``stripped_input_probability`` (skull_stripping: how often a sample is the
already-stripped twin of its head, :func:`build_volumes`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import weights as weights_mod
from zoo.card import ModelCard
from zoo.io import read_volume
from zoo.training.augment3d import augment3d
from zoo.training.datasets import th12_l5_mask
from zoo.training.losses import FocalTverskyLoss, SoftJaccardLoss, SoftmaxDiceLoss
from zoo.training.optim import make_optimizer
from zoo.training.tasks import Prepared


@dataclass
class VolumeSet:
    """Preprocessed training volumes on the network grid.

    Attributes:
        images: list of float32 ``(D, H, W)`` arrays (z-scored, padded to >= the window).
        labels: list of uint8 ``(D, H, W)`` class maps (0 background, 1 foreground).
        spacing: network-grid spacing in mm ``(D, H, W)`` axes.
        ids: subject ids.
        twins: optional ``(images, labels)`` lists of the same length: each volume's
            already-stripped twin (the input with every voxel outside its label set to 0, then
            preprocessed like any input, so its own z-score region and window), or None.
    """

    images: list
    labels: list
    spacing: tuple
    ids: list
    twins: tuple | None = None

    def __len__(self) -> int:
        return len(self.images)


def _entry(card: ModelCard):
    from zoo import registry

    return importlib.import_module(registry.ENTRIES[card.id])


def build_volumes(subjects: Sequence[Any], card: ModelCard, variant: str, *, stripped_twins: bool = False) -> VolumeSet:
    """Read and preprocess ``subjects`` with the entry's own pipeline (``entry.pipeline``),
    padded but never cropped (``large_inputs="sliding_window"``) unless the entry's
    ``TRAIN_LARGE_INPUTS`` says otherwise, so random patches can come from the whole resampled
    volume; labels through the entry's ``training_label(label, affine, subject)`` when it has
    one, else :func:`th12_l5_mask` (the subject's ``meta["label_rule"]``), nearest. The input is
    the variant's first input, or the subject's only image when the names differ.

    ``stripped_twins``: also build each volume's already-stripped twin (:class:`VolumeSet`
    ``twins``), so a brain-extraction network learns that a scan stripped by another tool gives
    back its non-zero region (issue 16). The label must be on the image's voxel grid; raises
    ValueError when it is not."""
    entry = _entry(card)
    pipe = entry.pipeline(card, variant, large_inputs=getattr(entry, "TRAIN_LARGE_INPUTS", "sliding_window"))
    name = card.variant(variant)["inputs"][0]
    images, labels, spacing = [], [], None
    twin_images, twin_labels = [], []
    for s in subjects:
        path = s.images[name] if name in s.images or len(s.images) != 1 else next(iter(s.images.values()))
        vol = read_volume(str(path), name)
        x, state = pipe.apply(vol)
        lab = read_volume(str(s.label), "label")
        if hasattr(entry, "training_label"):
            mask = entry.training_label(lab.array, lab.affine, s)
        else:
            mask, _ = th12_l5_mask(lab.array, lab.affine, s.meta.get("label_rule"))
        images.append(x)
        labels.append(pipe.apply_label(mask, state))
        spacing = state.spacing
        if stripped_twins:
            if mask.shape != vol.array.shape or not np.allclose(lab.affine, vol.affine, atol=1e-3):
                raise ValueError(f"{s.id}: the label is not on the image's voxel grid; cannot strip the image with it")
            stripped = vol.with_array(np.where(mask > 0, vol.array, 0).astype(vol.array.dtype))
            tx, tstate = pipe.apply(stripped)
            twin_images.append(tx)
            twin_labels.append(pipe.apply_label(mask, tstate))
    twins = (twin_images, twin_labels) if stripped_twins else None
    return VolumeSet(images, labels, tuple(spacing or (1.0, 1.0, 1.0)), [s.id for s in subjects], twins)


def prepare(card: ModelCard, variant: str, recipe: Mapping[str, Any], subjects: Sequence[Any],
            val_subjects: Sequence[Any] = (), *, resample: bool = False) -> Prepared:
    """Training (and validation) volumes through the entry's pipeline (:func:`build_volumes`);
    the training volumes get stripped twins when ``data.stripped_input_probability`` > 0."""
    twins = float(recipe["data"].get("stripped_input_probability", 0.0)) > 0
    train = build_volumes(subjects, card, variant, stripped_twins=twins)
    val = build_volumes(val_subjects, card, variant) if val_subjects else None
    return Prepared(train, val, {"n_train_volumes": len(train), "n_val_volumes": 0 if val is None else len(val),
                                 "network_spacing_mm": list(train.spacing),
                                 "patch_size": list(_patch_size(card, variant, recipe))})


def _patch_size(card: ModelCard, variant: str, recipe: Mapping[str, Any]) -> tuple[int, int, int]:
    patch = recipe["data"].get("patch_size")
    window = card.variant(variant)["architecture"]["input_shape"][:3]
    return tuple(int(v) for v in (patch or window))


def total_steps(recipe: Mapping[str, Any]) -> int:
    """Optimizer steps of one member (``epochs x data.steps_per_epoch``) for the schedule."""
    return int(recipe["epochs"]) * int(recipe["data"]["steps_per_epoch"])


def make_loss(spec: Mapping[str, Any]) -> keras.losses.Loss:
    """The recipe's ``loss`` block: ``focal_tversky`` (alpha, beta, gamma, mode), ``dice``
    (SoftDiceLoss on softmax(logits), ``smooth``) or ``jaccard`` (:class:`SoftJaccardLoss`).
    Raises ValueError for another name."""
    name = spec["name"]
    if name == "focal_tversky":
        return FocalTverskyLoss(alpha=float(spec.get("alpha", 0.5)), beta=float(spec.get("beta", 0.99)),
                                gamma=float(spec.get("gamma", 2.0)), mode=spec.get("mode", "code"))
    if name == "dice":
        return SoftmaxDiceLoss(smooth=float(spec.get("smooth", 1.0)), reduction_mode=spec.get("reduction", "batch"))
    if name == "jaccard":
        return SoftJaccardLoss(smooth=float(spec.get("smooth", 1e-5)))
    raise ValueError(f"unknown segmentation3d loss {name!r}; use focal_tversky, dice or jaccard")


def build(card: ModelCard, variant: str, recipe: Mapping[str, Any], member: int, seed: int, *,
          init_weights: Any = None, freeze: Sequence[str] = ()) -> tuple[keras.Model, keras.Model]:
    """The entry's network built for the recipe's patch size, compiled with the recipe's loss,
    optimizer and schedule (flat-cos length = :func:`total_steps`). ``net`` is also ``model``."""
    from zoo.training.trainer import freeze_layers

    net = _entry(card).build_member(card, variant, member, _patch_size(card, variant, recipe))
    if init_weights is not None:
        weights_mod.load_weights(net, init_weights)
    freeze_layers(net, freeze)
    schedule = recipe.get("schedule")
    if isinstance(schedule, Mapping) and schedule.get("name") in ("flat_cos", "one_cycle"):
        schedule = {**schedule, "total_steps": schedule.get("total_steps") or total_steps(recipe)}
    net.compile(optimizer=make_optimizer(recipe["optimizer"], schedule), loss=make_loss(recipe["loss"]))
    return net, net


def datasets(prepared: Prepared, recipe: Mapping[str, Any], seed: int):
    """Endless augmented patch stream, ``data.steps_per_epoch``, and a validation stream of one
    foreground-centred, unaugmented patch per validation volume."""
    patch = tuple(int(v) for v in prepared.info["patch_size"])
    batch = int(recipe["batch_size"])
    frac = float(recipe["data"].get("patch_foreground_fraction", 0.67))
    train = make_dataset(prepared.train, patch, batch, seed, foreground_fraction=frac,
                         augmentation=recipe["augmentation"],
                         stripped_probability=float(recipe["data"].get("stripped_input_probability", 0.0)))
    steps = int(recipe["data"]["steps_per_epoch"])
    if prepared.val is None or not len(prepared.val):
        return train, steps, None, None
    val = make_dataset(prepared.val, patch, 1, seed, foreground_fraction=1.0, augmentation=None,
                       shuffle=False, centred=True)
    return train, steps, val, len(prepared.val)


def cut_patch(image: np.ndarray, label: np.ndarray, patch: Sequence[int], centre: Sequence[int]):
    """The ``patch`` of ``image``/``label`` centred on ``centre`` (clipped to stay inside; the
    volumes are at least ``patch`` along each axis). Returns ``(image_patch, label_patch)``."""
    lo = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, image.shape)]
    region = tuple(slice(a, a + p) for a, p in zip(lo, patch))
    return image[region], label[region]


def make_dataset(vols: VolumeSet, patch: Sequence[int], batch_size: int, seed: int, *,
                 foreground_fraction: float, augmentation: Mapping[str, Any] | None,
                 shuffle: bool = True, centred: bool = False,
                 stripped_probability: float = 0.0) -> tf.data.Dataset:
    """An endless ``tf.data`` stream of ``(image (D, H, W, 1), label (D, H, W, 1))`` batches
    of random patches (seeded); ``centred`` cuts each volume's patch at its foreground centroid.
    ``stripped_probability``: each draw takes the volume's stripped twin (``vols.twins``) with
    this probability. Raises ValueError when a volume is smaller than the patch, or twins are
    asked for and ``vols`` has none."""
    if stripped_probability > 0 and vols.twins is None:
        raise ValueError("stripped_probability > 0 needs a VolumeSet built with stripped_twins=True")
    pools = [(vols.images, vols.labels)] + ([vols.twins] if stripped_probability > 0 else [])
    for img in [im for images, _ in pools for im in images]:
        if any(n < p for n, p in zip(img.shape, patch)):
            raise ValueError(f"volume {img.shape} is smaller than the patch {tuple(patch)}")
    fg = [[np.argwhere(lab > 0) for lab in labels] for _, labels in pools]

    def gen():
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(vols)) if shuffle else np.arange(len(vols))
            for i in order:
                k = int(stripped_probability > 0 and rng.random() < stripped_probability)
                img, lab, fgi = pools[k][0][i], pools[k][1][i], fg[k][i]
                if centred:
                    centre = fgi.mean(axis=0).round().astype(int) if len(fgi) else np.array(img.shape) // 2
                elif len(fgi) and rng.random() < foreground_fraction:
                    centre = fgi[rng.integers(len(fgi))]
                else:
                    centre = [rng.integers(n) for n in img.shape]
                x, y = cut_patch(img, lab, patch, centre)
                if augmentation:
                    x, y = augment3d(x, y, rng, vols.spacing, augmentation)
                yield x[..., None].astype(np.float32), y[..., None].astype(np.float32)

    sig = (tf.TensorSpec((*patch, 1), tf.float32), tf.TensorSpec((*patch, 1), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).batch(batch_size).prefetch(2)
