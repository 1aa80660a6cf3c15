"""``lung_nodule``: benign vs malignant classification of segmented lung nodules with a 3D residual
CNN (Kaliyugarasan et al., IJIMAI 2021; spec ``specs/lung_nodule.md``).

How the shared pieces plug together; every number comes from the card (``cards/lung_nodule.yaml``):

    CT in HU (checked; or declared already normalised) + nodule label map (one label per nodule,
    or a ball from nodule_center_mm + nodule_diameter_mm)
    -> per nodule: HU window [-1200, 600] -> [0, 1], mask dilated 3x (26-connectivity), zero
       outside, tight box, centred zero pad to the card's pad shape, optional x0.5 nearest
       subsampling (zoo.preprocessing.ct)                              -> (N, P, Q, R, 1)
    -> network logits -> softmax -> p_malignant = softmax[1], class = argmax
    -> Prediction.table: one row per nodule; the patient rule (>= 1 malignant nodule) in qc
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import keras
import numpy as np

from zoo import errors, metrics
from zoo.architectures.nodule_cnn3d import build_nodule_cnn3d
from zoo.card import ModelCard
from zoo.io import Volume
from zoo.prediction import Prediction
from zoo.preprocessing import ct as ctp

ID = "lung_nodule"
#: Inputs passed to :func:`predict` as values, not images (``ZooModel.predict`` routes them).
NON_IMAGE_INPUTS = ("nodule_center_mm", "nodule_diameter_mm")
#: Declared intensity units of the ``ct`` input.
INTENSITIES = ("hu", "normalised")
CLASSES = ("benign", "malignant")
#: Card options that set the network's input frame: the weights are trained at one frame and
#: must predict at it (zoo.trained_options; the network is size-agnostic, so nothing else fails).
WEIGHTS_OPTIONS = ("pad_shape", "downsample")


# --- card-driven pieces --------------------------------------------------------------------
def crop_params(card: ModelCard) -> dict[str, Any]:
    """The card's preprocessing numbers: ``window_hu``, ``iterations``, ``pad_shape``,
    ``downsample`` and ``input_scale`` (spec §2 steps 6-8, §3, D1)."""
    win, dil, pad = card.step("hu_window"), card.step("mask_dilate"), card.step("crop_pad")
    return {"window_hu": tuple(float(v) for v in win["window_hu"]),
            "input_scale": win.get("input_scale", "unit"),
            "iterations": int(dil["iterations"]),
            "pad_shape": tuple(int(v) for v in pad["pad_shape"]),
            "downsample": int(pad.get("downsample", 1))}


def input_shape(card: ModelCard) -> tuple[int, int, int, int]:
    """The network's input ``(P, Q, R, 1)``: the pad shape divided by ``downsample`` (ceil)."""
    p = crop_params(card)
    return (*(-(-s // p["downsample"]) for s in p["pad_shape"]), 1)


def build_member(card: ModelCard, variant: str, member: int = 0, shape: Sequence[int] | None = None) -> keras.Model:
    """One untrained network of ``variant`` (spec §4) for ``shape`` (default the card's input)."""
    arch = card.variant(variant)["architecture"]
    return build_nodule_cnn3d(tuple(shape) if shape else input_shape(card),
                              dropout=tuple(arch.get("dropout", (0.2, 0.4))),
                              kernel_initializer=arch.get("kernel_initializer", "he_normal"),
                              name=f"member{member}")


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """The ``inference.n_members`` networks (one in the spec)."""
    return [build_member(card, variant, i) for i in range(int(card["inference"]["n_members"]))]


def scale_intensities(array: np.ndarray, card: ModelCard, intensity: str = "hu", name: str = "ct") -> np.ndarray:
    """CT voxels -> the network's [0, 1] intensities.

    ``intensity="hu"`` checks that the values can be HU (:func:`zoo.preprocessing.ct.check_hounsfield`,
    raising NotHounsfieldError otherwise) and applies the card's window; ``"normalised"`` takes
    values already scaled to the window and clips them to [0, 1]. With the card's
    ``input_scale: uint8`` (spec D1, the authors' code) the result is multiplied by 255.
    """
    if intensity not in INTENSITIES:
        raise errors.InputError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
    p = crop_params(card)
    if intensity == "hu":
        ctp.check_hounsfield(array, name)
        x = ctp.window(array, *p["window_hu"])
    else:
        a = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise errors.NonFiniteError(f"{name}: NaN or infinite voxel values")
        x = np.clip(a, 0.0, 1.0)
    return x * np.float32(255.0) if p["input_scale"] == "uint8" else x


def nodule_inputs(card: ModelCard, scaled: np.ndarray, labels: np.ndarray,
                  nodule_ids: Sequence[int] | None = None) -> tuple[np.ndarray, list[int], list[dict]]:
    """Network inputs of every nodule of a label map (spec §2 steps 6-8, §3).

    Args:
        card: the entry card (crop parameters).
        scaled: ``(I, J, K)`` intensities from :func:`scale_intensities`.
        labels: ``(I, J, K)`` integer label map, one label value per nodule (0 = background);
            a 0/1 mask is one nodule.
        nodule_ids: label values to use (default: every non-zero value, ascending).
    Returns:
        ``(x, ids, infos)``: float32 ``(N, P, Q, R, 1)``, the label values and per-nodule crop
        records (box, box shape, cropped flag).
    Raises:
        InputError: no nodule in the label map; GridMismatchError: shapes differ.
    """
    lab = np.asarray(labels)
    if lab.shape != scaled.shape:
        raise errors.GridMismatchError(f"nodule mask {lab.shape} and CT {scaled.shape} are on different grids")
    ids = sorted(int(v) for v in np.unique(lab) if v != 0) if nodule_ids is None else list(nodule_ids)
    if not ids:
        raise errors.InputError("the nodule mask is empty; give one label per nodule (or a 0/1 mask)")
    p = crop_params(card)
    crops, infos = [], []
    for v in ids:
        crop, info = ctp.nodule_crop(scaled, lab == v, p["pad_shape"], iterations=p["iterations"],
                                     downsample=p["downsample"])
        crops.append(crop)
        infos.append(info)
    return np.stack(crops)[..., None], ids, infos


def softmax_malignant(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits)[:, 1]`` of ``(N, 2)`` logits (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def predict_probabilities(models: Sequence[keras.Model], x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Mean p_malignant of the members on ``(N, P, Q, R, 1)`` inputs -> ``(N,)``."""
    probs = [softmax_malignant(np.concatenate([np.asarray(m(x[i:i + batch_size], training=False))
                                               for i in range(0, len(x), batch_size)]))
             for m in models]
    return np.mean(probs, axis=0)


# --- prediction ------------------------------------------------------------------------------
def predict(model, volumes: dict[str, Volume], *, nodule_center_mm: Any = None,
            nodule_diameter_mm: Any = None, intensity: str = "hu", resample: bool = False) -> Prediction:
    """Classify every nodule of one CT.

    Args:
        model: the :class:`~zoo.model.ZooModel` of this entry.
        volumes: ``ct`` (HU; ``(I, J, K)``) and ``nodule_mask`` (label map on the CT grid, one
            label per nodule), unless the nodules are given by centre and diameter.
        nodule_center_mm: ``(x, y, z)`` world (RAS) mm of one nodule, or a list of them; a ball
            of ``nodule_diameter_mm`` (one value, or one per centre) is the nodule's mask.
        intensity: ``"hu"`` (default; checked) or ``"normalised"`` (already in [0, 1]).
        resample: accepted for the common CLI/API signature; the nodule mask must be on the CT
            grid (no resampling, spec D5), so it changes nothing.
    Returns:
        Prediction whose ``table`` (pandas DataFrame) has one row per nodule: ``nodule`` (label
        value), ``p_malignant``, ``predicted_class`` (0 benign / 1 malignant, argmax),
        ``predicted_label``, ``mask_voxels``, ``mask_ml``, ``box_shape``, ``cropped``; the image
        ``nodule_mask`` (the label map used) on the CT grid; ``qc["patient_malignant"]`` applies
        the patient rule of spec §7 (malignant if >= 1 nodule is).
    Raises:
        MissingModalityError: neither a mask nor a centre; InputError (NotHounsfieldError,
        GridMismatchError...) for unusable inputs.
    """
    import pandas as pd

    card = model.card
    timing = {}
    t0 = time.perf_counter()
    ct = volumes["ct"]
    labels = _label_map(ct, volumes.get("nodule_mask"), nodule_center_mm, nodule_diameter_mm)
    scaled = scale_intensities(ct.array, card, intensity)
    x, ids, infos = nodule_inputs(card, scaled, labels)
    timing["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = predict_probabilities(model.models, x, int(card["inference"].get("batch_size", 8)))
    timing["network"] = time.perf_counter() - t0
    vox_ml = float(np.prod(ct.spacing)) / 1000.0
    cls = metrics.malignant(p, float(card["inference"].get("threshold", 0.5)))
    table = pd.DataFrame({
        "nodule": ids, "p_malignant": p.astype(float), "predicted_class": cls,
        "predicted_label": [CLASSES[c] for c in cls],
        "mask_voxels": [int((labels == v).sum()) for v in ids],
        "mask_ml": [int((labels == v).sum()) * vox_ml for v in ids],
        "box_shape": ["x".join(map(str, i["box_shape"])) for i in infos],
        "cropped": [i["cropped"] for i in infos]})
    return Prediction(
        images={"nodule_mask": ct.to_image(labels, np.uint16 if max(ids) > 255 else np.uint8)},
        volumes_ml={f"nodule_{v}": float(m) for v, m in zip(ids, table["mask_ml"])},
        entry=card.id, variant=model.variant, card_version=card.version,
        qc={"n_nodules": len(ids), "patient_malignant": bool(cls.any()), "intensity": intensity,
            "n_cropped": int(sum(i["cropped"] for i in infos)),
            "mask_source": "nodule_mask" if "nodule_mask" in volumes else "sphere"},
        timing_s=timing, table=table)


def _label_map(ct: Volume, mask: Volume | None, centres: Any, diameters: Any) -> np.ndarray:
    """The nodule label map on the CT grid: the given mask, or balls around the given centres."""
    if mask is not None:
        if centres is not None:
            raise errors.InputError("give either nodule_mask or nodule_center_mm, not both")
        if mask.shape != ct.shape or not np.allclose(mask.affine, ct.affine, atol=1e-3):
            raise errors.GridMismatchError(
                f"nodule_mask {mask.shape} is not on the CT grid {ct.shape} (shape or affine differ)")
        arr = np.asarray(mask.array)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
            raise errors.InputError("nodule_mask must hold non-negative integer labels (one per nodule)")
        return arr.astype(np.int32)
    if centres is None:
        raise errors.MissingModalityError(
            "lung_nodule needs the nodules: a nodule_mask (label map, one label per nodule) or "
            "nodule_center_mm=(x, y, z) with nodule_diameter_mm")
    if diameters is None:
        raise errors.MissingModalityError("nodule_center_mm needs nodule_diameter_mm")
    cs = np.asarray(centres, dtype=float)
    cs = cs.reshape(1, 3) if cs.shape == (3,) else cs
    if cs.ndim != 2 or cs.shape[1] != 3:
        raise errors.InputError(f"nodule_center_mm must be (x, y, z) or a list of them, got shape {cs.shape}")
    ds = np.broadcast_to(np.asarray(diameters, dtype=float).reshape(-1), (len(cs),))
    labels = np.zeros(ct.shape, np.int32)
    for n, (c, d) in enumerate(zip(cs, ds), start=1):
        labels[ctp.spherical_mask(ct.shape, ct.affine, c, float(d)) & (labels == 0)] = n
    return labels
