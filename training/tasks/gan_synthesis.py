"""Training task ``gan_synthesis``: DiamondGAN (spec ``specs/diamondgan.md`` §6-§7).

    subjects -> the entry's own prediction pipeline over (FLAIR, T1, T2) -> SynthesisSet:
       source stacks S (N, H, W, 3) in [-1, 1] and the target slice; slices whose target has no
       brain are skipped (§3)
    -> make_dataset: endless tf.data stream, slice indices drawn with replacement (§7), aligned
       pairs (D9), optional square patches (CPU budget)
    -> DiamondGANTrainer.train_step: for every allowed input subset (D10 ``all``; or one random
       subset, ``random_one``): -1 for absent sources, the subset's condition, fakes through the
       25-image pools, two optimiser steps for each of D_S and D_T, one joint step for G1+G2.

``build`` returns ``(G1, trainer)``: G1 is what the engine saves as ``member0.npz``; the trainer
holds G1, G2, D_S, D_T, the pools and the three Adam optimisers (their variables are attributes,
so BackupAndRestore checkpoints all of them and a re-run resumes).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from zoo import errors, weights as weights_mod
from zoo.card import ModelCard
from zoo.io import read_volume
from zoo.training.optim import make_optimizer
from zoo.training.tasks import Prepared

log = __import__("logging").getLogger(__name__)


# --- data -----------------------------------------------------------------------------------------
@dataclass
class SynthesisSet:
    """Preprocessed training slices.

    Attributes:
        sources: float32 (N, H, W, C) source stacks in the card's channel order, [-1, 1]; a
            channel a subject lacks is -1.
        targets: float32 (N, H, W) target slices in [-1, 1].
        available: int8 (N, C) 1 where the subject of the slice has that source.
        subject_ids: (N,) subject of each slice.
    """

    sources: np.ndarray
    targets: np.ndarray
    available: np.ndarray
    subject_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def _entry(card: ModelCard):
    from zoo import registry

    return importlib.import_module(registry.ENTRIES[card.id])


def slice_availability(x: np.ndarray, mask_slices: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(N, C)``: channel ``c`` of slice ``n`` carries image content, i.e. it is not
    constant over the slice's brain pixels (``x > -1``, or ``mask_slices`` ``(N, H, W)`` when
    given). A co-registered clinical T1/T2 that does not cover an end slice of the FLAIR holds
    one fill value there (data/README.md, heads): that source is absent on that slice, so the
    slice trains only the subsets without it."""
    inside = (x[..., 0] > -1.0) if mask_slices is None else np.asarray(mask_slices, bool)
    out = np.zeros((x.shape[0], x.shape[-1]), dtype=bool)
    for n in range(x.shape[0]):
        m = inside[n]
        if m.sum() >= 2:
            vals = x[n][m]
            out[n] = vals.max(axis=0) - vals.min(axis=0) > 1e-6
    return out


def build_synthesis_slices(subjects: Sequence[Any], card: ModelCard, variant: str, *,
                           resample: bool = False) -> SynthesisSet:
    """Every subject through the entry's pipeline with the target and its available sources as
    channels (one pass, so they share the brain mask and slicing); axial slices whose target is
    all background (-1) are dropped. A subject's ``images["brain_mask"]`` is the given brain
    mask (as the ``brain_mask`` input of ``predict``). A source is available on a slice when
    the subject has it and it is not constant inside that slice's brain
    (:func:`slice_availability`). Raises MissingModalityError when a subject lacks the target
    or every source."""
    from zoo.preprocessing.grid import align_inputs
    from zoo.preprocessing.pipeline import MASK_INPUT

    entry = _entry(card)
    target = entry.target_of(card, variant)
    channels = entry.source_channels(card, variant)
    usable = card.variant(variant)["inputs"]
    src, tgt, avail, ids = [], [], [], []
    for s in subjects:
        have = [c for c in channels if c in s.images and c in usable]
        if target not in s.images or not have:
            raise errors.MissingModalityError(
                f"subject {s.id}: needs the target {target!r} and at least one of {usable}; has {sorted(s.images)}")
        names = [target, *[c for c in have if c != target]]
        extra = [MASK_INPUT] if MASK_INPUT in s.images else []
        vols = align_inputs({n: read_volume(str(s.images[n]), n) for n in [*names, *extra]}, names[0],
                            resample=resample)
        x, _ = entry.pipeline(card, names).apply(vols)
        keep = (x[..., 0] > -1.0).any(axis=(1, 2))
        ok = slice_availability(x)[keep]
        stack = np.full((int(keep.sum()), *x.shape[1:3], len(channels)), -1.0, dtype=np.float32)
        slice_avail = np.zeros((int(keep.sum()), len(channels)), dtype=np.int8)
        for j, n in enumerate(names[1:], start=1):
            stack[..., channels.index(n)] = np.where(ok[:, j, None, None], x[keep, ..., j], -1.0)
            slice_avail[:, channels.index(n)] = ok[:, j]
        src.append(stack)
        tgt.append(x[keep, ..., 0])
        avail.append(slice_avail)
        ids.append(np.full(int(keep.sum()), s.id))
    return SynthesisSet(np.concatenate(src), np.concatenate(tgt), np.concatenate(avail), np.concatenate(ids))


def prepare(card: ModelCard, variant: str, recipe: Mapping[str, Any], subjects: Sequence[Any],
            val_subjects: Sequence[Any] = (), *, resample: bool = False) -> Prepared:
    """Training (and validation) slices, see :func:`build_synthesis_slices`."""
    train = build_synthesis_slices(subjects, card, variant, resample=resample)
    val = build_synthesis_slices(val_subjects, card, variant, resample=resample) if val_subjects else None
    return Prepared(train, val, {"n_train_slices": len(train), "n_val_slices": 0 if val is None else len(val)})


def make_dataset(data: SynthesisSet, batch_size: int, seed: int, *, patch_size: int | None = None,
                 column_step: int = 1) -> tf.data.Dataset:
    """Endless stream of ``((S, T3, available), dummy)`` batches of ``batch_size`` aligned pairs;
    slice indices drawn with replacement (spec §7). ``T3`` is the target replicated to 3
    channels (§2). With ``patch_size`` each pair is cut to a random square centred near a
    random brain pixel; the column offset is a multiple of ``column_step`` (the period of the
    ``code_patterns`` condition image, so the patch sees the same stripe phase as whole slices).
    """
    n = len(data)
    h, w = data.targets.shape[1:3]
    c = data.sources.shape[-1]
    p = int(patch_size) if patch_size else None

    def gen():
        rng = np.random.default_rng(seed)
        while True:
            i = int(rng.integers(n))
            s, t = data.sources[i], data.targets[i]
            if p:
                fg = np.argwhere(t > -1.0)
                r, q = fg[rng.integers(len(fg))] if len(fg) else (rng.integers(h), rng.integers(w))
                r0 = int(np.clip(r - p // 2, 0, h - p))
                q0 = int(np.clip(q - p // 2, 0, w - p))
                q0 = min((q0 // column_step) * column_step, ((w - p) // column_step) * column_step)
                s, t = s[r0:r0 + p, q0:q0 + p], t[r0:r0 + p, q0:q0 + p]
            t3 = np.repeat(t[..., None], c, axis=-1)
            yield (s, t3, data.available[i].astype(np.float32)), np.float32(0.0)

    hh, ww = (p, p) if p else (h, w)
    sig = ((tf.TensorSpec((hh, ww, c), tf.float32), tf.TensorSpec((hh, ww, c), tf.float32),
            tf.TensorSpec((c,), tf.float32)), tf.TensorSpec((), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).batch(batch_size, drop_remainder=True).prefetch(2)


def datasets(prepared: Prepared, recipe: Mapping[str, Any], seed: int):
    """Training stream and the default epoch length (training slices / batch, spec §7); no
    validation stream (the held-out evaluation is ``training/synthesis_eval.py``)."""
    from zoo.architectures.diamondgan import STRIPE_PX

    batch = int(recipe["batch_size"])
    data = recipe["data"]
    step = STRIPE_PX * prepared.train.sources.shape[-1]
    ds = make_dataset(prepared.train, batch, seed, patch_size=data.get("patch_size"), column_step=step)
    return ds, max(1, math.ceil(len(prepared.train) / batch)), None, None


# --- the image pool -------------------------------------------------------------------------------
class ImagePool(keras.layers.Layer):
    """History buffer of generated images (Shrivastava et al., CVPR 2017; spec §7), per image.

    While fewer than ``size`` images are stored, each new image is stored and returned. Once
    full, with probability 0.5 a random stored image is returned and replaced by the new one;
    otherwise the new image is returned. State lives in non-trainable variables (saved with
    the trainer, so a resumed run keeps its pool).

    Args:
        size: pool size (25 in the spec).
        shape: ``(H, W, C)`` of one image.
        seed: seeds the random choices.
    """

    def __init__(self, size: int, shape: Sequence[int], seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.image_shape = tuple(int(v) for v in shape)
        self.images = self.add_weight(shape=(self.size, *self.image_shape), initializer="zeros",
                                      trainable=False, name="images", aggregation="only_first_replica")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                     name="count", aggregation="only_first_replica")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def query(self, batch):
        """``(B, H, W, C)`` new images -> ``(B, H, W, C)`` images for the discriminator."""
        if self.size <= 0:
            return batch
        out = []
        for i in range(int(batch.shape[0])):
            img = tf.cast(batch[i], self.images.dtype)
            n = tf.convert_to_tensor(self.count.value)
            filling = n < self.size
            swap = tf.logical_and(tf.logical_not(filling),
                                  keras.random.uniform((), seed=self.seed_generator) < 0.5)
            idx = tf.cast(keras.random.randint((), 0, self.size, seed=self.seed_generator), tf.int32)
            pool = tf.convert_to_tensor(self.images.value)
            old = pool[idx]
            out.append(tf.where(swap, old, img))
            where = tf.where(filling, n, idx)
            write = tf.logical_or(filling, swap)
            new_pool = tf.tensor_scatter_nd_update(pool, [[where]], [tf.where(write, img, pool[where])])
            self.images.assign(new_pool)
            self.count.assign(tf.minimum(n + 1, self.size))
        return tf.stack(out)


# --- losses ------------------------------------------------------------------------------------
def weighted_mean(values, weights=None):
    """Mean of ``values`` ``(B, ...)`` over everything; with ``weights`` ``(B,)`` (0/1: which
    samples count) the weighted mean of the per-sample means (0 when no sample counts)."""
    v = tf.cast(values, tf.float32)
    if weights is None:
        return tf.reduce_mean(v)
    per = tf.reduce_mean(tf.reshape(v, (tf.shape(v)[0], -1)), axis=1)
    w = tf.cast(weights, tf.float32)
    return tf.reduce_sum(w * per) / tf.maximum(tf.reduce_sum(w), 1.0)


def lsgan(pred, label: float, weights=None):
    """Least-squares adversarial term ``mean((D(x) - label)^2)`` over pixels, channels, batch
    (only the samples with weight 1 when ``weights`` ``(B,)`` is given)."""
    return weighted_mean(tf.square(tf.cast(pred, tf.float32) - label), weights)


def generator_loss(s, t3, cyc_s, cyc_t, d_s_fake, d_t_fake, *, lambda_cycle: float, real_label: float,
                   weights=None):
    """Spec §6 released-code form: ``λ·mean|S − G2(G1(S))| + λ·mean|T3 − G1(G2(T3))|
    + mean((D_S(G2(T3)) − r)²) + mean((D_T(G1(S)) − r)²)``, means over the samples whose
    ``weights`` ``(B,)`` are 1 (all when None). Returns ``(total, cycle, adversarial)``."""
    cyc = (weighted_mean(tf.abs(tf.cast(s, tf.float32) - tf.cast(cyc_s, tf.float32)), weights)
           + weighted_mean(tf.abs(tf.cast(t3, tf.float32) - tf.cast(cyc_t, tf.float32)), weights))
    adv = lsgan(d_s_fake, real_label, weights) + lsgan(d_t_fake, real_label, weights)
    return lambda_cycle * cyc + adv, cyc, adv


def paired_l1(t3, fake_t, weights=None):
    """Paired term ``mean|T3 - G1(S)|`` over the samples whose ``weights`` ``(B,)`` are 1: the
    synthetic target against the aligned real one (spec D9 pairing). Not in the paper or the
    released code (spec §6: "no direct paired L1 term"); the recipe's ``gan.lambda_paired``
    (default 0) weights it, as the L1 term of pix2pix (Isola et al., CVPR 2017, eq. 3-4, λ = 100)."""
    return weighted_mean(tf.abs(tf.cast(t3, tf.float32) - tf.cast(fake_t, tf.float32)), weights)


def supports(code: Sequence[int], available):
    """``(B,)`` float 1/0: the sample has every source of the subset ``code`` (its
    ``available`` ``(B, C)`` row covers the code), so it trains that subset (spec §3)."""
    c = tf.constant([float(v) for v in code], tf.float32)
    a = tf.cast(available, tf.float32)
    return tf.cast(tf.reduce_all(a * c[None, :] >= c[None, :], axis=-1), tf.float32)


# --- the trainer -------------------------------------------------------------------------------
#: What :class:`DiamondGANTrainer` logs per epoch, in the order ``_subset_step`` returns them.
METRICS = ("loss", "cycle", "adversarial", "d_s_loss", "d_t_loss", "paired")


class DiamondGANTrainer(keras.Model):
    """G1, G2, D_S, D_T with their pools and optimisers; ``train_step`` is spec §7.

    Args:
        g1, g2: generators (sources -> target, target -> sources), same architecture.
        d_s, d_t: discriminators on source stacks and on targets.
        codes: the input subsets trained (presence codes over the source channels).
        conditions: ``(len(codes), H, W, k)`` condition images, in the order of ``codes``.
        optimizers: ``(g, d_s, d_t)`` Keras optimisers (separate states, §7).
        lambda_cycle: cycle weight (D2: 10 paper, 8 code).
        real_label: real label r (D6: 0.95 code, 1.0 paper).
        pool_size: history pool size (25).
        subset_schedule: ``all`` (every subset per batch, D10) or ``random_one``.
        subset_masking: a sample trains a subset only if it has all of the subset's sources
            (:func:`supports`; spec §3); False: every sample trains every subset, its missing
            sources set to -1 (the behaviour before issue 18).
        lambda_paired: weight of :func:`paired_l1` added to the generator loss (0: the paper
            and the released code).
        seed: seeds pools and the subset draw.
    """

    def __init__(self, g1, g2, d_s, d_t, codes, conditions, optimizers, *, lambda_cycle: float = 10.0,
                 real_label: float = 0.95, pool_size: int = 25, subset_schedule: str = "all", seed: int = 0,
                 subset_masking: bool = True, lambda_paired: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if subset_schedule not in ("all", "random_one"):
            raise errors.RecipeError(f"subset_schedule must be 'all' or 'random_one', got {subset_schedule!r}")
        self.g1, self.g2, self.d_s, self.d_t = g1, g2, d_s, d_t
        self.codes = [tuple(int(v) for v in c) for c in codes]
        self.conditions = np.asarray(conditions, np.float32)
        self.g_optimizer, self.ds_optimizer, self.dt_optimizer = optimizers
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_paired = float(lambda_paired)
        self.real_label = float(real_label)
        self.subset_schedule = subset_schedule
        self.subset_masking = bool(subset_masking)
        shape = tuple(g1.input["sources"].shape[1:])
        self.pool_s = ImagePool(pool_size, shape, seed, name="pool_s")
        self.pool_t = ImagePool(pool_size, shape, seed + 1, name="pool_t")
        self.subset_seed = keras.random.SeedGenerator(seed + 2)
        self.trackers = {k: keras.metrics.Mean(name=k) for k in METRICS}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        s, t3, _ = inputs
        cond = tf.broadcast_to(self.conditions[0], (tf.shape(s)[0], *self.conditions.shape[1:]))
        fake_t = self.g1({"sources": s, "condition": cond}, training=training)
        fake_s = self.g2({"sources": t3, "condition": cond}, training=training)
        return fake_t, self.d_s(fake_s, training=training), self.d_t(fake_t, training=training)

    def build_all(self, batch: int = 1) -> None:
        """Create every variable (networks, pools, optimiser slots) before BackupAndRestore
        restores them."""
        shape = self.pool_s.image_shape
        z = np.zeros((batch, *shape), np.float32)
        self((z, z, np.ones((batch, shape[-1]), np.float32)))
        self.g_optimizer.build(self.g1.trainable_variables + self.g2.trainable_variables)
        self.ds_optimizer.build(self.d_s.trainable_variables)
        self.dt_optimizer.build(self.d_t.trainable_variables)

    def _d_step(self, d, opt, images, label: float, weights=None):
        scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = 0.5 * lsgan(d(images, training=True), label, weights)
            scaled = opt.scale_loss(loss * scale)
        grads = tape.gradient(scaled, d.trainable_variables)
        opt.apply_gradients(zip(grads, d.trainable_variables))
        return loss

    def _subset_step(self, s_full, t3, avail, k: int):
        code = tf.constant(self.codes[k], tf.float32)
        # only samples that have every source of this subset train it (spec §3); the others
        # get weight 0 in every loss term of this subset
        w = supports(self.codes[k], avail) if self.subset_masking else None
        present = code[None, None, None, :] * avail[:, None, None, :]
        s = tf.where(present > 0, s_full, -tf.ones_like(s_full))
        cond = tf.broadcast_to(tf.constant(self.conditions[k]), (tf.shape(s)[0], *self.conditions.shape[1:]))
        g_vars = self.g1.trainable_variables + self.g2.trainable_variables
        scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync
        r = self.real_label
        with tf.GradientTape() as tape:
            # one forward pass of G1 and G2 serves the discriminator updates (as constants, through
            # the pools) and the generator loss: G is not updated in between, so this equals
            # computing the fakes twice (spec §7 order: D_S, D_T, then G1+G2)
            fake_t = self.g1({"sources": s, "condition": cond}, training=True)
            fake_s = self.g2({"sources": t3, "condition": cond}, training=True)
            with tape.stop_recording():
                pooled_s = self.pool_s.query(tf.stop_gradient(fake_s))
                pooled_t = self.pool_t.query(tf.stop_gradient(fake_t))
                ds_loss = (self._d_step(self.d_s, self.ds_optimizer, s, r, w)
                           + self._d_step(self.d_s, self.ds_optimizer, pooled_s, 0.0, w))
                dt_loss = (self._d_step(self.d_t, self.dt_optimizer, t3, r, w)
                           + self._d_step(self.d_t, self.dt_optimizer, pooled_t, 0.0, w))
            cyc_s = self.g2({"sources": fake_t, "condition": cond}, training=True)
            cyc_t = self.g1({"sources": fake_s, "condition": cond}, training=True)
            total, cyc, adv = generator_loss(s, t3, cyc_s, cyc_t, self.d_s(fake_s, training=False),
                                             self.d_t(fake_t, training=False),
                                             lambda_cycle=self.lambda_cycle, real_label=r, weights=w)
            paired = paired_l1(t3, fake_t, w)
            if self.lambda_paired:
                total = total + self.lambda_paired * paired
            scaled = self.g_optimizer.scale_loss(total * scale)
        grads = tape.gradient(scaled, g_vars)
        self.g_optimizer.apply_gradients(zip(grads, g_vars))
        return total, cyc, adv, ds_loss, dt_loss, paired

    def train_step(self, data):
        """Spec §7 iteration on one batch; logs ``loss`` (generator), ``cycle``,
        ``adversarial``, ``d_s_loss``, ``d_t_loss`` and ``paired`` (:func:`paired_l1`, logged
        whatever its weight; means over the epoch)."""
        s_full, t3, avail = data[0]  # (x, y) from fit; (x, y, sample_weight) from train_on_batch
        if self.subset_schedule == "all":
            results = [self._subset_step(s_full, t3, avail, k) for k in range(len(self.codes))]
        else:
            pick = tf.cast(keras.random.randint((), 0, len(self.codes), seed=self.subset_seed), tf.int32)
            results = [tf.switch_case(pick, [lambda k=k: self._subset_step(s_full, t3, avail, k)
                                             for k in range(len(self.codes))])]
        for name, values in zip(METRICS, zip(*results)):
            self.trackers[name].update_state(tf.add_n(list(values)) / len(values))
        return {k: m.result() for k, m in self.trackers.items()}


def build(card: ModelCard, variant: str, recipe: Mapping[str, Any], member: int, seed: int, *,
          init_weights: Any = None, freeze: Sequence[str] = ()) -> tuple[keras.Model, keras.Model]:
    """G1 (saved as the member's weights) and the compiled :class:`DiamondGANTrainer`."""
    from zoo.architectures.diamondgan import condition_maps
    from zoo.training.trainer import freeze_layers

    entry = _entry(card)
    gan = recipe["gan"]
    patch = recipe["data"].get("patch_size")
    g1 = entry.build_member(card, variant, member, patch)
    g2 = entry.build_member(card, variant, member, patch, name="g2")
    if init_weights is not None:
        weights_mod.load_weights(g1, init_weights)
    freeze_layers(g1, freeze)
    d_s, d_t = entry.build_discriminators(card, variant, patch)
    codes = entry.allowed_codes(card, variant)
    hw = tuple(g1.input["sources"].shape[1:3])
    enc = card.variant(variant)["architecture"]["condition_encoding"]
    conditions = np.stack([condition_maps(c, hw, enc) for c in codes])
    opts = tuple(_optimizer(recipe) for _ in range(3))
    model = DiamondGANTrainer(g1, g2, d_s, d_t, codes, conditions, opts,
                              lambda_cycle=float(gan["lambda_cycle"]), real_label=float(gan["real_label"]),
                              pool_size=int(gan["pool_size"]), subset_schedule=gan["subset_schedule"], seed=seed,
                              subset_masking=bool(gan.get("subset_masking", True)),
                              lambda_paired=float(gan.get("lambda_paired", 0.0)))
    model.build_all()
    model.compile(optimizer=model.g_optimizer, run_eagerly=bool(gan.get("run_eagerly", False)))
    return g1, model


def _optimizer(recipe: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    opt = make_optimizer(recipe["optimizer"], recipe.get("schedule"))
    if keras.config.dtype_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
