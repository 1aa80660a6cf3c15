"""``wmh_ensemble``: WMH segmentation with an ensemble of 2D U-Nets (Li et al., NeuroImage 2018).

How the shared pieces plug together for this entry; every number comes from the card
(``cards/wmh_ensemble.yaml``, spec ``specs/wmh_ensemble.md``).

    inputs on one grid (FLAIR = reference; T1 resampled onto it only with resample=True)
    -> SlicePipeline(card steps): reorient, [in-plane resample], brain mask, z-score,
       axial slices, centre crop/pad 200x200                          -> (N, 200, 200, C)
    -> fused ensemble (mean of the members' sigmoid maps), batched    -> (N, 200, 200)
    -> end-slice band zeroed (postprocessing.end_slice_fraction)
    -> inverse pipeline to the FLAIR grid, threshold (inference.threshold)
    -> Prediction: "wmh" uint8 + "wmh_probability" float32 on the FLAIR's grid and header
"""

from __future__ import annotations

import time

import keras
import numpy as np

from zoo import postprocessing
from zoo.architectures.unet2d import build_unet2d
from zoo.card import ModelCard
from zoo.inference.slicewise import predict_slices
from zoo.io import Volume
from zoo.preprocessing.grid import align_inputs
from zoo.preprocessing.pipeline import MASK_INPUT, SlicePipeline
from zoo.prediction import Prediction

ID = "wmh_ensemble"

#: Card options that set what the network sees without changing its variables: weights record
#: them (zoo.trained_options) and must predict with them (apply_mask: skull-stripped inputs).
WEIGHTS_OPTIONS = ("apply_mask",)

#: Per-case metric columns of ``zoo evaluate`` (specs/metrics.md §1-§5 names).
EVAL_COLUMNS = ("dsc", "h95_wmh_mm", "abs_vol_diff_pct", "lesion_recall", "lesion_f1")


def build_member(card: ModelCard, variant: str, member: int, patch_size: int | None = None) -> keras.Model:
    """One untrained member of ``variant``'s architecture, named ``member{member}``.

    ``patch_size`` builds it for square ``(patch_size, patch_size)`` inputs (patch training):
    the same layers and weight shapes, so the weights load into the card's 200x200 model.
    """
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (int(patch_size), int(patch_size), shape[-1])
    return build_unet2d(shape, batch_norm=bool(arch.get("batch_norm", False)),
                        head=arch.get("head", "sigmoid1"), name=f"member{member}")


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """The ensemble members of ``variant`` (untrained), ``inference.n_members`` of them."""
    return [build_member(card, variant, i) for i in range(int(card["inference"]["n_members"]))]


def pipeline(card: ModelCard, variant: str) -> SlicePipeline:
    """The preprocessing pipeline of ``variant`` (channels in the variant's input order)."""
    return SlicePipeline(card["preprocessing"]["steps"], card.variant(variant)["inputs"])


#: Values of the card's ``inference.skip_slices`` (option ``skip_slices``).
SKIP_SLICES = ("none", "band", "band_and_empty")


def slices_to_run(skip: str, band: np.ndarray, state) -> np.ndarray | None:
    """Boolean ``(N,)`` of the axial slices the network must run on, or None for all.

    ``none`` runs every slice (the authors' code); ``band`` skips the end-slice band, whose
    probabilities are zeroed afterwards anyway, so the output is identical; ``band_and_empty``
    (the card's default) also skips slices without brain-mask voxels (they get probability 0
    instead of the network's response to a constant slice: the mask can differ only where that
    response exceeds the threshold). Raises ValueError for another value.
    """
    if skip not in SKIP_SLICES:
        raise ValueError(f"inference.skip_slices must be one of {SKIP_SLICES}; got {skip!r}")
    if skip == "none":
        return None
    run = ~band
    if skip == "band_and_empty":
        run &= state.brain_slices()
    return run


def predict(model, volumes: dict[str, Volume], *, resample: bool = False) -> Prediction:
    """Segment WMH on one subject (see the module docstring for the flow).

    Args:
        model: the :class:`~zoo.model.ZooModel` of this entry.
        volumes: ``flair`` (reference grid), ``t1`` for the two-channel variant, optionally
            ``brain_mask``; each a :class:`~zoo.io.Volume` in ``(i, j, k)`` order.
        resample: resample ``t1``/``brain_mask`` onto the FLAIR grid when they are on another
            grid of the same world space (else GridMismatchError).
    Returns:
        Prediction with images ``wmh`` (uint8 0/1) and ``wmh_probability`` (float32) on the
        FLAIR's grid, ``volumes_ml["wmh"]`` in mL, and QC counts.
    """
    card, variant = model.card, model.variant
    channels = card.variant(variant)["inputs"]
    timing = {}
    t0 = time.perf_counter()
    volumes = align_inputs(volumes, channels[0], resample=resample)
    pipe = pipeline(card, variant)
    x, state = pipe.apply(volumes)
    timing["preprocess"] = time.perf_counter() - t0

    post = card["postprocessing"]
    band = postprocessing.end_slice_band(x.shape[0], float(post["end_slice_fraction"]),
                                         legacy=bool(post.get("legacy_band", False)))
    run = slices_to_run(card["inference"].get("skip_slices", "none"), band, state)
    t0 = time.perf_counter()
    probs = predict_slices(model.fused, x, batch_size=int(card["inference"].get("batch_size", 8)),
                           only=run)
    timing["network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probs[band] = 0.0
    prob_native = pipe.invert(probs, state, fill_value=0.0)
    mask = postprocessing.binarise(prob_native, float(card["inference"]["threshold"]))
    ref = volumes[channels[0]]
    timing["invert"] = time.perf_counter() - t0
    return Prediction(
        images={"wmh": ref.to_image(mask, np.uint8),
                "wmh_probability": ref.to_image(prob_native, np.float32)},
        volumes_ml={"wmh": postprocessing.volume_ml(mask, ref.spacing)},
        entry=card.id, variant=variant, card_version=card.version,
        qc={"n_slices": int(probs.shape[0]), "slices_band_removed": int(band.sum()),
            "slices_run": int(probs.shape[0] if run is None else run.sum()),
            "brain_mask_ml": {k: postprocessing.volume_ml(m, ref.spacing) if state.resampling is None
                              else None for k, m in state.masks.items()},
            "brain_mask_source": "given" if MASK_INPUT in volumes else
            (card.step("brain_mask") or {}).get("method"),
            **({"skull_stripping": state.mask_record} if state.mask_record else {})},
        timing_s=timing,
    )


def score(subject, pred: Prediction, model) -> dict:
    """Challenge metrics (:func:`zoo.metrics.wmh_challenge`) of a prediction against the
    subject's label file (label 1 = WMH, label 2 ignored); keys ``EVAL_COLUMNS`` + ``flags``."""
    from zoo import metrics

    return metrics.wmh_challenge(str(subject.label), pred.images["wmh"])
