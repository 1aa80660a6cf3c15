"""``skull_stripping``: brain extraction of raw head MRI (T1w, T2w or FLAIR) with a 3D U-Net
(Kaliyugarasan, Kociński, Lundervold & Lundervold, NIK 2020; ``shared/seeds/000_*.txt``).

How the shared pieces plug together; every number comes from the card
(``cards/skull_stripping.yaml``):

    head volume (I, J, K), any contrast, orientation and spacing
    -> VolumePipeline (card steps): reorient RAS+, resample to 1.5 x 1.5 x 2.0 mm, window of
       160 x 160 x 92 voxels (240 x 240 x 184 mm, the paper's network size) placed on the head
       (in-plane centre of the Otsu head's bounding box, top 4 voxels above the vertex, so a
       neck is cropped and a short stack is padded), z-score over the window's head voxels
                                                                    -> (X, Y, Z) network grid
    -> the fused members: softmax of the mean logits -> brain probability (X, Y, Z)
    -> > threshold, largest 3D connected component, 3D holes filled (on the network grid),
       back onto the input grid (probability linear, the kept region nearest)
    -> Prediction: "brain_mask" (uint8 0/1), "brain_probability" (float32), "brain" (the input
       with the background set to 0, input dtype), volumes_ml["brain"], QC flags

The mask is what the paper calls the brain: cerebrum, cerebellum and the CSF of the
subarachnoid space, brainstem cut low (the silver-standard labels of the training data).
Other entries chain it with ``mask_method=skull_stripping`` (:func:`brain_mask_for`).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from scipy import ndimage

from zoo import errors, postprocessing
from zoo.architectures.resunet3d import build_resunet3d
from zoo.card import ModelCard
from zoo.inference.volume import probability_on_input_grid
from zoo.io import Volume
from zoo.prediction import Prediction
from zoo.preprocessing.volume_pipeline import VolumePipeline

ID = "skull_stripping"

#: Training volumes are the network window on the head, as at prediction (segmentation3d).
TRAIN_LARGE_INPUTS = "crop"

#: Per-case metric columns of ``zoo evaluate`` (specs/metrics.md names; Jaccard as the paper's
#: Table 2), then the reference and predicted brain volumes in mL.
EVAL_COLUMNS = ("dsc", "jaccard", "hd95_mm", "brain_ml_ref", "brain_ml_pred")


def build_member(card: ModelCard, variant: str, member: int, patch_size=None) -> keras.Model:
    """One untrained member of ``variant`` named ``member{member}``; ``patch_size``
    ``(X, Y, Z)`` builds it for training patches (same weights as the card's window)."""
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (*(int(s) for s in patch_size), shape[-1])
    strides = [tuple(s) if isinstance(s, (list, tuple)) else int(s) for s in arch["strides"]]
    return build_resunet3d(shape, out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                           strides=strides, num_res_units=int(arch["num_res_units"]),
                           dropout=float(arch.get("dropout", 0.0)), name=f"member{member}")


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """The ensemble members of ``variant`` (untrained), ``inference.n_members`` of them."""
    return [build_member(card, variant, i) for i in range(int(card["inference"]["n_members"]))]


def pipeline(card: ModelCard, variant: str | None = None, large_inputs: str | None = None) -> VolumePipeline:
    """The card's invertible 3D preprocessing (:class:`VolumePipeline`, head-anchored window)."""
    return VolumePipeline(card["preprocessing"]["steps"], large_inputs=large_inputs)


def training_label(label: np.ndarray, affine: np.ndarray, subject) -> np.ndarray:
    """The binary brain mask ``(I, J, K)`` uint8 of a training label (any non-zero = brain)."""
    return (np.rint(np.asarray(label)) > 0).astype(np.uint8)


#: Test-time augmentation (card ``inference.tta``, option ``tta``): ``none`` (the paper), or
#: ``flip_x``: the logits of the window and of its left-right mirror (X, the RAS+ L->R axis)
#: averaged, at twice the network time (zoo decision; not in the paper).
TTA_MODES = ("none", "flip_x")


def network_probability(model, x: np.ndarray) -> np.ndarray:
    """Brain probability ``(X, Y, Z)`` float32 of the network array ``x`` (``(X, Y, Z)``, the
    card's window): softmax (channel 1) of the members' mean logits (the fused model), with the
    card's test-time augmentation (:data:`TTA_MODES`).

    Raises:
        CardError: an unknown ``inference.tta``.
    """
    tta = model.card["inference"].get("tta", "none")
    if tta not in TTA_MODES:
        raise errors.CardError(f"{model.card.id}: inference.tta {tta!r} is not one of {TTA_MODES}")
    batch = x[None, ..., None].astype(np.float32)
    if tta == "flip_x":  # the window and its mirror in one call; the mirror's logits mirrored back
        out = np.asarray(model.fused(np.concatenate([batch, batch[:, ::-1]]), training=False))
        logits = (out[0] + out[1, ::-1]) / 2.0
    else:
        logits = np.asarray(model.fused(batch, training=False))[0]
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e[..., 1] / e.sum(axis=-1)).astype(np.float32)


def clean_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Binary brain mask from a probability map ``(I, J, K)``: ``prob > threshold``, the largest
    3D connected component (26-connectivity), 3D holes filled (card ``postprocessing``).
    Returns bool ``(I, J, K)`` (all False when nothing passes the threshold)."""
    mask = prob > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def mask_on_input_grid(pipe: VolumePipeline, state, prob: np.ndarray, prob_native: np.ndarray,
                       threshold: float) -> np.ndarray:
    """The cleaned brain mask on the input grid, cleaned on the network grid (5x fewer voxels
    than a 1 mm head, the dominant cost of :func:`clean_mask` on the input grid).

    :func:`clean_mask` of the network-grid ``prob`` ``(X, Y, Z)`` inside the input's field of
    view (the window's padding is left out) gives the kept component and its filled holes; a region map (1: the component and its one-voxel rim, 2: filled holes,
    0: elsewhere) goes back to the input grid by nearest neighbour, and an input voxel is brain
    when ``prob_native`` (the linear map of ``prob``, ``(I, J, K)``) exceeds ``threshold``
    inside region 1, or it lies in region 2. The rim keeps the boundary exactly where the
    linearly interpolated probability crosses the threshold.
    Returns bool ``(I, J, K)`` (all False when nothing passes the threshold).
    """
    inside = np.zeros(prob.shape, bool)
    inside[state.crop.valid_box()] = True  # padding lies outside the input's field of view
    keep = clean_mask(np.where(inside, prob, 0.0), threshold)
    if not keep.any():
        return np.zeros(prob_native.shape, bool)
    region = ndimage.binary_dilation(keep, structure=np.ones((3, 3, 3), bool)).astype(np.uint8)
    region[keep & ~(prob > threshold)] = 2
    region_native = pipe.invert(region, state, order=0, fill_value=0)
    return ((prob_native > threshold) & (region_native == 1)) | (region_native == 2)


def predict(model, volumes: dict[str, Volume], *, resample: bool = False) -> Prediction:
    """Extract the brain of one head volume (module docstring).

    Args:
        model: the :class:`~zoo.model.ZooModel` of this entry.
        volumes: ``{"image": Volume}`` in ``(i, j, k)`` order: a T1w, T2w or FLAIR head (skull
            on, or already skull-stripped), any orientation and voxel spacing.
        resample: accepted for the common CLI/API signature; no effect (one input).
    Returns:
        Prediction on the input's grid and header with images ``brain_mask`` (uint8 0/1),
        ``brain_probability`` (float32) and ``brain`` (the input, 0 outside the mask, input
        dtype); ``volumes_ml["brain"]`` in mL; QC: network grid, head window, flags
        (``brain_volume_implausible`` outside the card's ``plausible_brain_ml`` range).
    Raises:
        NoHeadError: no head found in the volume, or the brain mask is empty.
        DimensionError: not a 3D volume (raised when reading).
    """
    card, variant = model.card, model.variant
    ref = volumes[card.variant(variant)["inputs"][0]]
    pipe = pipeline(card)
    x, state, prob, prob_native, timing = probability_on_input_grid(
        pipe, ref, lambda arr: network_probability(model, arr))
    t0 = time.perf_counter()
    post = card["postprocessing"]
    mask = mask_on_input_grid(pipe, state, prob, prob_native, float(card["inference"]["threshold"]))
    if not mask.any():
        raise errors.NoHeadError(
            f"{ref.source or 'input'}: no brain found (the brain probability never exceeds "
            f"{card['inference']['threshold']}); expected a head MRI (T1w, T2w or FLAIR) with the brain in view")
    brain_ml = postprocessing.volume_ml(mask, ref.spacing)
    lo, hi = (float(v) for v in post["plausible_brain_ml"])
    flags = []
    if not lo <= brain_ml <= hi:
        flags.append(f"brain_volume_implausible: {brain_ml:.0f} mL outside {lo:.0f}-{hi:.0f} mL; check the mask "
                     "(partial field of view, not a head, or a failure)")
    brain = np.where(mask, ref.array, 0).astype(ref.array.dtype)
    timing["postprocess"] = time.perf_counter() - t0
    return Prediction(
        images={"brain_mask": ref.to_image(mask.astype(np.uint8), np.uint8),
                "brain_probability": ref.to_image(prob_native, np.float32),
                "brain": ref.to_image(brain, ref.array.dtype)},
        volumes_ml={"brain": brain_ml}, entry=card.id, variant=variant, card_version=card.version,
        qc={"network_shape": [int(s) for s in x.shape], "network_spacing_mm": list(state.spacing),
            "window_start_vox": [int(s.start) for s in state.crop._regions()[0]], "flags": flags},
        timing_s=timing,
        network_grid={"probability": prob, "state": state},
    )


def brain_mask_for(volume: Volume, options: dict | None = None, weights: str = "default") -> tuple[np.ndarray, dict]:
    """Run this entry (card defaults plus ``options``) on ``volume`` and return its brain mask
    for another entry's ``mask_method=skull_stripping``.

    Args:
        volume: the other entry's reference input (e.g. the FLAIR), ``(I, J, K)``.
        options: card options of this entry (e.g. ``{"threshold": 0.5}``).
        weights: ``"default"`` (the shipped weights) or a weights file/folder (the other
            entry's ``mask_weights`` option).
    Returns:
        ``(mask, record)``: bool ``(I, J, K)`` on ``volume``'s grid, and a record for the
        caller's QC (entry, card version, weights, brain volume in mL, flags).
    Raises:
        WeightsNotAvailableError: no weights shipped; NoHeadError: no brain found.
    """
    weights = "default" if weights in (None, "") else str(weights)
    model = _cached_model(tuple(sorted((options or {}).items())), weights)
    pred = predict(model, {model.input_names[0]: volume})
    mask = np.asarray(pred.images["brain_mask"].dataobj) > 0
    return mask, {"mask_method": "skull_stripping", "entry": ID, "card_version": model.card.version,
                  "weights": weights, "brain_ml": pred.volumes_ml["brain"], "flags": list(pred.qc["flags"])}


_MODELS: dict[tuple, object] = {}


def _cached_model(options: tuple, weights: str = "default"):
    """The loaded entry for chaining, loaded once per process, option set and weights."""
    from zoo import registry

    key = (options, weights)
    if key not in _MODELS:
        _MODELS[key] = registry.load(ID, weights=weights, options=dict(options))
    return _MODELS[key]


def score(subject, pred: Prediction, model) -> dict:
    """Score one prediction against the subject's brain mask on the input's own grid: DSC,
    Jaccard, HD95 in mm (``specs/metrics.md`` §1, §4.1) and both volumes in mL.

    Raises:
        GridMismatchError: the label's shape differs from the image's.
    """
    from zoo import metrics
    from zoo.io import read_volume

    ref = read_volume(str(subject.label), "label")
    g = training_label(ref.array, ref.affine, subject) > 0
    p = np.asarray(pred.images["brain_mask"].dataobj) > 0
    if g.shape != p.shape:
        raise errors.GridMismatchError(f"{subject.label}: label shape {g.shape} differs from the image {p.shape}")
    inter = float(np.logical_and(g, p).sum())
    union = float(np.logical_or(g, p).sum())
    return {"dsc": metrics.dice(g, p), "jaccard": inter / union if union else 1.0,
            "hd95_mm": metrics.hd95_mm(g, p, ref.affine),
            "brain_ml_ref": postprocessing.volume_ml(g, ref.spacing),
            "brain_ml_pred": pred.volumes_ml["brain"],
            "contrast": subject.meta.get("contrast"), "flags": list(pred.qc["flags"])}
