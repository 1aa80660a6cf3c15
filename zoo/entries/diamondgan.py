"""``diamondgan``: many-to-one MRI contrast synthesis from any subset of the source contrasts
(Li, Paetzold et al., MICCAI 2019; spec ``specs/diamondgan.md``).

How the shared pieces plug together; every number comes from the card (``cards/diamondgan.yaml``).

    any non-empty subset of the variant's sources, co-registered on one grid (GridMismatchError
    otherwise; reference grid = the first given source in channel order)
    -> SlicePipeline(card steps): reorient, brain mask (non-zero, common to the given
       sources), minmax to [-1, 1] (-1 outside the mask), axial slices, crop/pad 240x240
    -> S: (N, 240, 240, 3) in channel order (FLAIR, T1, T2), absent sources = -1 (spec §2)
    -> condition image of the subset (spec §11 D7), G1(S, c) -> (N, 240, 240, 3) tanh
    -> channel ``inference.output_channel`` (0, D8, or the channel mean), (y + 1) / 2 -> [0, 1]
    -> inverse pipeline to the reference grid; 0 outside the inputs' brain mask
    -> Prediction: ``synthetic_<target>`` float32 in [0, 1] on the input's grid and header
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import keras
import numpy as np

from zoo import errors
from zoo.architectures.diamondgan import build_discriminator, build_generator, condition_maps
from zoo.card import ModelCard
from zoo.io import Volume
from zoo.preprocessing.grid import align_inputs
from zoo.preprocessing.pipeline import MASK_INPUT, SlicePipeline
from zoo.prediction import Prediction

ID = "diamondgan"

#: Per-case metric columns (specs/metrics.md §5 names; ``_brain`` = inside the brain mask).
EVAL_COLUMNS = ("psnr_db_brain", "ssim_brain", "mae_brain")


# --- card accessors ------------------------------------------------------------------------------
def target_of(card: ModelCard, variant: str) -> str:
    """The contrast a variant synthesises (e.g. ``"flair"``)."""
    return str(card.variant(variant)["target"])


def source_channels(card: ModelCard, variant: str) -> list[str]:
    """Channel order of the source stack S (spec §2: FLAIR, T1, T2)."""
    return list(card.variant(variant)["source_channels"])


def allowed_codes(card: ModelCard, variant: str) -> list[tuple[int, ...]]:
    """Presence codes over :func:`source_channels` of every non-empty subset of the variant's
    sources (its ``inputs``; the target is never a source), in increasing binary order."""
    from zoo.architectures.diamondgan import all_subsets

    channels = source_channels(card, variant)
    usable = set(card.variant(variant)["inputs"])
    return [c for c in all_subsets(len(channels))
            if all(channels[i] in usable for i, bit in enumerate(c) if bit)]


def presence_code(card: ModelCard, variant: str, given: Sequence[str]) -> tuple[int, ...]:
    """The presence code of the given source names (MissingModalityError for an empty set or a
    name that is not a source of the variant)."""
    channels = source_channels(card, variant)
    usable = list(card.variant(variant)["inputs"])
    bad = [g for g in given if g not in usable]
    if bad or not given:
        raise errors.MissingModalityError(
            f"{card.id} ({variant}) synthesises {target_of(card, variant)} from any non-empty subset of "
            f"{usable}; got {sorted(given)}")
    return tuple(int(c in given) for c in channels)


# --- networks ----------------------------------------------------------------------------------
def build_member(card: ModelCard, variant: str, member: int = 0, patch_size: int | None = None,
                 name: str | None = None) -> keras.Model:
    """The generator G1 of ``variant`` (untrained), named ``member{member}`` (or ``name``, e.g.
    ``g2`` for the cycle generator); ``patch_size`` builds it for square patches (same weights)."""
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (int(patch_size), int(patch_size), shape[-1])
    return build_generator(shape, condition_encoding=arch["condition_encoding"],
                           n_res_blocks=int(arch["n_res_blocks"]), n_outputs=shape[-1], name=name or f"member{member}")


def build_discriminators(card: ModelCard, variant: str, patch_size: int | None = None) -> tuple[keras.Model, keras.Model]:
    """D_S and D_T of spec §5 (separate weights), for training."""
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (int(patch_size), int(patch_size), shape[-1])
    return (build_discriminator(shape, d_output=arch["d_output"], name="d_s"),
            build_discriminator(shape, d_output=arch["d_output"], name="d_t"))


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """One generator (``inference.n_members`` is 1: G1 is the model)."""
    return [build_member(card, variant, i) for i in range(int(card["inference"]["n_members"]))]


def pipeline(card: ModelCard, channels: Sequence[str]) -> SlicePipeline:
    """The card's preprocessing for the given source ``channels`` (in channel order)."""
    return SlicePipeline(card["preprocessing"]["steps"], list(channels))


# --- prediction ----------------------------------------------------------------------------------
def preprocess(card: ModelCard, variant: str, volumes: dict[str, Volume], *, resample: bool = False):
    """Given sources -> ``(S, condition, code, pipe, state, names)``.

    ``S`` float32 (N, H, W, 3) with -1 for absent sources, ``condition`` (H, W, k), ``names``
    the given sources in channel order (the first is the reference grid).
    Raises MissingModalityError (no usable source), GridMismatchError (inputs not on one grid
    and ``resample`` False), ConstantImageError (empty/constant brain).
    """
    names = [c for c in source_channels(card, variant) if c in volumes]
    code = presence_code(card, variant, [n for n in volumes if n != MASK_INPUT])
    vols = align_inputs({n: volumes[n] for n in [*names, *([MASK_INPUT] if MASK_INPUT in volumes else [])]},
                        names[0], resample=resample)
    pipe = pipeline(card, names)
    x, state = pipe.apply(vols)
    channels = source_channels(card, variant)
    s = np.full((*x.shape[:3], len(channels)), -1.0, dtype=np.float32)
    for j, name in enumerate(names):
        s[..., channels.index(name)] = x[..., j]
    arch = card.variant(variant)["architecture"]
    cond = condition_maps(code, x.shape[1:3], arch["condition_encoding"])
    return s, cond, code, pipe, state, names


def synthesise(net: keras.Model, s: np.ndarray, cond: np.ndarray, *, output_channel: Any = 0,
               batch_size: int = 4) -> np.ndarray:
    """Run G1 over ``(N, H, W, 3)`` source slices with one condition image ``(H, W, k)``.

    Returns float32 (N, H, W) in [-1, 1]: channel ``output_channel`` (spec §8 D8) or the mean
    of the channels (``"mean"``).
    """
    out = np.empty(s.shape[:3], dtype=np.float32)
    for start in range(0, s.shape[0], batch_size):
        xb = s[start:start + batch_size]
        cb = np.broadcast_to(cond, (xb.shape[0], *cond.shape)).astype(np.float32)
        y = np.asarray(net({"sources": xb, "condition": cb}, training=False))
        out[start:start + len(xb)] = y.mean(axis=-1) if output_channel == "mean" else y[..., int(output_channel)]
    return out


def predict(model, volumes: dict[str, Volume], *, target: str | None = None, resample: bool = False) -> Prediction:
    """Synthesise the variant's target contrast on one subject.

    Args:
        model: the :class:`~zoo.model.ZooModel` of this entry.
        volumes: any non-empty subset of the variant's sources (``t1``, ``t2`` for ``flair``),
            co-registered on one grid, skull-stripped (zero background), optionally
            ``brain_mask``; each a :class:`~zoo.io.Volume` in ``(i, j, k)`` order.
        target: the contrast to synthesise; must be the variant's target (default).
        resample: resample inputs on another grid of the same world space onto the reference
            grid (else GridMismatchError).
    Returns:
        Prediction with ``synthetic_<target>`` (float32, [0, 1], 0 outside the inputs' brain
        mask) on the grid and header of the first given source in channel order, and QC.
    Raises:
        MissingModalityError (no usable source / wrong target), GridMismatchError,
        ConstantImageError.
    """
    card, variant = model.card, model.variant
    tgt = target_of(card, variant)
    if target is not None and target != tgt:
        others = [v for v, rec in card["variants"].items() if rec.get("target") == target]
        hint = f"load variant {others[0]!r}" if others else f"targets are {sorted({r.get('target') for r in card['variants'].values()})}"
        raise errors.MissingModalityError(f"{card.id} variant {variant!r} synthesises {tgt!r}, not {target!r}; {hint}")
    timing = {}
    t0 = time.perf_counter()
    s, cond, code, pipe, state, names = preprocess(card, variant, volumes, resample=resample)
    timing["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inf = card["inference"]
    y = synthesise(model.models[0], s, cond, output_channel=inf["output_channel"],
                   batch_size=int(inf.get("batch_size", 4)))
    timing["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    unit = np.clip((y + 1.0) / 2.0, 0.0, 1.0)
    out = pipe.invert(unit, state, fill_value=0.0)
    mask = brain_mask_on_input(pipe, state, names)
    out = np.where(mask, out, 0.0).astype(np.float32)
    ref = volumes[names[0]]
    timing["invert"] = time.perf_counter() - t0
    return Prediction(
        images={f"synthetic_{tgt}": ref.to_image(out, np.float32)},
        volumes_ml={}, entry=card.id, variant=variant, card_version=card.version,
        qc={"n_slices": int(s.shape[0]), "sources": names, "condition_code": list(code),
            "brain_voxels": int(mask.sum()), "target": tgt,
            "value_range": "[0, 1] = (G1 output + 1) / 2; 0 outside the brain mask"},
        timing_s=timing)


def brain_mask_on_input(pipe: SlicePipeline, state, names: Sequence[str]) -> np.ndarray:
    """The pipeline's brain mask (common to ``names``) mapped back to the input grid, bool (I, J, K)."""
    if not state.masks:
        return np.ones(state.reference.shape, dtype=bool)
    m = np.logical_and.reduce([state.masks[n] for n in names]).astype(np.float32)
    return pipe.grid_to_input(m, state) > 0.5


def score(subject, pred: Prediction, model) -> dict:
    """PSNR/SSIM/MAE (metrics.md §5, [0, 1] scale, R = 1) of the synthetic target against the
    subject's real target image (``subject.images[target]``), both inside the brain mask common
    to the real target and the variant's sources that the subject has (:func:`evaluation_mask`).
    Keys: ``EVAL_COLUMNS`` plus the per-volume values of :func:`zoo.metrics.synthesis_metrics`."""
    from zoo import metrics
    from zoo.io import read_volume

    card, variant = model.card, model.variant
    tgt = target_of(card, variant)
    real = read_volume(str(subject.images[tgt]), tgt)
    sources = [read_volume(str(subject.images[n]), n) for n in card.variant(variant)["inputs"] if n in subject.images]
    mask = evaluation_mask(real, sources)
    syn = np.asarray(pred.images[f"synthetic_{tgt}"].dataobj, dtype=np.float32)
    return metrics.synthesis_metrics(scaled_reference(card, real, mask), syn, 1.0, mask)


def evaluation_mask(real: Volume, sources: Sequence[Volume]) -> np.ndarray:
    """Voxels that are non-zero in the real target and in every given source (the brain of
    skull-stripped, co-registered scans; the training pipeline's common mask), bool (I, J, K)."""
    from zoo.preprocessing import brainmask

    return np.logical_and.reduce([brainmask.nonzero_mask(v.array) for v in (real, *sources)])


def scaled_reference(card: ModelCard, real: Volume, mask: np.ndarray) -> np.ndarray:
    """A real target volume on the [0, 1] scale of the synthetic output: the card's ``minmax``
    step fitted inside ``mask`` (as in training), then ``(x + 1) / 2``; 0 outside ``mask``.
    float32 (I, J, K) on the volume's own grid."""
    from zoo.preprocessing.intensity import MinMaxScaling

    step = card.step("minmax") or {}
    sc = MinMaxScaling.fit(real.array, mask, tuple(step.get("percentiles", (0, 100))), source=real.source)
    return (sc.forward(real.array, mask) + 1.0) / 2.0
